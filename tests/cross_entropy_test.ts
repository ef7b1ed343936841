import assert from "node:assert/strict"
import { GpuContext } from "../src/gpu/context.ts"
import { crossEntropyForward, crossEntropyMean } from "../src/kernels/cross_entropy.ts"
import { nextTokenTargets, packBatch } from "../src/reference/batch.ts"
import { crossEntropyForward as refCE, crossEntropyMean as refMean } from "../src/reference/cross_entropy.ts"
import { Rng } from "../src/util/rng.ts"

/** max|y − ref| / max|ref| (bound 1e-4). */
function relErr(y: Float32Array, ref: Float32Array): number {
  let num = 0
  let den = 0
  for (let i = 0; i < ref.length; i++) {
    num = Math.max(num, Math.abs(y[i] - ref[i]))
    den = Math.max(den, Math.abs(ref[i]))
  }
  return num / den
}

const V = 97

Deno.test("cross-entropy loss, lse and per-range means match the reference within 1e-4 relative (left/right padding)", async () => {
  const ctx = await GpuContext.create()
  try {
    const rng = Rng.fromSeed(6)
    for (const padSide of ["left", "right"] as const) {
      const rows = [13, 7, 1].map((len) => Array.from({ length: len }, () => rng.nextInt(V)))
      const batch = packBatch(rows, { padSide })
      const N = batch.rows * batch.seqLen
      const targets = nextTokenTargets(batch)
      // logits with a wide spread (±20) so that the max subtraction matters
      const logits = Float32Array.from({ length: N * V }, () => rng.normal() * 8)
      const ref = refCE(logits, targets, { N, V })
      // ranges: all positions, row 0 alone, rows 1..2 (row 2 has length 1: nothing predicted), and row 2 alone
      const T = batch.seqLen
      const ranges = [{ start: 0, end: N }, { start: 0, end: T }, { start: T, end: N }, { start: 2 * T, end: N }]
      const refMeans = refMean(ref.loss, targets, ranges)
      const bufs = {
        loss: ctx.upload("loss", new Float32Array(N).fill(NaN), "activations"),
        lse: ctx.upload("lse", new Float32Array(N).fill(NaN), "activations"),
        targets: ctx.upload("targets", targets, "activations"),
      }
      const logitsBuf = ctx.upload("logits", logits, "activations")
      // the same logits in two row chunks [0, 20) and [20, N), as a caller computing lm_head in slices would
      const chunkA = ctx.upload("logits_a", logits.subarray(0, 20 * V), "activations")
      const chunkB = ctx.upload("logits_b", logits.subarray(20 * V), "activations")
      const loss2 = ctx.upload("loss2", new Float32Array(N).fill(NaN), "activations")
      const lse2 = ctx.upload("lse2", new Float32Array(N).fill(NaN), "activations")
      const rangeBuf = ctx.upload("ranges", Uint32Array.from(ranges.flatMap((r) => [r.start, r.end])), "activations")
      const out = ctx.upload("out", new Float32Array(2 * ranges.length).fill(NaN), "activations")
      const step = ctx.begin()
      crossEntropyForward(step, { ...bufs, logits: logitsBuf }, { N, V })
      crossEntropyForward(step, { loss: loss2, lse: lse2, targets: bufs.targets, logits: chunkA }, { N: 20, V })
      crossEntropyForward(step, { loss: loss2, lse: lse2, targets: bufs.targets, logits: chunkB }, {
        N: N - 20,
        V,
        N0: 20,
      })
      crossEntropyMean(step, { out, loss: bufs.loss, targets: bufs.targets, ranges: rangeBuf }, { N, S: ranges.length })
      const [lb, eb, l2b, e2b, ob] = await ctx.read([bufs.loss, bufs.lse, loss2, lse2, out], step)
      const loss = new Float32Array(lb).subarray(0, N)
      const lse = new Float32Array(eb).subarray(0, N)
      const el = relErr(loss, ref.loss)
      const ee = relErr(lse, ref.lse)
      const means = new Float32Array(ob)
      const em = relErr(
        Float32Array.from(refMeans.map((_, s) => means[2 * s])),
        Float32Array.from(refMeans.map((m) => m.mean)),
      )
      console.log(
        `cross-entropy ${padSide} N=${N} V=${V}: loss ${el.toExponential(2)}, lse ${ee.toExponential(2)}, means ${
          em.toExponential(2)
        }`,
      )
      assert.ok(el <= 1e-4 && ee <= 1e-4 && em <= 1e-4, JSON.stringify({ el, ee, em }))
      assert.deepEqual(refMeans.map((_, s) => means[2 * s + 1]), refMeans.map((m) => m.count))
      assert.equal(refMeans[3].count, 0)
      assert.equal(means[6], 0, "a range with nothing predicted has mean 0")
      // ignored positions have loss exactly 0; the chunked run equals the whole run bit for bit
      targets.forEach((t, n) => t < 0 && assert.equal(loss[n], 0))
      assert.deepEqual(new Float32Array(l2b).subarray(0, N), loss)
      assert.deepEqual(new Float32Array(e2b).subarray(0, N), lse)
    }
  } finally {
    ctx.destroy()
  }
})

Deno.test("reference cross-entropy: uniform logits give log V; nextTokenTargets shifts within rows only", () => {
  const { loss, lse } = refCE(new Float32Array(2 * V).fill(3), Int32Array.of(5, -1), { N: 2, V })
  assert.ok(Math.abs(loss[0] - Math.log(V)) < 1e-6 && loss[1] === 0 && Math.abs(lse[1] - (3 + Math.log(V))) < 1e-5)
  const left = packBatch([[11, 12, 13], [21]], { padSide: "left", padId: 0, seqLen: 4 })
  assert.deepEqual(Array.from(nextTokenTargets(left)), [-1, 12, 13, -1, -1, -1, -1, -1])
  const right = packBatch([[11, 12, 13], [21, 22]], { padSide: "right", padId: 0 })
  assert.deepEqual(Array.from(nextTokenTargets(right)), [12, 13, -1, 22, -1, -1])
})
