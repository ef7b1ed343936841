/**
 * The embeddable runtime: one frozen base model, many named adapters, and four kinds of work on them —
 * `registerAdapter` / `unregisterAdapter`, `train` (packed with other training jobs by the Scheduler actor),
 * `score` (mean next-token cross-entropy per text) and `generate`.
 *
 * Score and generate requests of many concurrent callers go through one batching actor (actors/batcher.ts: a
 * window of `windowMs` from the first request, closed early by the token budget or `maxRequests`). Each batch is
 * ONE job on the Device actor: one packed `evaluate` forward for all its score requests (every adapter of the batch
 * a segment of the same pass) and one packed `generate` (one prefill, then decode steps over the live rows) for all
 * its generate requests. Every caller gets exactly its own result: scores do not depend on the other rows of a
 * pass (causal attention, per-row losses; except switch routing, whose expert capacity counts a pass's tokens),
 * and each generate request samples from its own `Rng.fromSeed(seed)`.
 *
 * Per text of `score`, with ℓ_t = −log p(ids[t+1] | ids[0..t]):  loss = Σ_{t<len−1} ℓ_t / (len − 1),
 * tokens = len − 1. Each text rides in `evaluate` as a one-choice example whose continuation is ids[1..] (prompt
 * length 1), so its choice score is exactly −Σ_{t<len−1} ℓ_t; all texts of one adapter form one task. The base
 * model ("base") is scored through an all-zero LoRA (x·Aᵀ·Bᵀ = 0 exactly, so the sum is the base's).
 *
 * Adapters are ref-counted by the requests that use them: `unregisterAdapter` removes the name at once (new
 * requests get `UnknownAdapter`), waits until the requests already queued or running with it are answered, then
 * frees its device buffers. Text is tokenized with BOS (score: BOS and EOS, as a `{"text"}` record).
 *
 * The runtime needs a WebGPU device (software lavapipe is fine): the Scheduler trains on it.
 * @module
 */
import { Context, Effect, Exit, Layer, ManagedRuntime } from "effect"
import { join } from "node:path"
import { type AdapterConfig, parseTrainConfig } from "../src/config/train_config.ts"
import { loadPromptTemplate, loadRecords, parseRecord } from "../src/data/records.ts"
import { type Example, tokenizeRecords } from "../src/data/tokenize.ts"
import { ConfigError, SafetensorsError } from "../src/errors.ts"
import { type EvalTask, evaluate } from "../src/eval/evaluate.ts"
import { generateWithStats } from "../src/generate/generate.ts"
import { checkSamplingParams } from "../src/generate/sampling.ts"
import { loadTokenizer, type Tokenizer } from "../src/io/tokenizer.ts"
import type { AdapterSpec, AdapterWeights } from "../src/model/adapter.ts"
import type { GpuContext } from "../src/gpu/context.ts"
import { type DeviceAdapter, releaseAdapter, uploadAdapter } from "../src/model/adapter_device.ts"
import { loadAdapter } from "../src/model/adapter_io.ts"
import { initAdapter } from "../src/model/adapter_init.ts"
import { ensureDefaultModel } from "../src/model/default_model.ts"
import { readLlamaConfig } from "../src/model/hf_config.ts"
import { LlamaModel } from "../src/model/llama.ts"
import type { LlamaConfig } from "../src/model/types.ts"
import { initialWeights } from "../src/train/job.ts"
import { Rng } from "../src/util/rng.ts"
import type { ActorStopped } from "./actor.ts"
import { makeBatcher } from "./batcher.ts"
import { Device, type MemoryReport } from "./device.ts"
import { type JobResult, Scheduler, type SchedulerMetrics } from "./scheduler.ts"
import {
  AdapterConflict,
  type AdapterInfo,
  type AdapterSource,
  BASE_MODEL,
  type GenerateOptions,
  type GenerateOutput,
  type RegisterError,
  RequestError,
  type RuntimeError,
  type RuntimeMetrics,
  type RuntimeOptions,
  type ScoreInput,
  type ScoreResult,
  type TrainRequest,
  UnknownAdapter,
  type WorkMetrics,
} from "./runtime_types.ts"
import { WeightCache } from "./weight_cache.ts"

