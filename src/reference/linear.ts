/**
 * Plain f32 reference for `nn.Linear` without bias: y = x · Wᵀ.
 * The oracle for the WGSL matmul kernels (f32 and, given dequantised weights, int8).
 * @module
 */

/** y (M, N) = x (M, K) · w (N, K)ᵀ; accumulates in f64 per output so the oracle is tighter than the kernels. */
export function linear(x: Float32Array, w: Float32Array, m: number, n: number, k: number): Float32Array {
  const y = new Float32Array(m * n)
  for (let i = 0; i < m; i++) {
    const xo = i * k
    for (let j = 0; j < n; j++) {
      const wo = j * k
      let acc = 0
      for (let t = 0; t < k; t++) acc += x[xo + t] * w[wo + t]
      y[i * n + j] = acc
    }
  }
  return y
}

/** dX (M, K) = dY (M, N) · W (N, K): the input gradient of `linear` (the base weight gets none). */
export function linearBackwardInput(dy: Float32Array, w: Float32Array, m: number, n: number, k: number): Float32Array {
  const dx = new Float32Array(m * k)
  for (let i = 0; i < m; i++) {
    const acc = new Float64Array(k)
    for (let j = 0; j < n; j++) {
      const g = dy[i * n + j]
      if (g === 0) continue
      const wo = j * k
      for (let t = 0; t < k; t++) acc[t] += g * w[wo + t]
    }
    dx.set(acc, i * k)
  }
  return dx
}
