/**
 * HF `config.json` of a LLaMA-family model → `LlamaConfig` (spec §2, §5).
 *
 * Accepted: `LlamaForCausalLM` / model_type "llama", and `MistralForCausalLM` / "mistral" when its sliding
 * window never applies (absent, null, or ≥ max_position_embeddings). Defaults follow transformers'
 * `LlamaConfig`: num_key_value_heads = num_attention_heads, rope_theta 10000, head_dim = hidden / heads,
 * tie_word_embeddings false, hidden_act "silu", max_position_embeddings 2048, token ids null.
 * Refused with a `ConfigError` naming the key: missing required keys, wrong types, non-positive sizes,
 * heads not a multiple of kv heads, unsupported hidden_act, rope_scaling, attention / mlp biases.
 * @module
 */
import { join } from "node:path"
import { ConfigError } from "../errors.ts"
import { readJsonFile } from "../io/read_json.ts"
import type { LlamaConfig } from "./types.ts"

const ARCHITECTURES = ["LlamaForCausalLM", "MistralForCausalLM"]
const MODEL_TYPES = ["llama", "mistral"]
const ACTIVATIONS = ["silu", "gelu", "gelu_new", "gelu_pytorch_tanh"] as const

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v)
}

/**
 * Validates a parsed `config.json`. `file` is only used in error messages.
 * @example
 * ```ts
 * import assert from "node:assert/strict"
 * import { parseLlamaConfig } from "./hf_config.ts"
 * const json = {
 *   architectures: ["LlamaForCausalLM"],
 *   hidden_size: 64, intermediate_size: 176, num_hidden_layers: 2, num_attention_heads: 8,
 *   num_key_value_heads: 2, vocab_size: 100, rms_norm_eps: 1e-5,
 * }
 * const cfg = parseLlamaConfig(json, "models/tiny/config.json")
 * assert.equal(cfg.numKvHeads, 2)
 * assert.equal(cfg.headDim, 8)
 * ```
 */
export function parseLlamaConfig(json: unknown, file: string): LlamaConfig {
  const fail = (key: string, reason: string) => new ConfigError({ file, key, reason })
  if (!isRecord(json)) throw fail("", "config is not a JSON object")
  const has = (key: string) => json[key] !== undefined && json[key] !== null
  const show = (key: string) => JSON.stringify(json[key])

  const archs = json.architectures
  if (has("architectures") && (!Array.isArray(archs) || !archs.every((a) => typeof a === "string"))) {
    throw fail("architectures", `must be a list of strings, got ${show("architectures")}`)
  }
  const archOk = Array.isArray(archs) && archs.some((a) => ARCHITECTURES.includes(a))
  const typeOk = MODEL_TYPES.includes(json.model_type as string)
  if (!archOk && !typeOk) {
    throw fail(
      "architectures",
      `unsupported model ${show("architectures") ?? "(none)"} (model_type ${show("model_type") ?? "(none)"}): ` +
        `need LlamaForCausalLM or MistralForCausalLM`,
    )
  }

  /** A positive integer; `fallback` when the key is absent or null, else the key is required. */
  const positiveInt = (key: string, fallback?: number): number => {
    if (!has(key)) {
      if (fallback !== undefined) return fallback
      throw fail(key, "missing (required)")
    }
    const v = json[key]
    if (!Number.isSafeInteger(v) || (v as number) <= 0) throw fail(key, `must be a positive integer, got ${show(key)}`)
    return v as number
  }
  const positiveNumber = (key: string, fallback?: number): number => {
    if (!has(key)) {
      if (fallback !== undefined) return fallback
      throw fail(key, "missing (required)")
    }
    const v = json[key]
    if (typeof v !== "number" || !Number.isFinite(v) || v <= 0) {
      throw fail(key, `must be a positive number, got ${show(key)}`)
    }
    return v
  }

  const hiddenSize = positiveInt("hidden_size")
  const intermediateSize = positiveInt("intermediate_size")
  const numLayers = positiveInt("num_hidden_layers")
  const numHeads = positiveInt("num_attention_heads")
  const vocabSize = positiveInt("vocab_size")
  const rmsNormEps = positiveNumber("rms_norm_eps")
  const numKvHeads = positiveInt("num_key_value_heads", numHeads)
  if (numHeads % numKvHeads !== 0) {
    throw fail("num_key_value_heads", `num_attention_heads ${numHeads} is not a multiple of ${numKvHeads}`)
  }
  if (!has("head_dim") && hiddenSize % numHeads !== 0) {
    throw fail("num_attention_heads", `hidden_size ${hiddenSize} is not a multiple of ${numHeads} (and no head_dim)`)
  }
  const headDim = positiveInt("head_dim", hiddenSize / numHeads)
  const ropeTheta = positiveNumber("rope_theta", 10000)
  const maxPositionEmbeddings = positiveInt("max_position_embeddings", 2048)

  if (has("rope_scaling")) {
    throw fail("rope_scaling", `unsupported (only plain RoPE is implemented): ${show("rope_scaling")}`)
  }
  for (const key of ["attention_bias", "mlp_bias"]) {
    if (json[key] === true) throw fail(key, "biases are not supported (LLaMA has none)")
  }
  const window = json.sliding_window
  if (has("sliding_window") && json.use_sliding_window !== false) {
    if (typeof window !== "number" || window < maxPositionEmbeddings) {
      throw fail("sliding_window", `sliding-window attention (${show("sliding_window")}) is not supported`)
    }
  }

  const hiddenAct = has("hidden_act") ? json.hidden_act : "silu"
  if (!ACTIVATIONS.includes(hiddenAct as never)) {
    throw fail(
      "hidden_act",
      `unsupported activation ${JSON.stringify(hiddenAct)} (supported: ${ACTIVATIONS.join(", ")})`,
    )
  }
  const tie = has("tie_word_embeddings") ? json.tie_word_embeddings : false
  if (typeof tie !== "boolean") {
    throw fail("tie_word_embeddings", `must be true or false, got ${show("tie_word_embeddings")}`)
  }

  /**
   * A token id or null. A negative id means none (some converted LLaMA configs write `pad_token_id: -1`);
   * `eos_token_id` may be a list (LLaMA 3 style): the first entry is used.
   */
  const tokenId = (key: string): number | null => {
    let v = json[key]
    if (key === "eos_token_id" && Array.isArray(v)) v = v.length > 0 ? v[0] : null
    if (v === undefined || v === null) return null
    if (!Number.isSafeInteger(v)) throw fail(key, `must be an integer token id, got ${show(key)}`)
    if ((v as number) < 0) return null
    if ((v as number) >= vocabSize) throw fail(key, `token id ${v} is outside the vocabulary (vocab_size ${vocabSize})`)
    return v as number
  }

  return {
    vocabSize,
    hiddenSize,
    intermediateSize,
    numLayers,
    numHeads,
    numKvHeads,
    headDim,
    rmsNormEps,
    ropeTheta,
    maxPositionEmbeddings,
    tieWordEmbeddings: tie,
    hiddenAct: hiddenAct as LlamaConfig["hiddenAct"],
    bosTokenId: tokenId("bos_token_id"),
    eosTokenId: tokenId("eos_token_id"),
    padTokenId: tokenId("pad_token_id"),
  }
}

/** Reads and validates `{dir}/config.json`; a missing or malformed file is a `ConfigError` naming it. */
export async function readLlamaConfig(dir: string): Promise<LlamaConfig> {
  const file = join(dir, "config.json")
  return parseLlamaConfig(await readJsonFile(file, "model config"), file)
}
