import assert from "node:assert/strict"
import { GpuContext } from "../src/gpu/context.ts"
import { crossEntropyBackward, crossEntropyForward, crossEntropyGradScale } from "../src/kernels/cross_entropy.ts"
import { nextTokenTargets, packBatch } from "../src/reference/batch.ts"
import {
  crossEntropyBackward as refBackward,
  crossEntropyForward as refForward,
  crossEntropyGradScale as refGradScale,
  crossEntropyMean as refMean,
} from "../src/reference/cross_entropy.ts"
import { centralDifference, maxRelError } from "../src/reference/finite_diff.ts"
import { Rng } from "../src/util/rng.ts"

const V = 97

/** A padded batch of rows [13, 7, 1] (or `lengths`), its next-token targets and logits N(0, spread²). */
function makeCase(padSide: "left" | "right", seed: number, lengths = [13, 7, 1], spread = 8) {
  const rng = Rng.fromSeed(seed)
  const batch = packBatch(lengths.map((len) => Array.from({ length: len }, () => rng.nextInt(V))), { padSide })
  const N = batch.rows * batch.seqLen
  const logits = Float32Array.from({ length: N * V }, () => rng.normal() * spread)
  return { T: batch.seqLen, N, targets: nextTokenTargets(batch), logits }
}

Deno.test("reference cross-entropy backward matches central differences of Σ gscale · loss (max rel err ≤ 1e-3)", () => {
  for (const padSide of ["left", "right"] as const) {
    // spread 3, not 8: the f32 rounding of loss (~ulp(lse) / eps) is the finite differences' noise floor
    const { T, N, targets, logits } = makeCase(padSide, 15, [5, 3, 1], 3)
    // two adapters' ranges (rows 0 and 1..2), the second with an accumulation factor
    const ranges = [{ start: 0, end: T }, { start: T, end: N }]
    const gscale = refGradScale(targets, ranges, { factors: [1, 0.25] })
    const { lse } = refForward(logits, targets, { N, V })
    const dlogits = refBackward(gscale, logits, targets, lse, { N, V })
    // the loss the gradient belongs to: Σ_s factor_s · mean_s
    const loss = (x: Float32Array) => {
      const means = refMean(refForward(x, targets, { N, V }).loss, targets, ranges)
      return means[0].mean + 0.25 * means[1].mean
    }
    const err = maxRelError(dlogits, centralDifference(loss, logits))
    console.log(`cross-entropy backward vs finite differences, ${padSide}: ${err.toExponential(2)}`)
    assert.ok(err <= 1e-3, `${err}`)
  }
})

