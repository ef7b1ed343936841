/**
 * Plain reference for the MixLoRA FFN (spec §3), forward and backward, in the efficient staged form the
 * kernels (shaders/moe_*.wgsl) implement, plus a naive per-expert form (`mixloraForwardNaive`) that checks
 * the algebra. Tokens x (N, D) are the post-attention RMSNorm output; W1 = gate_proj (F, D), W3 = up_proj
 * (F, D), W2 = down_proj (D, F) are frozen; expert e owns LoRA pairs (A, B) on the targeted FFN projections.
 *
 * Stages (s = LoRA scale, m· = dropout multipliers, n = jitter factors, S slots per token):
 *   1 router     logits = (x ⊙ n) · Gᵀ                                   (N, E)   n = 1 at evaluation
 *   2 softmax    P = softmax(logits)                                      (N, E)
 *   3 select     per token up to S (expert, weight) slots, in descending P (ties: lower expert first):
 *                  mixlora  top-K, w = P_e / Σ_sel P                      S = K
 *                  switch   top-1, w = P_e (not renormalised); per sequence (T tokens), a token beyond the
 *                           expert's `expert_capacity` real tokens is dropped: its MoE output is 0, so the
 *                           layer's residual add carries the hidden state through unchanged   S = 1
 *                  dynamic  sorted P while the exclusive prefix sum ≤ top_p (MoE-PEFT `_dynamic_top_p`),
 *                           w = P_e (not renormalised)                    S = E
 *                pad tokens are never routed (weights 0, output 0) and do not count toward capacity.
 *   4 base       g0 = x · W1ᵀ, u0 = x · W3ᵀ                              (N, F)   once for all tokens
 *   5 experts    for each routed (token i, slot j, expert e), only on routed tokens:
 *                  t1 = A1_e (m1 ⊙ x),  t3 = A3_e (m3 ⊙ x)               (R)
 *                  g = g0 + s B1_e t1,  u = u0 + s B3_e t3,  h = act(g) ⊙ u   (F)
 *                  t2 = A2_e (m2 ⊙ h)                                     (R)
 *   6 mix        mix_i = Σ_j w_ij h_ij                                    (N, F)
 *   7 down       y = mix · W2ᵀ + Σ_j w_ij s B2_e t2_ij                    (N, D)
 *                — W2 is linear, so Σ_j w_j (W2 + ΔW2_j) h_j = W2 (Σ_j w_j h_j) + Σ_j w_j ΔW2_j h_j:
 *                  the frozen down matmul runs once, on the routing-weighted mix.
 *
 * Interpretation decisions (MoE-PEFT / m-LoRA differences noted):
 * - jitter multiplies the router input only (spec §3); MoE-PEFT's "mixlora" block scales hidden_states in place,
 *   so its experts also see the jittered input. The factors are a pure function of (seed, token key, feature),
 *   the key being the token's sequence in the adapter's micro-batch and its position in that sequence
 *   (src/reference/lora.ts maskRowKey), so they do not depend on where the adapter sits in a packed batch.
 * - switch: capacity counts real tokens per sequence in position order (MoE-PEFT: cumsum over the sequence dim,
 *   pads included); a dropped token contributes 0, not MoE-PEFT's P_max · x, which the layer's residual add would
 *   turn into x + P_max · x — the "double residual" the spec rules out. Its weight gets no gradient.
 * - dynamic: MoE-PEFT's rule keeps sorted expert i iff the sum of the P before it is ≤ top_p (the first expert
 *   always); it differs from "smallest prefix reaching top_p" only when a partial sum equals top_p exactly.
 * - ties in P go to the lower expert index (torch.topk / sort leave them unspecified).
 * - the aux loss counts selections before capacity drops (MoE-PEFT's switch loss uses the argmax too) and only
 *   real tokens (spec; MoE-PEFT's dynamic and switch losses include pads).
 *
 * Load balancing (per adapter, over all its MoE layers and real tokens, `moeAuxLoss`):
 *   aux = coef · E · Σ_e f_e · Pbar_e,  f_e = C_e / T,  Pbar_e = Σ P_e / T  (C_e: tokens that selected e,
 *   before any capacity drop; T: real tokens summed over layers). Gradient through Pbar only:
 *   ∂aux/∂P_{t,e} = coef · E · C_e / T²  for every real token t of every layer.
 * @module
 */
