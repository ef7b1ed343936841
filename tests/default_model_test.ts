import assert from "node:assert/strict"
import { ConfigError } from "../src/errors.ts"
import { openSafetensors } from "../src/io/safetensors.ts"
import { loadTokenizer } from "../src/io/tokenizer.ts"
import { DEFAULT_MODEL_CONFIG, DEFAULT_MODEL_DIR, ensureDefaultModel } from "../src/model/default_model.ts"

const FILES = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]

async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "default_model_test_" })
  try {
    await fn(dir)
  } finally {
    await Deno.remove(dir, { recursive: true })
  }
}

async function listDir(dir: string): Promise<string[]> {
  const names: string[] = []
  for await (const e of Deno.readDir(dir)) names.push(e.name)
  return names.sort()
}

Deno.test("created twice in two directories: byte-identical files, nothing left behind", async () => {
  await withTempDir(async (parent) => {
    const [a, b] = await Promise.all([ensureDefaultModel(`${parent}/a`), ensureDefaultModel(`${parent}/b/nested`)])
    assert.equal(a, `${parent}/a`)
    assert.deepEqual(await listDir(parent), ["a", "b"])
    assert.deepEqual(await listDir(a), FILES)
    for (const f of FILES) assert.deepEqual(await Deno.readFile(`${a}/${f}`), await Deno.readFile(`${b}/${f}`), f)
  })
})

Deno.test("config.json is an HF LLaMA config with grouped-query attention", async () => {
  await withTempDir(async (parent) => {
    const dir = await ensureDefaultModel(`${parent}/m`)
    const c = JSON.parse(await Deno.readTextFile(`${dir}/config.json`))
    assert.deepEqual(c, JSON.parse(JSON.stringify(DEFAULT_MODEL_CONFIG)))
    assert.deepEqual(c.architectures, ["LlamaForCausalLM"])
    assert.equal(c.model_type, "llama")
    assert.equal(c.hidden_act, "silu")
    assert.equal(c.tie_word_embeddings, false)
    assert.ok(c.num_key_value_heads < c.num_attention_heads, "GQA")
    assert.equal(c.num_attention_heads % c.num_key_value_heads, 0)
    assert.equal(c.head_dim * c.num_attention_heads, c.hidden_size)
    assert.equal(c.rms_norm_eps, 1e-5)
    assert.equal(c.rope_theta, 10000)
    // The tokenizer agrees with the config.
    const tok = await loadTokenizer(dir)
    assert.equal(tok.vocabSize, c.vocab_size)
    assert.deepEqual([tok.bosId, tok.eosId, tok.padId], [c.bos_token_id, c.eos_token_id, c.pad_token_id])
    assert.equal(
      tok.decode(tok.encode("### Response:\nAnswer: 42", { addBos: true }), { skipSpecial: true }),
      "### Response:\nAnswer: 42",
    )
  })
})

