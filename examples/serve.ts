/**
 * An OpenAI-style completions server on top of the runtime (`deno task serve`):
 *
 *   POST /v1/completions  {model, prompt, max_tokens?, temperature?, top_p?, top_k?, seed?}
 *        → {id, object: "text_completion", created, model, choices: [{index: 0, text, finish_reason}], usage}
 *   GET  /v1/models       → {object: "list", data: [{id, object: "model", created, owned_by}]} ("base" first)
 *
 * `model` is a registered adapter's name or "base". Defaults follow OpenAI: max_tokens 16, temperature 1,
 * top_p 1; top_k 0 (off); seed 0 (so a request without a seed is reproducible). Concurrent requests are packed
 * into shared device batches by the runtime's batcher. A malformed request answers 400, an unknown model 404,
 * both as `{error: {message, type, param, code}}`.
 *
 * Usage: `deno task serve [--port 8000] [--hostname 127.0.0.1] [--base DIR] [--adapters DIR]` (every adapter
 * directory under `--adapters` is registered under its directory name); the port also comes from `$PORT`.
 * @module
 */
import { parseArgs } from "node:util"
import { createRuntime, type Runtime } from "../mod.ts"

export interface ServeOptions {
  /** 0 picks a free port (see the returned server's `addr`) */
  readonly port: number
  /** default "127.0.0.1" */
  readonly hostname?: string
  /** aborting it stops the server */
  readonly signal?: AbortSignal
  readonly onListen?: (addr: Deno.NetAddr) => void
}

type Json = Record<string, unknown>

const json = (status: number, body: unknown) =>
  new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json" } })

const error = (status: number, message: string, extra: { param?: string; code?: string } = {}) =>
  json(status, {
    error: {
      message,
      type: status === 404 ? "not_found_error" : "invalid_request_error",
      param: extra.param ?? null,
      code: extra.code ?? null,
    },
  })

/** Reads an optional number field; an Error names the field when it has the wrong type. */
function num(body: Json, key: string, fallback: number, opts: { integer?: boolean } = {}): number {
  const v = body[key]
  if (v === undefined || v === null) return fallback
  if (typeof v !== "number" || !Number.isFinite(v) || (opts.integer && !Number.isInteger(v))) {
    throw new TypeError(`${key} must be ${opts.integer ? "an integer" : "a number"}, got ${JSON.stringify(v)}`)
  }
  return v
}

let counter = 0

async function completions(rt: Runtime, req: Request): Promise<Response> {
  let body: Json
  try {
    const parsed = await req.json()
    if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) throw new TypeError("not an object")
    body = parsed as Json
  } catch (e) {
    return error(400, `request body must be a JSON object (${(e as Error).message})`)
  }
  const model = body.model
  if (typeof model !== "string" || model === "") return error(400, "model must be a string", { param: "model" })
  if (typeof body.prompt !== "string") return error(400, "prompt must be a string", { param: "prompt" })
  let opts
  try {
    opts = {
      maxTokens: num(body, "max_tokens", 16, { integer: true }),
      temperature: num(body, "temperature", 1),
      topP: num(body, "top_p", 1),
      topK: num(body, "top_k", 0, { integer: true }),
      seed: num(body, "seed", 0, { integer: true }),
    }
  } catch (e) {
    return error(400, (e as Error).message)
  }
  try {
    const out = await rt.generate(model, body.prompt, opts)
    return json(200, {
      id: `cmpl-${Date.now().toString(36)}-${(counter++).toString(36)}`,
      object: "text_completion",
      created: Math.floor(Date.now() / 1000),
      model,
      choices: [{ index: 0, text: out.text, finish_reason: out.finishReason, logprobs: null }],
      usage: {
        prompt_tokens: out.promptTokens,
        completion_tokens: out.outputIds.length,
        total_tokens: out.promptTokens + out.outputIds.length,
      },
    })
  } catch (e) {
    const tag = (e as { _tag?: string })._tag
    if (tag === "UnknownAdapter") return error(404, (e as Error).message, { param: "model", code: "model_not_found" })
    if (tag === "RequestError") return error(400, (e as Error).message)
    return error(500, (e as Error).message ?? String(e))
  }
}

async function models(rt: Runtime): Promise<Response> {
  const created = Math.floor(Date.now() / 1000)
  const names = ["base", ...(await rt.adapters()).map((a) => a.name)]
  return json(200, {
    object: "list",
    data: names.map((id) => ({ id, object: "model", created, owned_by: "mixlora" })),
  })
}

/** Routes one request (exported for tests that skip the socket). */
export function handle(rt: Runtime, req: Request): Promise<Response> | Response {
  const { pathname } = new URL(req.url)
  if (pathname === "/v1/completions") {
    return req.method === "POST" ? completions(rt, req) : error(405, "use POST", { code: "method_not_allowed" })
  }
  if (pathname === "/v1/models") {
    return req.method === "GET" ? models(rt) : error(405, "use GET", { code: "method_not_allowed" })
  }
  return error(404, `no route ${req.method} ${pathname}`)
}

/** Serves `runtime` over HTTP until `signal` aborts; `await server.finished` then waits for the shutdown. */
export function serve(runtime: Runtime, opts: ServeOptions): Deno.HttpServer<Deno.NetAddr> {
  return Deno.serve({
    port: opts.port,
    hostname: opts.hostname ?? "127.0.0.1",
    signal: opts.signal,
    onListen: opts.onListen ?? ((a) => console.error(`listening on http://${a.hostname}:${a.port}`)),
  }, (req) => handle(runtime, req))
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      port: { type: "string" },
      hostname: { type: "string", default: "127.0.0.1" },
      base: { type: "string" },
      adapters: { type: "string" },
    },
  })
  const port = Number(values.port ?? Deno.env.get("PORT") ?? 8000)
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new RangeError(`port ${values.port} is not a port`)
  const rt = await createRuntime({ base: values.base })
  if (values.adapters) {
    for await (const entry of Deno.readDir(values.adapters)) {
      if (!entry.isDirectory) continue
      const info = await rt.registerAdapter(entry.name, { dir: values.adapters })
      console.error(`registered ${info.name} (${info.kind}, r ${info.r})`)
    }
  }
  const stop = new AbortController()
  Deno.addSignalListener("SIGINT", () => stop.abort())
  const server = serve(rt, { port, hostname: values.hostname, signal: stop.signal })
  await server.finished
  await rt.close()
}

if (import.meta.main) {
  main().catch((e) => {
    console.error(`error: ${(e as Error).message ?? e}`)
    Deno.exit(1)
  })
}
