import assert from "node:assert/strict"
import { GpuContext } from "../src/gpu/context.ts"
import { rmsnormBackward } from "../src/kernels/rmsnorm.ts"
import { rmsnormBackward as refBackward, rmsnormForward as refForward } from "../src/reference/rmsnorm.ts"
import { centralDifference, dot64, maxRelError } from "../src/reference/finite_diff.ts"
import { Rng } from "../src/util/rng.ts"

/** x (N, D) with rows at scales 1, 2, 3, ... (rstd varies by row), w around 1, dy normal. */
function makeCase(N: number, D: number, seed: number) {
  const rng = Rng.fromSeed(seed)
  const x = Float32Array.from({ length: N * D }, (_, i) => rng.normal() * (1 + Math.floor(i / D) % 3))
  const w = Float32Array.from({ length: D }, () => rng.normal(1, 0.3))
  const dy = Float32Array.from({ length: N * D }, () => rng.normal())
  return { x, w, dy }
}

Deno.test("reference rmsnorm backward matches central differences of the forward (max rel err ≤ 1e-3, eps 2^-10)", () => {
  const [N, D, eps] = [5, 45, 1e-5]
  const { x, w, dy } = makeCase(N, D, 12)
  const { rstd } = refForward(x, w, { N, D, eps })
  const dx = refBackward(dy, x, w, rstd, { N, D })
  const fd = centralDifference((xx) => dot64(dy, refForward(xx, w, { N, D, eps }).y), x)
  const err = maxRelError(dx, fd)
  console.log(`rmsnorm backward vs finite differences N=${N} D=${D}: ${err.toExponential(2)}`)
  assert.ok(err <= 1e-3, `${err}`)
})

Deno.test("rmsnorm backward dx (= and +=) matches the reference within 1e-4 relative, D = 45, 64 and 4099", async () => {
  const ctx = await GpuContext.create()
  try {
    for (const [N, D] of [[39, 45], [39, 64], [5, 4099]]) {
      const eps = 1e-5
      const { x, w, dy } = makeCase(N, D, D)
      const { rstd } = refForward(x, w, { N, D, eps })
      const ref = refBackward(dy, x, w, rstd, { N, D })
      // the running gradient of the residual stream that `accumulate` adds to
      const rng = Rng.fromSeed(1)
      const prior = Float32Array.from({ length: N * D }, () => rng.normal())
      const refAcc = prior.map((p, i) => p + ref[i])
      const up = (label: string, a: Float32Array) => ctx.upload(label, a, "activations")
      const b = { dy: up("dy", dy), x: up("x", x), w: up("w", w), rstd: up("rstd", rstd) }
      const dx = up("dx", new Float32Array(N * D).fill(NaN))
      const dxAcc = up("dx_acc", prior)
      const step = ctx.begin()
      rmsnormBackward(step, { dx, ...b }, { N, D })
      rmsnormBackward(step, { dx: dxAcc, ...b }, { N, D, accumulate: true })
      const [g, gAcc] = (await ctx.read([dx, dxAcc], step)).map((a) => new Float32Array(a).subarray(0, N * D))
      for (const buf of [dx, dxAcc, ...Object.values(b)]) ctx.release(buf)
      const e = maxRelError(g, ref)
      const eAcc = maxRelError(gAcc, refAcc)
      console.log(`rmsnorm backward N=${N} D=${D}: dx rel err ${e.toExponential(2)}, += ${eAcc.toExponential(2)}`)
      assert.ok(e <= 1e-4 && eAcc <= 1e-4, JSON.stringify({ e, eAcc }))
    }
  } finally {
    ctx.destroy()
  }
})

Deno.test("reference rmsnorm backward: dx is orthogonal to x when w = 1 (scale invariance of y)", () => {
  // y(λx) = y(x) for all λ > 0 (eps = 0), so the directional derivative along x vanishes: x · dx = 0
  const [N, D] = [3, 45]
  const { x, dy } = makeCase(N, D, 5)
  const w = new Float32Array(D).fill(1)
  const { rstd } = refForward(x, w, { N, D, eps: 0 })
  const dx = refBackward(dy, x, w, rstd, { N, D })
  for (let n = 0; n < N; n++) {
    const xs = x.subarray(n * D, (n + 1) * D)
    const gs = dx.subarray(n * D, (n + 1) * D)
    const scale = Math.sqrt(dot64(xs, xs) * dot64(gs, gs))
    assert.ok(Math.abs(dot64(xs, gs)) < 1e-5 * scale, `row ${n}: x·dx = ${dot64(xs, gs)}`)
  }
})
