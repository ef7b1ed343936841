import assert from "node:assert/strict"
import { GpuContext } from "../src/gpu/context.ts"
import { ropeBackward } from "../src/kernels/rope.ts"
import { lengthsU32, tokenPositions } from "../src/reference/batch.ts"
import { ropeBackward as refBackward, ropeForward as refForward } from "../src/reference/rope.ts"
import { centralDifference, dot64, maxRelError } from "../src/reference/finite_diff.ts"
import { Rng } from "../src/util/rng.ts"

Deno.test("reference rope backward matches central differences of the forward and undoes it (max rel err ≤ 1e-3)", () => {
  const layout = { rows: 2, seqLen: 9, lengths: [9, 4], padSide: "left" as const }
  const N = layout.rows * layout.seqLen
  const dims = { N, heads: 3, Dh: 10, theta: 10000 }
  const rng = Rng.fromSeed(14)
  const x = Float32Array.from({ length: N * 3 * 10 }, () => rng.normal())
  const dy = Float32Array.from({ length: x.length }, () => rng.normal())
  const pos = tokenPositions(layout)
  const dx = refBackward(dy, pos, dims)
  const err = maxRelError(dx, centralDifference((xx) => dot64(dy, refForward(xx, pos, dims)), x))
  // a rotation's transpose is its inverse
  const back = maxRelError(refBackward(refForward(x, pos, dims), pos, dims), x)
  console.log(`rope backward vs finite differences: ${err.toExponential(2)}; backward(forward(x)) vs x: ${back}`)
  assert.ok(err <= 1e-3 && back <= 1e-6, JSON.stringify({ err, back }))
})

Deno.test("rope backward on dq and dk matches the reference within 1e-4 relative: rows [13, 7, 1], H=6 KV=2, Dh 10/18/16 (scalar and vec4 entries)", async () => {
  const ctx = await GpuContext.create()
  try {
    for (const padSide of ["left", "right"] as const) {
      for (const Dh of [10, 18, 16]) {
        const layout = { rows: 3, seqLen: 13, lengths: [13, 7, 1], padSide }
        const [H, KV, theta] = [6, 2, 10000]
        const N = layout.rows * layout.seqLen
        const rng = Rng.fromSeed(Dh)
        const dq = Float32Array.from({ length: N * H * Dh }, () => rng.normal())
        const dk = Float32Array.from({ length: N * KV * Dh }, () => rng.normal())
        const pos = tokenPositions(layout)
        const refQ = refBackward(dq, pos, { N, heads: H, Dh, theta })
        const refK = refBackward(dk, pos, { N, heads: KV, Dh, theta })
        const qb = ctx.upload("dq", dq, "activations")
        const kb = ctx.upload("dk", dk, "activations")
        const lengths = ctx.upload("lengths", lengthsU32(layout), "activations")
        const step = ctx.begin()
        ropeBackward(step, { dq: qb, dk: kb, lengths }, { rows: 3, T: 13, H, KV, Dh, theta, padSide })
        const [gq, gk] = await ctx.read([qb, kb], step)
        for (const b of [qb, kb, lengths]) ctx.release(b)
        const e = {
          dq: maxRelError(new Float32Array(gq).subarray(0, dq.length), refQ),
          dk: maxRelError(new Float32Array(gk).subarray(0, dk.length), refK),
        }
        console.log(`rope backward ${padSide} Dh=${Dh}: dq ${e.dq.toExponential(2)}, dk ${e.dk.toExponential(2)}`)
        assert.ok(e.dq <= 1e-4 && e.dk <= 1e-4, JSON.stringify(e))
      }
    }
  } finally {
    ctx.destroy()
  }
})