export * from "./runtime_types.ts"

interface Entry {
  readonly name: string
  readonly weights: AdapterWeights
  dev: DeviceAdapter | null
  generation: number
  refs: number
  /** set by unregister: called when the last request using the adapter is answered */
  onIdle: (() => void) | null
}

type Item =
  | { readonly kind: "score"; readonly entry: Entry | null; readonly texts: readonly (readonly number[])[] }
  | {
    readonly kind: "generate"
    readonly entry: Entry | null
    readonly promptIds: readonly number[]
    readonly maxNewTokens: number
    readonly temperature: number
    readonly topP: number
    readonly topK: number
    readonly seed: number
  }
type Reply = readonly ScoreResult[] | GenerateOutput
const itemCost = (i: Item) =>
  i.kind === "score" ? i.texts.reduce((n, t) => n + t.length, 0) : i.promptIds.length + i.maxNewTokens

/** What the MixloraRuntime service offers. */
export interface RuntimeService {
  readonly modelConfig: LlamaConfig
  readonly tokenizer: Tokenizer
  /** where `train` saves adapters */
  readonly trainDir: string
  /** Loads (or initialises) an adapter and uploads it for inference. */
  readonly registerAdapter: (name: string, source: AdapterSource) => Effect.Effect<AdapterInfo, RegisterError>
  /** Removes the name now; frees the device buffers once the requests using it are answered. */
  readonly unregisterAdapter: (name: string) => Effect.Effect<void, UnknownAdapter | RuntimeError>
  readonly adapters: Effect.Effect<readonly AdapterInfo[]>
  /** Trains one adapter (packed with other jobs); saved under `{trainDir}/{name}` when done. */
  readonly train: (req: TrainRequest) => Effect.Effect<JobResult, ConfigError | RequestError | RuntimeError>
  /** Stops a queued or running training job; false when there is none by that name. */
  readonly cancelTraining: (name: string) => Effect.Effect<boolean, ActorStopped>
  readonly score: (
    adapter: string,
    inputs: readonly ScoreInput[],
  ) => Effect.Effect<readonly ScoreResult[], UnknownAdapter | RequestError | RuntimeError>
  readonly generate: (
    adapter: string,
    prompt: string | readonly number[],
    opts?: GenerateOptions,
  ) => Effect.Effect<GenerateOutput, UnknownAdapter | RequestError | RuntimeError>
  readonly metrics: Effect.Effect<RuntimeMetrics>
  readonly memory: Effect.Effect<MemoryReport, ActorStopped>
}

/** The runtime service: one base model, its registered adapters, the batcher and the training scheduler. */
export class MixloraRuntime extends Context.Service<MixloraRuntime, RuntimeService>()("mixlora/Runtime") {
  /** The runtime with its own Device, WeightCache and Scheduler (all released when the layer closes). */
  static readonly layer = (options: RuntimeOptions = {}) =>
    Layer.unwrap(Effect.gen(function* () {
      const base = options.base ?? (yield* Effect.promise(() => ensureDefaultModel()))
      const [modelConfig, tokenizer] = yield* Effect.tryPromise({
        try: () => Promise.all([readLlamaConfig(base), loadTokenizer(base)]),
        catch: (e) => e instanceof ConfigError ? e : new ConfigError({ file: base, key: "", reason: String(e) }),
      })
      const scratch = yield* Effect.acquireRelease(
        Effect.promise(() => Deno.makeTempDir({ prefix: "mixlora-runtime-" })),
        (dir) => Effect.promise(() => Deno.remove(dir, { recursive: true }).catch(() => {})),
      )
      // parseTrainConfig requires `data` to name an existing file; requests that carry their data get this one
      const placeholder = join(scratch, "inline.jsonl")
      yield* Effect.promise(() => Deno.writeTextFile(placeholder, ""))
      const env: Env = {
        baseKey: { dir: base, load8bit: options.load8bit ?? false },
        modelConfig,
        tokenizer,
        placeholder,
        seed: options.seed ?? 42,
        trainDir: options.trainDir ?? join(scratch, "adapters"),
        windowMs: options.batch?.windowMs ?? 5,
        tokenBudget: options.batch?.tokenBudget ?? 8192,
        maxRequests: options.batch?.maxRequests ?? 128,
      }
      const actors = Scheduler.layer({
        base: env.baseKey,
        dir: env.trainDir,
        seed: env.seed,
        candidates: options.train?.candidates ?? 4,
        simultaneous: options.train?.simultaneous ?? 4,
        strategy: options.train?.strategy ?? "optim",
        saveStep: options.train?.saveStep ?? 0,
        padId: tokenizer.padId,
      }).pipe(
        Layer.provideMerge(WeightCache.layer()),
        Layer.provideMerge(Device.layer(options.device ?? "auto")),
      )
      return Layer.effect(MixloraRuntime, makeRuntime(env)).pipe(Layer.provide(actors))
    }))
}

