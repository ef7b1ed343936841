import assert from "node:assert/strict"
import { ConfigError } from "../src/errors.ts"
import { loadTokenizer } from "../src/io/tokenizer.ts"
import { buildDefaultTokenizer } from "../src/model/default_tokenizer.ts"

const ALPACA = "Below is an instruction that describes a task, paired with an input that provides further context. " +
  "Write a response that appropriately completes the request.\n\n### Instruction:\nAdd 17 and 25.\n\n" +
  "### Input:\nNumbers: 17, 25\n\n### Response:\n42"

/** Writes the given JSON files into a fresh temp dir and runs `fn` on it. */
async function withModelDir(files: Record<string, unknown>, fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "tokenizer_test_" })
  try {
    for (const [name, v] of Object.entries(files)) {
      await Deno.writeTextFile(`${dir}/${name}`, typeof v === "string" ? v : JSON.stringify(v))
    }
    await fn(dir)
  } finally {
    await Deno.remove(dir, { recursive: true })
  }
}

const defaults = () => {
  const { tokenizerJson, tokenizerConfig } = buildDefaultTokenizer()
  return { "tokenizer.json": tokenizerJson, "tokenizer_config.json": tokenizerConfig }
}

Deno.test("default tokenizer: encode → decode round-trips typical and unusual text", async () => {
  await withModelDir(defaults(), async (dir) => {
    const tok = await loadTokenizer(dir)
    assert.equal(tok.vocabSize, 512)
    const printable = Array.from({ length: 95 }, (_, i) => String.fromCharCode(32 + i)).join("")
    const texts = [ALPACA, "Answer: B", printable, "line one\nline two\n\n\ttab", "  two  spaces ", "Ünïcödé → 😀", "a"]
    for (const text of texts) {
      const ids = tok.encode(text, { addBos: true, addEos: true })
      assert.equal(ids[0], 1)
      assert.equal(ids.at(-1), 2)
      assert.ok(!ids.includes(tok.unkId!), `no <unk> in ${JSON.stringify(text)}`)
      assert.equal(tok.decode(ids, { skipSpecial: true }), text)
      assert.equal(tok.decode(tok.encode(text, { addBos: false, addEos: false })), text)
    }
    // The template is merged into whole words: far fewer tokens than characters.
    assert.ok(tok.encode(ALPACA, { addBos: false }).length < ALPACA.length / 3)
    assert.deepEqual(tok.encode("", { addBos: false, addEos: false }), [])
    assert.equal(tok.decode([]), "")
    // Ids beyond the vocabulary are skipped (as HF does), special ids kept unless skipSpecial.
    assert.equal(tok.decode([tok.tokenToId("▁Answer")!, 9999]), "Answer")
    assert.equal(tok.decode([1, tok.tokenToId("▁Answer")!, 2]), "<s> Answer</s>")
  })
})

Deno.test("default tokenizer: ids and defaults come from tokenizer_config.json", async () => {
  await withModelDir(defaults(), async (dir) => {
    const tok = await loadTokenizer(dir)
    assert.deepEqual([tok.padId, tok.bosId, tok.eosId, tok.unkId], [0, 1, 2, 3])
    assert.equal(tok.tokenToId("<s>"), 1)
    assert.equal(tok.tokenToId("<0x0A>"), 4 + 10)
    assert.equal(tok.tokenToId("no such token"), null)
    assert.equal(tok.idToToken(3), "<unk>")
    // add_bos_token: true, add_eos_token: false
    assert.deepEqual([tok.addBosDefault, tok.addEosDefault], [true, false])
    const ids = tok.encode("hello")
    assert.equal(ids[0], 1)
    assert.notEqual(ids.at(-1), 2)
  })
})

Deno.test("special tokens: {content} objects, config.json fallback, pad falls back to unk", async () => {
  const { tokenizerJson, tokenizerConfig } = buildDefaultTokenizer()
  const config = {
    ...tokenizerConfig,
    bos_token: { content: "</s>", lstrip: false, normalized: false, rstrip: false, single_word: false },
    eos_token: { content: "<s>" },
    pad_token: null,
    add_bos_token: false,
    add_eos_token: true,
  }
  await withModelDir(
    { "tokenizer.json": tokenizerJson, "tokenizer_config.json": config, "config.json": { pad_token_id: 3 } },
    async (dir) => {
      const tok = await loadTokenizer(dir)
      assert.deepEqual([tok.bosId, tok.eosId, tok.padId], [2, 1, 3])
      const ids = tok.encode("x")
      assert.notEqual(ids[0], 2)
      assert.equal(ids.at(-1), 1)
      // Explicit fallback ids win over config.json; with neither, pad = unk.
      const tok2 = await loadTokenizer(dir, { fallbackIds: {} })
      assert.equal(tok2.padId, 3)
    },
  )
  // No tokenizer_config.json: ids from config.json (a list eos as in LLaMA-3 takes its first entry); BOS default
  // from the post-processor (TemplateProcessing adds <s>).
  await withModelDir(
    { "tokenizer.json": tokenizerJson, "config.json": { bos_token_id: 1, eos_token_id: [2, 0], pad_token_id: null } },
    async (dir) => {
      const tok = await loadTokenizer(dir)
      assert.deepEqual([tok.bosId, tok.eosId, tok.unkId, tok.padId], [1, 2, null, 2])
      assert.deepEqual([tok.addBosDefault, tok.addEosDefault], [true, false])
    },
  )
})

