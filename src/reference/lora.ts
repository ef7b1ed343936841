/**
 * Plain reference for LoRA (spec §3), forward and backward, the oracle of shaders/lora.wgsl, plus the
 * counter-based random streams (dropout masks, router jitter) that the kernels regenerate on the device.
 *
 *   t  (N, R)   = drop(x) · Aᵀ                       drop(x) = m ⊙ x, m ∈ {0, 1/(1−p)} (mask given explicitly)
 *   Δy (N, out) = scale · t · Bᵀ                      scale = alpha / r (or alpha / √r with rsLoRA)
 * backward, for dy (N, out):
 *   dt (N, R)   = scale · dy · B
 *   dB (out, R) = scale · dyᵀ · t
 *   dA (R, in)  = dtᵀ · drop(x)
 *   dx (N, in)  = m ⊙ (dt · A)                        (the frozen W's dy · W is linear.ts linearBackwardInput)
 *
 * Random streams. A dropout mask or a jitter factor is a pure function of (seed, stream, row, col):
 *   h = pcg(pcg(pcg(pcg(seed) ^ stream) ^ row) ^ col)   (PCG-RXS-M-XS 32-bit output permutation, u32 arithmetic)
 * so the GPU regenerates exactly the host's mask in forward and backward without storing or uploading it.
 * `col` is the feature index; `row` is the token's key within its adapter's micro-batch (`maskRowKey`):
 *   row = r · 65536 + p     r = the sequence's index in the adapter's micro-batch (0 for its first row),
 *                            p = the token's position in its own sequence (right padding p = t, left padding
 *                                p = t − (T − len_r); u32 wrap-around on left pads, whose results are unused)
 * so an adapter draws the same masks whether it trains alone or packed with others (any row0, any padded T,
 * either pad side); T ≤ 65536 keeps the keys of different rows apart. Streams within one (step, layer,
 * adapter) seed are fixed by `STREAM`: plain LoRA uses the projection's index in PROJECTIONS, MixLoRA jitter
 * and per-expert dropout have their own (see `expertStream`).
 *   dropout: keep ⇔ h ≥ thr, thr = min(2³² − 1, round(p · 2³²)); kept values are multiplied by fround(1/(1−p))
 *   jitter:  factor = (1 − j) + 2j · u, u = (h >>> 8) · 2⁻²⁴ ∈ [0, 1)   (torch's uniform_(1 − j, 1 + j))
 * @module
 */
import { type Projection, PROJECTIONS } from "../model/types.ts"
import type { FfnProjection } from "../model/adapter.ts"

/** f32 storage for the oracle, f64 for finite-difference tests. */
export type Vec = Float32Array | Float64Array
export type Precision = "f32" | "f64"

/** A zeroed vector of the requested precision. */
export function alloc(n: number, precision: Precision = "f32"): Vec {
  return precision === "f64" ? new Float64Array(n) : new Float32Array(n)
}

// ---- counter-based random streams ------------------------------------------------------------------

/** PCG-RXS-M-XS 32-bit hash: s = v·747796405 + 2891336453; w = ((s >> ((s >> 28) + 4)) ^ s) · 277803737; w ^ (w >> 22). */
export function pcgHash(v: number): number {
  const s = (Math.imul(v >>> 0, 747796405) + 2891336453) >>> 0
  const w = Math.imul(((s >>> ((s >>> 28) + 4)) ^ s) >>> 0, 277803737) >>> 0
  return ((w >>> 22) ^ w) >>> 0
}

/** The u32 of (seed, stream, row, col); identical to `mask_hash` in shaders/lora_common.wgsl. */
export function maskHash(seed: number, stream: number, row: number, col: number): number {
  return pcgHash((pcgHash((pcgHash((pcgHash(seed) ^ stream) >>> 0) ^ row) >>> 0) ^ col) >>> 0)
}