interface Env {
  readonly baseKey: { readonly dir: string; readonly load8bit: boolean }
  readonly modelConfig: LlamaConfig
  readonly tokenizer: Tokenizer
  readonly placeholder: string
  readonly seed: number
  readonly trainDir: string
  readonly windowMs: number
  readonly tokenBudget: number
  readonly maxRequests: number
}

/** Stand-in for "no adapter" in evaluate (which always applies one): a rank-1 LoRA on q_proj with A = B = 0. */
const zeroAdapter = (config: LlamaConfig): AdapterWeights => {
  const spec: AdapterSpec = {
    name: BASE_MODEL,
    kind: "lora",
    r: 1,
    alpha: 1,
    useRslora: false,
    dropout: 0,
    targets: ["q_proj"],
  }
  const w = initAdapter(spec, config, Rng.fromSeed(0))
  for (const l of w.layers) l.lora.q_proj!.a.fill(0)
  return w
}

const infoOf = (w: AdapterWeights): AdapterInfo => ({
  name: w.spec.name,
  kind: w.spec.kind,
  r: w.spec.r,
  targets: [...w.spec.targets],
  experts: w.spec.moe?.numExperts ?? 0,
})

const asConfigError = (file: string) => (e: unknown): ConfigError | SafetensorsError =>
  e instanceof ConfigError || e instanceof SafetensorsError
    ? e
    : new ConfigError({ file, key: "", reason: e instanceof Error ? e.message : String(e) })

/** One adapter config object → AdapterConfig through the CLI's parser (defaults and messages as the CLI's). */
const parseAdapterConfig = (
  json: unknown,
  fill: Record<string, unknown>,
  file: string,
  top: { cutoff_len?: number } = {},
) =>
  Effect.gen(function* () {
    if (typeof json !== "object" || json === null || Array.isArray(json)) {
      return yield* new ConfigError({ file, key: "", reason: "adapter config must be a JSON object" })
    }
    const { config, warnings } = yield* Effect.tryPromise({
      try: () => parseTrainConfig({ ...top, lora: [{ ...fill, ...json }] }, file),
      catch: asConfigError(file),
    })
    for (const w of warnings) yield* Effect.logWarning(w)
    return { adapter: config.adapters[0] as AdapterConfig, cutoffLen: config.cutoffLen }
  })

