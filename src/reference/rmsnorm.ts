/**
 * Plain reference for RMSNorm (oracle of shaders/rmsnorm.wgsl), HF `LlamaRMSNorm` in f32:
 * rstd = rsqrt(mean(x²) + eps), y = w · (x · rstd).
 * @module
 */

/**
 * y (N, D) and rstd (N) for x (N, D), w (D). rstd is kept for the backward:
 * dx = rstd · (w⊙dy − x̂ · mean(x̂ ⊙ w⊙dy)) with x̂ = x · rstd.
 */
export function rmsnormForward(
  x: Float32Array,
  w: Float32Array,
  dims: { N: number; D: number; eps: number },
): { y: Float32Array; rstd: Float32Array } {
  const { N, D, eps } = dims
  const y = new Float32Array(N * D)
  const rstd = new Float32Array(N)
  for (let n = 0; n < N; n++) {
    const o = n * D
    let ss = 0
    for (let d = 0; d < D; d++) ss += x[o + d] * x[o + d]
    // variance in f32, + eps in f32, rsqrt in f32 (HF: torch.rsqrt(variance + eps) on an f32 tensor)
    const r = Math.fround(1 / Math.sqrt(Math.fround(Math.fround(ss / D) + eps)))
    rstd[n] = r
    for (let d = 0; d < D; d++) y[o + d] = Math.fround(x[o + d] * r) * w[d]
  }
  return { y, rstd }
}

/**
 * dx (N, D) of y = rmsnorm(x) · w given dy (N, D) and the saved rstd (N) (w is frozen: no dw). Per row, with
 * x̂ = x · rstd and c = mean_d(x̂ ⊙ w ⊙ dy):
 *   dx = rstd · (w ⊙ dy − x̂ · c) = rstd · (w ⊙ dy − x · rstd² · Σ_d(x ⊙ w ⊙ dy) / D)
 * (∂rstd/∂x_d = −x_d · rstd³ / D). Same argument order as `rmsnormForward`, dy first and rstd last.
 */
export function rmsnormBackward(
  dy: Float32Array,
  x: Float32Array,
  w: Float32Array,
  rstd: Float32Array,
  dims: { N: number; D: number },
): Float32Array {
  const { N, D } = dims
  const dx = new Float32Array(N * D)
  for (let n = 0; n < N; n++) {
    const o = n * D
    const r = rstd[n]
    let s = 0
    for (let d = 0; d < D; d++) s += x[o + d] * w[d] * dy[o + d]
    const c = Math.fround(Math.fround(r * r) * Math.fround(s / D))
    for (let d = 0; d < D; d++) dx[o + d] = Math.fround(r * Math.fround(w[d] * dy[o + d] - x[o + d] * c))
  }
  return dx
}