/** Streams of one (step, layer, adapter) seed. */
export const STREAM = {
  /** plain LoRA on projection p: PROJECTIONS.indexOf(p) (0..6) */
  lora: (p: Projection): number => PROJECTIONS.indexOf(p),
  /** MixLoRA router jitter */
  jitter: 7,
} as const

/** Dropout stream of expert e's LoRA on FFN projection p: 8 + 3e + (gate 0, up 1, down 2). */
export function expertStream(e: number, p: FfnProjection): number {
  return 8 + 3 * e + (p === "gate_proj" ? 0 : p === "up_proj" ? 1 : 2)
}

/** Dropout parameters: keep threshold (u32) and the kept-value multiplier (an f32). */
export function dropoutParams(p: number): { thr: number; keepScale: number } {
  if (!(p >= 0 && p < 1)) throw new RangeError(`dropout p must be in [0, 1), got ${p}`)
  return { thr: Math.min(0xffffffff, Math.round(p * 2 ** 32)), keepScale: Math.fround(1 / (1 - p)) }
}

/** How an adapter's N = rows · T tokens sit in their sequences: the mask keys' inputs (`maskRowKey`). */
export interface MaskRows {
  /** tokens per row (padded sequence length), at most 65536 */
  readonly T: number
  readonly padSide: "left" | "right"
  /** (rows) real tokens of each of the adapter's sequences, in order */
  readonly lengths: ArrayLike<number>
}

/** Largest T the mask keys allow (positions take the low 16 bits of a key). */
export const MAX_MASK_T = 65536

/**
 * Mask row key (u32) of the adapter-local token i = r·T + t: r · 65536 + p with p its position in its sequence,
 * t (right padding) or t − (T − len_r) (left padding), in u32 arithmetic like `mask_key` in
 * shaders/lora_common.wgsl (a left pad's negative p wraps around; pads never use their masks).
 */
export function maskRowKey(i: number, rows: MaskRows): number {
  const { T } = rows
  const r = Math.floor(i / T), t = i % T
  const p = rows.padSide === "left" ? t - (T - rows.lengths[r]) : t
  return (r * 65536 + p) >>> 0
}

function checkRows(rows: MaskRows): number {
  const { T, lengths } = rows
  if (!(Number.isInteger(T) && T >= 1 && T <= MAX_MASK_T)) throw new RangeError(`mask rows: T=${T} not in [1, 65536]`)
  return lengths.length * T
}

/**
 * (N, cols) dropout multipliers for the adapter's N = rows · T tokens (keys `maskRowKey`): 0 (dropped) or
 * fround(1/(1−p)); null when p = 0 (no dropout, e.g. evaluation).
 */
export function dropoutMask(
  opts: { p: number; seed: number; stream: number; rows: MaskRows; cols: number },
): Float32Array | null {
  if (opts.p === 0) return null
  const { thr, keepScale } = dropoutParams(opts.p)
  const N = checkRows(opts.rows)
  const m = new Float32Array(N * opts.cols)
  for (let i = 0; i < N; i++) {
    const key = maskRowKey(i, opts.rows)
    for (let c = 0; c < opts.cols; c++) {
      m[i * opts.cols + c] = maskHash(opts.seed, opts.stream, key, c) >= thr ? keepScale : 0
    }
  }
  return m
}

/** Jitter endpoints as the kernel holds them: factor = lo + span · u. */
export function jitterParams(j: number): { lo: number; span: number } {
  if (!(j > 0 && j < 1)) throw new RangeError(`jitter must be in (0, 1), got ${j}`)
  return { lo: Math.fround(1 - j), span: Math.fround(2 * j) }
}

/** (N, D) router-input jitter factors U(1 − j, 1 + j) for the adapter's N = rows · T tokens (stream STREAM.jitter). */
export function jitterNoise(opts: { j: number; seed: number; rows: MaskRows; D: number }): Float32Array {
  const { lo, span } = jitterParams(opts.j)
  const N = checkRows(opts.rows)
  const n = new Float32Array(N * opts.D)
  for (let i = 0; i < N; i++) {
    const key = maskRowKey(i, opts.rows)
    for (let d = 0; d < opts.D; d++) {
      const u = (maskHash(opts.seed, STREAM.jitter, key, d) >>> 8) * 2 ** -24
      n[i * opts.D + d] = Math.fround(lo + Math.fround(span * u))
    }
  }
  return n
}

