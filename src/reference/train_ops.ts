/**
 * The frozen layers of the reference training step (src/reference/llama_train.ts) in each precision: f32 (the
 * per-family references themselves) and f64 (the same formulas in double precision, for finite-difference checks).
 * @module
 */
import { attentionBackward, attentionForward } from "./attention.ts"
import { type RowLayout, rowStart } from "./batch.ts"
import { crossEntropyBackward, crossEntropyForward, crossEntropyGradScale, crossEntropyMean } from "./cross_entropy.ts"
import { linear, linearBackwardInput } from "./linear.ts"
import type { Vec } from "./lora.ts"
import { residualForward } from "./residual.ts"
import { rmsnormBackward, rmsnormForward } from "./rmsnorm.ts"
import { ropeBackward, ropeForward, ropeInvFreq } from "./rope.ts"
import { activate, activateGrad, type ActName, swigluBackward, swigluForward } from "./swiglu.ts"
export interface Ops {
  add(x: Vec, y: Vec): Vec
  linear(x: Vec, w: Float32Array, M: number, N: number, K: number): Vec
  linearBack(dy: Vec, w: Float32Array, M: number, N: number, K: number): Vec
  rmsnorm(x: Vec, w: Float32Array, d: { N: number; D: number; eps: number }): { y: Vec; rstd: Vec }
  rmsnormBack(dy: Vec, x: Vec, w: Float32Array, rstd: Vec, d: { N: number; D: number }): Vec
  rope(x: Vec, pos: Int32Array, d: RopeDims): Vec
  ropeBack(dy: Vec, pos: Int32Array, d: RopeDims): Vec
  attention(q: Vec, k: Vec, v: Vec, layout: RowLayout, d: AttnDims): { out: Vec; lse: Vec }
  attentionBack(
    dout: Vec,
    q: Vec,
    k: Vec,
    v: Vec,
    out: Vec,
    lse: Vec,
    layout: RowLayout,
    d: AttnDims,
  ): { dq: Vec; dk: Vec; dv: Vec }
  swiglu(g: Vec, u: Vec, d: { N: number; F: number; act: ActName }): Vec
  swigluBack(dh: Vec, g: Vec, u: Vec, d: { N: number; F: number; act: ActName }): { dg: Vec; du: Vec }
  ce(logits: Vec, targets: Int32Array, d: { N: number; V: number }): { loss: Vec; lse: Vec }
  ceMean(loss: Vec, targets: Int32Array, ranges: { start: number; end: number }[]): { loss: number; count: number }[]
  gradScale(targets: Int32Array, ranges: { start: number; end: number }[], o: { factors: number[] }): Vec
  ceBack(gscale: Vec, logits: Vec, targets: Int32Array, lse: Vec, d: { N: number; V: number }): Vec
}
type RopeDims = { N: number; heads: number; Dh: number; theta: number }
type AttnDims = { H: number; KV: number; Dh: number }

/** f32: the layer references themselves (every Vec is a Float32Array in this precision). */
const f = (v: Vec) => v as Float32Array
export const OPS32: Ops = {
  add: (x, y) => residualForward(f(x), f(y)),
  linear: (x, w, M, N, K) => linear(f(x), w, M, N, K),
  linearBack: (dy, w, M, N, K) => linearBackwardInput(f(dy), w, M, N, K),
  rmsnorm: (x, w, d) => rmsnormForward(f(x), w, d),
  rmsnormBack: (dy, x, w, rstd, d) => rmsnormBackward(f(dy), f(x), w, f(rstd), d),
  rope: (x, pos, d) => ropeForward(f(x), pos, d),
  ropeBack: (dy, pos, d) => ropeBackward(f(dy), pos, d),
  attention: (q, k, v, layout, d) => attentionForward(f(q), f(k), f(v), layout, d),
  attentionBack: (dout, q, k, v, out, lse, layout, d) =>
    attentionBackward(f(dout), f(q), f(k), f(v), f(out), f(lse), layout, d),
  swiglu: (g, u, d) => swigluForward(f(g), f(u), d),
  swigluBack: (dh, g, u, d) => swigluBackward(f(dh), f(g), f(u), d),
  ce: (logits, targets, d) => crossEntropyForward(f(logits), targets, d),
  ceMean: (loss, targets, ranges) =>
    crossEntropyMean(f(loss), targets, ranges).map(({ mean, count }) => ({ loss: mean, count })),
  gradScale: (targets, ranges, o) => crossEntropyGradScale(targets, ranges, o),
  ceBack: (gscale, logits, targets, lse, d) => crossEntropyBackward(f(gscale), f(logits), targets, f(lse), d),
}