import type { FfnProjection, MoeSpec } from "../model/adapter.ts"
import { activate, activationOf, type ActName, onePlusErf } from "./swiglu.ts"
import { alloc, type Precision, type Vec } from "./lora.ts"

/** sel code of a token that selected an expert but was dropped over capacity ("switch"). */
export const DROPPED = 0xffffffff

/** LoRA factors of one projection: A (R, in), B (out, R). */
export interface RefPair {
  readonly a: Vec
  readonly b: Vec
}

/** One MixLoRA layer: router G (E, D) and per expert the LoRA pairs of the targeted FFN projections. */
export interface MixloraLayer {
  readonly router: Vec
  readonly experts: readonly Partial<Record<FfnProjection, RefPair>>[]
}

/** The frozen FFN: w1 gate_proj (F, D), w2 down_proj (D, F), w3 up_proj (F, D). */
export interface FfnBase {
  readonly w1: Vec
  readonly w2: Vec
  readonly w3: Vec
}

export interface MixloraOptions {
  readonly moe: Pick<MoeSpec, "routing" | "numExperts" | "topK" | "topP" | "expertCapacity" | "actFn">
  /** N tokens, D hidden, F ffn, R rank, T tokens per sequence (capacity groups are i / T) */
  readonly N: number
  readonly D: number
  readonly F: number
  readonly R: number
  readonly T: number
  /** LoRA scale (loraScale(spec)) */
  readonly scale: number
  /** (N) 1 for real tokens, 0 for padding */
  readonly real: Uint8Array
  /** (N, D) router-input jitter factors (src/reference/lora.ts jitterNoise), or null (no jitter) */
  readonly noise?: Vec | null
  /**
   * masks[e][proj]: (N, in) dropout multipliers of expert e's LoRA input (src/reference/lora.ts dropoutMask,
   * stream expertStream(e, proj)), absent or null for none
   */
  readonly masks?: readonly Partial<Record<FfnProjection, Vec | null>>[] | null
  readonly precision?: Precision
}

/** Per-layer router statistics for the aux loss: T real tokens, C_e selections, Σ P_e over real tokens. */
export interface MoeStats {
  readonly tokens: number
  readonly count: Float64Array
  readonly sumP: Float64Array
}

/** What forward keeps for backward (token-major; slot j of token i at i·S + j). */
export interface MixloraSaved {
  readonly S: number
  /** (N, E) */
  readonly P: Vec
  /** (N, E) 0 not selected, j + 1 routed to slot j, DROPPED selected but over capacity */
  readonly sel: Uint32Array
  /** (N, S) expert of each slot, −1 for none */
  readonly expertOf: Int32Array
  /** (N, S) routing weight of each slot (0 for none) */
  readonly w: Vec
  /** (N, F) */
  readonly g0: Vec
  readonly u0: Vec
  /** (N, S, R) */
  readonly t1: Vec
  readonly t3: Vec
  readonly t2: Vec
  /** (N, S, F) expert hidden h = act(g) ⊙ u */
  readonly h: Vec
  readonly stats: MoeStats
}

/** Slots per token: K for "mixlora", 1 for "switch", E for "dynamic". */
export function moeSlots(moe: Pick<MoeSpec, "routing" | "numExperts" | "topK">): number {
  return moe.routing === "mixlora" ? moe.topK : moe.routing === "switch" ? 1 : moe.numExperts
}

/** act'(x) for the activations of swiglu.ts. */
export function activateGrad(x: number, act: ActName): number {
  if (act === "silu") {
    const sg = 1 / (1 + Math.exp(-x))
    return sg * (1 + x * (1 - sg))
  }
  if (act === "gelu") return 0.5 * onePlusErf(x * Math.SQRT1_2) + x * Math.exp(-0.5 * x * x) / Math.sqrt(2 * Math.PI)
  const c = Math.sqrt(2 / Math.PI)
  const th = Math.tanh(c * (x + 0.044715 * x * x * x))
  return 0.5 * (1 + th) + 0.5 * x * (1 - th * th) * c * (1 + 3 * 0.044715 * x * x)
}

/**
 * y (M, N) = x (M, K) · Wᵀ in the requested precision (linear.ts `linear` stores f32; the finite-difference
 * tests need f64 end to end). Same loop, f64 accumulation.
 */