/** GPT-2 byte → printable character map used by ByteLevel (LLaMA-3) tokenizers. */
function bytesToUnicode(): string[] {
  const keep = (b: number) => (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255)
  let extra = 0
  return Array.from({ length: 256 }, (_, b) => String.fromCodePoint(keep(b) ? b : 256 + extra++))
}

Deno.test("a LLaMA-3-style ByteLevel BPE tokenizer loads and round-trips", async () => {
  const byteChars = bytesToUnicode()
  const merges = [["Ġ", "t"], ["h", "e"], ["Ġt", "he"]]
  const vocab: Record<string, number> = {}
  byteChars.forEach((c, i) => vocab[c] = i)
  merges.forEach(([a, b], i) => vocab[a + b] = 256 + i)
  const bot = "<|begin_of_text|>", eot = "<|end_of_text|>"
  const special = (content: string, id: number) => ({ id, content, special: true, normalized: false })
  const tokenizerJson = {
    added_tokens: [special(bot, 259), special(eot, 260)],
    normalizer: null,
    pre_tokenizer: {
      type: "Sequence",
      pretokenizers: [
        { type: "Split", pattern: { Regex: "\\s?\\w+|\\s?[^\\s\\w]+|\\s+" }, behavior: "Isolated", invert: false },
        { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: false },
      ],
    },
    post_processor: {
      type: "TemplateProcessing",
      single: [{ SpecialToken: { id: bot, type_id: 0 } }, { Sequence: { id: "A", type_id: 0 } }],
      pair: [],
      special_tokens: { [bot]: { id: bot, ids: [259], tokens: [bot] } },
    },
    decoder: { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: { type: "BPE", vocab, merges, ignore_merges: true, byte_fallback: false, unk_token: null },
  }
  const tokenizerConfig = { bos_token: bot, eos_token: eot, clean_up_tokenization_spaces: true }
  await withModelDir({ "tokenizer.json": tokenizerJson, "tokenizer_config.json": tokenizerConfig }, async (dir) => {
    const tok = await loadTokenizer(dir)
    assert.deepEqual([tok.vocabSize, tok.bosId, tok.eosId, tok.unkId, tok.padId], [261, 259, 260, null, 260])
    assert.deepEqual([tok.addBosDefault, tok.addEosDefault], [true, false])
    const ids = tok.encode("in the end é", { addEos: true })
    assert.equal(ids[0], 259)
    assert.equal(ids.at(-1), 260)
    assert.ok(ids.includes(258), "the merge Ġt+he gives one token")
    assert.equal(tok.decode(ids, { skipSpecial: true }), "in the end é")
  })
})

Deno.test("bad tokenizer files → ConfigError naming the file", async () => {
  const expectConfigError = async (dir: string, file: string, key = "") => {
    const err = await loadTokenizer(dir).then(() => null, (e) => e)
    assert.ok(err instanceof ConfigError, `expected ConfigError, got ${err}`)
    assert.equal(err.file, `${dir}/${file}`)
    assert.equal(err.key, key)
    assert.ok(err.message.startsWith(`${dir}/${file}`), err.message)
  }
  const { tokenizerJson, tokenizerConfig } = buildDefaultTokenizer()
  await withModelDir({}, (dir) => expectConfigError(dir, "tokenizer.json"))
  await withModelDir({ "tokenizer.json": "{ not json" }, (dir) => expectConfigError(dir, "tokenizer.json"))
  await withModelDir({ "tokenizer.json": [1, 2] }, (dir) => expectConfigError(dir, "tokenizer.json"))
  await withModelDir(
    { "tokenizer.json": { version: "1.0" } },
    (dir) => expectConfigError(dir, "tokenizer.json", "model"),
  )
  await withModelDir(
    { "tokenizer.json": { ...tokenizerJson, model: { type: "NoSuchModel" } } },
    (dir) => expectConfigError(dir, "tokenizer.json"),
  )
  await withModelDir(
    { "tokenizer.json": tokenizerJson, "tokenizer_config.json": "[oops" },
    (dir) => expectConfigError(dir, "tokenizer_config.json"),
  )
  await withModelDir(
    { "tokenizer.json": tokenizerJson, "tokenizer_config.json": { ...tokenizerConfig, eos_token: "<eos>" } },
    (dir) => expectConfigError(dir, "tokenizer_config.json", "eos_token"),
  )
  await withModelDir(
    { "tokenizer.json": tokenizerJson, "tokenizer_config.json": { ...tokenizerConfig, bos_token: 7 } },
    (dir) => expectConfigError(dir, "tokenizer_config.json", "bos_token"),
  )
  await withModelDir(
    { "tokenizer.json": tokenizerJson, "config.json": { bos_token_id: 1, pad_token_id: 9999 } },
    (dir) => expectConfigError(dir, "config.json", "pad_token_id"),
  )
  await withModelDir(
    { "tokenizer.json": tokenizerJson, "config.json": { eos_token_id: "2" } },
    (dir) => expectConfigError(dir, "config.json", "eos_token_id"),
  )
})
