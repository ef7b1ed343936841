/**
 * mixlora-webgpu: fine-tune, score and serve many MixLoRA adapters on one frozen LLaMA-family model, with all
 * tensor work in WGSL compute shaders through WebGPU.
 *
 * The embeddable API is the runtime: `createRuntime(options)` (plain Promises) or the `MixloraRuntime` Effect
 * service (`MixloraRuntime.layer(options)`). One runtime holds one base model and any number of named adapters
 * (`registerAdapter` from a saved directory or a fresh m-LoRA adapter config); it trains adapters packed
 * together (`train`), scores texts (`score`: mean next-token cross-entropy per text) and generates (`generate`).
 * Score and generate calls from many concurrent callers are collected by a batching actor (a window of a few ms
 * and a token budget) and served by one packed device pass per batch, all adapters together, each caller getting
 * exactly its own result. `examples/serve.ts` puts an OpenAI-style `/v1/completions` endpoint on top.
 *
 * Below the runtime are its building blocks: the `Device` actor (owns the WebGPU device, or the CPU reference
 * backend), the ref-counted `WeightCache` of base models (f32 or int8 projections), the training `Scheduler`,
 * the strict safetensors reader/writer, HF config and checkpoint loading, int8 quantisation (spec §4), the
 * tokenizer and the embedded default model.
 *
 * @example Generate 4 tokens with a fresh adapter on the embedded default model
 * ```ts
 * import { createRuntime } from "./mod.ts"
 * import assert from "node:assert/strict"
 *
 * const rt = await createRuntime() // the embedded default model, on the WebGPU device
 * await rt.registerAdapter("demo", { config: { r: 4, lora_alpha: 8, target_modules: ["q_proj", "v_proj"] } })
 * const out = await rt.generate("demo", "Hello", { maxTokens: 4 }) // greedy
 * assert.equal(out.outputIds.length, 4)
 * assert.equal(out.finishReason, "length") // no EOS among the 4 tokens: it stopped at maxTokens
 * await rt.close()
 * ```
 *
 * @example Concurrent scoring through the Effect service: both calls share one device batch
 * ```ts
 * import { MixloraRuntime } from "./mod.ts"
 * import { Effect } from "effect"
 * import assert from "node:assert/strict"
 *
 * const program = Effect.gen(function* () {
 *   const rt = yield* MixloraRuntime
 *   yield* rt.registerAdapter("demo", { config: { r: 4, lora_alpha: 8, target_modules: ["q_proj"] } })
 *   const [[a], [b]] = yield* Effect.all([rt.score("demo", ["hello world"]), rt.score("base", ["hello world"])], {
 *     concurrency: "unbounded",
 *   })
 *   return { a, b, batches: (yield* rt.metrics).batches }
 * })
 * const { a, b, batches } = await Effect.runPromise(Effect.provide(program, MixloraRuntime.layer()))
 * // a fresh adapter (LoRA B = 0) scores exactly like the base model
 * assert.equal(a.loss, b.loss)
 * assert.equal(a.tokens, 8) // BOS + 7 tokens of "hello world" + EOS = 9 tokens, 8 predicted
 * assert.equal(batches, 1)
 * ```
 *
 * @example Load the embedded default model on the device and print the device memory
 * ```ts
 * import { Device, ensureDefaultModel, WeightCache } from "./mod.ts"
 * import { Effect, Layer } from "effect"
 * import assert from "node:assert/strict"
 *
 * const dir = await ensureDefaultModel()
 * const layer = WeightCache.layer().pipe(Layer.provideMerge(Device.layer("auto")))
 * const report = await Effect.runPromise(Effect.scoped(Effect.provide(
 *   Effect.gen(function* () {
 *     yield* (yield* WeightCache).use({ dir, load8bit: true })
 *     return yield* (yield* Device).memory
 *   }),
 *   layer,
 * )))
 * assert.ok(report.bytes.base_int8 > 0)
 * ```
 * @module
 */
import "./src/no_async_hooks.ts"

export { type Backend, Device, type DeviceChoice, type DeviceError, type MemoryReport } from "./actors/device.ts"
export { type BaseKey, type LoadedBase, type LoadError, WeightCache } from "./actors/weight_cache.ts"
export { ActorStopped } from "./actors/actor.ts"
export {
  AdapterConflict,
  type AdapterInfo,
  type AdapterSource,
  BASE_MODEL,
  createRuntime,
  type GenerateOptions,
  type GenerateOutput,
  MixloraRuntime,
  type RegisterError,
  RequestError,
  type Runtime,
  type RuntimeError,
  type RuntimeMetrics,
  type RuntimeOptions,
  type RuntimeService,
  type ScoreInput,
  type ScoreResult,
  type TrainRequest,
  UnknownAdapter,
  type WorkMetrics,
} from "./actors/runtime.ts"
export { type JobRequest, type JobResult, Scheduler, type SchedulerMetrics } from "./actors/scheduler.ts"
export { type Batcher, type BatcherOptions, type BatcherStats, makeBatcher } from "./actors/batcher.ts"
export * from "./src/errors.ts"
export { GpuContext, type MemoryCategory, Step } from "./src/gpu/context.ts"
export { openSafetensors, type SafetensorsFile, type TensorToWrite, writeSafetensors } from "./src/io/safetensors.ts"
export { loadTokenizer, type Tokenizer } from "./src/io/tokenizer.ts"
export { parseLlamaConfig, readLlamaConfig } from "./src/model/hf_config.ts"
export { loadLlamaWeights, streamLlamaTensors } from "./src/model/checkpoint.ts"
export { dequantizeRows, quantizeRows } from "./src/model/quantize.ts"
export { DEFAULT_MODEL_CONFIG, ensureDefaultModel } from "./src/model/default_model.ts"
export type * from "./src/model/types.ts"