const makeRuntime = (env: Env) =>
  Effect.gen(function* () {
    const device = yield* Device
    const cache = yield* WeightCache
    const scheduler = yield* Scheduler
    const { modelConfig, tokenizer } = env
    const registry = new Map<string, Entry>()
    const reserved = new Set<string>()
    const work = { score: { requests: 0, tokens: 0, seconds: 0 }, generate: { requests: 0, tokens: 0, seconds: 0 } }
    // "base" is scored through an all-zero LoRA (evaluate always applies an adapter); kept on the device like the rest
    const baseEntry: Entry = {
      name: BASE_MODEL,
      weights: zeroAdapter(modelConfig),
      dev: null,
      generation: 0,
      refs: 0,
      onIdle: null,
    }
    /** The entry's weights on the current device, uploaded once (again after a device restart). */
    const onDevice = (e: Entry, ctx: GpuContext, generation: number): DeviceAdapter => {
      if (e.dev === null || e.generation !== generation) {
        e.dev = uploadAdapter(ctx, e.weights, modelConfig)
        e.generation = generation
      }
      return e.dev
    }

    const freeOnDevice = (e: Entry) =>
      device.run((b) => {
        // after a device restart the buffers went with the old device
        if (b.kind === "gpu" && e.dev && b.generation === e.generation) releaseAdapter(b.ctx, e.dev)
        e.dev = null
      }).pipe(Effect.ignore)
    // added before the batcher starts, so it runs after the batcher stopped (finalizers run in reverse)
    yield* Effect.addFinalizer(() => Effect.forEach([...registry.values(), baseEntry], freeOnDevice, { discard: true }))
    // the base stand-in is part of the runtime's fixed footprint: on the device from the start
    yield* device.run((b) => void (b.kind === "gpu" && onDevice(baseEntry, b.ctx, b.generation)))

    const known = () => [...registry.keys()].join(", ")
    const acquire = (name: string): Effect.Effect<Entry | null, UnknownAdapter> =>
      Effect.suspend(() => {
        if (name === BASE_MODEL) return Effect.succeed(null)
        const e = registry.get(name)
        if (!e) return Effect.fail(new UnknownAdapter({ name, known: known() }))
        e.refs++
        return Effect.succeed(e)
      })
    const release = (e: Entry | null) => {
      if (!e) return
      e.refs--
      if (e.refs === 0) e.onIdle?.()
    }

    const runBatch = (items: readonly Item[]) =>
      Effect.scoped(Effect.gen(function* () {
        const loaded = yield* cache.use(env.baseKey)
        if (loaded.kind !== "gpu") return yield* Effect.die(new Error("the runtime needs a WebGPU device"))
        const scores = items.flatMap((it) => it.kind === "score" ? [it] : [])
        const gens = items.flatMap((it) => it.kind === "generate" ? [it] : [])
        const out = yield* device.run(async (b) => {
          if (b.kind !== "gpu") throw new Error("unreachable: the base is on the GPU")
          const model = new LlamaModel(b.ctx, loaded.base)
          try {
            // all score requests: one task per adapter, one row per text, every task in the same packed forward
            const groups: { weights: AdapterWeights; device: DeviceAdapter; examples: Example[] }[] = []
            const groupOf = new Map<Entry | null, number>()
            const where = scores.map((it) => {
              let t = groupOf.get(it.entry)
              if (t === undefined) {
                groupOf.set(it.entry, t = groups.length)
                const e = it.entry ?? baseEntry
                groups.push({ weights: e.weights, device: onDevice(e, b.ctx, b.generation), examples: [] })
              }
              const first = groups[t].examples.length
              for (const ids of it.texts) {
                groups[t].examples.push({
                  ids,
                  labels: ids,
                  choices: { promptLength: 1, continuations: [ids.slice(1)], answer: 0 },
                })
              }
              return { t, first }
            })
            // batchSize = all rows of the task: one chunk each, so every task is in the one packed forward
            const tasks = groups.map((g, t): EvalTask => ({ name: `t${t}`, ...g, batchSize: g.examples.length }))
            const evaluated = tasks.length ? await evaluate(model, tasks, { padId: tokenizer.padId }) : null
            const generated = gens.length
              ? await generateWithStats(
                model,
                gens.map((it) => ({
                  ...it,
                  adapter: it.entry ? onDevice(it.entry, b.ctx, b.generation) : null,
                })),
                {
                  eosId: tokenizer.eosId,
                  maxBatchRows: gens.length,
                },
              )
              : null
            return { evaluated, where, generated }
          } finally {
            model.pool.clear()
            b.ctx.forgetBindGroups()
          }
        })
        const { evaluated, where, generated } = out
        if (evaluated) {
          work.score.requests += scores.length
          work.score.tokens += evaluated.stats.realTokens
          work.score.seconds += evaluated.stats.seconds
        }
        if (generated) {
          work.generate.requests += gens.length
          work.generate.tokens += generated.stats.newTokens
          work.generate.seconds += generated.stats.prefillSeconds + generated.stats.decodeSeconds
        }
        let s = 0, g = 0
        return items.map((it): Exit.Exit<Reply> => {
          if (it.kind === "score") {
            const { t, first } = where[s++]
            const r = evaluated!.results[t]
            return Exit.succeed(it.texts.map((ids, k) => ({
              loss: -r.scores[first + k][0] / (ids.length - 1),
              tokens: ids.length - 1,
            })))
          }
          const ids = generated!.results[g++].outputIds
          return Exit.succeed({
            text: tokenizer.decode(ids, { skipSpecial: true }),
            outputIds: ids,
            finishReason: ids.length > 0 && ids[ids.length - 1] === tokenizer.eosId ? "stop" : "length",
            promptTokens: it.promptIds.length,
          })
        })
      }))

    const batcher = yield* makeBatcher<Item, Reply, RuntimeError>({
      name: "runtime batcher",
      windowMs: env.windowMs,
      tokenBudget: env.tokenBudget,
      maxItems: env.maxRequests,
      cost: itemCost,
      run: runBatch,
      onDone: (it) => release(it.entry),
    })
    /** Acquires the adapter for the item's lifetime in the batcher (released by onDone). */
    const submit = (name: string, make: (entry: Entry | null) => Item) =>
      Effect.flatMap(acquire(name), (entry) => batcher.submit(make(entry)))

    const fail = (reason: string) => Effect.fail(new RequestError({ reason }))
    const checkIds = (ids: readonly number[], what: string): string | null => {
      const V = modelConfig.vocabSize
      const bad = ids.findIndex((id) => !Number.isInteger(id) || id < 0 || id >= V)
      if (bad >= 0) return `${what}: token ${ids[bad]} at ${bad} is not in [0, ${V})`
      return null
    }
    const checkCost = (tokens: number, what: string): string | null =>
      tokens > env.tokenBudget ? `${what} needs ${tokens} tokens, more than the batch budget ${env.tokenBudget}` : null

    const score = (adapter: string, inputs: readonly ScoreInput[]) =>
      Effect.gen(function* () {
        if (!Array.isArray(inputs) || inputs.length === 0) return yield* fail("score needs at least one text")
        const texts: number[][] = []
        for (const [i, x] of inputs.entries()) {
          const ids = typeof x === "string" ? tokenizer.encode(x, { addBos: true, addEos: true }) : [...x]
          const problem = checkIds(ids, `text ${i}`) ??
            (ids.length < 2 ? `text ${i} has ${ids.length} token(s); scoring needs at least 2` : null) ??
            (ids.length > modelConfig.maxPositionEmbeddings
              ? `text ${i} has ${ids.length} tokens, over max_position_embeddings ${modelConfig.maxPositionEmbeddings}`
              : null)
          if (problem) return yield* fail(problem)
          texts.push(ids)
        }
        const problem = checkCost(texts.reduce((n, t) => n + t.length, 0), "score request")
        if (problem) return yield* fail(problem)
        return (yield* submit(adapter, (entry) => ({ kind: "score", entry, texts }))) as readonly ScoreResult[]
      })

    const generate = (adapter: string, prompt: string | readonly number[], opts: GenerateOptions = {}) =>
      Effect.gen(function* () {
        const promptIds = typeof prompt === "string"
          ? tokenizer.encode(prompt, { addBos: true, addEos: false })
          : [...prompt]
        const req = {
          maxNewTokens: opts.maxTokens ?? 16,
          temperature: opts.temperature ?? 0,
          topP: opts.topP ?? 1,
          topK: opts.topK ?? 0,
          seed: opts.seed ?? 0,
        }
        const range = (() => {
          try {
            checkSamplingParams(req, "generate")
            return null
          } catch (e) {
            return (e as Error).message
          }
        })()
        const total = promptIds.length + req.maxNewTokens
        const problem = (promptIds.length === 0 ? "empty prompt" : null) ?? checkIds(promptIds, "prompt") ??
          (!Number.isSafeInteger(req.maxNewTokens) || req.maxNewTokens < 0
            ? `max tokens ${req.maxNewTokens} must be an integer ≥ 0`
            : null) ??
          (!Number.isSafeInteger(req.seed) || req.seed < 0 ? `seed ${req.seed} must be an integer ≥ 0` : null) ??
          range ??
          (total > modelConfig.maxPositionEmbeddings
            ? `prompt + max tokens = ${total}, over max_position_embeddings ${modelConfig.maxPositionEmbeddings}`
            : null) ??
          checkCost(total, "generate request")
        if (problem) return yield* fail(problem)
        return (yield* submit(adapter, (entry) => ({ kind: "generate", entry, promptIds, ...req }))) as GenerateOutput
      })

    const registerAdapter = (name: string, source: AdapterSource) =>
      Effect.gen(function* () {
        if (name === BASE_MODEL) return yield* new AdapterConflict({ name, reason: "the name is reserved" })
        if (!name || /[/\\]/.test(name) || name === "." || name === "..") {
          return yield* new AdapterConflict({ name, reason: "not usable as a directory name" })
        }
        if (registry.has(name) || reserved.has(name)) {
          return yield* new AdapterConflict({ name, reason: "already registered (unregister it first)" })
        }
        reserved.add(name)
        return yield* Effect.gen(function* () {
          const weights: AdapterWeights = "dir" in source
            ? yield* Effect.tryPromise({
              try: () => loadAdapter(source.dir, name, modelConfig),
              catch: asConfigError(join(source.dir, name)),
            })
            : yield* Effect.map(
              parseAdapterConfig(source.config, {
                name,
                data: env.placeholder,
                lr: 1e-4,
                batch_size: 1,
                num_epochs: 1,
              }, `registerAdapter(${name})`),
              ({ adapter }) => initialWeights(adapter, modelConfig, source.seed ?? env.seed),
            )
          if (weights.spec.name !== name) {
            return yield* new ConfigError({
              file: `registerAdapter(${name})`,
              key: "name",
              reason: `the config names the adapter "${weights.spec.name}"`,
            })
          }
          const up = yield* device.run((b) => {
            if (b.kind !== "gpu") throw new Error("unreachable: the runtime runs on the GPU")
            return { dev: uploadAdapter(b.ctx, weights, modelConfig), generation: b.generation }
          })
          registry.set(name, { name, weights, ...up, refs: 0, onIdle: null })
          return infoOf(weights)
        }).pipe(Effect.ensuring(Effect.sync(() => reserved.delete(name))))
      })

    const unregisterAdapter = (name: string) =>
      Effect.gen(function* () {
        const e = registry.get(name)
        if (!e) return yield* new UnknownAdapter({ name, known: known() })
        registry.delete(name)
        if (e.refs > 0) {
          yield* Effect.callback<void>((resume) => {
            e.onIdle = () => resume(Effect.void)
          })
        }
        yield* freeOnDevice(e)
      })

    const train = (req: TrainRequest) =>
      Effect.gen(function* () {
        const given = req.data !== undefined || req.examples !== undefined
        const name = (req.config as { name?: unknown } | null)?.name
        const file = `train(${typeof name === "string" ? name : "?"})`
        const fill = given ? { data: env.placeholder } : {}
        const top = req.cutoffLen === undefined ? {} : { cutoff_len: req.cutoffLen }
        const { adapter, cutoffLen } = yield* parseAdapterConfig(req.config, fill, file, top)
        const examples = req.examples ?? (yield* Effect.tryPromise({
          try: async () => {
            const records = req.data
              ? req.data.map((r, i) => parseRecord(r, file, `data[${i}]`))
              : await loadRecords(adapter.data)
            return tokenizeRecords(records, tokenizer, {
              cutoffLen,
              trainOnInputs: adapter.trainOnInputs,
              template: await loadPromptTemplate(adapter.prompt),
              file: req.data ? file : adapter.data,
            })
          },
          catch: (e) => asConfigError(file)(e) as ConfigError,
        }))
        if (examples.length === 0) return yield* fail(`${file}: no training examples`)
        return yield* scheduler.submit({ adapter, examples })
      })

    return MixloraRuntime.of({
      modelConfig,
      tokenizer,
      trainDir: env.trainDir,
      registerAdapter,
      unregisterAdapter,
      adapters: Effect.sync(() => [...registry.values()].map((e) => infoOf(e.weights))),
      train,
      cancelTraining: scheduler.remove,
      score,
      generate,
      metrics: Effect.gen(function* () {
        const b = yield* batcher.stats
        const rate = (w: { requests: number; tokens: number; seconds: number }): WorkMetrics => ({
          ...w,
          tokensPerSecond: w.seconds > 0 ? w.tokens / w.seconds : 0,
        })
        return {
          queueDepth: b.depth,
          batches: b.batches,
          batchFill: b.batches > 0 ? b.items / b.batches : 0,
          score: rate(work.score),
          generate: rate(work.generate),
          train: yield* scheduler.metrics,
          adapters: registry.size,
        }
      }),
      memory: device.memory,
    })
  })

