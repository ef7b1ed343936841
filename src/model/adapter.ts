/**
 * Adapters as typed data (spec §3). An adapter is plain LoRA on any of the seven projections, or MixLoRA:
 * a router plus E experts, each the frozen FFN with its own LoRA deltas on the targeted FFN projections,
 * with optional plain LoRA on the attention projections. Only `src/model/adapter_io.ts` translates to and
 * from checkpoint tensor names.
 * @module
 */
import type { Projection } from "./types.ts"

export const ATTENTION_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj"] as const
export const FFN_PROJECTIONS = ["gate_proj", "up_proj", "down_proj"] as const
export type FfnProjection = typeof FFN_PROJECTIONS[number]

export type RoutingStrategy = "mixlora" | "switch" | "dynamic"

/** Hyper-parameters that shape an adapter's weights and math (not its optimiser). */
export interface AdapterSpec {
  readonly name: string
  readonly kind: "lora" | "mixlora"
  /** R */
  readonly r: number
  readonly alpha: number
  /** scale = alpha / sqrt(r) instead of alpha / r */
  readonly useRslora: boolean
  /** applied to the LoRA input while training only */
  readonly dropout: number
  /** projections carrying LoRA; for MixLoRA the FFN ones are per expert */
  readonly targets: readonly Projection[]
  /** MixLoRA only (undefined for LoRA) */
  readonly moe?: MoeSpec
}

export interface MoeSpec {
  readonly routing: RoutingStrategy
  /** E */
  readonly numExperts: number
  /** K for "mixlora" (default 2); 1 for "switch" */
  readonly topK: number
  /** "dynamic": keep the smallest prefix of sorted P whose sum reaches top_p */
  readonly topP: number
  /** "switch": tokens per expert per sequence beyond which tokens skip the FFN (MoE output 0; pads not counted) */
  readonly expertCapacity: number
  readonly actFn: "silu" | "gelu" | "gelu_new" | "gelu_pytorch_tanh"
  readonly routerAuxLossCoef: number
  readonly routerInitRange: number
  readonly jitterNoise: number
}

/** LoRA factors of one projection: A (R, in), B (out, R), row-major f32. */
export interface LoraPair {
  readonly a: Float32Array
  readonly b: Float32Array
}

/** Host weights of one adapter, per layer. */
export interface AdapterLayerWeights {
  /** plain LoRA on projections (attention for MixLoRA; any of the seven for LoRA) */
  readonly lora: Partial<Record<Projection, LoraPair>>
  /** MixLoRA: router (E, D) */
  readonly router?: Float32Array
  /** MixLoRA: experts[e][proj] for the targeted FFN projections */
  readonly experts?: readonly Partial<Record<FfnProjection, LoraPair>>[]
}

export interface AdapterWeights {
  readonly spec: AdapterSpec
  readonly layers: readonly AdapterLayerWeights[]
}

/** alpha / r, or alpha / sqrt(r) with rsLoRA. */
export const loraScale = (s: Pick<AdapterSpec, "alpha" | "r" | "useRslora">): number =>
  s.useRslora ? s.alpha / Math.sqrt(s.r) : s.alpha / s.r

/** (in, out) sizes of projection `p` for a model config. */
export function projectionShape(
  p: Projection,
  c: { hiddenSize: number; intermediateSize: number; numHeads: number; numKvHeads: number; headDim: number },
): { inDim: number; outDim: number } {
  const D = c.hiddenSize, F = c.intermediateSize, q = c.numHeads * c.headDim, kv = c.numKvHeads * c.headDim
  switch (p) {
    case "q_proj":
      return { inDim: D, outDim: q }
    case "k_proj":
    case "v_proj":
      return { inDim: D, outDim: kv }
    case "o_proj":
      return { inDim: q, outDim: D }
    case "gate_proj":
    case "up_proj":
      return { inDim: D, outDim: F }
    case "down_proj":
      return { inDim: F, outDim: D }
  }
}
