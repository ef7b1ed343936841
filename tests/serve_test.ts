/**
 * examples/serve.ts over loopback: 100 concurrent completions against three registered adapters and the base
 * model, all answered 200 with the OpenAI shape, packed into far fewer device batches, deterministic per request,
 * with bounded process and device memory; 400 / 404 / 405 answers; /v1/models.
 */
import assert from "node:assert/strict"
import { setFlagsFromString } from "node:v8"
import { runInNewContext } from "node:vm"
import { createRuntime } from "../actors/runtime.ts"
import { serve } from "../examples/serve.ts"
import type { AdapterSpec } from "../src/model/adapter.ts"
import { initAdapter } from "../src/model/adapter_init.ts"
import { saveAdapter } from "../src/model/adapter_io.ts"
import { ensureDefaultModel } from "../src/model/default_model.ts"
import { readLlamaConfig } from "../src/model/hf_config.ts"
import { Rng } from "../src/util/rng.ts"

const baseDir = await ensureDefaultModel()
const config = await readLlamaConfig(baseDir)

const moe = (name: string, routing: "mixlora" | "dynamic"): AdapterSpec => ({
  name,
  kind: "mixlora",
  r: 4,
  alpha: 8,
  useRslora: false,
  dropout: 0,
  targets: ["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"],
  moe: {
    routing,
    numExperts: 3,
    topK: routing === "mixlora" ? 2 : 3,
    topP: routing === "dynamic" ? 0.7 : 1,
    expertCapacity: 0,
    actFn: "silu",
    routerAuxLossCoef: 0.001,
    routerInitRange: 0.5,
    jitterNoise: 0,
  },
})
const SPECS: AdapterSpec[] = [
  {
    name: "alpha",
    kind: "lora",
    r: 4,
    alpha: 8,
    useRslora: false,
    dropout: 0,
    targets: ["q_proj", "v_proj", "down_proj"],
  },
  moe("beta", "mixlora"),
  moe("gamma", "dynamic"),
]

/** Fresh weights with B ~ N(0, 0.3) instead of 0, so that the adapters (and the base) all answer differently. */
async function saveRandomAdapters(dir: string): Promise<void> {
  for (const [i, spec] of SPECS.entries()) {
    const w = initAdapter(spec, config, Rng.fromSeed(300 + i))
    const rng = Rng.fromSeed(400 + i)
    const fill = (a: Float32Array) => a.forEach((_, k) => (a[k] = rng.normal(0, 0.3)))
    for (const l of w.layers) {
      for (const p of Object.values(l.lora)) fill(p!.b)
      for (const ex of l.experts ?? []) for (const p of Object.values(ex)) fill(p!.b)
    }
    await saveAdapter(dir, spec.name, w, { baseModel: baseDir })
  }
}

const MODELS = ["base", ...SPECS.map((s) => s.name)]
const PROMPTS = ["Once upon a time", "The capital of", "hello", "1 2 3 4", "A long time ago in a galaxy far away"]

/** Request i of the load: models and prompts rotate; every third greedy, the others sampled with their own seed. */
const body = (i: number) => ({
  model: MODELS[i % MODELS.length],
  prompt: PROMPTS[i % PROMPTS.length],
  max_tokens: 4,
  temperature: i % 3 === 0 ? 0 : 0.8,
  top_p: 0.95,
  top_k: 40,
  seed: i % 10,
})

// a full collection before each reading, so that garbage not yet collected does not count as growth
setFlagsFromString("--expose-gc")
const gc = runInNewContext("gc") as () => void

const MiB = 1024 * 1024
/**
 * Stated bounds on growth over 100 requests after the warm-up: the JS heap and the resident set (measured ≈ 0–2 MiB:
 * allocator noise), and the device bytes — none: activations go back to the pool, which is emptied after every
 * batch, and the warm-up already ran the largest possible batch (all 100 in one), so the matmul staging textures
 * (kept per K at 2^k + 1 rows) are at their final size.
 */
