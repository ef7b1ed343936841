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
  // 1 byte per weight + 4 bytes of scale per row of K ≥ 128 weights, padding aside
  assert.ok(ratio > 0.25 && ratio <= 0.27, `int8/f32 projection bytes = ${ratio}`)
})
