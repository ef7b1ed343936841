/**
 * Plain reference for the gated FFN activation (oracle of shaders/swiglu.wgsl): h = act(g) ⊙ u with
 * act from config.json `hidden_act`:
 *   silu(x) = x · σ(x) = x / (1 + e^−x)
 *   gelu(x) = x/2 · (1 + erf(x/√2))                                  (HF "gelu", exact)
 *   gelu_tanh(x) = x/2 · (1 + tanh(√(2/π) · (x + 0.044715 x³)))      (HF "gelu_new", "gelu_pytorch_tanh")
 * @module
 */
import type { LlamaConfig } from "../model/types.ts"

/** Activation codes, shared with the ACT override constant of swiglu.wgsl. */
export const ACT = { silu: 0, gelu: 1, gelu_tanh: 2 } as const
export type ActName = keyof typeof ACT

/** The activation a `hidden_act` value means. */
export function activationOf(hiddenAct: LlamaConfig["hiddenAct"]): ActName {
  return hiddenAct === "silu" ? "silu" : hiddenAct === "gelu" ? "gelu" : "gelu_tanh"
}

/**
 * 1 + erf(z), from the Chebyshev fit of erfc (Numerical Recipes `erfcc`, fractional error < 1.2e-7):
 * erfc(|z|) = t · exp(−z² + P(t)), t = 1 / (1 + |z|/2); 1 + erf(z) = 2 − erfc(z) for z ≥ 0, erfc(|z|) for z < 0.
 * Written this way the left tail keeps its relative precision (no 1 − (1 − tiny)). The kernel uses the same fit.
 */
export function onePlusErf(z: number): number {
  const t = 1 / (1 + 0.5 * Math.abs(z))
  const poly = -1.26551223 +
    t * (1.00002368 +
        t * (0.37409196 +
            t * (0.09678418 +
                t *
                  (-0.18628806 +
                    t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))))
  const erfc = t * Math.exp(-z * z + poly)
  return z >= 0 ? 2 - erfc : erfc
}

/** The scalar activation. */
export function activate(x: number, act: ActName): number {
  if (act === "silu") return x / (1 + Math.exp(-x))
  if (act === "gelu") return 0.5 * x * onePlusErf(x * Math.SQRT1_2)
  return 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x * x * x)))
}

/**
 * The derivative of the activation:
 *   silu'(x) = σ(x) · (1 + x · (1 − σ(x)))
 *   gelu'(x) = (1 + erf(x/√2)) / 2 + x · φ(x),  φ(x) = e^(−x²/2) / √(2π)   (1 + erf from the same fit as the forward)
 *   gelu_tanh'(x) = (1 + tanh y) / 2 + x/2 · (1 − tanh² y) · √(2/π) · (1 + 3 · 0.044715 x²),  y = √(2/π)(x + 0.044715 x³)
 */
export function activateGrad(x: number, act: ActName): number {
  if (act === "silu") {
    const s = 1 / (1 + Math.exp(-x))
    return s * (1 + x * (1 - s))
  }
  if (act === "gelu") return 0.5 * onePlusErf(x * Math.SQRT1_2) + x * Math.exp(-0.5 * x * x) / Math.sqrt(2 * Math.PI)
  const c = Math.sqrt(2 / Math.PI)
  const t = Math.tanh(c * (x + 0.044715 * x * x * x))
  return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * c * (1 + 3 * 0.044715 * x * x)
}

/** h (N, F) = act(g) ⊙ u for g, u (N, F). */
export function swigluForward(
  g: Float32Array,
  u: Float32Array,
  dims: { N: number; F: number; act?: ActName },
): Float32Array {
  const act = dims.act ?? "silu"
  const h = new Float32Array(dims.N * dims.F)
  for (let i = 0; i < h.length; i++) h[i] = activate(g[i], act) * u[i]
  return h
}

/**
 * dg and du (N, F) of h = act(g) ⊙ u given dh (N, F): dg = dh ⊙ u ⊙ act'(g), du = dh ⊙ act(g).
 * Same argument order as `swigluForward`, dh first.
 */
export function swigluBackward(
  dh: Float32Array,
  g: Float32Array,
  u: Float32Array,
  dims: { N: number; F: number; act?: ActName },
): { dg: Float32Array; du: Float32Array } {
  const act = dims.act ?? "silu"
  const count = dims.N * dims.F
  const dg = new Float32Array(count)
  const du = new Float32Array(count)
  for (let i = 0; i < count; i++) {
    dg[i] = dh[i] * u[i] * activateGrad(g[i], act)
    du[i] = dh[i] * activate(g[i], act)
  }
  return { dg, du }
}