/** f64: the same formulas as the layer references, without any f32 rounding (finite-difference tests only). */
export const OPS64: Ops = {
  add: (x, y) => x.map((v, i) => v + y[i]),
  linear: (x, w, M, N, K) => {
    const y = new Float64Array(M * N)
    for (let i = 0; i < M; i++) {
      for (let j = 0; j < N; j++) {
        let acc = 0
        for (let t = 0; t < K; t++) acc += x[i * K + t] * w[j * K + t]
        y[i * N + j] = acc
      }
    }
    return y
  },
  linearBack: (dy, w, M, N, K) => {
    const dx = new Float64Array(M * K)
    for (let i = 0; i < M; i++) {
      for (let j = 0; j < N; j++) for (let t = 0; t < K; t++) dx[i * K + t] += dy[i * N + j] * w[j * K + t]
    }
    return dx
  },
  rmsnorm: (x, w, { N, D, eps }) => {
    const y = new Float64Array(N * D), rstd = new Float64Array(N)
    for (let n = 0; n < N; n++) {
      let ss = 0
      for (let d = 0; d < D; d++) ss += x[n * D + d] ** 2
      rstd[n] = 1 / Math.sqrt(ss / D + eps)
      for (let d = 0; d < D; d++) y[n * D + d] = x[n * D + d] * rstd[n] * w[d]
    }
    return { y, rstd }
  },
  // dx = r · (w ⊙ dy − x · r² · Σ_d(x ⊙ w ⊙ dy) / D)
  rmsnormBack: (dy, x, w, rstd, { N, D }) => {
    const dx = new Float64Array(N * D)
    for (let n = 0; n < N; n++) {
      const r = rstd[n]
      let s = 0
      for (let d = 0; d < D; d++) s += x[n * D + d] * w[d] * dy[n * D + d]
      for (let d = 0; d < D; d++) dx[n * D + d] = r * (w[d] * dy[n * D + d] - x[n * D + d] * r * r * s / D)
    }
    return dx
  },
  rope: (x, pos, d) => rotate64(x, pos, d, 1),
  ropeBack: (dy, pos, d) => rotate64(dy, pos, d, -1),
  attention: (q, k, v, layout, d) => attention64(q, k, v, layout, d, null).fw,
  attentionBack: (dout, q, k, v, _out, _lse, layout, d) => attention64(q, k, v, layout, d, dout).bw!,
  swiglu: (g, u, { act }) => g.map((gv, i) => activate(gv, act) * u[i]),
  swigluBack: (dh, g, u, { act }) => ({
    dg: dh.map((d, i) => d * u[i] * activateGrad(g[i], act)),
    du: dh.map((d, i) => d * activate(g[i], act)),
  }),
  ce: (logits, targets, { N, V }) => {
    const loss = new Float64Array(N), lse = new Float64Array(N)
    for (let n = 0; n < N; n++) {
      let m = -Infinity, s = 0
      for (let v = 0; v < V; v++) m = Math.max(m, logits[n * V + v])
      for (let v = 0; v < V; v++) s += Math.exp(logits[n * V + v] - m)
      lse[n] = m + Math.log(s)
      if (targets[n] >= 0) loss[n] = lse[n] - logits[n * V + targets[n]]
    }
    return { loss, lse }
  },
  ceMean: (loss, targets, ranges) =>
    ranges.map(({ start, end }) => {
      let sum = 0, count = 0
      for (let n = start; n < end; n++) {
        if (targets[n] < 0) continue
        sum += loss[n]
        count++
      }
      return { loss: count > 0 ? sum / count : 0, count }
    }),
  gradScale: (targets, ranges, { factors }) => {
    const g = new Float64Array(targets.length)
    ranges.forEach(({ start, end }, s) => {
      let count = 0
      for (let n = start; n < end; n++) if (targets[n] >= 0) count++
      for (let n = start; n < end; n++) g[n] = targets[n] >= 0 ? factors[s] / count : 0
    })
    return g
  },
  ceBack: (gscale, logits, targets, lse, { N, V }) => {
    const dl = new Float64Array(N * V)
    for (let n = 0; n < N; n++) {
      if (targets[n] < 0) continue
      for (let v = 0; v < V; v++) {
        dl[n * V + v] = (Math.exp(logits[n * V + v] - lse[n]) - (v === targets[n] ? 1 : 0)) * gscale[n]
      }
    }
    return dl
  },
}

