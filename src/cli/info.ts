/**
 * `deno task info`: loads the base model (the embedded default unless `--base_model`) onto the device
 * through the weight cache and prints the adapter, the model shape and the device memory by category.
 * @module
 */
import "../no_async_hooks.ts"
import { Console, Effect, Layer } from "effect"
import { Command } from "effect/cli"
import { Device } from "../../actors/device.ts"
import { WeightCache } from "../../actors/weight_cache.ts"
import { ensureDefaultModel } from "../model/default_model.ts"
import { baseModelFlag, deviceFlag, load8bitFlag } from "./flags.ts"
import { DenoCliServices, runMain } from "./platform.ts"
import { formatBytes, formatMemory, Progress, reportUserErrors } from "./output.ts"

const info = Command.make(
  "info",
  { baseModel: baseModelFlag, load8bit: load8bitFlag, device: deviceFlag },
  ({ baseModel, load8bit, device }) =>
    Effect.gen(function* () {
      const dir = baseModel || (yield* Effect.promise(() => ensureDefaultModel()))
      let bar: Progress | undefined
      const layer = WeightCache.layer({
        onTensor: (done, total) => {
          bar ??= new Progress("loading", total)
          if (done === total) bar.done(`${total} tensors`)
          else bar.update(done, `${done}/${total} tensors`)
        },
      }).pipe(Layer.provideMerge(Device.layer(device)))
      yield* Effect.scoped(
        Effect.gen(function* () {
          const dev = yield* Device
          yield* Console.log(`device: ${dev.description}`)
          const loaded = yield* (yield* WeightCache).use({ dir, load8bit })
          const c = loaded.config
          yield* Console.log(
            `model: ${dir}\n  LLaMA L=${c.numLayers} D=${c.hiddenSize} F=${c.intermediateSize} H=${c.numHeads} ` +
              `KV=${c.numKvHeads} Dh=${c.headDim} V=${c.vocabSize} tied=${c.tieWordEmbeddings} ` +
              `weights=${load8bit ? "int8 projections" : "f32"}`,
          )
          const mem = yield* dev.memory
          yield* Console.log(formatMemory(mem))
          if (mem.backend === "cpu") yield* Console.log(`(cpu backend: weights live in host memory)`)
          else {yield* Console.log(
              `base model on the device: ${
                formatBytes(mem.bytes.base_f32 + mem.bytes.base_int8 + mem.bytes.base_other)
              }`,
            )}
        }).pipe(Effect.provide(layer)),
      )
    }).pipe(reportUserErrors),
).pipe(Command.withDescription("Load a base model onto the device and print its shape and device memory"))

if (import.meta.main) {
  info.pipe(Command.run({ version: "0.1.0" }), Effect.provide(DenoCliServices), runMain)
}
