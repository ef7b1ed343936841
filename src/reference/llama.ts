/**
 * The whole LLaMA forward in plain f32 TypeScript, composed from the layer references: the oracle for
 * the GPU model and the CPU fallback. Same semantics as HF `LlamaForCausalLM` (spec §2):
 *   x = embed[tokens]
 *   per layer: x += o_proj(attn(rope(q_proj(n1)), rope(k_proj(n1)), v_proj(n1))),  n1 = rmsnorm(x, input_norm)
 *              x += down_proj(act(gate_proj(n2)) ⊙ up_proj(n2)),                   n2 = rmsnorm(x, post_attention_norm)
 *   logits = lm_head(rmsnorm(x, norm))
 * over a packed padded batch; pad positions compute don't-care values and never influence real tokens.
 * @module
 */
import type { BatchDescriptor, LlamaConfig, LlamaWeights } from "../model/types.ts"
import { attentionForward } from "./attention.ts"
import { nextTokenTargets, tokenPositions } from "./batch.ts"
import { crossEntropyForward, crossEntropyMean } from "./cross_entropy.ts"
import { embeddingForward } from "./embedding.ts"
import { linear } from "./linear.ts"
import { residualForward } from "./residual.ts"
import { rmsnormForward } from "./rmsnorm.ts"
import { ropeForward } from "./rope.ts"
import { activationOf, swigluForward } from "./swiglu.ts"

/** logits (N, V), N = rows · T, for every position of the batch (pad positions included, don't-care). */
export function referenceForward(config: LlamaConfig, weights: LlamaWeights, batch: BatchDescriptor): Float32Array {
  const { hiddenSize: D, intermediateSize: F, numHeads: H, numKvHeads: KV, headDim: Dh, vocabSize: V } = config
  const N = batch.rows * batch.seqLen
  const eps = config.rmsNormEps
  const theta = config.ropeTheta
  const act = activationOf(config.hiddenAct)
  const positions = tokenPositions(batch)
  let x = embeddingForward(weights.embed.data, batch.tokens, { N, D, V })
  for (const layer of weights.layers) {
    const p = layer.proj
    const n1 = rmsnormForward(x, layer.inputNorm.data, { N, D, eps }).y
    const q = ropeForward(linear(n1, p.q_proj.data, N, H * Dh, D), positions, { N, heads: H, Dh, theta })
    const k = ropeForward(linear(n1, p.k_proj.data, N, KV * Dh, D), positions, { N, heads: KV, Dh, theta })
    const v = linear(n1, p.v_proj.data, N, KV * Dh, D)
    const a = attentionForward(q, k, v, batch, { H, KV, Dh }).out
    x = residualForward(x, linear(a, p.o_proj.data, N, D, H * Dh))
    const n2 = rmsnormForward(x, layer.postAttentionNorm.data, { N, D, eps }).y
    const g = linear(n2, p.gate_proj.data, N, F, D)
    const u = linear(n2, p.up_proj.data, N, F, D)
    x = residualForward(x, linear(swigluForward(g, u, { N, F, act }), p.down_proj.data, N, D, F))
  }
  const final = rmsnormForward(x, weights.norm.data, { N, D, eps }).y
  return linear(final, weights.lmHead.data, N, V, D)
}

/**
 * Mean next-token cross-entropy over every predicted position of the batch (target = next real token of
 * the same row, see `nextTokenTargets`), and how many positions were predicted.
 */
export function referenceLoss(
  config: LlamaConfig,
  weights: LlamaWeights,
  batch: BatchDescriptor,
): { loss: number; count: number } {
  const N = batch.rows * batch.seqLen
  const logits = referenceForward(config, weights, batch)
  const targets = nextTokenTargets(batch)
  const { loss } = crossEntropyForward(logits, targets, { N, V: config.vocabSize })
  const [{ mean, count }] = crossEntropyMean(loss, targets, [{ start: 0, end: N }])
  return { loss: mean, count }
}
