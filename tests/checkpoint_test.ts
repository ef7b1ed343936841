/**
 * HF checkpoint loading: sharded BF16 ≡ single F32 file, F16, tied embeddings, name mapping, streaming,
 * and the errors for missing / mis-shaped tensors and broken indexes.
 */
import assert from "node:assert/strict"
import { join } from "node:path"
import { ConfigError, SafetensorsError } from "../src/errors.ts"
import { bf16BitsToF32, type DType, f32ToBf16Bits } from "../src/io/dtype.ts"
import { type TensorToWrite, writeSafetensors } from "../src/io/safetensors.ts"
import { listCheckpointTensors, loadLlamaWeights, streamLlamaTensors, streamTensors } from "../src/model/checkpoint.ts"
import type { LlamaConfig } from "../src/model/types.ts"

/** V 16, D 8, F 12, L 2, H 2, KV 1, Dh 4 (grouped-query: k/v are (4, 8)). */
const CONFIG: LlamaConfig = {
  vocabSize: 16,
  hiddenSize: 8,
  intermediateSize: 12,
  numLayers: 2,
  numHeads: 2,
  numKvHeads: 1,
  headDim: 4,
  rmsNormEps: 1e-5,
  ropeTheta: 10000,
  maxPositionEmbeddings: 64,
  tieWordEmbeddings: false,
  hiddenAct: "silu",
  bosTokenId: 1,
  eosTokenId: 2,
  padTokenId: null,
}
const TIED: LlamaConfig = { ...CONFIG, tieWordEmbeddings: true }

/** HF names and shapes written out by hand (independent of the loader's own table). */
function hfShapes(prefix = "model."): [string, number[]][] {
  const out: [string, number[]][] = [[`${prefix}embed_tokens.weight`, [16, 8]]]
  for (let i = 0; i < 2; i++) {
    const l = `${prefix}layers.${i}`
    out.push(
      [`${l}.input_layernorm.weight`, [8]],
      [`${l}.self_attn.q_proj.weight`, [8, 8]],
      [`${l}.self_attn.k_proj.weight`, [4, 8]],
      [`${l}.self_attn.v_proj.weight`, [4, 8]],
      [`${l}.self_attn.o_proj.weight`, [8, 8]],
      [`${l}.post_attention_layernorm.weight`, [8]],
      [`${l}.mlp.gate_proj.weight`, [12, 8]],
      [`${l}.mlp.up_proj.weight`, [12, 8]],
      [`${l}.mlp.down_proj.weight`, [8, 12]],
    )
  }
  out.push([`${prefix}norm.weight`, [8]], ["lm_head.weight", [16, 8]])
  return out
}

type Weights = Map<string, { shape: number[]; data: Float32Array }>

/** Random weights; with `bf16Exact` every value is a bf16 value, else every value is k / 64 (exact in F16 too). */
function makeWeights(seed: number, opts: { bf16Exact: boolean; prefix?: string }): Weights {
  const rand = () => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 2 ** 32)
  const w: Weights = new Map()
  for (const [name, shape] of hfShapes(opts.prefix)) {
    const data = new Float32Array(shape.reduce((a, b) => a * b, 1))
    for (let i = 0; i < data.length; i++) {
      data[i] = opts.bf16Exact
        ? bf16BitsToF32(f32ToBf16Bits((rand() - 0.5) * 2 ** (rand() * 10 - 5)))
        : Math.floor(rand() * 257 - 128) / 64
    }
    w.set(name, { shape, data })
  }
  return w
}

function toWrite(w: Weights, dtype: DType, names = [...w.keys()]): TensorToWrite[] {
  return names.map((name) => ({ name, dtype, shape: w.get(name)!.shape, data: w.get(name)!.data }))
}

