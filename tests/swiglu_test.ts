import assert from "node:assert/strict"
import { GpuContext } from "../src/gpu/context.ts"
import { swigluForward } from "../src/kernels/swiglu.ts"
import { activate, activationOf, swigluForward as refSwiglu } from "../src/reference/swiglu.ts"
import { Rng } from "../src/util/rng.ts"

function relErr(y: Float32Array, ref: Float32Array): number {
  let num = 0
  let den = 0
  for (let i = 0; i < ref.length; i++) {
    num = Math.max(num, Math.abs(y[i] - ref[i]))
    den = Math.max(den, Math.abs(ref[i]))
  }
  return num / den
}

Deno.test("swiglu h = act(g) ⊙ u matches the reference within 1e-4 relative for silu, gelu and gelu_tanh, scalar and vec4", async () => {
  const ctx = await GpuContext.create()
  try {
    const rng = Rng.fromSeed(4)
    // 39 × 45 runs the scalar entry, 12 × 44 the vec4 one (N·F % 4 = 0)
    for (const [N, F] of [[39, 45], [12, 44]]) {
      // g over ±12 reaches the saturated tails of every activation
      const g = Float32Array.from({ length: N * F }, () => rng.uniform(-12, 12))
      const u = Float32Array.from({ length: N * F }, () => rng.normal())
      const gb = ctx.upload("g", g, "activations")
      const ub = ctx.upload("u", u, "activations")
      for (const act of ["silu", "gelu", "gelu_tanh"] as const) {
        const h = ctx.upload("h", new Float32Array(N * F).fill(NaN), "activations")
        const step = ctx.begin()
        swigluForward(step, { h, g: gb, u: ub }, { N, F, act })
        const got = new Float32Array((await ctx.read([h], step))[0]).subarray(0, N * F)
        const ref = refSwiglu(g, u, { N, F, act })
        const err = relErr(got, ref)
        console.log(`swiglu ${act} N=${N} F=${F}: rel err ${err.toExponential(2)}`)
        assert.ok(err <= 1e-4, `${act}: ${err}`)
        assert.ok(got.every(Number.isFinite))
      }
    }
  } finally {
    ctx.destroy()
  }
})

Deno.test("reference activations: known values and config names", () => {
  assert.ok(Math.abs(activate(1, "silu") - 0.7310585786300049) < 1e-12)
  // gelu(1) = 0.5 (1 + erf(1/√2)) = 0.8413447460685429 (erfc fit: 1.2e-7 relative)
  assert.ok(Math.abs(activate(1, "gelu") - 0.8413447460685429) < 2e-7)
  // gelu(−3) = −1.5 · erfc(3/√2) = −0.00404969409489031: the left tail keeps its relative precision
  assert.ok(Math.abs(activate(-3, "gelu") / -0.00404969409489031 - 1) < 2e-7)
  assert.ok(Math.abs(activate(1, "gelu_tanh") - 0.8411919906082768) < 1e-12)
  assert.equal(activationOf("silu"), "silu")
  assert.equal(activationOf("gelu"), "gelu")
  assert.equal(activationOf("gelu_new"), "gelu_tanh")
  assert.equal(activationOf("gelu_pytorch_tanh"), "gelu_tanh")
})
