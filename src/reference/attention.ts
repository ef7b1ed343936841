/**
 * Plain reference for causal grouped-query attention over packed padded rows (oracle of
 * shaders/attention.wgsl). For query i of row r and head h (kv head g = h / (H/KV)):
 *   s_j = (q_i · k_j) / sqrt(Dh) for the visible keys j: same row, start ≤ j ≤ i (real, causal)
 *   lse = log Σ_j exp(s_j),  out_i = Σ_j exp(s_j − lse) · v_j
 * Queries at pad positions output 0 and lse 0. The lse (rows, H, T) is kept for the backward:
 * P_ij = exp(s_ij − lse_i) recomputed from it, dS = P ⊙ (dP − rowsum(dO ⊙ O)).
 * @module
 */
import { type RowLayout, rowStart } from "./batch.ts"

/** out (N, H, Dh) and lse (rows, H, T) for q (N, H, Dh), k and v (N, KV, Dh), N = rows · T. */
export function attentionForward(
  q: Float32Array,
  k: Float32Array,
  v: Float32Array,
  layout: RowLayout,
  dims: { H: number; KV: number; Dh: number },
): { out: Float32Array; lse: Float32Array } {
  const { H, KV, Dh } = dims
  const { rows, seqLen: T } = layout
  if (H % KV !== 0) throw new RangeError(`attention: H=${H} is not a multiple of KV=${KV}`)
  const group = H / KV
  const scale = 1 / Math.sqrt(Dh)
  const out = new Float32Array(rows * T * H * Dh)
  const lse = new Float32Array(rows * H * T)
  const s = new Float64Array(T)
  const acc = new Float64Array(Dh)
  for (let r = 0; r < rows; r++) {
    const start = rowStart(layout, r)
    const end = start + layout.lengths[r]
    for (let h = 0; h < H; h++) {
      const g = Math.floor(h / group)
      for (let i = start; i < end; i++) {
        const qo = ((r * T + i) * H + h) * Dh
        let m = -Infinity
        for (let j = start; j <= i; j++) {
          const ko = ((r * T + j) * KV + g) * Dh
          let dot = 0
          for (let d = 0; d < Dh; d++) dot += q[qo + d] * k[ko + d]
          s[j] = dot * scale
          m = Math.max(m, s[j])
        }
        let l = 0
        acc.fill(0)
        for (let j = start; j <= i; j++) {
          const p = Math.exp(s[j] - m)
          l += p
          const vo = ((r * T + j) * KV + g) * Dh
          for (let d = 0; d < Dh; d++) acc[d] += p * v[vo + d]
        }
        for (let d = 0; d < Dh; d++) out[qo + d] = acc[d] / l
        lse[(r * H + h) * T + i] = m + Math.log(l)
      }
    }
  }
  return { out, lse }
}

/**
 * dq (N, H, Dh), dk and dv (N, KV, Dh) of L = Σ dout ⊙ out, from the forward's saved out and lse. For each real
 * query i of row r and head h (kv head g), over its visible keys j (start ≤ j ≤ i):
 *   P_ij = exp(s_ij − lse_i),  s_ij = (q_i · k_j) · scale
 *   Δ_i = dout_i · out_i  (= Σ_j P_ij dP_ij),  dP_ij = dout_i · v_j,  dS_ij = P_ij (dP_ij − Δ_i)
 *   dq_i = scale Σ_j dS_ij k_j,   dk_j += scale · dS_ij q_i,   dv_j += P_ij dout_i
 * dk and dv sum over the H/KV query heads that share kv head g. Pad queries contribute nothing (their dout is
 * never read) and get dq = 0; pad keys are visible to no query and get dk = dv = 0. Sums in f64.
 * Same argument order as `attentionForward`, dout first and the saved out, lse after the inputs.
 */
export function attentionBackward(
  dout: Float32Array,
  q: Float32Array,
  k: Float32Array,
  v: Float32Array,
  out: Float32Array,
  lse: Float32Array,
  layout: RowLayout,
  dims: { H: number; KV: number; Dh: number },
): { dq: Float32Array; dk: Float32Array; dv: Float32Array } {
  const { H, KV, Dh } = dims
  const { rows, seqLen: T } = layout
  if (H % KV !== 0) throw new RangeError(`attention: H=${H} is not a multiple of KV=${KV}`)
  const group = H / KV
  const scale = 1 / Math.sqrt(Dh)
  const dq = new Float64Array(rows * T * H * Dh)
  const dk = new Float64Array(rows * T * KV * Dh)
  const dv = new Float64Array(rows * T * KV * Dh)
  for (let r = 0; r < rows; r++) {
    const start = rowStart(layout, r)
    const end = start + layout.lengths[r]
    for (let h = 0; h < H; h++) {
      const g = Math.floor(h / group)
      for (let i = start; i < end; i++) {
        const qo = ((r * T + i) * H + h) * Dh
        const l = lse[(r * H + h) * T + i]
        let delta = 0
        for (let d = 0; d < Dh; d++) delta += dout[qo + d] * out[qo + d]
        for (let j = start; j <= i; j++) {
          const ko = ((r * T + j) * KV + g) * Dh
          let s = 0
          let dp = 0
          for (let d = 0; d < Dh; d++) {
            s += q[qo + d] * k[ko + d]
            dp += dout[qo + d] * v[ko + d]
          }
          const p = Math.exp(s * scale - l)
          const ds = p * (dp - delta) * scale
          for (let d = 0; d < Dh; d++) {
            dv[ko + d] += p * dout[qo + d]
            dq[qo + d] += ds * k[ko + d]
            dk[ko + d] += ds * q[qo + d]
          }
        }
      }
    }
  }
  return { dq: Float32Array.from(dq), dk: Float32Array.from(dk), dv: Float32Array.from(dv) }
}
