import assert from "node:assert/strict"
import { GpuContext } from "../src/gpu/context.ts"
import { rmsnormForward } from "../src/kernels/rmsnorm.ts"
import { rmsnormForward as refRmsnorm } from "../src/reference/rmsnorm.ts"
import { Rng } from "../src/util/rng.ts"

/** max|y − ref| / max|ref|: the error measure of every kernel test (bound 1e-4). */
function relErr(y: Float32Array, ref: Float32Array): number {
  let num = 0
  let den = 0
  for (let i = 0; i < ref.length; i++) {
    num = Math.max(num, Math.abs(y[i] - ref[i]))
    den = Math.max(den, Math.abs(ref[i]))
  }
  return num / den
}

Deno.test("rmsnorm y and rstd match the reference within 1e-4 relative, D = 45, 64 and 4099", async () => {
  const ctx = await GpuContext.create()
  try {
    const rng = Rng.fromSeed(2)
    for (const [N, D] of [[39, 45], [39, 64], [5, 4099]]) {
      // rows at different scales so rstd varies by orders of magnitude
      const x = Float32Array.from({ length: N * D }, (_, i) => rng.normal() * (1 + Math.floor(i / D) % 7) ** 2)
      const w = Float32Array.from({ length: D }, () => rng.normal(1, 0.3))
      const eps = 1e-5
      const ref = refRmsnorm(x, w, { N, D, eps })
      const xb = ctx.upload("x", x, "activations")
      const wb = ctx.upload("w", w, "base_other")
      const y = ctx.upload("y", new Float32Array(N * D).fill(NaN), "activations")
      const rstd = ctx.upload("rstd", new Float32Array(N).fill(NaN), "activations")
      const step = ctx.begin()
      rmsnormForward(step, { y, rstd, x: xb, w: wb }, { N, D, eps })
      const [yb, rb] = await ctx.read([y, rstd], step)
      const ey = relErr(new Float32Array(yb).subarray(0, N * D), ref.y)
      const er = relErr(new Float32Array(rb).subarray(0, N), ref.rstd)
      console.log(`rmsnorm N=${N} D=${D}: y rel err ${ey.toExponential(2)}, rstd rel err ${er.toExponential(2)}`)
      assert.ok(ey <= 1e-4, `y error ${ey}`)
      assert.ok(er <= 1e-4, `rstd error ${er}`)
    }
  } finally {
    ctx.destroy()
  }
})

Deno.test("reference rmsnorm: unit-rms rows map to w, and the output is scale invariant", () => {
  const D = 45
  const w = Float32Array.from({ length: D }, (_, d) => 0.5 + d / D)
  const x = Float32Array.from({ length: 2 * D }, (_, i) => ((i % D) % 2 ? 1 : -1) * (i < D ? 1 : 1000))
  const { y, rstd } = refRmsnorm(x, w, { N: 2, D, eps: 0 })
  assert.ok(Math.abs(rstd[0] - 1) < 1e-7 && Math.abs(rstd[1] - 1e-3) < 1e-9)
  for (let d = 0; d < D; d++) {
    assert.ok(Math.abs(Math.abs(y[d]) - w[d]) < 1e-6)
    assert.ok(Math.abs(y[D + d] - y[d]) < 1e-6)
  }
})
