import assert from "node:assert/strict"
import { GpuContext } from "../src/gpu/context.ts"
import { residualForward } from "../src/kernels/residual.ts"
import { residualForward as refResidual } from "../src/reference/residual.ts"
import { Rng } from "../src/util/rng.ts"

Deno.test("residual x += y matches the reference (max rel err ≤ 1e-4; f32 adds are exact-rounded, so 0)", async () => {
  const ctx = await GpuContext.create()
  try {
    const rng = Rng.fromSeed(3)
    const [N, D] = [39, 45]
    const x = Float32Array.from({ length: N * D }, () => rng.normal())
    const y = Float32Array.from({ length: N * D }, () => rng.normal())
    const ref = refResidual(x, y)
    const xb = ctx.upload("x", x, "activations")
    const yb = ctx.upload("y", y, "activations")
    const step = ctx.begin()
    residualForward(step, { x: xb, y: yb }, { N, D })
    const got = new Float32Array((await ctx.read([xb], step))[0]).subarray(0, N * D)
    let err = 0
    let den = 0
    for (let i = 0; i < ref.length; i++) {
      err = Math.max(err, Math.abs(got[i] - ref[i]))
      den = Math.max(den, Math.abs(ref[i]))
    }
    console.log(`residual N=${N} D=${D}: rel err ${(err / den).toExponential(2)}`)
    assert.ok(err / den <= 1e-4)
    assert.deepEqual(got, ref)
  } finally {
    ctx.destroy()
  }
})