function matT(x: ArrayLike<number>, w: ArrayLike<number>, M: number, N: number, K: number, prec?: Precision): Vec {
  const y = alloc(M * N, prec)
  for (let i = 0; i < M; i++) {
    for (let n = 0; n < N; n++) {
      let acc = 0
      for (let k = 0; k < K; k++) acc += x[i * K + k] * w[n * K + k]
      y[i * N + n] = acc
    }
  }
  return y
}

/** dx (M, K) = dy (M, N) · W (N, K), the input gradient of `matT` (linear.ts `linearBackwardInput`, any precision). */
function matBack(dy: ArrayLike<number>, w: ArrayLike<number>, M: number, N: number, K: number, prec?: Precision): Vec {
  const dx = alloc(M * K, prec)
  for (let i = 0; i < M; i++) {
    for (let k = 0; k < K; k++) {
      let acc = 0
      for (let n = 0; n < N; n++) acc += dy[i * N + n] * w[n * K + k]
      dx[i * K + k] = acc
    }
  }
  return dx
}

const pairOf = (layer: MixloraLayer, e: number, p: FfnProjection) => layer.experts[e]?.[p]
const maskOf = (o: MixloraOptions, e: number, p: FfnProjection) => o.masks?.[e]?.[p] ?? null

/** Stages 1–3: router probabilities, slots and statistics. */
export function mixloraRoute(
  x: Vec,
  router: Vec,
  o: MixloraOptions,
): Pick<MixloraSaved, "S" | "P" | "sel" | "expertOf" | "w" | "stats"> {
  const { N, D } = o
  const E = o.moe.numExperts
  const S = moeSlots(o.moe)
  const xr = o.noise ? x.map((v, i) => v * o.noise![i]) : x
  const logits = matT(xr, router, N, E, D, o.precision)
  const P = alloc(N * E, o.precision)
  for (let i = 0; i < N; i++) {
    let m = -Infinity
    for (let e = 0; e < E; e++) m = Math.max(m, logits[i * E + e])
    let z = 0
    for (let e = 0; e < E; e++) z += Math.exp(logits[i * E + e] - m)
    for (let e = 0; e < E; e++) P[i * E + e] = Math.exp(logits[i * E + e] - m) / z
  }
  const sel = new Uint32Array(N * E)
  const expertOf = new Int32Array(N * S).fill(-1)
  const w = alloc(N * S, o.precision)
  const round = o.precision === "f64" ? (v: number) => v : Math.fround
  const used = new Map<string, number>()
  for (let i = 0; i < N; i++) {
    if (!o.real[i]) continue
    // experts in descending P, ties to the lower index (a stable sort)
    const order = Array.from({ length: E }, (_, e) => e).sort((a, b) => P[i * E + b] - P[i * E + a] || a - b)
    let picks: number[]
    if (o.moe.routing === "mixlora") picks = order.slice(0, o.moe.topK)
    else if (o.moe.routing === "switch") picks = order.slice(0, 1)
    else {
      picks = []
      let cum = 0
      for (const e of order) {
        if (cum > o.moe.topP) break
        picks.push(e)
        cum = round(cum + P[i * E + e])
      }
    }
    let total = 0
    for (const e of picks) total = round(total + P[i * E + e])
    picks.forEach((e, j) => {
      sel[i * E + e] = j + 1
      expertOf[i * S + j] = e
      w[i * S + j] = o.moe.routing === "mixlora" ? P[i * E + e] / total : P[i * E + e]
    })
    if (o.moe.routing === "switch") {
      const key = `${Math.floor(i / o.T)}:${picks[0]}`
      const n = used.get(key) ?? 0
      if (n >= o.moe.expertCapacity) {
        sel[i * E + picks[0]] = DROPPED
        expertOf[i * S] = -1
        w[i * S] = 0
      } else used.set(key, n + 1)
    }
  }
  const count = new Float64Array(E)
  const sumP = new Float64Array(E)
  let tokens = 0
  for (let i = 0; i < N; i++) {
    if (!o.real[i]) continue
    tokens++
    for (let e = 0; e < E; e++) {
      if (sel[i * E + e] !== 0) count[e]++
      sumP[e] += P[i * E + e]
    }
  }
  return { S, P, sel, expertOf, w, stats: { tokens, count, sumP } }
}

