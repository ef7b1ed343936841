/**
 * Symmetric per-output-row int8 quantisation of projection weights (spec §4):
 *
 *   scale[n] = max_k |W[n, k]| / 127        (1 when the row is all zeros)
 *   q[n, k]  = clamp(round(W[n, k] / scale[n]), −127, 127)
 *   W[n, k] ≈ q[n, k] · scale[n]
 *
 * Bit-exact with the torch recipe on float32 tensors:
 *   scale = w.abs().amax(1) / 127
 *   scale[scale == 0] = 1
 *   q = torch.round(w / scale[:, None]).clamp(-127, 127)
 * - Both divisions are f32 divisions: `Math.fround(a / b)` of two f32 values equals the correctly rounded
 *   f32 quotient (a double holds more than 2·24 + 2 bits, so rounding twice cannot differ).
 * - `round` is round-half-to-even, like `torch.round` — NOT `Math.round`, which rounds halves up
 *   (Math.round(-2.5) = -2, Math.round(2.5) = 3; torch gives -2 and 2).
 * @module
 */
import type { QuantizedMatrix } from "./types.ts"

/** Rounds to the nearest integer, ties to even (torch.round / numpy.round / IEEE roundTiesToEven). */
export function roundHalfEven(x: number): number {
  const f = Math.floor(x)
  const d = x - f // exact for the |x| ≤ 2^52 values used here
  if (d < 0.5) return f
  if (d > 0.5) return f + 1
  return f % 2 === 0 ? f : f + 1
}

/**
 * Quantises the row-major (rows, cols) matrix `w`. Throws RangeError on a size mismatch or a non-finite
 * weight (NaN / Inf have no int8 image; torch would silently produce garbage).
 */
export function quantizeRows(w: Float32Array, rows: number, cols: number): QuantizedMatrix {
  if (!Number.isSafeInteger(rows) || !Number.isSafeInteger(cols) || rows < 0 || cols < 0 || w.length !== rows * cols) {
    throw new RangeError(`quantizeRows: ${w.length} values do not form a (${rows}, ${cols}) matrix`)
  }
  const q = new Int8Array(rows * cols)
  const scale = new Float32Array(rows)
  for (let n = 0; n < rows; n++) {
    const base = n * cols
    let maxAbs = 0
    for (let k = 0; k < cols; k++) {
      const v = w[base + k]
      if (!Number.isFinite(v)) throw new RangeError(`quantizeRows: non-finite weight ${v} at row ${n}, column ${k}`)
      const a = Math.abs(v)
      if (a > maxAbs) maxAbs = a
    }
    // A zero scale (all-zero row, or max|W| so tiny that /127 underflows f32) becomes 1, so q = 0 and no 0/0.
    const s = Math.fround(maxAbs / 127) || 1
    scale[n] = s
    for (let k = 0; k < cols; k++) {
      const r = roundHalfEven(Math.fround(w[base + k] / s))
      q[base + k] = r > 127 ? 127 : r < -127 ? -127 : r
    }
  }
  return { rows, cols, q, scale }
}

/** W[n, k] = q[n, k] · scale[n], rounded to f32 (what a kernel multiplying in f32 computes). */
export function dequantizeRows(m: QuantizedMatrix): Float32Array {
  const out = new Float32Array(m.rows * m.cols)
  for (let n = 0; n < m.rows; n++) {
    const s = m.scale[n]
    const base = n * m.cols
    for (let k = 0; k < m.cols; k++) out[base + k] = m.q[base + k] * s
  }
  return out
}
