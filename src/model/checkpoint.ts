/**
 * Streaming loader of an HF checkpoint directory (spec §5): `model.safetensors`, or
 * `model.safetensors.index.json` plus its shards, with F32 / F16 / BF16 tensors.
 *
 * Three levels, each built on the one before:
 * - `listCheckpointTensors(dir)`: names, dtypes, shapes and shard of every tensor, from the headers only.
 * - `streamTensors(dir)`: f32 data, one tensor at a time; each shard is opened when first needed and closed
 *   when its last tensor has been read, so memory holds one tensor (plus whatever the consumer keeps).
 * - `streamLlamaTensors(dir, config)`: the LLaMA tensors, tagged with their role, shapes checked against the
 *   config before any data is read. `loadLlamaWeights` collects them into `LlamaWeights`.
 *
 * This is the only module that knows HF tensor names of the base model.
 * @module
 */
import { basename, join } from "node:path"
import { ConfigError, SafetensorsError } from "../errors.ts"
import { type DType, isFloatDType } from "../io/dtype.ts"
import { readJsonFile } from "../io/read_json.ts"
import { openSafetensors } from "../io/safetensors.ts"
import {
  type HostTensor,
  type LayerWeights,
  type LlamaConfig,
  type LlamaWeights,
  type Projection,
  PROJECTIONS,
} from "./types.ts"

/** Where one checkpoint tensor lives. */
export interface CheckpointTensor {
  readonly name: string
  /** path of the safetensors file holding it */
  readonly file: string
  readonly dtype: DType
  readonly shape: readonly number[]
}

/** Every tensor of a checkpoint directory, from the safetensors headers. */
export interface CheckpointListing {
  readonly dir: string
  /** `model.safetensors` or the index file: what "missing tensor" errors name */
  readonly source: string
  /** the safetensors files, in reading order */
  readonly files: readonly string[]
  /** by name, in reading order (file by file, front to back within a file) */
  readonly tensors: ReadonlyMap<string, CheckpointTensor>
}

/** One tensor's data as f32. */
export interface CheckpointTensorData extends CheckpointTensor {
  readonly data: Float32Array<ArrayBuffer>
}

async function isFile(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isFile
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false
    throw new ConfigError({ file: path, key: "", reason: `cannot stat (${(e as Error).message})` })
  }
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v)
}

/** The shards named by `model.safetensors.index.json` (`weight_map`: tensor name → shard file name). */
async function readIndex(dir: string, indexPath: string): Promise<Map<string, string[]>> {
  const json = await readJsonFile(indexPath, "checkpoint index")
  const fail = (reason: string) => new ConfigError({ file: indexPath, key: "weight_map", reason })
  if (!isRecord(json) || !isRecord(json.weight_map)) throw fail("missing, or not an object of tensor name → shard")
  const byShard = new Map<string, string[]>()
  for (const [name, shard] of Object.entries(json.weight_map)) {
    // Shards are plain file names next to the index; anything else could point outside the model directory.
    if (typeof shard !== "string" || shard === "" || shard === "." || shard === ".." || basename(shard) !== shard) {
      throw fail(`tensor "${name}": shard ${JSON.stringify(shard)} is not a file name`)
    }
    if (!byShard.has(shard)) byShard.set(shard, [])
    byShard.get(shard)!.push(name)
  }
  for (const [shard, names] of byShard) {
    if (!(await isFile(join(dir, shard)))) throw fail(`shard "${shard}" (holding "${names[0]}") not found in ${dir}`)
  }
  return byShard
}

/**
 * Lists the tensors of the checkpoint in `dir` from the file headers (no tensor data is read).
 * `model.safetensors` wins over an index when both exist, as in transformers. With an index, every shard it
 * names must exist (ConfigError) and hold the tensors listed for it (SafetensorsError naming the shard and the
 * tensor); tensors a shard holds beyond those listed are not part of the checkpoint.
 */
