/**
 * Base-model loading benchmark: device bytes of the base with and without `--load_8bit` (target ≤ 0.27×)
 * and the peak host memory (VmHWM) while streaming a generated checkpoint of more than 1 GB.
 * Each load runs in a fresh child process so that its peak RSS is its own.
 * @module
 */
import { writeSafetensors } from "../src/io/safetensors.ts"
import { Rng } from "../src/util/rng.ts"

/** A LLaMA shape whose f32 checkpoint is ≈1.2 GB: 6 layers of D=2048, F=5632, GQA 16/4, V=8000. */
export const BIG_CONFIG = {
  architectures: ["LlamaForCausalLM"],
  model_type: "llama",
  hidden_size: 2048,
  intermediate_size: 5632,
  num_hidden_layers: 6,
  num_attention_heads: 16,
  num_key_value_heads: 4,
  vocab_size: 8000,
  rms_norm_eps: 1e-5,
  rope_theta: 10000,
  tie_word_embeddings: false,
  hidden_act: "silu",
  max_position_embeddings: 2048,
}

/** Writes the big checkpoint as one shard per layer (never more than one layer in memory). */
export async function makeBigCheckpoint(dir: string): Promise<number> {
  const c = BIG_CONFIG
  const marker = `${dir}/model.safetensors.index.json`
  try {
    const idx = JSON.parse(await Deno.readTextFile(marker))
    return idx.metadata.total_size
  } catch { /* not there yet: create it */ }
  await Deno.mkdir(dir, { recursive: true })
  await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(c, null, 2))
  const rng = Rng.fromSeed(1234)
  const fill = (n: number) => {
    const a = new Float32Array(n)
    for (let i = 0; i < n; i++) a[i] = (rng.nextFloat() - 0.5) * 0.04
    return a
  }
  const D = c.hidden_size, F = c.intermediate_size, Dh = D / c.num_attention_heads, KVD = c.num_key_value_heads * Dh
  const weightMap: Record<string, string> = {}
  let total = 0
  const shards = c.num_hidden_layers + 1
  for (let s = 0; s < shards; s++) {
    const file = `model-${String(s + 1).padStart(5, "0")}-of-${String(shards).padStart(5, "0")}.safetensors`
    const tensors: { name: string; dtype: "F32"; shape: number[]; data: Float32Array }[] = []
    const add = (name: string, shape: number[]) => {
      const data = name.endsWith("norm.weight")
        ? new Float32Array(shape[0]).fill(1)
        : fill(shape.reduce((a, b) => a * b))
      tensors.push({ name, dtype: "F32", shape, data })
      weightMap[name] = file
      total += data.byteLength
    }
    if (s === c.num_hidden_layers) {
      add("model.embed_tokens.weight", [c.vocab_size, D])
      add("model.norm.weight", [D])
      add("lm_head.weight", [c.vocab_size, D])
    } else {
      const p = `model.layers.${s}`
      add(`${p}.input_layernorm.weight`, [D])
      add(`${p}.post_attention_layernorm.weight`, [D])
      add(`${p}.self_attn.q_proj.weight`, [D, D])
      add(`${p}.self_attn.k_proj.weight`, [KVD, D])
      add(`${p}.self_attn.v_proj.weight`, [KVD, D])
      add(`${p}.self_attn.o_proj.weight`, [D, D])
      add(`${p}.mlp.gate_proj.weight`, [F, D])
      add(`${p}.mlp.up_proj.weight`, [F, D])
      add(`${p}.mlp.down_proj.weight`, [D, F])
    }
    await writeSafetensors(`${dir}/${file}`, tensors)
  }
  await Deno.writeTextFile(marker, JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }))
  return total
}

export interface LoadFigures {
  readonly load8bit: boolean
  readonly baseBytes: number
  readonly byCategory: Record<string, number>
  readonly peakRssBytes: number
  readonly seconds: number
}

/** Loads `dir` in a child process (bench/load_child.ts) and returns its figures. */
export async function measureLoad(
  dir: string,
  load8bit: boolean,
  mode: "device" | "stream" = "device",
): Promise<LoadFigures> {
  const child = new URL("./load_child.ts", import.meta.url).pathname
  const preload = new URL("../src/no_async_hooks.ts", import.meta.url).pathname
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--preload", preload, child, dir, String(load8bit), mode],
    stdout: "piped",
    stderr: "inherit",
  }).output()
  if (!out.success) throw new Error(`load child failed for ${dir} (load8bit=${load8bit})`)
  const text = new TextDecoder().decode(out.stdout).trim().split("\n").pop()!
  return JSON.parse(text)
}
