/**
 * Learning-rate schedules with linear warmup, the formulas of HF transformers' `optimization.py`
 * (`get_constant_schedule_with_warmup`, `get_linear_schedule_with_warmup`, `get_cosine_schedule_with_warmup`
 * with num_cycles = 0.5). Like torch's `LambdaLR`, the k-th optimizer update (k = 0, 1, ...; k = the number of
 * updates already taken) uses `lr · λ(k)`, so with warmup the very first update has lr 0.
 *
 *   warmup (k < W):  λ = k / max(1, W)
 *   constant:        λ = 1
 *   linear:          λ = max(0, (T − k) / max(1, T − W))
 *   cosine:          progress = (k − W) / max(1, T − W);  λ = max(0, ½ · (1 + cos(π · 2 · 0.5 · progress)))
 *
 * W (warmup steps) comes from `warmup_steps`, or ⌈warmup_ratio · T⌉ (`warmupStepsFor` in
 * src/config/train_config.ts); T is the total number of optimizer steps of the adapter.
 *
 * Note: HF's plain `"constant"` scheduler (and MoE-PEFT's default) ignores warmup; here "constant" with W > 0
 * warms up like `constant_with_warmup` (identical when W = 0, the default).
 * @module
 */

export type SchedulerType = "constant" | "linear" | "cosine"

/** The schedule of one adapter. */
export interface Schedule {
  readonly type: SchedulerType
  /** peak learning rate (`lr` of the adapter) */
  readonly lr: number
  /** W ≥ 0 */
  readonly warmupSteps: number
  /** T ≥ 0: optimizer steps of the whole run (epochs × ⌈examples / batch_size⌉) */
  readonly totalSteps: number
}

/** The multiplier λ(k) of the k-th update (k ≥ 0 updates already taken). */
export function lrLambda(s: Schedule, k: number): number {
  if (!Number.isInteger(k) || k < 0) throw new RangeError(`schedule step must be an integer ≥ 0, got ${k}`)
  const W = s.warmupSteps
  const T = s.totalSteps
  if (!(W >= 0) || !(T >= 0)) throw new RangeError(`warmup (${W}) and total (${T}) steps must be ≥ 0`)
  if (k < W) return k / Math.max(1, W)
  switch (s.type) {
    case "constant":
      return 1
    case "linear":
      return Math.max(0, (T - k) / Math.max(1, T - W))
    case "cosine": {
      const progress = (k - W) / Math.max(1, T - W)
      return Math.max(0, 0.5 * (1 + Math.cos(Math.PI * 0.5 * 2 * progress)))
    }
    default:
      throw new RangeError(`unknown scheduler type ${JSON.stringify(s.type)}`)
  }
}

/** Learning rate of the k-th update: `lr · λ(k)` (f64; the optimizer rounds it to f32 once). */
export function learningRateAt(s: Schedule, k: number): number {
  return s.lr * lrLambda(s, k)
}
