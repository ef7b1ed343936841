/**
 * Reference optimisers (test oracle and CPU fallback) with torch semantics, computed in f32: every
 * arithmetic result is rounded with `Math.fround` in the same order as shaders/optimizer.wgsl, so the kernel
 * and this code agree to rounding (≤ 1e-6 relative after many steps).
 *
 * Step-dependent scalars (learning rate of this step, bias corrections) are computed once per step in f64 on
 * the host and rounded to f32 once, like torch computes them as Python floats; `adamwScalars` / `sgdScalars`
 * are shared with the GPU path (src/train/optimizer.ts) so both use the same f32 constants.
 *
 * AdamW (torch.optim.AdamW, amsgrad=false), t = 1, 2, ... the step number after incrementing:
 *   p ← p · (1 − lr·wd)                                   decoupled weight decay
 *   m ← m + (1 − β1)·(g − m)                              torch: exp_avg.lerp_(g, 1 − β1)
 *   v ← v·β2 + (1 − β2)·g²                                torch: exp_avg_sq.mul_(β2).addcmul_(g, g, 1 − β2)
 *   p ← p − (lr / (1 − β1^t)) · m / (√v / √(1 − β2^t) + ε)
 * SGD (torch.optim.SGD, dampening 0, nesterov false):
 *   g ← g + wd·p                                          L2 weight decay
 *   b ← g on the first step, else μ·b + g                 only when μ > 0 (else b = g, no buffer)
 *   p ← p − lr·b
 * Both zero the gradient afterwards, so that accumulation of the next step starts from 0.
 * @module
 */

const fr = Math.fround

/** Which optimiser an adapter uses (`optim` in the training config). */
export type OptimizerKind = "adamw" | "sgd"

/** Hyper-parameters of one adapter's optimiser; `optimizerHyper` fills in the torch defaults. */
export interface OptimizerHyper {
  readonly kind: OptimizerKind
  /** AdamW: decoupled (p ← p·(1 − lr·wd)); SGD: L2 (g ← g + wd·p). Default 0.01 for AdamW, 0 for SGD */
  readonly weightDecay: number
  /** SGD momentum μ ≥ 0 (0: plain SGD, no buffer); ignored by AdamW */
  readonly momentum: number
  /** AdamW β1, default 0.9 */
  readonly beta1: number
  /** AdamW β2, default 0.999 */
  readonly beta2: number
  /** AdamW ε, default 1e-8 */
  readonly eps: number
}

/** Fills torch defaults: weight decay 0.01 (AdamW) / 0 (SGD), momentum 0, betas (0.9, 0.999), eps 1e-8. */
export function optimizerHyper(opts: { kind: OptimizerKind } & Partial<Omit<OptimizerHyper, "kind">>): OptimizerHyper {
  const h: OptimizerHyper = {
    kind: opts.kind,
    weightDecay: opts.weightDecay ?? (opts.kind === "adamw" ? 0.01 : 0),
    momentum: opts.momentum ?? 0,
    beta1: opts.beta1 ?? 0.9,
    beta2: opts.beta2 ?? 0.999,
    eps: opts.eps ?? 1e-8,
  }
  const bad = (what: string) => new RangeError(`optimizer: ${what}`)
  if (h.kind !== "adamw" && h.kind !== "sgd") throw bad(`unknown kind ${JSON.stringify(h.kind)}`)
  if (!(h.weightDecay >= 0 && Number.isFinite(h.weightDecay))) throw bad(`weight decay ${h.weightDecay} must be ≥ 0`)
  if (!(h.momentum >= 0 && Number.isFinite(h.momentum))) throw bad(`momentum ${h.momentum} must be ≥ 0`)
  if (!(h.beta1 >= 0 && h.beta1 < 1) || !(h.beta2 >= 0 && h.beta2 < 1)) throw bad(`betas must be in [0, 1)`)
  if (!(h.eps >= 0 && Number.isFinite(h.eps))) throw bad(`eps ${h.eps} must be ≥ 0`)
  return h
}

/** f32 scalars of one AdamW step (what the kernel's uniform holds). */
export interface AdamwScalars {
  /** 1 − lr·wd */
  readonly decay: number
  /** lr / (1 − β1^t) */
  readonly stepSize: number
  /** √(1 − β2^t) */
  readonly bc2Sqrt: number
  /** 1 − β1, the lerp weight */
  readonly w1: number
  readonly beta2: number
  /** 1 − β2 */
  readonly w2: number
  readonly eps: number
}

