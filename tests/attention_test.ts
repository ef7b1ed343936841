import assert from "node:assert/strict"
import { GpuContext } from "../src/gpu/context.ts"
import { attentionForward } from "../src/kernels/attention.ts"
import { lengthsU32, type RowLayout, rowStart } from "../src/reference/batch.ts"
import { attentionForward as refAttention } from "../src/reference/attention.ts"
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

async function check(
  ctx: GpuContext,
  layout: RowLayout,
  dims: { H: number; KV: number; Dh: number },
  seed: number,
): Promise<{ out: number; lse: number; padOutZero: boolean }> {
  const rng = Rng.fromSeed(seed)
  const { H, KV, Dh } = dims
  const { rows, seqLen: T } = layout
  const N = rows * T
  // q scaled up so that softmax rows are peaked, not near-uniform
  const q = Float32Array.from({ length: N * H * Dh }, () => rng.normal() * 2)
  const k = Float32Array.from({ length: N * KV * Dh }, () => rng.normal())
  const v = Float32Array.from({ length: N * KV * Dh }, () => rng.normal())
  const ref = refAttention(q, k, v, layout, dims)
  const bufs = {
    out: ctx.upload("out", new Float32Array(N * H * Dh).fill(NaN), "activations"),
    lse: ctx.upload("lse", new Float32Array(rows * H * T).fill(NaN), "activations"),
    q: ctx.upload("q", q, "activations"),
    k: ctx.upload("k", k, "activations"),
    v: ctx.upload("v", v, "activations"),
    lengths: ctx.upload("lengths", lengthsU32(layout), "activations"),
  }
  const step = ctx.begin()
  attentionForward(step, bufs, { rows, T, H, KV, Dh, padSide: layout.padSide })
  const [ob, lb] = await ctx.read([bufs.out, bufs.lse], step)
  for (const b of Object.values(bufs)) ctx.release(b)
  const out = new Float32Array(ob).subarray(0, N * H * Dh)
  const lse = new Float32Array(lb).subarray(0, rows * H * T)
  let padOutZero = true
  for (let r = 0; r < rows; r++) {
    const s = rowStart(layout, r)
    for (let t = 0; t < T; t++) {
      if (t >= s && t < s + layout.lengths[r]) continue
      const o = (r * T + t) * H * Dh
      if (out.subarray(o, o + H * Dh).some((x) => x !== 0)) padOutZero = false
    }
  }
  return { out: relErr(out, ref.out), lse: relErr(lse, ref.lse), padOutZero }
}

Deno.test("attention out and lse match the reference within 1e-4 relative: rows [13, 7, 1], H=6 KV=2, Dh 10/16/18", async () => {
  const ctx = await GpuContext.create()
  try {
    for (const padSide of ["left", "right"] as const) {
      // 10 and 18 take the masked (Dh % 4 ≠ 0) path, 16 the aligned one; T = 13 leaves a partial query block
      for (const Dh of [10, 16, 18]) {
        const layout = { rows: 3, seqLen: 13, lengths: [13, 7, 1], padSide }
        const e = await check(ctx, layout, { H: 6, KV: 2, Dh }, Dh)
        console.log(
          `attention ${padSide} Dh=${Dh}: out rel err ${e.out.toExponential(2)}, lse ${e.lse.toExponential(2)}`,
        )
        assert.ok(e.out <= 1e-4 && e.lse <= 1e-4, JSON.stringify(e))
        assert.ok(e.padOutZero, "pad queries must output 0")
      }
    }
  } finally {
    ctx.destroy()
  }
})

Deno.test("attention at T=97, Dh=128 and 130, H=4 KV=1, matches within 1e-4 relative (left and right padding)", async () => {
  const ctx = await GpuContext.create()
  try {
    for (const [Dh, padSide] of [[128, "left"], [130, "right"]] as const) {
      const layout = { rows: 2, seqLen: 97, lengths: [97, 42], padSide }
      const e = await check(ctx, layout, { H: 4, KV: 1, Dh }, 5)
      console.log(
        `attention T=97 Dh=${Dh} ${padSide}: out rel err ${e.out.toExponential(2)}, lse ${e.lse.toExponential(2)}`,
      )
      assert.ok(e.out <= 1e-4 && e.lse <= 1e-4, JSON.stringify(e))
      assert.ok(e.padOutZero)
    }
  } finally {
    ctx.destroy()
  }
})

Deno.test("reference attention: a row's first real query returns its own v, and lse equals the score", () => {
  const layout = { rows: 1, seqLen: 4, lengths: [2], padSide: "left" as const }
  const Dh = 4
  const q = Float32Array.from({ length: 4 * Dh }, (_, i) => i * 0.1)
  const k = Float32Array.from({ length: 4 * Dh }, (_, i) => 1 - i * 0.05)
  const v = Float32Array.from({ length: 4 * Dh }, (_, i) => i)
  const { out, lse } = refAttention(q, k, v, layout, { H: 1, KV: 1, Dh })
  // first real token is t = 2: only key 2 is visible
  assert.deepEqual(Array.from(out.subarray(2 * Dh, 3 * Dh)), [8, 9, 10, 11])
  let s = 0
  for (let d = 0; d < Dh; d++) s += q[2 * Dh + d] * k[2 * Dh + d]
  assert.ok(Math.abs(lse[2] - s / 2) < 1e-6)
  assert.deepEqual(Array.from(out.subarray(0, 2 * Dh)), new Array(2 * Dh).fill(0))
})
