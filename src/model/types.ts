/**
 * Shared shapes of the model: the LLaMA config, host-side weights and the batch descriptor.
 * Dimension letters (used everywhere, uniforms too): N tokens (rows × T), T padded sequence length,
 * D hidden, F ffn, H / KV heads, Dh head size, R rank, E experts, K top-k, A adapters, L layers, V vocab.
 * @module
 */

/** The subset of HF `config.json` that LLaMA-family models need (parsed by `hf_config.ts`). */
export interface LlamaConfig {
  /** V */
  readonly vocabSize: number
  /** D */
  readonly hiddenSize: number
  /** F */
  readonly intermediateSize: number
  /** L */
  readonly numLayers: number
  /** H */
  readonly numHeads: number
  /** KV; H must be a multiple of it (grouped-query attention) */
  readonly numKvHeads: number
  /** Dh = D / H unless config.json sets `head_dim` */
  readonly headDim: number
  readonly rmsNormEps: number
  readonly ropeTheta: number
  readonly maxPositionEmbeddings: number
  readonly tieWordEmbeddings: boolean
  /** "silu" (required); "gelu" / "gelu_new" / "gelu_pytorch_tanh" also run */
  readonly hiddenAct: "silu" | "gelu" | "gelu_new" | "gelu_pytorch_tanh"
  readonly bosTokenId: number | null
  readonly eosTokenId: number | null
  readonly padTokenId: number | null
}

/** A dense host matrix or vector, row-major f32. */
export interface HostTensor {
  readonly shape: readonly number[]
  readonly data: Float32Array
}

/** Symmetric per-output-row int8 weights (spec §4): W[n, k] ≈ q[n*K + k] * scale[n]. */
export interface QuantizedMatrix {
  /** N output rows */
  readonly rows: number
  /** K input columns */
  readonly cols: number
  /** (N, K) row-major */
  readonly q: Int8Array
  /** (N) */
  readonly scale: Float32Array
}

/** The seven projections of a decoder layer, in HF order. */
export const PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"] as const
export type Projection = typeof PROJECTIONS[number]

/** Host weights of one decoder layer. Projections are (out, in) like torch `nn.Linear.weight`. */
export interface LayerWeights {
  /** (D) */
  readonly inputNorm: HostTensor
  /** (D) */
  readonly postAttentionNorm: HostTensor
  /** q (H*Dh, D), k/v (KV*Dh, D), o (D, H*Dh), gate/up (F, D), down (D, F) */
  readonly proj: Readonly<Record<Projection, HostTensor>>
}

/** Host weights of the whole model. With tied embeddings `lmHead` is the same object as `embed`. */
export interface LlamaWeights {
  /** (V, D) */
  readonly embed: HostTensor
  readonly layers: readonly LayerWeights[]
  /** (D) */
  readonly norm: HostTensor
  /** (V, D) */
  readonly lmHead: HostTensor
}

/**
 * A packed batch: `rows` sequences padded to T tokens. Row r's real tokens occupy
 * [T - len, T) with left padding or [0, len) with right padding. Rows [segment.start, segment.end)
 * belong to adapter slot `segment.slot` (-1: base model only), so that one forward can serve many adapters.
 */
export interface BatchDescriptor {
  readonly rows: number
  /** T */
  readonly seqLen: number
  /** (rows) real tokens per row, 1..T */
  readonly lengths: readonly number[]
  readonly padSide: "left" | "right"
  /** (rows, T) token ids; pad positions hold any valid id (they are masked) */
  readonly tokens: Int32Array
  readonly segments: readonly { readonly start: number; readonly end: number; readonly slot: number }[]
}
