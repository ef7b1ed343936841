import assert from "node:assert/strict"
import { GpuContext } from "../src/gpu/context.ts"
import { swigluBackward } from "../src/kernels/swiglu.ts"
import { swigluBackward as refBackward, swigluForward as refForward } from "../src/reference/swiglu.ts"
import { centralDifference, dot64, maxRelError } from "../src/reference/finite_diff.ts"
import { Rng } from "../src/util/rng.ts"

const ACTS = ["silu", "gelu", "gelu_tanh"] as const

Deno.test("reference swiglu backward matches central differences of the forward (max rel err ≤ 1e-3, eps 2^-10)", () => {
  const [N, F] = [3, 45]
  const rng = Rng.fromSeed(13)
  const g = Float32Array.from({ length: N * F }, () => rng.uniform(-6, 6))
  const u = Float32Array.from({ length: N * F }, () => rng.normal())
  const dh = Float32Array.from({ length: N * F }, () => rng.normal())
  for (const act of ACTS) {
    const ref = refBackward(dh, g, u, { N, F, act })
    const fdG = centralDifference((gg) => dot64(dh, refForward(gg, u, { N, F, act })), g)
    const fdU = centralDifference((uu) => dot64(dh, refForward(g, uu, { N, F, act })), u)
    const errs = { dg: maxRelError(ref.dg, fdG), du: maxRelError(ref.du, fdU) }
    console.log(`swiglu ${act} backward vs finite differences: ${JSON.stringify(errs)}`)
    assert.ok(errs.dg <= 1e-3 && errs.du <= 1e-3, JSON.stringify(errs))
  }
})

Deno.test("swiglu backward dg, du match the reference within 1e-4 relative (silu, gelu, gelu_tanh; separate and in place; scalar and vec4)", async () => {
  const ctx = await GpuContext.create()
  try {
    const rng = Rng.fromSeed(4)
    // 39 × 45 runs the scalar entries, 12 × 44 the vec4 ones (N·F % 4 = 0)
    for (const [N, F] of [[39, 45], [12, 44]]) {
      // g over ±12 reaches the saturated tails of every activation
      const g = Float32Array.from({ length: N * F }, () => rng.uniform(-12, 12))
      const u = Float32Array.from({ length: N * F }, () => rng.normal())
      const dh = Float32Array.from({ length: N * F }, () => rng.normal())
      const up = (label: string, a: Float32Array) => ctx.upload(label, a, "activations")
      const gb = up("g", g)
      const ub = up("u", u)
      const dhb = up("dh", dh)
      for (const act of ACTS) {
        const ref = refBackward(dh, g, u, { N, F, act })
        const dg = up("dg", new Float32Array(N * F).fill(NaN))
        const du = up("du", new Float32Array(N * F).fill(NaN))
        // in place: copies of g and u become dg and du
        const g2 = up("g2", g)
        const u2 = up("u2", u)
        const step = ctx.begin()
        swigluBackward(step, { dg, du, dh: dhb, g: gb, u: ub }, { N, F, act })
        swigluBackward(step, { dg: g2, du: u2, dh: dhb, g: g2, u: u2 }, { N, F, act })
        const [a, b, c, d] = (await ctx.read([dg, du, g2, u2], step)).map((x) => new Float32Array(x).subarray(0, N * F))
        for (const buf of [dg, du, g2, u2]) ctx.release(buf)
        const errs = { dg: maxRelError(a, ref.dg), du: maxRelError(b, ref.du) }
        console.log(
          `swiglu ${act} backward N=${N} F=${F}: dg ${errs.dg.toExponential(2)}, du ${errs.du.toExponential(2)}`,
        )
        assert.ok(errs.dg <= 1e-4 && errs.du <= 1e-4, JSON.stringify(errs))
        assert.ok(a.every(Number.isFinite) && b.every(Number.isFinite))
        // the in-place entry computes the same expressions: bit for bit equal
        assert.deepEqual(c, a)
        assert.deepEqual(d, b)
      }
    }
  } finally {
    ctx.destroy()
  }
})