/** Writes `w` as `shards.length` shards (+ index), or as one model.safetensors when `shards` is omitted. */
async function save(dir: string, w: Weights, dtype: DType, shards?: string[][]): Promise<void> {
  await Deno.mkdir(dir, { recursive: true })
  if (!shards) return writeSafetensors(join(dir, "model.safetensors"), toWrite(w, dtype), { format: "pt" })
  const weightMap: Record<string, string> = {}
  for (const [i, names] of shards.entries()) {
    const file = `model-${String(i + 1).padStart(5, "0")}-of-${String(shards.length).padStart(5, "0")}.safetensors`
    await writeSafetensors(join(dir, file), toWrite(w, dtype, names), { format: "pt" })
    for (const n of names) weightMap[n] = file
  }
  await Deno.writeTextFile(
    join(dir, "model.safetensors.index.json"),
    JSON.stringify({ metadata: {}, weight_map: weightMap }),
  )
}

/**
 * Files under `dir` this process holds open, from /proc/self/fd (Linux). Deno's resource sanitizer does not
 * report leaked files, so the tests count descriptors themselves.
 */
function openFilesUnder(dir: string): string[] {
  const out: string[] = []
  for (const fd of Deno.readDirSync("/proc/self/fd")) {
    try {
      const target = Deno.readLinkSync(`/proc/self/fd/${fd.name}`)
      if (target.startsWith(dir)) out.push(target)
    } catch { /* the descriptor of the directory listing itself is gone by now */ }
  }
  return out
}

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "checkpoint_test_" })
  try {
    await fn(dir)
  } finally {
    await Deno.remove(dir, { recursive: true })
  }
}

function assertMatches(weights: Awaited<ReturnType<typeof loadLlamaWeights>>, w: Weights, prefix = "model.") {
  const check = (t: { shape: readonly number[]; data: Float32Array }, name: string) => {
    assert.deepEqual(t.shape, w.get(name)!.shape, name)
    assert.deepEqual(t.data, w.get(name)!.data, name)
  }
  check(weights.embed, `${prefix}embed_tokens.weight`)
  check(weights.norm, `${prefix}norm.weight`)
  for (const [i, l] of weights.layers.entries()) {
    check(l.inputNorm, `${prefix}layers.${i}.input_layernorm.weight`)
    check(l.postAttentionNorm, `${prefix}layers.${i}.post_attention_layernorm.weight`)
    for (const p of ["q_proj", "k_proj", "v_proj", "o_proj"] as const) {
      check(l.proj[p], `${prefix}layers.${i}.self_attn.${p}.weight`)
    }
    for (const p of ["gate_proj", "up_proj", "down_proj"] as const) {
      check(l.proj[p], `${prefix}layers.${i}.mlp.${p}.weight`)
    }
  }
}

Deno.test("checkpoint: a sharded BF16 checkpoint loads to the same f32 values as one F32 file", async () => {
  await withDir(async (dir) => {
    const w = makeWeights(11, { bf16Exact: true })
    const names = [...w.keys()]
    // Shard 1: embed, layer 0 and half of layer 1; shard 2: the rest. Plus tensors the model does not use.
    const extra: Weights = new Map([["model.layers.0.self_attn.rotary_emb.inv_freq", {
      shape: [2],
      data: new Float32Array([1, 0.01]),
    }]])
    await save(join(dir, "sharded"), new Map([...w, ...extra]), "BF16", [names.slice(0, 14), [
      ...names.slice(14),
      ...extra.keys(),
    ]])
    await save(join(dir, "single"), w, "F32")

    const listing = await listCheckpointTensors(join(dir, "sharded"))
    assert.equal(listing.files.length, 2)
    assert.equal(listing.tensors.get("model.layers.1.mlp.down_proj.weight")!.dtype, "BF16")
    assert.ok(listing.tensors.get("lm_head.weight")!.file.endsWith("model-00002-of-00002.safetensors"))

    const seen: string[] = []
    const sharded = await loadLlamaWeights(join(dir, "sharded"), CONFIG, { onTensor: (name) => seen.push(name) })
    const single = await loadLlamaWeights(join(dir, "single"), CONFIG)
    assert.deepEqual(sharded, single)
    assertMatches(sharded, w)
    assert.deepEqual(sharded.lmHead.data, w.get("lm_head.weight")!.data)
    assert.notEqual(sharded.lmHead, sharded.embed)
    assert.equal(seen.length, 9 * 2 + 3) // the unused inv_freq is never read
    assert.deepEqual(new Set(seen), new Set(names))
    assert.deepEqual(openFilesUnder(dir), [])
  })
})

