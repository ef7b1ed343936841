/**
 * Plain reference for the residual add (oracle of shaders/residual.wgsl, which adds in place).
 * @module
 */

/** x + y elementwise, as a new array (the kernel writes x += y). */
export function residualForward(x: Float32Array, y: Float32Array): Float32Array {
  if (x.length !== y.length) throw new RangeError(`residual: lengths ${x.length} and ${y.length} differ`)
  const out = new Float32Array(x.length)
  for (let i = 0; i < x.length; i++) out[i] = x[i] + y[i]
  return out
}
