/**
 * mixlora-webgpu: fine-tune and evaluate many MixLoRA adapters on one frozen LLaMA-family model, with all
 * tensor work in WGSL compute shaders through WebGPU.
 *
 * This entry point exposes the runtime's building blocks: the `Device` actor (owns the WebGPU device, or the
 * CPU reference backend), the ref-counted `WeightCache` of base models (f32 or int8 projections), the strict
 * safetensors reader/writer, HF config and checkpoint loading, int8 quantisation (spec §4), the tokenizer
 * and the embedded default model.
 *
 * @example Load the embedded default model on the device and print the device memory
 * ```ts
 * import { Device, ensureDefaultModel, WeightCache } from "./mod.ts"
 * import { Effect, Layer } from "effect"
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
 * console.log(report.bytes.base_int8 > 0) // true
 * ```
 * @module
 */
import "./src/no_async_hooks.ts"

export { type Backend, Device, type DeviceChoice, type DeviceError, type MemoryReport } from "./actors/device.ts"
export { type BaseKey, type LoadedBase, type LoadError, WeightCache } from "./actors/weight_cache.ts"
export { ActorStopped } from "./actors/actor.ts"
export * from "./src/errors.ts"
export { GpuContext, type MemoryCategory, Step } from "./src/gpu/context.ts"
export { openSafetensors, type SafetensorsFile, type TensorToWrite, writeSafetensors } from "./src/io/safetensors.ts"
export { loadTokenizer, type Tokenizer } from "./src/io/tokenizer.ts"
export { parseLlamaConfig, readLlamaConfig } from "./src/model/hf_config.ts"
export { loadLlamaWeights, streamLlamaTensors } from "./src/model/checkpoint.ts"
export { dequantizeRows, quantizeRows } from "./src/model/quantize.ts"
export { DEFAULT_MODEL_CONFIG, ensureDefaultModel } from "./src/model/default_model.ts"
export type * from "./src/model/types.ts"