Deno.test("checkpoint: F16 loads exactly; a bare LlamaModel (no `model.` prefix) with tied embeddings loads", async () => {
  await withDir(async (dir) => {
    const w = makeWeights(12, { bf16Exact: false })
    await save(dir, w, "F16")
    assertMatches(await loadLlamaWeights(dir, CONFIG), w)
    const bare = makeWeights(13, { bf16Exact: false, prefix: "" })
    bare.delete("lm_head.weight")
    await save(join(dir, "bare"), bare, "F32")
    const loaded = await loadLlamaWeights(join(dir, "bare"), TIED)
    assertMatches(loaded, bare, "")
    assert.equal(loaded.lmHead, loaded.embed)
  })
})

Deno.test("checkpoint: tied embeddings share the embedding; a stored lm_head is then not read", async () => {
  await withDir(async (dir) => {
    const w = makeWeights(14, { bf16Exact: true })
    await save(join(dir, "with_head"), w, "BF16")
    w.delete("lm_head.weight")
    await save(join(dir, "without_head"), w, "BF16")
    for (const sub of ["with_head", "without_head"]) {
      const kinds: string[] = []
      for await (const t of streamLlamaTensors(join(dir, sub), TIED)) kinds.push(t.kind)
      assert.ok(!kinds.includes("lm_head"), sub)
      assert.equal(kinds.length, 9 * 2 + 2)
      const loaded = await loadLlamaWeights(join(dir, sub), TIED)
      assert.equal(loaded.lmHead, loaded.embed)
      assertMatches(loaded, w)
    }
    // Untied, the missing lm_head is an error.
    await assert.rejects(
      loadLlamaWeights(join(dir, "without_head"), CONFIG),
      (e) => e instanceof SafetensorsError && e.tensor === "lm_head.weight",
    )
  })
})

Deno.test("checkpoint: streams one tensor at a time, tagged, shard by shard; stopping early closes the shard", async () => {
  await withDir(async (dir) => {
    const w = makeWeights(15, { bf16Exact: true })
    const names = [...w.keys()]
    await save(dir, w, "BF16", [names.slice(10), names.slice(0, 10)])
    const files: string[] = []
    for await (const t of streamTensors(dir)) {
      files.push(t.file)
      assert.deepEqual(openFilesUnder(dir), [t.file], "exactly the current shard is open")
    }
    assert.deepEqual(files, [...files].sort(), "shards are read one after the other")
    assert.deepEqual(openFilesUnder(dir), [])
    for await (const t of streamLlamaTensors(dir, CONFIG)) {
      if (t.name === "model.layers.1.self_attn.k_proj.weight") {
        assert.deepEqual([t.kind, t.layer, t.part, t.shape], ["layer", 1, "k_proj", [4, 8]])
        assert.deepEqual(t.data, w.get(t.name)!.data)
      }
      if (t.name === "model.norm.weight") assert.deepEqual([t.kind, t.layer, t.part], ["norm", undefined, undefined])
    }
    let n = 0
    for await (const _ of streamTensors(dir, { only: ["model.norm.weight", "model.embed_tokens.weight"] })) {
      if (++n === 1) break
    }
    assert.equal(n, 1)
    assert.deepEqual(openFilesUnder(dir), [], "breaking out of the loop closes the shard")
  })
})