export async function listCheckpointTensors(dir: string): Promise<CheckpointListing> {
  const single = join(dir, "model.safetensors")
  const indexPath = join(dir, "model.safetensors.index.json")
  let source: string
  let shards: Map<string, string[] | undefined> // file path → listed names (undefined: all)
  if (await isFile(single)) {
    source = single
    shards = new Map([[single, undefined]])
  } else if (await isFile(indexPath)) {
    source = indexPath
    const byShard = await readIndex(dir, indexPath)
    shards = new Map([...byShard].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([s, n]) => [join(dir, s), n]))
  } else {
    throw new ConfigError({ file: dir, key: "", reason: "no model.safetensors or model.safetensors.index.json" })
  }
  const tensors = new Map<string, CheckpointTensor>()
  for (const [file, listed] of shards) {
    using f = await openSafetensors(file)
    const wanted = listed && new Set(listed)
    for (const name of listed ?? []) {
      if (!f.tensors.has(name)) {
        throw new SafetensorsError({
          file,
          tensor: name,
          reason: `listed in ${basename(source)} but not in this shard`,
        })
      }
    }
    for (const [name, info] of f.tensors) {
      if (!wanted || wanted.has(name)) tensors.set(name, { name, file, dtype: info.dtype, shape: info.shape })
    }
  }
  return { dir, source, files: [...shards.keys()], tensors }
}

/** Options of `streamTensors`. */
export interface StreamOptions {
  /** read only these tensors (each must exist: SafetensorsError otherwise) */
  readonly only?: Iterable<string>
}

/**
 * Yields the checkpoint's tensors as f32, one at a time, in reading order. `source` is a directory or a
 * listing from `listCheckpointTensors`. Breaking out of the loop closes the open shard.
 */
export async function* streamTensors(
  source: string | CheckpointListing,
  opts: StreamOptions = {},
): AsyncGenerator<CheckpointTensorData> {
  const listing = typeof source === "string" ? await listCheckpointTensors(source) : source
  const only = opts.only ? new Set(opts.only) : undefined
  for (const name of only ?? []) {
    if (!listing.tensors.has(name)) {
      throw new SafetensorsError({ file: listing.source, tensor: name, reason: "missing from the checkpoint" })
    }
  }
  const byFile = new Map<string, CheckpointTensor[]>(listing.files.map((f) => [f, []]))
  for (const t of listing.tensors.values()) if (!only || only.has(t.name)) byFile.get(t.file)!.push(t)
  for (const [file, tensors] of byFile) {
    if (tensors.length === 0) continue
    using f = await openSafetensors(file)
    for (const t of tensors) {
      const info = f.tensors.get(t.name)
      if (!info || info.dtype !== t.dtype || info.shape.join() !== t.shape.join()) {
        throw new SafetensorsError({ file, tensor: t.name, reason: "changed on disk since the checkpoint was listed" })
      }
      yield { ...t, data: await f.readF32(t.name) }
    }
  }
}

/** The role of a base-model tensor inside a decoder layer. */
export type LlamaPart = Projection | "input_norm" | "post_attention_norm"

/** A base-model tensor as `streamLlamaTensors` yields it; `layer` and `part` are set for kind "layer". */
export interface LlamaTensor {
  readonly kind: "embed" | "norm" | "lm_head" | "layer"
  readonly layer?: number
  readonly part?: LlamaPart
  /** HF name, e.g. `model.layers.3.self_attn.q_proj.weight` */
  readonly name: string
  readonly file: string
  /** (out, in) for projections, like `nn.Linear.weight` */
  readonly shape: readonly number[]
  readonly data: Float32Array<ArrayBuffer>
}

/** A tensor the config requires: its HF name, role and expected shape. */
export type ExpectedLlamaTensor = Omit<LlamaTensor, "data" | "file">

/**
 * The tensors a checkpoint for `config` must hold, with their shapes:
 * embed (V, D); per layer q (H·Dh, D), k / v (KV·Dh, D), o (D, H·Dh), gate / up (F, D), down (D, F),
 * both norms (D); final norm (D); lm_head (V, D) unless the embeddings are tied.
 * `prefix` is "model." for `LlamaForCausalLM` checkpoints ("" for a bare `LlamaModel`).
 */