const HEAP_BOUND = 4 * MiB
const RSS_BOUND = 16 * MiB
const DEVICE_BOUND = 0

Deno.test("serve: 100 concurrent completions over loopback, packed, right shape, bounded memory", async () => {
  const dir = await Deno.makeTempDir()
  await saveRandomAdapters(dir)
  const rt = await createRuntime({ batch: { windowMs: 5 } })
  const stop = new AbortController()
  let port = 0
  const server = serve(rt, { port: 0, hostname: "127.0.0.1", signal: stop.signal, onListen: (a) => (port = a.port) })
  try {
    for (const s of SPECS) await rt.registerAdapter(s.name, { dir })
    const url = (path: string) => `http://127.0.0.1:${port}${path}`
    const post = (b: unknown) =>
      fetch(url("/v1/completions"), {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: typeof b === "string" ? b : JSON.stringify(b),
      })
    const load = async (n: number) => {
      const responses = await Promise.all(Array.from({ length: n }, (_, i) => post(body(i))))
      return await Promise.all(responses.map(async (r) => ({ status: r.status, json: await r.json() })))
    }

    // warm-up: the same 100 requests queued in one tick (one batch of all of them: the largest shapes), then over HTTP
    await Promise.all(Array.from({ length: 100 }, (_, i) => {
      const b = body(i)
      return rt.generate(b.model, b.prompt, {
        maxTokens: 4,
        temperature: b.temperature,
        topP: b.top_p,
        topK: b.top_k,
        seed: b.seed,
      })
    }))
    assert.equal((await rt.metrics()).batches, 1, "the warm-up burst was one batch")
    // more warm-up rounds over HTTP: how concurrent requests split into batches depends on timing, and each new
    // batch shape allocates once; bounded memory means no growth once those shapes have been seen
    for (let r = 0; r < 3; r++) await load(100)
    const m0 = await rt.metrics()
    const dev0 = (await rt.memory()).total
    gc()
    const mem0 = Deno.memoryUsage()
    const t0 = performance.now()
    await load(100)
    await load(100)
    const answers = await load(100)
    const seconds = (performance.now() - t0) / 3000
    const m1 = await rt.metrics()
    const dev1 = (await rt.memory()).total
    gc()
    const mem1 = Deno.memoryUsage()

    for (const [i, a] of answers.entries()) {
      assert.equal(a.status, 200, JSON.stringify(a.json))
      const j = a.json
      const b = body(i)
      assert.equal(typeof j.id, "string")
      assert.equal(j.object, "text_completion")
      assert.ok(Number.isInteger(j.created) && Math.abs(j.created - Date.now() / 1000) < 120)
      assert.equal(j.model, b.model)
      assert.equal(j.choices.length, 1)
      const [c] = j.choices
      assert.equal(c.index, 0)
      assert.equal(typeof c.text, "string")
      assert.ok(c.finish_reason === "stop" || c.finish_reason === "length")
      const promptTokens = rt.tokenizer.encode(b.prompt, { addBos: true, addEos: false }).length
      assert.equal(j.usage.prompt_tokens, promptTokens)
      assert.ok(j.usage.completion_tokens >= 1 && j.usage.completion_tokens <= 4)
      assert.equal(c.finish_reason === "length", j.usage.completion_tokens === 4)
      assert.equal(j.usage.total_tokens, promptTokens + j.usage.completion_tokens)
    }
    // request i and i + 60 are the same request (60 = lcm of 4 models, 5 prompts, 3 and 10): the same answer,
    // whatever else shared their batches
    for (let i = 0; i + 60 < 100; i++) {
      assert.equal(answers[i].json.choices[0].text, answers[i + 60].json.choices[0].text)
    }
    // the four models answer the same greedy request differently
    const greedy = MODELS.map((model) => ({ ...body(0), model }))
    const texts = await Promise.all(greedy.map((b) => post(b).then((r) => r.json()).then((j) => j.choices[0].text)))
    assert.equal(new Set(texts).size, MODELS.length, JSON.stringify(texts))

    const batches = (m1.batches - m0.batches) / 3
    const fill = (m1.generate.requests - m0.generate.requests) / 3 / batches
    const newTokens = (m1.generate.tokens - m0.generate.tokens) / 3
    const deviceSeconds = (m1.generate.seconds - m0.generate.seconds) / 3
    console.log(
      `100 requests in ${seconds.toFixed(2)} s: ${batches} device batches, batch fill ${fill.toFixed(1)} requests, ` +
        `${newTokens} new tokens, ${(newTokens / deviceSeconds).toFixed(0)} tokens/s on the device ` +
        `(${(newTokens / seconds).toFixed(0)} end to end); heap ${(mem0.heapUsed / MiB).toFixed(1)} → ` +
        `${(mem1.heapUsed / MiB).toFixed(1)} MiB, rss ${(mem0.rss / MiB).toFixed(1)} → ${
          (mem1.rss / MiB).toFixed(1)
        } MiB, ` +
        `device ${dev0} → ${dev1} bytes`,
    )
    assert.ok(batches < 100 / 4, `${batches} batches for 100 requests`)
    assert.ok(
      mem1.heapUsed - mem0.heapUsed <= HEAP_BOUND,
      `heap grew ${((mem1.heapUsed - mem0.heapUsed) / MiB).toFixed(1)} MiB`,
    )
    assert.ok(mem1.rss - mem0.rss <= RSS_BOUND, `rss grew ${((mem1.rss - mem0.rss) / MiB).toFixed(1)} MiB`)
    assert.ok(dev1 - dev0 <= DEVICE_BOUND, `device memory grew ${dev1 - dev0} bytes`)
    assert.equal(m1.queueDepth, 0)

    // errors
    const bad = async (b: unknown, status: number, pattern: RegExp) => {
      const r = await post(b)
      const j = await r.json()
      assert.equal(r.status, status, JSON.stringify(j))
      assert.match(j.error.message, pattern)
    }
    await bad("{not json", 400, /JSON object/)
    await bad([1, 2], 400, /JSON object/)
    await bad({ model: "alpha" }, 400, /prompt must be a string/)
    await bad({ prompt: "hi" }, 400, /model must be a string/)
    await bad({ model: "alpha", prompt: "hi", max_tokens: "4" }, 400, /max_tokens must be an integer/)
    await bad({ model: "alpha", prompt: "hi", max_tokens: 2.5 }, 400, /max_tokens must be an integer/)
    await bad({ model: "alpha", prompt: "hi", temperature: -1 }, 400, /temperature -1/)
    await bad({ model: "alpha", prompt: "hi", top_p: 2 }, 400, /top_p 2/)
    const empty = await (await post({ model: "alpha", prompt: "", max_tokens: 1 })).json()
    assert.equal(empty.usage.prompt_tokens, 1, "an empty prompt is BOS alone")
    await bad({ model: "delta", prompt: "hi" }, 404, /unknown adapter "delta"/)
    const notFound = await fetch(url("/v1/nothing"))
    assert.equal(notFound.status, 404)
    await notFound.body?.cancel()
    const wrongMethod = await fetch(url("/v1/completions"))
    assert.equal(wrongMethod.status, 405)
    await wrongMethod.body?.cancel()

    const models = await (await fetch(url("/v1/models"))).json()
    assert.equal(models.object, "list")
    assert.deepEqual(models.data.map((m: { id: string }) => m.id), MODELS)
    assert.ok(models.data.every((m: { object: string }) => m.object === "model"))
  } finally {
    stop.abort()
    await server.finished
    await rt.close()
    await Deno.remove(dir, { recursive: true })
  }
})
