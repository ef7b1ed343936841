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

/**
 * (Ntot) the gradient scale of every position: factor_s / count_s for a predicted position (target ≥ 0) of
 * range s, where count_s is the number of predicted positions in the range (the loss of an adapter's micro-batch
 * is the mean over them, spec §3) and factor_s (default 1) e.g. 1 / accumulation steps; 0 for ignored positions
 * and for positions outside every range.
 */
export function crossEntropyGradScale(
  targets: Int32Array,
  ranges: readonly { readonly start: number; readonly end: number }[],
  opts: { factors?: readonly number[] } = {},
): Float32Array {
  const gscale = new Float32Array(targets.length)
  ranges.forEach(({ start, end }, s) => {
    let count = 0
    for (let n = start; n < end; n++) if (targets[n] >= 0) count++
    const scale = Math.fround((opts.factors?.[s] ?? 1) / Math.max(count, 1))
    for (let n = start; n < end; n++) gscale[n] = targets[n] >= 0 ? scale : 0
  })
  return gscale
}

/**
 * dlogits (N, V) of L = Σ_n gscale_n · loss_n: for a predicted position (target_n ≥ 0)
 *   dlogits[n, v] = (exp(logits[n, v] − lse_n) − [v = target_n]) · gscale_n
 * and 0 for an ignored one. Same argument order as `crossEntropyForward`, upstream gradient first and the saved
 * lse last.
 */
export function crossEntropyBackward(
  gscale: Float32Array,
  logits: Float32Array,
  targets: Int32Array,
  lse: Float32Array,
  dims: { N: number; V: number },
): Float32Array {
  const { N, V } = dims
  const dlogits = new Float32Array(N * V)
  for (let n = 0; n < N; n++) {
    const t = targets[n]
    if (t < 0) continue
    const o = n * V
    for (let v = 0; v < V; v++) {
      const p = Math.fround(Math.exp(Math.fround(logits[o + v] - lse[n])))
      dlogits[o + v] = Math.fround((v === t ? p - 1 : p) * gscale[n])
    }
  }
  return dlogits
}