Deno.test("checkpoint: missing or mis-shaped tensors are named with their file, before any data is read", async () => {
  await withDir(async (dir) => {
    const w = makeWeights(16, { bf16Exact: true })
    w.delete("model.layers.1.mlp.down_proj.weight")
    await save(dir, w, "F32")
    const file = join(dir, "model.safetensors")
    let read = 0
    await assert.rejects(
      loadLlamaWeights(dir, CONFIG, { onTensor: () => read++ }),
      (e) =>
        e instanceof SafetensorsError && e.file === file && e.tensor === "model.layers.1.mlp.down_proj.weight" &&
        /missing/.test(e.message),
    )
    assert.equal(read, 0)
    await assert.rejects(
      loadLlamaWeights(dir, { ...CONFIG, intermediateSize: 10 }, { onTensor: () => read++ }),
      (e) =>
        e instanceof SafetensorsError && e.file === file && e.tensor === "model.layers.0.mlp.gate_proj.weight" &&
        e.reason.includes("[12,8]") && e.reason.includes("[10,8]"),
    )
    await assert.rejects(
      loadLlamaWeights(dir, { ...CONFIG, numKvHeads: 2 }),
      (e) => e instanceof SafetensorsError && e.tensor === "model.layers.0.self_attn.k_proj.weight",
    )
    assert.equal(read, 0)
    assert.deepEqual(openFilesUnder(dir), [])
  })
})

Deno.test("checkpoint: broken indexes and empty directories are refused naming the file", async () => {
  await withDir(async (dir) => {
    await assert.rejects(listCheckpointTensors(dir), (e) => e instanceof ConfigError && e.file === dir)
    const w = makeWeights(17, { bf16Exact: true })
    const names = [...w.keys()]
    await save(dir, w, "BF16", [names.slice(0, 5), names.slice(5)])
    const indexPath = join(dir, "model.safetensors.index.json")
    const index = JSON.parse(await Deno.readTextFile(indexPath))
    const shard2 = index.weight_map["lm_head.weight"]

    const variants: [Record<string, string>, (e: unknown) => boolean][] = [
      // a shard that does not exist
      [
        { ...index.weight_map, "lm_head.weight": "model-00003-of-00003.safetensors" },
        (e) =>
          e instanceof ConfigError && e.file === indexPath && e.key === "weight_map" &&
          e.reason.includes("model-00003-of-00003"),
      ],
      // a tensor the index puts in a shard that does not hold it
      [
        { ...index.weight_map, "model.extra.weight": shard2 },
        (e) => e instanceof SafetensorsError && e.file === join(dir, shard2) && e.tensor === "model.extra.weight",
      ],
      // a shard path leaving the directory
      [
        { ...index.weight_map, "lm_head.weight": `../${shard2}` },
        (e) => e instanceof ConfigError && e.key === "weight_map",
      ],
    ]
    for (const [weightMap, check] of variants) {
      await Deno.writeTextFile(indexPath, JSON.stringify({ weight_map: weightMap }))
      await assert.rejects(listCheckpointTensors(dir), check)
    }
    await Deno.writeTextFile(indexPath, "{")
    await assert.rejects(listCheckpointTensors(dir), (e) => e instanceof ConfigError && e.file === indexPath)
    await Deno.writeTextFile(indexPath, JSON.stringify({ metadata: {} }))
    await assert.rejects(listCheckpointTensors(dir), (e) => e instanceof ConfigError && e.key === "weight_map")
    // A corrupt shard surfaces as the reader's SafetensorsError for that shard.
    await Deno.writeTextFile(indexPath, JSON.stringify(index))
    await Deno.writeFile(join(dir, shard2), new Uint8Array(4))
    await assert.rejects(
      listCheckpointTensors(dir),
      (e) => e instanceof SafetensorsError && e.file === join(dir, shard2) && /truncated/.test(e.reason),
    )
    assert.deepEqual(openFilesUnder(dir), [])
  })
})