Deno.test("model.safetensors holds every HF LLaMA tensor with the right shape and init", async () => {
  await withTempDir(async (parent) => {
    const dir = await ensureDefaultModel(`${parent}/m`)
    const c = DEFAULT_MODEL_CONFIG
    const [V, D, F, Dh, H, KV] = [
      c.vocab_size,
      c.hidden_size,
      c.intermediate_size,
      c.head_dim,
      c.num_attention_heads,
      c.num_key_value_heads,
    ]
    const expected = new Map<string, number[]>([["model.embed_tokens.weight", [V, D]], ["model.norm.weight", [D]], [
      "lm_head.weight",
      [V, D],
    ]])
    for (let i = 0; i < c.num_hidden_layers; i++) {
      const p = `model.layers.${i}`
      expected.set(`${p}.input_layernorm.weight`, [D])
      expected.set(`${p}.post_attention_layernorm.weight`, [D])
      expected.set(`${p}.self_attn.q_proj.weight`, [H * Dh, D])
      expected.set(`${p}.self_attn.k_proj.weight`, [KV * Dh, D])
      expected.set(`${p}.self_attn.v_proj.weight`, [KV * Dh, D])
      expected.set(`${p}.self_attn.o_proj.weight`, [D, H * Dh])
      expected.set(`${p}.mlp.gate_proj.weight`, [F, D])
      expected.set(`${p}.mlp.up_proj.weight`, [F, D])
      expected.set(`${p}.mlp.down_proj.weight`, [D, F])
    }
    using st = await openSafetensors(`${dir}/model.safetensors`)
    assert.deepEqual(st.metadata, { format: "pt" })
    assert.deepEqual([...st.tensors.keys()].sort(), [...expected.keys()].sort())
    for (const [name, info] of st.tensors) {
      assert.equal(info.dtype, "F32", name)
      assert.deepEqual(info.shape, expected.get(name), name)
    }
    const stdOf = (x: Float32Array) => Math.sqrt(x.reduce((s, v) => s + v * v, 0) / x.length)
    // Norm weights are ones; linear/embedding weights normal(0, 0.02); lm_head normal(0, 1/√D).
    assert.ok((await st.readF32("model.layers.2.post_attention_layernorm.weight")).every((v) => v === 1))
    assert.ok((await st.readF32("model.norm.weight")).every((v) => v === 1))
    // Relative standard error of a sample std is 1/√(2n) ≤ 0.6 % for n ≥ 16384; allow 3 %.
    for (
      const name of [
        "model.embed_tokens.weight",
        "model.layers.0.self_attn.k_proj.weight",
        "model.layers.3.mlp.down_proj.weight",
      ]
    ) {
      const s = stdOf(await st.readF32(name))
      assert.ok(Math.abs(s / 0.02 - 1) < 0.03, `${name} std ${s}`)
    }
    const sHead = stdOf(await st.readF32("lm_head.weight"))
    assert.ok(Math.abs(sHead * Math.sqrt(D) - 1) < 0.03, `lm_head std ${sHead}`)
    // Pinned values: seed 20240501, each tensor from Rng.fromSeed(seed).fork(name).
    const embed = await st.readF32("model.embed_tokens.weight")
    const pinned = [-0.023015504702925682, 0.024325650185346603, -0.027865290641784668, 0.02993415668606758]
    assert.deepEqual(Array.from(embed.slice(0, 4)), pinned)
    const down = await st.readF32("model.layers.3.mlp.down_proj.weight")
    assert.deepEqual(Array.from(down.slice(0, 2)), [-0.013544942252337933, 0.008611747995018959])
    // Different tensors draw from different streams.
    const q0 = await st.readF32("model.layers.0.self_attn.q_proj.weight")
    const q1 = await st.readF32("model.layers.1.self_attn.q_proj.weight")
    assert.notDeepEqual(q0.slice(0, 8), q1.slice(0, 8))
  })
})

Deno.test("ensureDefaultModel: reuses a complete model, rebuilds a partial one, refuses a foreign directory", async () => {
  await withTempDir(async (parent) => {
    const dir = `${parent}/m`
    await ensureDefaultModel(dir)
    const mtime = (await Deno.stat(`${dir}/model.safetensors`)).mtime
    await new Promise((r) => setTimeout(r, 20))
    await ensureDefaultModel(dir)
    assert.deepEqual((await Deno.stat(`${dir}/model.safetensors`)).mtime, mtime, "a complete model is not rewritten")
    const reference = await Deno.readFile(`${dir}/model.safetensors`)

    // A truncated weight file or a missing tokenizer is repaired.
    await Deno.writeFile(`${dir}/model.safetensors`, reference.subarray(0, 1000))
    await ensureDefaultModel(dir)
    assert.deepEqual(await Deno.readFile(`${dir}/model.safetensors`), reference)
    await Deno.remove(`${dir}/tokenizer.json`)
    await ensureDefaultModel(dir)
    assert.deepEqual(await listDir(dir), FILES)
    assert.deepEqual(await listDir(parent), ["m"], "no temporary directory left")

    // Concurrent creators of one directory both succeed with the same files.
    await Deno.remove(dir, { recursive: true })
    await Promise.all([ensureDefaultModel(dir), ensureDefaultModel(dir), ensureDefaultModel(dir)])
    assert.deepEqual(await Deno.readFile(`${dir}/model.safetensors`), reference)
    assert.deepEqual(await listDir(parent), ["m"], "no temporary directory left")

    // A directory with other content is never deleted.
    const foreign = `${parent}/mine`
    await Deno.mkdir(foreign)
    await Deno.writeTextFile(`${foreign}/notes.txt`, "keep me")
    const err = await ensureDefaultModel(foreign).then(() => null, (e) => e)
    assert.ok(err instanceof ConfigError, `expected ConfigError, got ${err}`)
    assert.equal(err.file, foreign)
    assert.equal(await Deno.readTextFile(`${foreign}/notes.txt`), "keep me")
    assert.deepEqual(await listDir(parent), ["m", "mine"])
  })
})

Deno.test("default directory is <repo>/.cache/default-model-v1", () => {
  const repo = new URL("..", import.meta.url).pathname.replace(/\/$/, "")
  assert.equal(DEFAULT_MODEL_DIR, `${repo}/.cache/default-model-v1`)
})