/** AdamW scalars for step number `t` ≥ 1 at learning rate `lr`, computed in f64 and rounded to f32 once. */
export function adamwScalars(h: OptimizerHyper, lr: number, t: number): AdamwScalars {
  if (!Number.isInteger(t) || t < 1) throw new RangeError(`AdamW step number must be an integer ≥ 1, got ${t}`)
  const bc1 = 1 - h.beta1 ** t
  const bc2 = 1 - h.beta2 ** t
  return {
    decay: fr(1 - lr * h.weightDecay),
    stepSize: fr(lr / bc1),
    bc2Sqrt: fr(Math.sqrt(bc2)),
    w1: fr(1 - h.beta1),
    beta2: fr(h.beta2),
    w2: fr(1 - h.beta2),
    eps: fr(h.eps),
  }
}

/** f32 scalars of one SGD step. */
export interface SgdScalars {
  readonly lr: number
  readonly weightDecay: number
  readonly momentum: number
  /** true on the first step: the momentum buffer becomes g (torch clones the gradient) */
  readonly first: boolean
}

/** SGD scalars for step number `t` ≥ 1 at learning rate `lr`. */
export function sgdScalars(h: OptimizerHyper, lr: number, t: number): SgdScalars {
  if (!Number.isInteger(t) || t < 1) throw new RangeError(`SGD step number must be an integer ≥ 1, got ${t}`)
  return { lr: fr(lr), weightDecay: fr(h.weightDecay), momentum: fr(h.momentum), first: t === 1 }
}

/** One AdamW update in place over p, m, v; g is read and then zeroed. All arrays have the same length. */
export function adamwStep(
  p: Float32Array,
  g: Float32Array,
  m: Float32Array,
  v: Float32Array,
  s: AdamwScalars,
): void {
  const n = p.length
  if (g.length !== n || m.length !== n || v.length !== n) throw new RangeError("adamwStep: lengths differ")
  for (let i = 0; i < n; i++) {
    const gi = g[i]
    const pd = fr(p[i] * s.decay)
    const mi = fr(m[i] + fr(s.w1 * fr(gi - m[i])))
    const vi = fr(fr(v[i] * s.beta2) + fr(s.w2 * fr(gi * gi)))
    const denom = fr(fr(fr(Math.sqrt(vi)) / s.bc2Sqrt) + s.eps)
    p[i] = fr(pd - fr(s.stepSize * fr(mi / denom)))
    m[i] = mi
    v[i] = vi
    g[i] = 0
  }
}

/**
 * One SGD update in place; g is read and then zeroed. `buf` is the momentum buffer (required when
 * momentum > 0, ignored otherwise).
 */
export function sgdStep(p: Float32Array, g: Float32Array, buf: Float32Array | undefined, s: SgdScalars): void {
  const n = p.length
  if (g.length !== n) throw new RangeError("sgdStep: lengths differ")
  const useMomentum = s.momentum !== 0
  if (useMomentum && buf?.length !== n) throw new RangeError("sgdStep: momentum > 0 needs a buffer of the same length")
  for (let i = 0; i < n; i++) {
    let gi = fr(g[i] + fr(s.weightDecay * p[i]))
    if (useMomentum) {
      const b = s.first ? gi : fr(fr(s.momentum * buf![i]) + gi)
      buf![i] = b
      gi = b
    }
    p[i] = fr(p[i] - fr(s.lr * gi))
    g[i] = 0
  }
}

/** Optimiser state of one adapter: what a checkpoint stores to resume exactly. */
export interface OptimizerState {
  readonly kind: OptimizerKind
  /** optimizer steps taken so far (t of the last update; 0 before the first) */
  readonly step: number
  /** AdamW first moment (exp_avg) */
  readonly m?: Float32Array
  /** AdamW second moment (exp_avg_sq) */
  readonly v?: Float32Array
  /** SGD momentum buffer (only when momentum > 0) */
  readonly momentum?: Float32Array
}

/** A fresh (all-zero) state for `count` parameters. */
export function initialOptimizerState(h: OptimizerHyper, count: number): OptimizerState {
  if (h.kind === "adamw") return { kind: "adamw", step: 0, m: new Float32Array(count), v: new Float32Array(count) }
  return h.momentum !== 0 ? { kind: "sgd", step: 0, momentum: new Float32Array(count) } : { kind: "sgd", step: 0 }
}

/**
 * The CPU path of one optimizer step: updates `params` in place, zeroes `grads`, and returns the new state
 * (its arrays are updated in place too; `step` is incremented). `lr` is the scheduled rate of this step.
 */
export function optimizerStep(
  h: OptimizerHyper,
  state: OptimizerState,
  params: Float32Array,
  grads: Float32Array,
  lr: number,
): OptimizerState {
  if (state.kind !== h.kind) throw new RangeError(`optimizer state is ${state.kind}, hyper-parameters are ${h.kind}`)
  const t = state.step + 1
  if (h.kind === "adamw") {
    if (!state.m || !state.v) throw new RangeError("AdamW state needs m and v")
    adamwStep(params, grads, state.m, state.v, adamwScalars(h, lr, t))
  } else {
    sgdStep(params, grads, state.momentum, sgdScalars(h, lr, t))
  }
  return { ...state, step: t }
}
