/**
 * The embedded default base model: a small LLaMA-architecture model (GQA) created deterministically on first
 * use as a complete HF directory (`config.json`, `model.safetensors`, `tokenizer.json`, `tokenizer_config.json`),
 * so `deno task train` / `eval` run with no arguments and no download.
 *
 * Shape: D 128, F 352, L 4, H 4, KV 2, Dh 32, V 512 (≈ 0.87 M parameters, 3.5 MB f32), small enough that
 * several adapters train in minutes on 2 CPU cores through software WebGPU.
 * Weights are random (seeded), so the base is a nearly uniform LM; adapters learn the demo tasks on top of it.
 * Changing anything that alters the files requires a new directory version (`default-model-v2`).
 * @module
 */
import { fileURLToPath } from "node:url"
import { ConfigError } from "../errors.ts"
import { type TensorToWrite, writeSafetensors } from "../io/safetensors.ts"
import { Rng } from "../util/rng.ts"
import { buildDefaultTokenizer, DEFAULT_VOCAB_SIZE } from "./default_tokenizer.ts"

/** The default model's `config.json` (HF `LlamaForCausalLM`). */
export const DEFAULT_MODEL_CONFIG = {
  architectures: ["LlamaForCausalLM"],
  model_type: "llama",
  vocab_size: DEFAULT_VOCAB_SIZE,
  hidden_size: 128,
  intermediate_size: 352,
  num_hidden_layers: 4,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  head_dim: 32,
  hidden_act: "silu",
  max_position_embeddings: 512,
  initializer_range: 0.02,
  rms_norm_eps: 1e-5,
  rope_theta: 10000,
  rope_scaling: null,
  attention_bias: false,
  attention_dropout: 0,
  mlp_bias: false,
  tie_word_embeddings: false,
  bos_token_id: 1,
  eos_token_id: 2,
  pad_token_id: 0,
  pretraining_tp: 1,
  use_cache: true,
  torch_dtype: "float32",
} as const

/** Seed of the default weights; each tensor draws from `Rng.fromSeed(seed).fork(tensorName)`. */
export const DEFAULT_MODEL_SEED = 20240501

/** Directory name under `<repo>/.cache/`; bump the version whenever the generated files change. */
const DIR_NAME = "default-model-v1"
const FILES = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"] as const

/** `<repo>/.cache/default-model-v1`, resolved from this module's location. */
export const DEFAULT_MODEL_DIR: string = fileURLToPath(new URL(`../../.cache/${DIR_NAME}`, import.meta.url))

/** Normal(0, std) tensor of `shape` drawn from the tensor's own stream (independent of generation order). */
function normalTensor(root: Rng, name: string, shape: readonly number[], std: number): TensorToWrite {
  const rng = root.fork(name)
  const data = new Float32Array(shape.reduce((a, b) => a * b, 1))
  for (let i = 0; i < data.length; i++) data[i] = rng.normal(0, std)
  return { name, dtype: "F32", shape, data }
}

/**
 * All tensors of the default model with HF LLaMA names, f32. Init as HF `LlamaPreTrainedModel._init_weights`
 * (normal(0, initializer_range) for linear and embedding weights, ones for RMSNorm weights), except `lm_head`:
 * with std 0.02 its rows have norm 0.02·√D ≈ 0.23 and the logits of a unit-RMS final state (norm √D) could never
 * exceed ≈ 0.02·D = 2.6, capping any adapter's accuracy (p ≤ e^2.6 / (e^2.6 + V) ≈ 2.5 %). With std 1/√D the
 * row norm is ≈ 1, so a logit can reach √D ≈ 11 while random logits have std ≈ 1 (initial loss ≈ ln V + 0.5).
 */
export function defaultModelTensors(): TensorToWrite[] {
  const c = DEFAULT_MODEL_CONFIG
  const root = Rng.fromSeed(DEFAULT_MODEL_SEED)
  const [V, D, F, Dh] = [c.vocab_size, c.hidden_size, c.intermediate_size, c.head_dim]
  const [H, KV] = [c.num_attention_heads, c.num_key_value_heads]
  const std = c.initializer_range
  const ones = (name: string): TensorToWrite => ({ name, dtype: "F32", shape: [D], data: new Float32Array(D).fill(1) })
  const tensors = [normalTensor(root, "model.embed_tokens.weight", [V, D], std)] // (V, D)
  for (let i = 0; i < c.num_hidden_layers; i++) {
    const p = `model.layers.${i}`
    tensors.push(
      ones(`${p}.input_layernorm.weight`), // (D)
      normalTensor(root, `${p}.self_attn.q_proj.weight`, [H * Dh, D], std), // (H*Dh, D)
      normalTensor(root, `${p}.self_attn.k_proj.weight`, [KV * Dh, D], std), // (KV*Dh, D)
      normalTensor(root, `${p}.self_attn.v_proj.weight`, [KV * Dh, D], std), // (KV*Dh, D)
      normalTensor(root, `${p}.self_attn.o_proj.weight`, [D, H * Dh], std), // (D, H*Dh)
      ones(`${p}.post_attention_layernorm.weight`), // (D)
      normalTensor(root, `${p}.mlp.gate_proj.weight`, [F, D], std), // (F, D)
      normalTensor(root, `${p}.mlp.up_proj.weight`, [F, D], std), // (F, D)
      normalTensor(root, `${p}.mlp.down_proj.weight`, [D, F], std), // (D, F)
    )
  }
  tensors.push(ones("model.norm.weight"), normalTensor(root, "lm_head.weight", [V, D], 1 / Math.sqrt(D))) // (D), (V, D)
  return tensors
}

