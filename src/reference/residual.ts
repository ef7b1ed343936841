/**
 * Plain reference for the residual add (oracle of shaders/residual.wgsl, which adds in place) and for the
 * gradient helpers of the same file.
 *
 * Backward of the residual z = x + y: dz passes through unchanged to both terms, dx = dz and dy = dz. There is no
 * kernel for it: the residual stream's gradient buffer is simply handed to the branch's backward, and the branch's
 * input gradient is added back into the stream (rmsnormBackward with `accumulate`, or `axpy` below).
 * @module
 */

/** x + y elementwise, as a new array (the kernel writes x += y). */
export function residualForward(x: Float32Array, y: Float32Array): Float32Array {
  if (x.length !== y.length) throw new RangeError(`residual: lengths ${x.length} and ${y.length} differ`)
  const out = new Float32Array(x.length)
  for (let i = 0; i < x.length; i++) out[i] = x[i] + y[i]
  return out
}

/** x + alpha · y elementwise in f32 (f32 product, then f32 sum), as a new array (the kernel writes x in place). */
export function axpy(x: Float32Array, y: Float32Array, alpha: number): Float32Array {
  if (x.length !== y.length) throw new RangeError(`axpy: lengths ${x.length} and ${y.length} differ`)
  const a = Math.fround(alpha)
  const out = new Float32Array(x.length)
  for (let i = 0; i < x.length; i++) out[i] = x[i] + Math.fround(a * y[i])
  return out
}

/** alpha · x elementwise in f32, as a new array (the kernel scales x in place). */
export function scale(x: Float32Array, alpha: number): Float32Array {
  const a = Math.fround(alpha)
  return x.map((v) => a * v)
}