/** Forward of the MixLoRA FFN in the staged form: y (N, D) and the saved activations. */
export function mixloraForward(
  x: Vec,
  base: FfnBase,
  layer: MixloraLayer,
  o: MixloraOptions,
): { y: Vec; saved: MixloraSaved } {
  const { N, D, F, R, scale: s } = o
  const act = activationOf(o.moe.actFn)
  const route = mixloraRoute(x, layer.router, o)
  const { S, expertOf, w } = route
  const g0 = matT(x, base.w1, N, F, D, o.precision)
  const u0 = matT(x, base.w3, N, F, D, o.precision)
  const [t1, t3, t2] = [0, 1, 2].map(() => alloc(N * S * R, o.precision))
  const h = alloc(N * S * F, o.precision)
  const mix = alloc(N * F, o.precision)
  const y = alloc(N * D, o.precision)
  for (let i = 0; i < N; i++) {
    for (let j = 0; j < S; j++) {
      const e = expertOf[i * S + j]
      if (e < 0) continue
      const p = i * S + j
      const shrinkIn = (proj: FfnProjection, t: Vec) => {
        const pair = pairOf(layer, e, proj)
        if (!pair) return
        const m = maskOf(o, e, proj)
        for (let r = 0; r < R; r++) {
          let acc = 0
          for (let d = 0; d < D; d++) acc += pair.a[r * D + d] * x[i * D + d] * (m ? m[i * D + d] : 1)
          t[p * R + r] = acc
        }
      }
      shrinkIn("gate_proj", t1)
      shrinkIn("up_proj", t3)
      const b1 = pairOf(layer, e, "gate_proj")?.b, b3 = pairOf(layer, e, "up_proj")?.b
      for (let f = 0; f < F; f++) {
        let g = g0[i * F + f], u = u0[i * F + f]
        if (b1) { for (let r = 0; r < R; r++) g += s * b1[f * R + r] * t1[p * R + r] }
        if (b3) { for (let r = 0; r < R; r++) u += s * b3[f * R + r] * t3[p * R + r] }
        h[p * F + f] = activate(g, act) * u
        mix[i * F + f] += w[p] * h[p * F + f]
      }
      const down = pairOf(layer, e, "down_proj")
      if (down) {
        const m = maskOf(o, e, "down_proj")
        for (let r = 0; r < R; r++) {
          let acc = 0
          for (let f = 0; f < F; f++) acc += down.a[r * F + f] * h[p * F + f] * (m ? m[i * F + f] : 1)
          t2[p * R + r] = acc
        }
      }
    }
  }
  const base2 = matT(mix, base.w2, N, D, F, o.precision)
  for (let i = 0; i < N; i++) {
    for (let d = 0; d < D; d++) {
      let acc = base2[i * D + d]
      for (let j = 0; j < S; j++) {
        const e = expertOf[i * S + j]
        const down = e >= 0 ? pairOf(layer, e, "down_proj") : undefined
        if (!down) continue
        let bt = 0
        for (let r = 0; r < R; r++) bt += down.b[d * R + r] * t2[(i * S + j) * R + r]
        acc += w[i * S + j] * s * bt
      }
      y[i * D + d] = acc
    }
  }
  return { y, saved: { ...route, g0, u0, t1, t3, t2, h } }
}

/**
 * The algebra check: y_i = Σ_j w_ij E_e(x_i) with each expert applied in full,
 * E_e(x) = W2 h + s B2 A2 (m2 ⊙ h), h = act(W1 x + s B1 A1 (m1 ⊙ x)) ⊙ (W3 x + s B3 A3 (m3 ⊙ x)).
 */
export function mixloraForwardNaive(x: Vec, base: FfnBase, layer: MixloraLayer, o: MixloraOptions): Vec {
  const { N, D, F, R, scale: s } = o
  const act = activationOf(o.moe.actFn)
  const { S, expertOf, w } = mixloraRoute(x, layer.router, o)
  const y = new Float64Array(N * D)
  const lora = (
    pair: RefPair | undefined,
    m: Vec | null,
    v: ArrayLike<number>,
    i: number,
    inDim: number,
    k: number,
  ) => {
    if (!pair) return 0
    let acc = 0
    for (let r = 0; r < R; r++) {
      let t = 0
      for (let c = 0; c < inDim; c++) t += pair.a[r * inDim + c] * v[c] * (m ? m[i * inDim + c] : 1)
      acc += pair.b[k * R + r] * t
    }
    return s * acc
  }
  for (let i = 0; i < N; i++) {
    const xi = x.subarray(i * D, (i + 1) * D)
    for (let j = 0; j < S; j++) {
      const e = expertOf[i * S + j]
      if (e < 0) continue
      const h = new Float64Array(F)
      for (let f = 0; f < F; f++) {
        let g = 0, u = 0
        for (let d = 0; d < D; d++) g += base.w1[f * D + d] * xi[d]
        for (let d = 0; d < D; d++) u += base.w3[f * D + d] * xi[d]
        g += lora(pairOf(layer, e, "gate_proj"), maskOf(o, e, "gate_proj"), xi, i, D, f)
        u += lora(pairOf(layer, e, "up_proj"), maskOf(o, e, "up_proj"), xi, i, D, f)
        h[f] = activate(g, act) * u
      }
      for (let d = 0; d < D; d++) {
        let out = 0
        for (let f = 0; f < F; f++) out += base.w2[d * F + f] * h[f]
        out += lora(pairOf(layer, e, "down_proj"), maskOf(o, e, "down_proj"), h, i, F, d)
        y[i * D + d] += w[i * S + j] * out
      }
    }
  }
  return y
}