/** rope.ts's rotation by sign · a_i, a_i = pos · inv_freq_i, in f64. */
function rotate64(x: Vec, pos: Int32Array, { N, heads, Dh, theta }: RopeDims, sign: 1 | -1): Vec {
  const half = Dh / 2, inv = ropeInvFreq(Dh, theta), out = new Float64Array(x.length)
  for (let n = 0; n < N; n++) {
    for (let i = 0; i < half; i++) {
      const c = Math.cos(pos[n] * inv[i]), s = sign * Math.sin(pos[n] * inv[i])
      for (let h = 0; h < heads; h++) {
        const o = (n * heads + h) * Dh
        out[o + i] = x[o + i] * c - x[o + i + half] * s
        out[o + i + half] = x[o + i + half] * c + x[o + i] * s
      }
    }
  }
  return out
}

/**
 * attention.ts in f64: forward (out, lse) and, given dout, the backward with P recomputed in place
 * (dS = P ⊙ (dP − Δ), Δ_i = dout_i · out_i, dq = scale · dS k, dk += scale · dSᵀ q, dv += Pᵀ dout).
 */
function attention64(q: Vec, k: Vec, v: Vec, layout: RowLayout, { H, KV, Dh }: AttnDims, dout: Vec | null) {
  const { rows, seqLen: T } = layout
  const group = H / KV, scale = 1 / Math.sqrt(Dh)
  const out = new Float64Array(rows * T * H * Dh), lse = new Float64Array(rows * H * T)
  const dq = new Float64Array(out.length), dk = new Float64Array(k.length), dv = new Float64Array(v.length)
  for (let r = 0; r < rows; r++) {
    const start = rowStart(layout, r), end = start + layout.lengths[r]
    for (let h = 0; h < H; h++) {
      const g = Math.floor(h / group)
      for (let i = start; i < end; i++) {
        const qo = ((r * T + i) * H + h) * Dh
        const ko = (j: number) => ((r * T + j) * KV + g) * Dh
        const s: number[] = []
        for (let j = start; j <= i; j++) {
          let dot = 0
          for (let d = 0; d < Dh; d++) dot += q[qo + d] * k[ko(j) + d]
          s.push(dot * scale)
        }
        const m = Math.max(...s)
        const l = m + Math.log(s.reduce((a, sj) => a + Math.exp(sj - m), 0))
        lse[(r * H + h) * T + i] = l
        for (let j = start; j <= i; j++) {
          for (let d = 0; d < Dh; d++) out[qo + d] += Math.exp(s[j - start] - l) * v[ko(j) + d]
        }
        if (!dout) continue
        let delta = 0
        for (let d = 0; d < Dh; d++) delta += dout[qo + d] * out[qo + d]
        for (let j = start; j <= i; j++) {
          const p = Math.exp(s[j - start] - l)
          let dp = 0
          for (let d = 0; d < Dh; d++) dp += dout[qo + d] * v[ko(j) + d]
          const ds = p * (dp - delta) * scale
          for (let d = 0; d < Dh; d++) {
            dv[ko(j) + d] += p * dout[qo + d]
            dq[qo + d] += ds * k[ko(j) + d]
            dk[ko(j) + d] += ds * q[qo + d]
          }
        }
      }
    }
  }
  return { fw: { out, lse }, bw: dout ? { dq, dk, dv } : null }
}
