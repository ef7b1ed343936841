/**
 * Central finite differences of the f32 reference forwards: the oracle that checks every reference backward.
 *
 * For a scalar loss L(x) (typically L = Σ dy ⊙ forward(x), summed in f64 over the f32 outputs) and an entry i:
 *   g_i ≈ (L(x + e·u_i) − L(x − e·u_i)) / (x⁺_i − x⁻_i)
 * where x⁺_i = f32(x_i + e) and x⁻_i = f32(x_i − e) are the values actually stored in the Float32Array, so the
 * f32 rounding of the perturbation does not bias the quotient. Truncation error is O(e² · L'''), rounding noise
 * ~ ulp(outputs touched by x_i) / e; with e = 2⁻¹⁰ (≈ 1e-3, a power of two so x ± e is exact for most x) both
 * stay well under the 1e-3 relative bound of the tests (metric: `maxRelError`).
 * @module
 */

/** Default step: 2⁻¹⁰ ≈ 9.8e-4. */
export const FD_EPS = 2 ** -10

/**
 * (len) central differences of `loss` with respect to x at `indices` (default: every entry); entries not in
 * `indices` are NaN. x is perturbed in place and restored bit for bit.
 */
export function centralDifference(
  loss: (x: Float32Array) => number,
  x: Float32Array,
  opts: { eps?: number; indices?: readonly number[] } = {},
): Float64Array {
  const eps = opts.eps ?? FD_EPS
  const g = new Float64Array(x.length).fill(NaN)
  const indices = opts.indices ?? Array.from({ length: x.length }, (_, i) => i)
  for (const i of indices) {
    const x0 = x[i]
    x[i] = x0 + eps
    const hi = x[i]
    const lp = loss(x)
    x[i] = x0 - eps
    const lo = x[i]
    const lm = loss(x)
    x[i] = x0
    g[i] = (lp - lm) / (hi - lo)
  }
  return g
}

/** Σ_i a_i · b_i in f64: the scalar loss L = ⟨dy, y⟩ whose gradient with respect to y is dy. */
export function dot64(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new RangeError(`dot64: lengths ${a.length} and ${b.length} differ`)
  let s = 0
  for (let i = 0; i < a.length; i++) s += a[i] * b[i]
  return s
}

/**
 * max_i |got_i − ref_i| / max_i |ref_i| over the entries where ref is not NaN (the error measure of every
 * kernel and gradient test). Returns NaN if got has a NaN where ref has a number.
 */
export function maxRelError(got: ArrayLike<number>, ref: ArrayLike<number>): number {
  if (got.length !== ref.length) throw new RangeError(`maxRelError: lengths ${got.length} and ${ref.length} differ`)
  let num = 0
  let den = 0
  for (let i = 0; i < ref.length; i++) {
    if (Number.isNaN(ref[i])) continue
    const e = Math.abs(got[i] - ref[i])
    if (Number.isNaN(e)) return NaN
    num = Math.max(num, e)
    den = Math.max(den, Math.abs(ref[i]))
  }
  return den === 0 ? num : num / den
}