// ---- LoRA ------------------------------------------------------------------------------------------

export interface LoraDims {
  readonly N: number
  readonly inDim: number
  readonly outDim: number
  readonly R: number
  readonly scale: number
  readonly precision?: Precision
}

/** t (N, R) = (m ⊙ x) · Aᵀ for x (N, in), A (R, in), mask m (N, in) or null. */
export function loraShrink(x: Vec, a: Vec, mask: Vec | null, dims: LoraDims): Vec {
  const { N, inDim, R } = dims
  const t = alloc(N * R, dims.precision)
  for (let i = 0; i < N; i++) {
    for (let r = 0; r < R; r++) {
      let acc = 0
      for (let k = 0; k < inDim; k++) acc += a[r * inDim + k] * x[i * inDim + k] * (mask ? mask[i * inDim + k] : 1)
      t[i * R + r] = acc
    }
  }
  return t
}

/** Δy (N, out) = scale · t · Bᵀ for t (N, R), B (out, R). */
export function loraExpand(t: Vec, b: Vec, dims: LoraDims): Vec {
  const { N, outDim, R, scale } = dims
  const y = alloc(N * outDim, dims.precision)
  for (let i = 0; i < N; i++) {
    for (let o = 0; o < outDim; o++) {
      let acc = 0
      for (let r = 0; r < R; r++) acc += b[o * R + r] * t[i * R + r]
      y[i * outDim + o] = scale * acc
    }
  }
  return y
}

/** LoRA forward: the delta Δy = scale · B (A drop(x)) (add it to W x) and the saved t. */
export function loraForward(x: Vec, a: Vec, b: Vec, mask: Vec | null, dims: LoraDims): { dy: Vec; t: Vec } {
  const t = loraShrink(x, a, mask, dims)
  return { dy: loraExpand(t, b, dims), t }
}

/** LoRA backward: dA (R, in), dB (out, R) and the LoRA part of dx (N, in) for upstream dy (N, out). */
export function loraBackward(
  dy: Vec,
  x: Vec,
  a: Vec,
  b: Vec,
  t: Vec,
  mask: Vec | null,
  dims: LoraDims,
): { da: Vec; db: Vec; dx: Vec } {
  const { N, inDim, outDim, R, scale } = dims
  const dt = alloc(N * R, dims.precision)
  for (let i = 0; i < N; i++) {
    for (let r = 0; r < R; r++) {
      let acc = 0
      for (let o = 0; o < outDim; o++) acc += dy[i * outDim + o] * b[o * R + r]
      dt[i * R + r] = scale * acc
    }
  }
  const db = alloc(outDim * R, dims.precision)
  for (let o = 0; o < outDim; o++) {
    for (let r = 0; r < R; r++) {
      let acc = 0
      for (let i = 0; i < N; i++) acc += dy[i * outDim + o] * t[i * R + r]
      db[o * R + r] = scale * acc
    }
  }
  const da = alloc(R * inDim, dims.precision)
  for (let r = 0; r < R; r++) {
    for (let k = 0; k < inDim; k++) {
      let acc = 0
      for (let i = 0; i < N; i++) acc += dt[i * R + r] * x[i * inDim + k] * (mask ? mask[i * inDim + k] : 1)
      da[r * inDim + k] = acc
    }
  }
  const dx = alloc(N * inDim, dims.precision)
  for (let i = 0; i < N; i++) {
    for (let k = 0; k < inDim; k++) {
      let acc = 0
      for (let r = 0; r < R; r++) acc += dt[i * R + r] * a[r * inDim + k]
      dx[i * inDim + k] = acc * (mask ? mask[i * inDim + k] : 1)
    }
  }
  return { da, db, dx }
}
