/** HF config.json parsing: required keys, architectures, GQA, defaults, unsupported features, file errors. */
import assert from "node:assert/strict"
import { join } from "node:path"
import { ConfigError } from "../src/errors.ts"
import { parseLlamaConfig, readLlamaConfig } from "../src/model/hf_config.ts"

const FILE = "models/x/config.json"

/** A TinyLlama-like config. */
const base = () => ({
  architectures: ["LlamaForCausalLM"],
  model_type: "llama",
  hidden_size: 64,
  intermediate_size: 176,
  num_hidden_layers: 2,
  num_attention_heads: 8,
  num_key_value_heads: 2,
  vocab_size: 100,
  rms_norm_eps: 1e-5,
  rope_theta: 500000,
  max_position_embeddings: 512,
  tie_word_embeddings: true,
  hidden_act: "silu",
  bos_token_id: 1,
  eos_token_id: 2,
  pad_token_id: 0,
})

function configError(key: string, reason?: RegExp) {
  return (e: unknown) => {
    assert.ok(e instanceof ConfigError, `not a ConfigError: ${e}`)
    assert.equal(e.file, FILE)
    assert.equal(e.key, key)
    if (reason) assert.match(e.reason, reason)
    assert.ok(e.message.includes(FILE) && e.message.includes(key), e.message)
    return true
  }
}

Deno.test("hf_config: a full config maps every field (GQA kept)", () => {
  assert.deepEqual(parseLlamaConfig(base(), FILE), {
    vocabSize: 100,
    hiddenSize: 64,
    intermediateSize: 176,
    numLayers: 2,
    numHeads: 8,
    numKvHeads: 2,
    headDim: 8,
    rmsNormEps: 1e-5,
    ropeTheta: 500000,
    maxPositionEmbeddings: 512,
    tieWordEmbeddings: true,
    hiddenAct: "silu",
    bosTokenId: 1,
    eosTokenId: 2,
    padTokenId: 0,
  })
})

Deno.test("hf_config: defaults follow transformers' LlamaConfig", () => {
  const c = parseLlamaConfig({
    model_type: "llama",
    hidden_size: 32,
    intermediate_size: 64,
    num_hidden_layers: 1,
    num_attention_heads: 4,
    vocab_size: 10,
    rms_norm_eps: 1e-6,
    num_key_value_heads: null,
  }, FILE)
  assert.equal(c.numKvHeads, 4)
  assert.equal(c.headDim, 8)
  assert.equal(c.ropeTheta, 10000)
  assert.equal(c.tieWordEmbeddings, false)
  assert.equal(c.hiddenAct, "silu")
  assert.equal(c.maxPositionEmbeddings, 2048)
  assert.deepEqual([c.bosTokenId, c.eosTokenId, c.padTokenId], [null, null, null])
})

Deno.test("hf_config: explicit head_dim, eos list, pad -1, gelu variant, mistral without a window", () => {
  const c = parseLlamaConfig({
    ...base(),
    architectures: ["MistralForCausalLM"],
    model_type: "mistral",
    head_dim: 16,
    eos_token_id: [7, 2],
    pad_token_id: -1,
    hidden_act: "gelu_pytorch_tanh",
    sliding_window: null,
  }, FILE)
  assert.equal(c.headDim, 16)
  assert.equal(c.eosTokenId, 7)
  assert.equal(c.padTokenId, null)
  assert.equal(c.hiddenAct, "gelu_pytorch_tanh")
  // A window at least as long as the context never applies.
  assert.equal(parseLlamaConfig({ ...base(), model_type: "mistral", sliding_window: 512 }, FILE).numLayers, 2)
})

Deno.test("hf_config: each missing required key is named", () => {
  for (
    const key of [
      "hidden_size",
      "intermediate_size",
      "num_hidden_layers",
      "num_attention_heads",
      "vocab_size",
      "rms_norm_eps",
    ]
  ) {
    const json: Record<string, unknown> = base()
    delete json[key]
    assert.throws(() => parseLlamaConfig(json, FILE), configError(key, /missing/))
  }
})

Deno.test("hf_config: unsupported architecture names architectures", () => {
  const qwen = { ...base(), architectures: ["Qwen2ForCausalLM"], model_type: "qwen2" }
  assert.throws(() => parseLlamaConfig(qwen, FILE), configError("architectures", /Qwen2ForCausalLM/))
  const none: Record<string, unknown> = base()
  delete none.architectures
  delete none.model_type
  assert.throws(() => parseLlamaConfig(none, FILE), configError("architectures"))
  assert.throws(
    () => parseLlamaConfig({ ...base(), architectures: "LlamaForCausalLM" }, FILE),
    configError("architectures"),
  )
  // model_type alone is enough
  delete none.architectures
  assert.equal(parseLlamaConfig({ ...none, model_type: "llama" }, FILE).hiddenSize, 64)
})

Deno.test("hf_config: bad values are refused naming the key", () => {
  const bad: [Record<string, unknown>, string, RegExp][] = [
    [{ hidden_size: "64" }, "hidden_size", /positive integer/],
    [{ num_hidden_layers: 0 }, "num_hidden_layers", /positive integer/],
    [{ vocab_size: 10.5 }, "vocab_size", /positive integer/],
    [{ rms_norm_eps: -1 }, "rms_norm_eps", /positive number/],
    [{ num_key_value_heads: 3 }, "num_key_value_heads", /not a multiple/],
    [{ hidden_size: 60, num_key_value_heads: 8 }, "num_attention_heads", /not a multiple/],
    [{ hidden_act: "relu" }, "hidden_act", /unsupported/],
    [{ rope_scaling: { rope_type: "llama3", factor: 8 } }, "rope_scaling", /unsupported/],
    [{ attention_bias: true }, "attention_bias", /biases/],
    [{ mlp_bias: true }, "mlp_bias", /biases/],
    [{ model_type: "mistral", sliding_window: 256 }, "sliding_window", /not supported/],
    [{ tie_word_embeddings: "yes" }, "tie_word_embeddings", /true or false/],
    [{ eos_token_id: 100 }, "eos_token_id", /outside the vocabulary/],
    [{ bos_token_id: "1" }, "bos_token_id", /integer/],
  ]
  for (const [patch, key, reason] of bad) {
    assert.throws(() => parseLlamaConfig({ ...base(), ...patch }, FILE), configError(key, reason), key)
  }
  // rope_scaling: null is the same as absent
  assert.equal(parseLlamaConfig({ ...base(), rope_scaling: null }, FILE).ropeTheta, 500000)
  assert.throws(() => parseLlamaConfig([1], FILE), configError(""))
})

Deno.test("hf_config: readLlamaConfig names a missing or invalid config.json", async () => {
  const dir = await Deno.makeTempDir({ prefix: "hf_config_test_" })
  try {
    const file = join(dir, "config.json")
    const named = (reason: RegExp) => (e: unknown) =>
      e instanceof ConfigError && e.file === file && reason.test(e.reason)
    await assert.rejects(readLlamaConfig(dir), named(/not found/))
    await Deno.writeTextFile(file, "{ not json")
    await assert.rejects(readLlamaConfig(dir), named(/not valid JSON/))
    await Deno.writeTextFile(file, JSON.stringify({ ...base(), hidden_act: "relu" }))
    await assert.rejects(
      readLlamaConfig(dir),
      (e) => e instanceof ConfigError && e.file === file && e.key === "hidden_act",
    )
    await Deno.writeTextFile(file, JSON.stringify(base()))
    assert.equal((await readLlamaConfig(dir)).numKvHeads, 2)
  } finally {
    await Deno.remove(dir, { recursive: true })
  }
})