export function expectedLlamaTensors(config: LlamaConfig, prefix = "model."): ExpectedLlamaTensor[] {
  const { vocabSize: V, hiddenSize: D, intermediateSize: F, numHeads: H, numKvHeads: KV, headDim: Dh } = config
  const projShape: Record<Projection, number[]> = {
    q_proj: [H * Dh, D],
    k_proj: [KV * Dh, D],
    v_proj: [KV * Dh, D],
    o_proj: [D, H * Dh],
    gate_proj: [F, D],
    up_proj: [F, D],
    down_proj: [D, F],
  }
  const out: ExpectedLlamaTensor[] = [{ kind: "embed", name: `${prefix}embed_tokens.weight`, shape: [V, D] }]
  for (let layer = 0; layer < config.numLayers; layer++) {
    const l = `${prefix}layers.${layer}`
    out.push({ kind: "layer", layer, part: "input_norm", name: `${l}.input_layernorm.weight`, shape: [D] })
    for (const p of PROJECTIONS) {
      const block = p === "gate_proj" || p === "up_proj" || p === "down_proj" ? "mlp" : "self_attn"
      out.push({ kind: "layer", layer, part: p, name: `${l}.${block}.${p}.weight`, shape: projShape[p] })
    }
    out.push({
      kind: "layer",
      layer,
      part: "post_attention_norm",
      name: `${l}.post_attention_layernorm.weight`,
      shape: [D],
    })
  }
  out.push({ kind: "norm", name: `${prefix}norm.weight`, shape: [D] })
  if (!config.tieWordEmbeddings) out.push({ kind: "lm_head", name: "lm_head.weight", shape: [V, D] })
  return out
}

/**
 * Yields the base-model tensors of `dir` one at a time in reading order (shard by shard), tagged with their
 * role. Before any data is read, every required tensor must be present with the shape `config` implies and a
 * float dtype (else SafetensorsError naming the file and the tensor). Other tensors are not read — including
 * `lm_head.weight` when the embeddings are tied (then no "lm_head" item is yielded: use the embedding).
 */
export async function* streamLlamaTensors(dir: string, config: LlamaConfig): AsyncGenerator<LlamaTensor> {
  const listing = await listCheckpointTensors(dir)
  const prefix = !listing.tensors.has("model.embed_tokens.weight") && listing.tensors.has("embed_tokens.weight")
    ? ""
    : "model."
  const expected = new Map(expectedLlamaTensors(config, prefix).map((e) => [e.name, e]))
  for (const e of expected.values()) {
    const t = listing.tensors.get(e.name)
    if (!t) throw new SafetensorsError({ file: listing.source, tensor: e.name, reason: "missing from the checkpoint" })
    if (t.shape.join() !== e.shape.join()) {
      throw new SafetensorsError({
        file: t.file,
        tensor: e.name,
        reason: `shape [${t.shape}] does not match config.json (expected [${e.shape}])`,
      })
    }
    if (!isFloatDType(t.dtype)) {
      throw new SafetensorsError({ file: t.file, tensor: e.name, reason: `dtype ${t.dtype} is not F32, F16 or BF16` })
    }
  }
  for await (const t of streamTensors(listing, { only: expected.keys() })) {
    yield { ...expected.get(t.name)!, file: t.file, data: t.data }
  }
}

/** Options of `loadLlamaWeights`. */
export interface LoadLlamaOptions {
  /** called once per tensor, as soon as it is read */
  readonly onTensor?: (name: string, shape: readonly number[], data: Float32Array) => void
}

/**
 * Loads the whole base model into host memory (for the CPU path and tests; the GPU weight cache consumes
 * `streamLlamaTensors` instead). With tied embeddings `lmHead` is the same object as `embed`.
 */
export async function loadLlamaWeights(
  dir: string,
  config: LlamaConfig,
  opts: LoadLlamaOptions = {},
): Promise<LlamaWeights> {
  const layers = Array.from({ length: config.numLayers }, () => ({
    proj: {} as Partial<Record<Projection, HostTensor>>,
  } as { inputNorm?: HostTensor; postAttentionNorm?: HostTensor; proj: Partial<Record<Projection, HostTensor>> }))
  let embed: HostTensor | undefined
  let norm: HostTensor | undefined
  let lmHead: HostTensor | undefined
  for await (const t of streamLlamaTensors(dir, config)) {
    opts.onTensor?.(t.name, t.shape, t.data)
    const host: HostTensor = { shape: t.shape, data: t.data }
    if (t.kind === "embed") embed = host
    else if (t.kind === "norm") norm = host
    else if (t.kind === "lm_head") lmHead = host
    else if (t.part === "input_norm") layers[t.layer!].inputNorm = host
    else if (t.part === "post_attention_norm") layers[t.layer!].postAttentionNorm = host
    else layers[t.layer!].proj[t.part!] = host
  }
  // streamLlamaTensors checked that every expected tensor exists, so all slots are filled here.
  return {
    embed: embed!,
    layers: layers as LayerWeights[],
    norm: norm!,
    lmHead: config.tieWordEmbeddings ? embed! : lmHead!,
  }
}