Deno.test("cross-entropy grad scales and dlogits match the reference within 1e-4 relative (whole, chunked in place; left/right)", async () => {
  const ctx = await GpuContext.create()
  try {
    for (const padSide of ["left", "right"] as const) {
      const { T, N, targets, logits } = makeCase(padSide, 6)
      // rows 0 | 1..2 as two adapters, the second at factor 0.5; row 2 (length 1) predicts nothing
      const ranges = [{ start: 0, end: T }, { start: T, end: N }]
      const factors = [1, 0.5]
      const refScale = refGradScale(targets, ranges, { factors })
      const { lse } = refForward(logits, targets, { N, V })
      const ref = refBackward(refScale, logits, targets, lse, { N, V })
      const up = (label: string, a: Float32Array | Int32Array | Uint32Array) => ctx.upload(label, a, "activations")
      const b = {
        targets: up("targets", targets),
        ranges: up("ranges", Uint32Array.from(ranges.flatMap((r) => [r.start, r.end]))),
        gscale: up("gscale", new Float32Array(N).fill(NaN)),
        lse: up("lse", new Float32Array(N).fill(NaN)),
        loss: up("loss", new Float32Array(N).fill(NaN)),
        logits: up("logits", logits),
        dlogits: up("dlogits", new Float32Array(N * V).fill(NaN)),
        // the same logits in two row chunks [0, 20) and [20, N), each overwritten by its gradient
        chunkA: up("logits_a", logits.slice(0, 20 * V)),
        chunkB: up("logits_b", logits.slice(20 * V)),
      }
      const step = ctx.begin()
      crossEntropyForward(step, { loss: b.loss, lse: b.lse, logits: b.logits, targets: b.targets }, { N, V })
      crossEntropyGradScale(step, { gscale: b.gscale, targets: b.targets, ranges: b.ranges }, { N, S: 2, factors })
      const common = { gscale: b.gscale, targets: b.targets, lse: b.lse }
      crossEntropyBackward(step, { ...common, dlogits: b.dlogits, logits: b.logits }, { N, V })
      crossEntropyBackward(step, { ...common, dlogits: b.chunkA, logits: b.chunkA }, { N: 20, V })
      crossEntropyBackward(step, { ...common, dlogits: b.chunkB, logits: b.chunkB }, { N: N - 20, V, N0: 20 })
      const [gs, dl, ca, cb] = (await ctx.read([b.gscale, b.dlogits, b.chunkA, b.chunkB], step)).map((x) =>
        new Float32Array(x)
      )
      for (const buf of Object.values(b)) ctx.release(buf)
      const got = dl.subarray(0, N * V)
      const chunked = new Float32Array(N * V)
      chunked.set(ca.subarray(0, 20 * V))
      chunked.set(cb.subarray(0, (N - 20) * V), 20 * V)
      const errs = { gscale: maxRelError(gs.subarray(0, N), refScale), dlogits: maxRelError(got, ref) }
      console.log(`cross-entropy backward ${padSide} N=${N} V=${V}: ${JSON.stringify(errs)}`)
      assert.ok(errs.gscale <= 1e-4 && errs.dlogits <= 1e-4, JSON.stringify(errs))
      // in place and chunked equals whole and separate, bit for bit; ignored positions are exactly 0
      assert.deepEqual(chunked, got)
      targets.forEach((t, n) => {
        if (t < 0) {
          assert.equal(gs[n], 0)
          assert.ok(got.subarray(n * V, (n + 1) * V).every((x) => x === 0), `position ${n}`)
        }
      })
      // a predicted row's gradient sums to 0 (softmax sums to 1): Σ_v dlogits = gscale · (1 − 1)
      for (let n = 0; n < N; n++) {
        let s = 0
        for (let v = 0; v < V; v++) s += got[n * V + v]
        assert.ok(Math.abs(s) < 1e-6, `row ${n} sums to ${s}`)
      }
    }
  } finally {
    ctx.destroy()
  }
})

Deno.test("cross-entropy grad scale: default factors are 1 / count; a range with nothing predicted gets zeros", async () => {
  const ctx = await GpuContext.create()
  try {
    const { T, N, targets } = makeCase("right", 8)
    const ranges = [{ start: 0, end: 2 * T }, { start: 2 * T, end: N }]
    const ref = refGradScale(targets, ranges)
    // rows 0..1 predict 12 + 6 positions
    assert.ok(ref.every((s, n) => s === (targets[n] >= 0 && n < 2 * T ? Math.fround(1 / 18) : 0)))
    const gscale = ctx.upload("gscale", new Float32Array(N).fill(NaN), "activations")
    const tb = ctx.upload("targets", targets, "activations")
    const rb = ctx.upload("ranges", Uint32Array.from(ranges.flatMap((r) => [r.start, r.end])), "activations")
    const step = ctx.begin()
    crossEntropyGradScale(step, { gscale, targets: tb, ranges: rb }, { N, S: 2 })
    const got = new Float32Array((await ctx.read([gscale], step))[0]).subarray(0, N)
    assert.ok(maxRelError(got, ref) <= 1e-4, `${maxRelError(got, ref)}`)
    assert.ok(got.subarray(2 * T).every((x) => x === 0))
  } finally {
    ctx.destroy()
  }
})
