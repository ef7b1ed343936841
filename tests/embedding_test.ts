import assert from "node:assert/strict"
import { GpuValidationError } from "../src/errors.ts"
import { GpuContext } from "../src/gpu/context.ts"
import { embeddingForward } from "../src/kernels/embedding.ts"
import { packBatch } from "../src/reference/batch.ts"
import { embeddingForward as refEmbedding } from "../src/reference/embedding.ts"
import { Rng } from "../src/util/rng.ts"

// Odd shapes: D = 45 (not a multiple of 4), V = 97, rows = 3 of lengths [13, 7, 1] padded to T = 13.
const D = 45
const V = 97

function randomRows(rng: Rng): number[][] {
  return [13, 7, 1].map((len) => Array.from({ length: len }, () => rng.nextInt(V)))
}

Deno.test("embedding gather equals embed[tokens] exactly, left and right padding, whole table and two chunks", async () => {
  const ctx = await GpuContext.create()
  try {
    const rng = Rng.fromSeed(1)
    const embed = Float32Array.from({ length: V * D }, () => rng.normal())
    const embedBuf = ctx.upload("embed", embed, "base_other")
    // the table split at vocabulary row 50: rows [0, 50) and [50, 97) bound separately
    const lo = ctx.upload("embed_lo", embed.subarray(0, 50 * D), "base_other")
    const hi = ctx.upload("embed_hi", embed.subarray(50 * D), "base_other")
    for (const padSide of ["left", "right"] as const) {
      const batch = packBatch(randomRows(rng), { padSide, padId: 3 })
      const N = batch.rows * batch.seqLen
      const ref = refEmbedding(embed, batch.tokens, { N, D, V })
      const tokens = ctx.upload("tokens", batch.tokens, "activations")
      const x = ctx.upload("x", new Float32Array(N * D).fill(NaN), "activations")
      const x2 = ctx.upload("x2", new Float32Array(N * D).fill(NaN), "activations")
      const step = ctx.begin()
      embeddingForward(step, { x, tokens, embed: embedBuf }, { N, D, V })
      embeddingForward(step, { x: x2, tokens, embed: lo }, { N, D, V: 50 })
      embeddingForward(step, { x: x2, tokens, embed: hi }, { N, D, V: V - 50, V0: 50 })
      const [a, b] = await ctx.read([x, x2], step)
      // a gather copies bits: exact equality (stricter than the 1e-4 relative bound of the other kernels)
      assert.deepEqual(new Float32Array(a).subarray(0, N * D), ref, `${padSide}: whole table`)
      assert.deepEqual(new Float32Array(b).subarray(0, N * D), ref, `${padSide}: two chunks`)
    }
  } finally {
    ctx.destroy()
  }
})

Deno.test("embedding launcher rejects a too-small output buffer", async () => {
  const ctx = await GpuContext.create()
  try {
    const x = ctx.upload("x", new Float32Array(10), "activations")
    const tokens = ctx.upload("tokens", new Int32Array(4), "activations")
    const embed = ctx.upload("embed", new Float32Array(V * D), "base_other")
    assert.throws(
      () => embeddingForward(ctx.begin(), { x, tokens, embed }, { N: 4, D, V }),
      (e: Error) => e instanceof GpuValidationError && /x holds/.test(e.message),
    )
  } finally {
    ctx.destroy()
  }
})