/** The runtime as plain Promises (errors reject with the typed error; `.message` is one line). */
export interface Runtime {
  readonly modelConfig: LlamaConfig
  readonly tokenizer: Tokenizer
  readonly trainDir: string
  registerAdapter(name: string, source: AdapterSource): Promise<AdapterInfo>
  unregisterAdapter(name: string): Promise<void>
  adapters(): Promise<readonly AdapterInfo[]>
  train(req: TrainRequest): Promise<JobResult>
  cancelTraining(name: string): Promise<boolean>
  score(adapter: string, inputs: readonly ScoreInput[]): Promise<readonly ScoreResult[]>
  generate(adapter: string, prompt: string | readonly number[], opts?: GenerateOptions): Promise<GenerateOutput>
  metrics(): Promise<RuntimeMetrics>
  memory(): Promise<MemoryReport>
  /** Stops the actors (queued requests fail with ActorStopped) and frees the device. */
  close(): Promise<void>
}

/**
 * Starts a runtime (device, base weights, scheduler, batcher) and returns its Promise facade.
 *
 * @example
 * ```ts
 * import { createRuntime, UnknownAdapter } from "./runtime.ts"
 * import assert from "node:assert/strict"
 *
 * const rt = await createRuntime()
 * await rt.registerAdapter("demo", { config: { r: 4, lora_alpha: 8, target_modules: ["q_proj", "v_proj"] } })
 * const [[loss]] = await Promise.all([rt.score("demo", ["hello world"]), rt.generate("demo", "Hello", { maxTokens: 4 })])
 * assert.ok(loss.loss > 0 && loss.tokens === 8)
 * await assert.rejects(rt.generate("other", "Hello"), UnknownAdapter)
 * await rt.close()
 * ```
 */
export async function createRuntime(options: RuntimeOptions = {}): Promise<Runtime> {
  const managed = ManagedRuntime.make(MixloraRuntime.layer(options))
  let rt: RuntimeService
  try {
    rt = await managed.runPromise(Effect.service(MixloraRuntime))
  } catch (e) {
    await managed.dispose()
    throw e
  }
  const run = <A, E>(eff: Effect.Effect<A, E>) => managed.runPromise(eff)
  return {
    modelConfig: rt.modelConfig,
    tokenizer: rt.tokenizer,
    trainDir: rt.trainDir,
    registerAdapter: (name, source) => run(rt.registerAdapter(name, source)),
    unregisterAdapter: (name) => run(rt.unregisterAdapter(name)),
    adapters: () => run(rt.adapters),
    train: (req) => run(rt.train(req)),
    cancelTraining: (name) => run(rt.cancelTraining(name)),
    score: (adapter, inputs) => run(rt.score(adapter, inputs)),
    generate: (adapter, prompt, opts) => run(rt.generate(adapter, prompt, opts)),
    metrics: () => run(rt.metrics),
    memory: () => run(rt.memory),
    close: () => managed.dispose(),
  }
}

export type { JobResult, SchedulerMetrics }
