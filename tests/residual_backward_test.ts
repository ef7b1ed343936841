import assert from "node:assert/strict"
import { GpuContext } from "../src/gpu/context.ts"
import { axpy, scale } from "../src/kernels/residual.ts"
import { axpy as refAxpy, residualForward, scale as refScale } from "../src/reference/residual.ts"
import { centralDifference, dot64, maxRelError } from "../src/reference/finite_diff.ts"
import { Rng } from "../src/util/rng.ts"

Deno.test("residual backward is a pass-through: central differences of ⟨dz, x + y⟩ give dz for x and y (≤ 1e-3)", () => {
  const rng = Rng.fromSeed(16)
  const x = Float32Array.from({ length: 45 }, () => rng.normal())
  const y = Float32Array.from({ length: 45 }, () => rng.normal())
  const dz = Float32Array.from({ length: 45 }, () => rng.normal())
  const ex = maxRelError(dz, centralDifference((xx) => dot64(dz, residualForward(xx, y)), x))
  const ey = maxRelError(dz, centralDifference((yy) => dot64(dz, residualForward(x, yy)), y))
  assert.ok(ex <= 1e-3 && ey <= 1e-3, JSON.stringify({ ex, ey }))
})

Deno.test("axpy x += α·y and scale x = α·x match the reference within 1e-4 relative", async () => {
  const ctx = await GpuContext.create()
  try {
    const rng = Rng.fromSeed(17)
    const count = 39 * 45
    const x = Float32Array.from({ length: count }, () => rng.normal())
    const y = Float32Array.from({ length: count }, () => rng.normal())
    const xb = ctx.upload("x", x, "activations")
    const xb2 = ctx.upload("x2", x, "activations")
    const yb = ctx.upload("y", y, "activations")
    const step = ctx.begin()
    axpy(step, { x: xb, y: yb }, { count, alpha: -0.375 })
    scale(step, { x: xb2 }, { count, alpha: 0.125 })
    const [a, s] = (await ctx.read([xb, xb2], step)).map((b) => new Float32Array(b).subarray(0, count))
    const errs = { axpy: maxRelError(a, refAxpy(x, y, -0.375)), scale: maxRelError(s, refScale(x, 0.125)) }
    console.log(`axpy / scale count=${count}: ${JSON.stringify(errs)}`)
    assert.ok(errs.axpy <= 1e-4 && errs.scale <= 1e-4, JSON.stringify(errs))
  } finally {
    ctx.destroy()
  }
})