/** Gradients of one MixLoRA layer: router (E, D), experts[e][proj] {a, b}, and dx (N, D). */
export interface MixloraGrads {
  readonly router: Vec
  readonly experts: Partial<Record<FfnProjection, RefPair>>[]
  readonly dx: Vec
}

/**
 * Backward of `mixloraForward` for upstream dy (N, D); `auxGrad` (E) = ∂aux/∂P_{t,e} for real tokens
 * (`moeAuxLoss(...).grad`), or null when the aux loss is off.
 */
export function mixloraBackward(
  dy: Vec,
  x: Vec,
  base: FfnBase,
  layer: MixloraLayer,
  saved: MixloraSaved,
  o: MixloraOptions,
  auxGrad: ArrayLike<number> | null,
): MixloraGrads {
  const { N, D, F, R, scale: s } = o
  const E = o.moe.numExperts
  const act = activationOf(o.moe.actFn)
  const { S, P, expertOf, w, g0, u0, t1, t3, t2, h } = saved
  const prec = o.precision
  const grads: Partial<Record<FfnProjection, RefPair>>[] = layer.experts.map((ex) =>
    Object.fromEntries(
      Object.entries(ex).map(([p, pair]) => [p, { a: alloc(pair!.a.length, prec), b: alloc(pair!.b.length, prec) }]),
    )
  )
  const dmix = matBack(dy, base.w2, N, D, F, prec)
  const dg0 = alloc(N * F, prec), du0 = alloc(N * F, prec)
  const dx = alloc(N * D, prec)
  const dw = alloc(N * S, prec)
  for (let i = 0; i < N; i++) {
    for (let j = 0; j < S; j++) {
      const e = expertOf[i * S + j]
      if (e < 0) continue
      const p = i * S + j
      const wp = w[p]
      // down LoRA: u2 = s B2ᵀ dy (unweighted), dt2 = w u2; dB2 += s w dy ⊗ t2; dw += t2 · u2
      const down = pairOf(layer, e, "down_proj")
      const u2 = new Float64Array(R)
      if (down) {
        const m2 = maskOf(o, e, "down_proj")
        for (let r = 0; r < R; r++) {
          let acc = 0
          for (let d = 0; d < D; d++) acc += down.b[d * R + r] * dy[i * D + d]
          u2[r] = s * acc
          dw[p] += t2[p * R + r] * u2[r]
        }
        const gd = grads[e].down_proj!
        for (let d = 0; d < D; d++) {
          for (let r = 0; r < R; r++) gd.b[d * R + r] += s * wp * dy[i * D + d] * t2[p * R + r]
        }
        for (let r = 0; r < R; r++) {
          for (let f = 0; f < F; f++) gd.a[r * F + f] += wp * u2[r] * h[p * F + f] * (m2 ? m2[i * F + f] : 1)
        }
      }
      const gate = pairOf(layer, e, "gate_proj"), up = pairOf(layer, e, "up_proj")
      const dg = new Float64Array(F), du = new Float64Array(F)
      for (let f = 0; f < F; f++) {
        let g = g0[i * F + f], u = u0[i * F + f]
        if (gate) { for (let r = 0; r < R; r++) g += s * gate.b[f * R + r] * t1[p * R + r] }
        if (up) { for (let r = 0; r < R; r++) u += s * up.b[f * R + r] * t3[p * R + r] }
        dw[p] += dmix[i * F + f] * h[p * F + f]
        let dh = wp * dmix[i * F + f]
        if (down) {
          const m2 = maskOf(o, e, "down_proj")
          let acc = 0
          for (let r = 0; r < R; r++) acc += down.a[r * F + f] * u2[r]
          dh += wp * acc * (m2 ? m2[i * F + f] : 1)
        }
        dg[f] = dh * u * activateGrad(g, act)
        du[f] = dh * activate(g, act)
        dg0[i * F + f] += dg[f]
        du0[i * F + f] += du[f]
      }
      const inBackward = (proj: "gate_proj" | "up_proj", pair: RefPair | undefined, dz: Float64Array, t: Vec) => {
        if (!pair) return
        const m = maskOf(o, e, proj)
        const gp = grads[e][proj]!
        for (let r = 0; r < R; r++) {
          let acc = 0
          for (let f = 0; f < F; f++) {
            acc += pair.b[f * R + r] * dz[f]
            gp.b[f * R + r] += s * dz[f] * t[p * R + r]
          }
          const dt = s * acc
          for (let d = 0; d < D; d++) {
            const mx = m ? m[i * D + d] : 1
            gp.a[r * D + d] += dt * x[i * D + d] * mx
            dx[i * D + d] += dt * pair.a[r * D + d] * mx
          }
        }
      }
      inBackward("gate_proj", gate, dg, t1)
      inBackward("up_proj", up, du, t3)
    }
  }
  // router: dw → dP (by strategy) + aux → softmax backward → dlogits → dG, dx
  const dRouter = alloc(E * D, prec)
  for (let i = 0; i < N; i++) {
    const dP = new Float64Array(E)
    if (o.moe.routing === "mixlora") {
      let total = 0, dot = 0
      for (let j = 0; j < S; j++) {
        const e = expertOf[i * S + j]
        if (e >= 0) total += P[i * E + e]
      }
      for (let j = 0; j < S; j++) if (expertOf[i * S + j] >= 0) dot += dw[i * S + j] * w[i * S + j]
      // w_j = P_j / Σ P_sel  ⇒  ∂L/∂P_j = (dw_j − Σ_k dw_k w_k) / Σ P_sel for selected j
      for (let j = 0; j < S; j++) {
        const e = expertOf[i * S + j]
        if (e >= 0) dP[e] = (dw[i * S + j] - dot) / total
      }
    } else {
      for (let j = 0; j < S; j++) {
        const e = expertOf[i * S + j]
        if (e >= 0) dP[e] = dw[i * S + j]
      }
    }
    if (auxGrad && o.real[i]) { for (let e = 0; e < E; e++) dP[e] += auxGrad[e] }
    let dot = 0
    for (let e = 0; e < E; e++) dot += P[i * E + e] * dP[e]
    for (let e = 0; e < E; e++) {
      const dl = P[i * E + e] * (dP[e] - dot)
      if (dl === 0) continue
      for (let d = 0; d < D; d++) {
        const n = o.noise ? o.noise[i * D + d] : 1
        dRouter[e * D + d] += dl * x[i * D + d] * n
        dx[i * D + d] += dl * layer.router[e * D + d] * n
      }
    }
  }
  const bx1 = matBack(dg0, base.w1, N, F, D, prec)
  const bx3 = matBack(du0, base.w3, N, F, D, prec)
  for (let k = 0; k < N * D; k++) dx[k] += bx1[k] + bx3[k]
  return { router: dRouter, experts: grads, dx }
}

/**
 * The load-balancing loss of one adapter over its layers' statistics: aux = coef · E · Σ_e C_e · ΣP_e / T²
 * (T = Σ tokens) and grad_e = ∂aux/∂P_{t,e} = coef · E · C_e / T² (0 when T = 0).
 */
export function moeAuxLoss(
  stats: readonly MoeStats[],
  opts: { coef: number; E: number },
): { aux: number; grad: Float64Array } {
  const { E, coef } = opts
  const T = stats.reduce((n, s) => n + s.tokens, 0)
  const grad = new Float64Array(E)
  if (T === 0) return { aux: 0, grad }
  let aux = 0
  for (let e = 0; e < E; e++) {
    const C = stats.reduce((n, s) => n + s.count[e], 0)
    const SP = stats.reduce((n, s) => n + s.sumP[e], 0)
    aux += C * SP
    grad[e] = coef * E * C / (T * T)
  }
  return { aux: coef * E * aux / (T * T), grad }
}
