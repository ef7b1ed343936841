import assert from "node:assert/strict"
import { Effect, Layer } from "effect"
import { Device } from "../actors/device.ts"
import { WeightCache } from "../actors/weight_cache.ts"
import { ensureDefaultModel } from "../src/model/default_model.ts"

const layer = () => WeightCache.layer({ idleTimeToLive: 0 }).pipe(Layer.provideMerge(Layer.fresh(Device.layer("auto"))))

Deno.test("weight cache: users share one upload, the last release frees it", async () => {
  const dir = await ensureDefaultModel()
  const out = await Effect.runPromise(Effect.scoped(Effect.provide(
    Effect.gen(function* () {
      const cache = yield* WeightCache
      const dev = yield* Device
      const [a, b] = yield* Effect.scoped(Effect.gen(function* () {
        const a = yield* cache.use({ dir, load8bit: false })
        const one = (yield* dev.memory).total
        const b = yield* cache.use({ dir, load8bit: false })
        const two = (yield* dev.memory).total
        assert.equal(a, b, "the second user gets the same loaded object")
        return [one, two]
      }))
      const after = (yield* dev.memory).total
      return { a, b, after, keys: yield* cache.loaded }
    }),
    layer(),
  )))
  assert.ok(out.a > 3_000_000, `f32 default model on the device: ${out.a}`)
  assert.equal(out.b, out.a, "no second copy")
  assert.equal(out.after, 0, "freed after the last user's scope closed")
  assert.deepEqual(out.keys, [])
})

Deno.test("weight cache: int8 projections take about a quarter of the f32 bytes", async () => {
  const dir = await ensureDefaultModel()
  const bytes = await Effect.runPromise(Effect.scoped(Effect.provide(
    Effect.gen(function* () {
      const cache = yield* WeightCache
      const dev = yield* Device
      yield* cache.use({ dir, load8bit: false })
      yield* cache.use({ dir, load8bit: true })
      return (yield* dev.memory).bytes
    }),
    layer(),
  )))
  const ratio = bytes.base_int8 / bytes.base_f32
  // 1 byte per weight vs 4, + a 4-byte scale per row; texture rows are padded to a non-power-of-two texel
  // count (src/kernels/matmul.ts npot: 9 int8 texels instead of 8 at K = 128, 33 f32 texels instead of 32),
  // which on this tiny model is worth 0.25 × 9/8 × 32/33 ≈ 0.273 at most
  assert.ok(ratio > 0.25 && ratio <= 0.275, `int8/f32 projection bytes = ${ratio}`)
})
