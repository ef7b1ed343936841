/**
 * Plain reference for cross-entropy with ignored positions (oracle of shaders/cross_entropy.wgsl):
 *   lse_n = log Σ_v exp(logits[n, v])                      (max-subtracted)
 *   loss_n = lse_n − logits[n, target_n]  if target_n ≥ 0, else 0 (ignored: pad, last token, prompt)
 *   mean over a range of positions = Σ loss_n / #{n : target_n ≥ 0}   (0 when nothing is predicted)
 * lse is kept for the backward: dlogits[n, v] = dloss_n · (exp(logits[n, v] − lse_n) − [v = target_n]).
 * @module
 */

/** loss (N) and lse (N) for logits (N, V) and targets (N) (−1 = ignored). */
export function crossEntropyForward(
  logits: Float32Array,
  targets: Int32Array,
  dims: { N: number; V: number },
): { loss: Float32Array; lse: Float32Array } {
  const { N, V } = dims
  const loss = new Float32Array(N)
  const lse = new Float32Array(N)
  for (let n = 0; n < N; n++) {
    const o = n * V
    let m = -Infinity
    for (let v = 0; v < V; v++) m = Math.max(m, logits[o + v])
    let s = 0
    for (let v = 0; v < V; v++) s += Math.exp(logits[o + v] - m)
    const l = m + Math.log(s)
    lse[n] = l
    const t = targets[n]
    if (t >= V) throw new RangeError(`crossEntropy: target ${t} at ${n} not below V=${V}`)
    loss[n] = t >= 0 ? l - logits[o + t] : 0
  }
  return { loss, lse }
}

/** Mean loss and predicted-position count over positions [start, end) of each range. */
export function crossEntropyMean(
  loss: Float32Array,
  targets: Int32Array,
  ranges: readonly { readonly start: number; readonly end: number }[],
): { mean: number; count: number }[] {
  return ranges.map(({ start, end }) => {
    let sum = 0
    let count = 0
    for (let n = start; n < end; n++) {
      if (targets[n] < 0) continue
      sum += loss[n]
      count++
    }
    return { mean: count > 0 ? sum / count : 0, count }
  })
}
