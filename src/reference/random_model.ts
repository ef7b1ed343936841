/**
 * Deterministic random LLaMA weights for tests (any shape, including odd ones like D = 45).
 * Scales keep activations O(1) through the layers: projections N(0, 1/in), embeddings N(0, 1),
 * norm weights 1 + N(0, 0.1²) so that a test notices a norm applied without its weight.
 * @module
 */
import type { HostTensor, LayerWeights, LlamaConfig, LlamaWeights, Projection } from "../model/types.ts"
import { Rng } from "../util/rng.ts"

/** A small config for tests; `overrides` replace fields (headDim defaults to D / H). */
export function tinyLlamaConfig(overrides: Partial<LlamaConfig> = {}): LlamaConfig {
  const base = {
    vocabSize: 97,
    hiddenSize: 48,
    intermediateSize: 80,
    numLayers: 2,
    numHeads: 6,
    numKvHeads: 2,
    rmsNormEps: 1e-5,
    ropeTheta: 10000,
    maxPositionEmbeddings: 512,
    tieWordEmbeddings: false,
    hiddenAct: "silu" as const,
    bosTokenId: 1,
    eosTokenId: 2,
    padTokenId: 0,
    ...overrides,
  }
  return { ...base, headDim: overrides.headDim ?? base.hiddenSize / base.numHeads }
}

function normal(rng: Rng, shape: number[], std: number, mean = 0): HostTensor {
  const data = new Float32Array(shape.reduce((a, b) => a * b, 1))
  for (let i = 0; i < data.length; i++) data[i] = rng.normal(mean, std)
  return { shape, data }
}

/**
 * Random weights for `config`, the same for the same seed. With `tieWordEmbeddings` the lm_head is the
 * embedding object itself.
 */
export function randomLlama(config: LlamaConfig, seed: number): LlamaWeights {
  const rng = Rng.fromSeed(seed)
  const { hiddenSize: D, intermediateSize: F, numHeads: H, numKvHeads: KV, headDim: Dh, vocabSize: V } = config
  const shapes: Record<Projection, [number, number]> = {
    q_proj: [H * Dh, D],
    k_proj: [KV * Dh, D],
    v_proj: [KV * Dh, D],
    o_proj: [D, H * Dh],
    gate_proj: [F, D],
    up_proj: [F, D],
    down_proj: [D, F],
  }
  const layers: LayerWeights[] = []
  for (let l = 0; l < config.numLayers; l++) {
    const lr = rng.fork(`layer${l}`)
    const proj = Object.fromEntries(
      Object.entries(shapes).map(([name, [out, inp]]) => [name, normal(lr, [out, inp], 1 / Math.sqrt(inp))]),
    ) as Record<Projection, HostTensor>
    layers.push({ inputNorm: normal(lr, [D], 0.1, 1), postAttentionNorm: normal(lr, [D], 0.1, 1), proj })
  }
  const embed = normal(rng.fork("embed"), [V, D], 1)
  const norm = normal(rng.fork("norm"), [D], 0.1, 1)
  const lmHead = config.tieWordEmbeddings ? embed : normal(rng.fork("lm_head"), [V, D], 1 / Math.sqrt(D))
  return { embed, layers, norm, lmHead }
}