/** The three JSON files' exact text. */
function jsonFiles(): Record<Exclude<(typeof FILES)[number], "model.safetensors">, string> {
  const { tokenizerJson, tokenizerConfig } = buildDefaultTokenizer()
  const text = (v: unknown) => JSON.stringify(v, null, 2) + "\n"
  return {
    "config.json": text(DEFAULT_MODEL_CONFIG),
    "tokenizer.json": text(tokenizerJson),
    "tokenizer_config.json": text(tokenizerConfig),
  }
}

/** Data bytes of model.safetensors: 4 bytes per parameter. */
function expectedDataBytes(): number {
  const c = DEFAULT_MODEL_CONFIG
  const [V, D, F, Dh] = [c.vocab_size, c.hidden_size, c.intermediate_size, c.head_dim]
  const layer = 2 * D + (c.num_attention_heads + 2 * c.num_key_value_heads) * Dh * D + D * c.num_attention_heads * Dh +
    3 * F * D
  return 4 * (2 * V * D + D + c.num_hidden_layers * layer)
}

async function readOrNull(path: string): Promise<Uint8Array | null> {
  try {
    return await Deno.readFile(path)
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null
    throw e
  }
}

/** True when `dir` holds all four files with the expected JSON text and a safetensors file of the right size. */
async function isComplete(dir: string, json: Record<string, string>): Promise<boolean> {
  for (const [name, text] of Object.entries(json)) {
    const bytes = await readOrNull(`${dir}/${name}`)
    if (bytes === null || new TextDecoder().decode(bytes) !== text) return false
  }
  let stat: Deno.FileInfo
  try {
    stat = await Deno.stat(`${dir}/model.safetensors`)
  } catch {
    return false
  }
  using file = await Deno.open(`${dir}/model.safetensors`)
  const head = new Uint8Array(8)
  if ((await file.read(head)) !== 8) return false
  const headerLen = Number(new DataView(head.buffer).getBigUint64(0, true))
  return stat.size === 8 + headerLen + expectedDataBytes()
}

/** Entries of `dir`, or null when it does not exist. */
async function listDir(dir: string): Promise<string[] | null> {
  try {
    const names: string[] = []
    for await (const e of Deno.readDir(dir)) names.push(e.name)
    return names
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null
    throw e
  }
}

/**
 * Returns the directory of the default model, creating it first when missing or incomplete. The files are
 * built in a temporary sibling directory and renamed into place, so a killed run never leaves a half model;
 * concurrent callers both succeed (the loser of the rename discards its copy). A stale or partial directory is
 * replaced only if it holds nothing but the model's files; otherwise a `ConfigError` names it.
 *
 * @example
 * ```ts
 * const dir = await ensureDefaultModel() // <repo>/.cache/default-model-v1
 * ```
 */
export async function ensureDefaultModel(dir: string = DEFAULT_MODEL_DIR): Promise<string> {
  const json = jsonFiles()
  if (await isComplete(dir, json)) return dir
  const trimmed = dir.replace(/\/+$/, "")
  const slash = trimmed.lastIndexOf("/")
  const parent = slash > 0 ? trimmed.slice(0, slash) : slash === 0 ? "/" : "."
  const base = trimmed.slice(slash + 1)
  await Deno.mkdir(parent, { recursive: true })
  const tmp = await Deno.makeTempDir({ dir: parent, prefix: `.${base}.tmp-` })
  try {
    await Deno.chmod(tmp, 0o755) // makeTempDir creates 0700; the model is an ordinary shared directory
    for (const [name, text] of Object.entries(json)) await Deno.writeTextFile(`${tmp}/${name}`, text)
    await writeSafetensors(`${tmp}/model.safetensors`, defaultModelTensors(), { format: "pt" })
    const existing = await listDir(dir)
    if (existing !== null) {
      if (await isComplete(dir, json)) return dir // a concurrent caller finished first; theirs is identical
      const ours = (n: string) => (FILES as readonly string[]).includes(n) || /\.tmp-[0-9a-f]+$/.test(n)
      if (!existing.every(ours)) {
        throw new ConfigError({
          file: dir,
          key: "",
          reason: "exists but is not a complete default model (remove it or choose another directory)",
        })
      }
      await Deno.remove(dir, { recursive: true }).catch((e) => {
        if (!(e instanceof Deno.errors.NotFound)) throw e
      })
    }
    try {
      await Deno.rename(tmp, dir)
    } catch (e) {
      // Another process renamed its copy first; theirs is identical.
      if (!(await isComplete(dir, json))) throw e
    }
  } finally {
    await Deno.remove(tmp, { recursive: true }).catch(() => undefined)
  }
  return dir
}
