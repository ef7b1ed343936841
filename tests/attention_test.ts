import assert from "node:assert/strict"
import { GpuContext } from "../src/gpu/context.ts"
import { attentionForward } from "../src/kernels/attention.ts"
import { attentionDecode } from "../src/kernels/attention_decode.ts"
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

Deno.test("attention out and lse match the reference within 1e-4 relative: rows [13, 7, 1], H=6 KV=2, Dh 7/10/16/18", async () => {
  const ctx = await GpuContext.create()
  try {
    for (const padSide of ["left", "right"] as const) {
      // 7, 10 and 18 take the masked (Dh % 4 ≠ 0) path, 16 the vec4 one; T = 13 leaves a partial query block
      for (const Dh of [7, 10, 16, 18]) {
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

Deno.test("attention over 11 rows (T=21, mixed lengths; several rows share a SIMD group), Dh 8 and 9, within 1e-4", async () => {
  const ctx = await GpuContext.create()
  try {
    const lengths = [21, 3, 17, 1, 21, 9, 12, 20, 5, 21, 14]
    for (const [Dh, padSide] of [[8, "right"], [9, "left"], [8, "left"]] as const) {
      const e = await check(ctx, { rows: 11, seqLen: 21, lengths, padSide }, { H: 4, KV: 2, Dh }, 40 + Dh)
      console.log(`attention 11 rows Dh=${Dh} ${padSide}: out ${e.out.toExponential(2)}, lse ${e.lse.toExponential(2)}`)
      assert.ok(e.out <= 1e-4 && e.lse <= 1e-4, JSON.stringify(e))
      assert.ok(e.padOutZero)
    }
  } finally {
    ctx.destroy()
  }
})

Deno.test("decode attention = the reference's last query of each row, Dh 16 (vec4) and 7 (masked), NaN around", async () => {
  const ctx = await GpuContext.create()
  try {
    for (const Dh of [16, 7]) {
      const H = 4, KV = 2, maxLen = 11, slotCount = 4
      const pos = [10, 0, 6], slots = [3, 0, 2]
      const rows = pos.length, T = maxLen
      const rng = Rng.fromSeed(Dh)
      const randn = (n: number) => Float32Array.from({ length: n }, () => rng.normal())
      const q = randn(rows * T * H * Dh), k = randn(rows * T * KV * Dh), v = randn(rows * T * KV * Dh)
      const layout = { rows, seqLen: T, lengths: pos.map((p) => p + 1), padSide: "right" as const }
      const ref = refAttention(q, k, v, layout, { H, KV, Dh }).out
      // cache (slotCount, KV, maxLen, Dh): row r's tokens 0..pos[r] in slot slots[r], NaN elsewhere (never read)
      const kc = new Float32Array(slotCount * KV * maxLen * Dh).fill(NaN)
      const vc = new Float32Array(kc.length).fill(NaN)
      const qLast = new Float32Array(rows * H * Dh)
      const want = new Float32Array(rows * H * Dh)
      for (let r = 0; r < rows; r++) {
        for (let j = 0; j <= pos[r]; j++) {
          for (let g = 0; g < KV; g++) {
            const from = ((r * T + j) * KV + g) * Dh, to = ((slots[r] * KV + g) * maxLen + j) * Dh
            kc.set(k.subarray(from, from + Dh), to)
            vc.set(v.subarray(from, from + Dh), to)
          }
        }
        const o = (r * T + pos[r]) * H * Dh
        qLast.set(q.subarray(o, o + H * Dh), r * H * Dh)
        want.set(ref.subarray(o, o + H * Dh), r * H * Dh)
      }
      const up = (label: string, a: Float32Array | Uint32Array) => ctx.upload(label, a, "activations")
      const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC
      const bufs = {
        out: ctx.buffer({ label: "out", size: rows * H * Dh * 4, usage, category: "activations" }),
        scores: ctx.buffer({ label: "scores", size: rows * H * maxLen * 4, usage, category: "activations" }),
        q: up("q", qLast),
        kc: up("kc", kc),
        vc: up("vc", vc),
        slots: up("slots", Uint32Array.from(slots)),
        pos: up("pos", Uint32Array.from(pos)),
      }
      const step = ctx.begin()
      attentionDecode(step, bufs, { rows, H, KV, Dh, maxLen, slotCount, Lk: Math.max(...pos) + 1 })
      const [ob] = await ctx.read([bufs.out], step)
      for (const b of Object.values(bufs)) ctx.release(b)
      const e = relErr(new Float32Array(ob).subarray(0, rows * H * Dh), want)
      console.log(`decode attention Dh=${Dh}: out rel err ${e.toExponential(2)}`)
      assert.ok(e <= 1e-4, `Dh=${Dh}: ${e}`)
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
