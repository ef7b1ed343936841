import assert from "node:assert/strict"
import { join } from "node:path"
import { demoDataFiles } from "../config/data/make_demo_data.ts"
import { loadTrainConfig } from "../src/config/train_config.ts"
import { EpochIterator, lengthGroupedOrder, padBatch, sequentialBatches } from "../src/data/batches.ts"
import {
  ALPACA_TEMPLATE,
  loadPromptTemplate,
  loadRecords,
  parsePromptTemplate,
  parseRecords,
  renderChoicePrompt,
  renderPrompt,
} from "../src/data/records.ts"
import { type Example, tokenizeRecord, tokenizeRecords } from "../src/data/tokenize.ts"
import { ConfigError } from "../src/errors.ts"
import { loadTokenizer, type Tokenizer } from "../src/io/tokenizer.ts"
import { ensureDefaultModel } from "../src/model/default_model.ts"
import { checkBatch, nextTokenTargets } from "../src/reference/batch.ts"
import { Rng } from "../src/util/rng.ts"

/** A path of the repository (tests may run from any directory). */
const repo = (path: string) => new URL(`../${path}`, import.meta.url).pathname

/** Character tokenizer: pad 0, BOS 1, EOS 2, char c → code(c) + 3. Exact expectations are easy to write. */
const charTokenizer: Tokenizer = {
  vocabSize: 259,
  bosId: 1,
  eosId: 2,
  unkId: null,
  padId: 0,
  addBosDefault: true,
  addEosDefault: false,
  encode: (text, opts = {}) => [
    ...(opts.addBos ?? true ? [1] : []),
    ...Array.from(text, (c) => c.charCodeAt(0) + 3),
    ...(opts.addEos ?? false ? [2] : []),
  ],
  decode: (ids) => String.fromCharCode(...ids.filter((i) => i > 2).map((i) => i - 3)),
  tokenToId: () => null,
  idToToken: () => null,
}
const chars = (s: string) => Array.from(s, (c) => c.charCodeAt(0) + 3)
const opts = (patch: Partial<Parameters<typeof tokenizeRecords>[2]> = {}) => ({
  cutoffLen: 256,
  trainOnInputs: true,
  template: ALPACA_TEMPLATE,
  file: "d.jsonl",
  ...patch,
})

/** Asserts `fn` throws a ConfigError with this file and key. */
function throwsConfig(fn: () => unknown, file: string, key: string, reason: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof ConfigError, `expected ConfigError, got ${e}`)
    assert.equal(e.file, file)
    assert.equal(e.key, key)
    assert.match(e.reason, reason)
    return true
  })
}

Deno.test("Alpaca rendering matches alpaca-lora's template exactly", () => {
  assert.equal(
    renderPrompt(ALPACA_TEMPLATE, { instruction: "Add 2 and 3.", input: "" }),
    "Below is an instruction that describes a task. Write a response that appropriately completes the request." +
      "\n\n### Instruction:\nAdd 2 and 3.\n\n### Response:\n",
  )
  assert.equal(
    renderPrompt(ALPACA_TEMPLATE, { instruction: "Add.", input: "2, 3" }),
    "Below is an instruction that describes a task, paired with an input that provides further context. " +
      "Write a response that appropriately completes the request.\n\n### Instruction:\nAdd.\n\n### Input:\n2, 3" +
      "\n\n### Response:\n",
  )
  assert.equal(
    renderChoicePrompt({ question: "Which is red?", choices: ["sky", "rose", "grass"] }),
    "Which is red?\nA. sky\nB. rose\nC. grass\nAnswer:",
  )
})

Deno.test("template files: Python format semantics, validation names file and key", async () => {
  const t = parsePromptTemplate(
    { prompt_input: "{{x}} {instruction}|{input}", prompt_no_input: "<{instruction}>" },
    "t.json",
  )
  // values are inserted once, never re-expanded; {{ }} are literal braces
  assert.equal(renderPrompt(t, { instruction: "{input}", input: "IN" }), "{x} {input}|IN")
  assert.equal(renderPrompt(t, { instruction: "i", input: "" }), "<i>")
  assert.equal(t.responseSplit, "### Response:")
  throwsConfig(
    () => parsePromptTemplate({ prompt_input: "{instruction}{inptu}", prompt_no_input: "" }, "t.json"),
    "t.json",
    "prompt_input",
    /unknown placeholder \{inptu\}/,
  )
  throwsConfig(
    () => parsePromptTemplate({ prompt_input: "{instruction}", prompt_no_input: "{input}" }, "t.json"),
    "t.json",
    "prompt_no_input",
    /unknown placeholder \{input\}/,
  )
  throwsConfig(
    () => parsePromptTemplate({ prompt_input: "}", prompt_no_input: "" }, "t.json"),
    "t.json",
    "prompt_input",
    /single '\}'/,
  )
  throwsConfig(() => parsePromptTemplate({ prompt_no_input: "" }, "t.json"), "t.json", "prompt_input", /missing/)
  const short = await loadPromptTemplate(repo("config/templates/short.json"))
  assert.equal(
    renderPrompt(short, { instruction: "Add one to each digit.", input: "4719" }),
    "### Add one to each digit.\n4719\n### Response:\n",
  )
  assert.equal(await loadPromptTemplate(null), ALPACA_TEMPLATE)
})

Deno.test("records: .json arrays and .jsonl, every kind; bad records name file and record", async () => {
  const recs = parseRecords(
    '[{"instruction": "i", "output": "o", "extra": 1}, {"instruction": "i", "input": "x", "output": "o"}, ' +
      '{"text": "t"}, {"input_ids": [5, 6], "labels": [-100, 6]}, ' +
      '{"question": "q", "choices": ["a", "b", "c"], "answer": "C"}, {"question": "q", "choices": ["B", "A"], "answer": "A"}, ' +
      '{"question": "q", "choices": ["x", "y"], "answer": "y"}, {"question": "q", "choices": ["x", "y"], "answer": 0}]',
    "d.json",
  )
  assert.deepEqual(recs, [
    { kind: "instruction", instruction: "i", input: "", output: "o" },
    { kind: "instruction", instruction: "i", input: "x", output: "o" },
    { kind: "text", text: "t" },
    { kind: "tokens", inputIds: [5, 6], labels: [-100, 6] },
    { kind: "choice", question: "q", choices: ["a", "b", "c"], answer: 2 },
    { kind: "choice", question: "q", choices: ["B", "A"], answer: 0 }, // a letter wins over choice text
    { kind: "choice", question: "q", choices: ["x", "y"], answer: 1 },
    { kind: "choice", question: "q", choices: ["x", "y"], answer: 0 },
  ])
  assert.deepEqual(parseRecords('{"text": "a"}\n\n{"text": "b"}\n', "d.jsonl").length, 2)
  assert.equal(parseRecords('{"text": "a"}\n{"text": "b"}', "d.json").length, 2) // JSON lines in a .json file
  throwsConfig(
    () => parseRecords('{"text": "a"}\n\n{"instruction": "i"}\n', "d.jsonl"),
    "d.jsonl",
    "record[1] (line 3).output",
    /string/,
  )
  throwsConfig(
    () => parseRecords('[{"text": "a"}, {"txt": "b"}]', "d.json"),
    "d.json",
    "record[1]",
    /unknown record kind/,
  )
  throwsConfig(() => parseRecords('{"text": 3}', "d.jsonl"), "d.jsonl", "record[0] (line 1).text", /string/)
  throwsConfig(() => parseRecords("{oops", "d.jsonl"), "d.jsonl", "record[0] (line 1)", /not valid JSON/)
  throwsConfig(() => parseRecords('[{"text": "a"},]', "d.json"), "d.json", "", /not valid JSON/)
  throwsConfig(() => parseRecords("\n", "d.jsonl"), "d.jsonl", "", /no records/)
  throwsConfig(
    () => parseRecords('[{"input_ids": [1, 2], "labels": [1]}]', "d.json"),
    "d.json",
    "record[0].labels",
    /1 entries for 2/,
  )
  throwsConfig(
    () => parseRecords('[{"input_ids": [1, -2]}]', "d.json"),
    "d.json",
    "record[0].input_ids",
    /non-negative/,
  )
  throwsConfig(
    () => parseRecords('[{"input_ids": [1], "labels": [-1]}]', "d.json"),
    "d.json",
    "record[0].labels",
    /-100/,
  )
  throwsConfig(
    () => parseRecords('[{"question": "q", "choices": ["a"], "answer": 0}]', "d.json"),
    "d.json",
    "record[0].choices",
    /2 to 26/,
  )
  throwsConfig(
    () => parseRecords('[{"question": "q", "choices": ["a", "b"], "answer": "C"}]', "d.json"),
    "d.json",
    "record[0].answer",
    /choice index/,
  )
  throwsConfig(
    () => parseRecords('[{"question": "q", "choices": ["a", "b"], "answer": 2}]', "d.json"),
    "d.json",
    "record[0].answer",
    /choice index/,
  )
  await assert.rejects(
    loadRecords("no/such/file.jsonl"),
    (e: unknown) => e instanceof ConfigError && /not found/.test(e.message),
  )
})

Deno.test("tokenize: instruction masking with train_on_inputs, text BOS/EOS, token ids exact, cutoff", () => {
  const rec = { kind: "instruction", instruction: "I", input: "", output: "out" } as const
  const prompt = renderPrompt(ALPACA_TEMPLATE, rec)
  const ids = [1, ...chars(prompt + "out"), 2]
  const all = tokenizeRecord(rec, charTokenizer, opts(), 0)
  assert.deepEqual(all.ids, ids)
  assert.deepEqual(all.labels, ids)
  const masked = tokenizeRecord(rec, charTokenizer, opts({ trainOnInputs: false }), 0)
  const p = 1 + prompt.length
  assert.deepEqual(masked.ids, ids)
  assert.deepEqual(masked.labels, [...new Array(p).fill(-100), ...chars("out"), 2])

  const text = tokenizeRecord({ kind: "text", text: "hey" }, charTokenizer, opts({ trainOnInputs: false }), 0)
  assert.deepEqual(text.ids, [1, ...chars("hey"), 2])
  assert.deepEqual(text.labels, text.ids)

  const tok = tokenizeRecord({ kind: "tokens", inputIds: [7, 8, 9], labels: null }, null, opts(), 0)
  assert.deepEqual([tok.ids, tok.labels], [[7, 8, 9], [7, 8, 9]])
  const tokL = tokenizeRecord(
    { kind: "tokens", inputIds: [7, 8, 9], labels: [-100, -100, 9] },
    null,
    opts({ cutoffLen: 2 }),
    0,
  )
  assert.deepEqual([tokL.ids, tokL.labels], [[7, 8], [-100, -100]])

  const cut = tokenizeRecord(rec, charTokenizer, opts({ cutoffLen: 10, trainOnInputs: false }), 0)
  assert.deepEqual(cut.ids, ids.slice(0, 10))
  assert.deepEqual(cut.labels, new Array(10).fill(-100))
  throwsConfig(() => tokenizeRecord({ kind: "text", text: "x" }, null, opts(), 4), "d.jsonl", "record[4]", /tokenizer/)
})

Deno.test("tokenize: multiple choice keeps the prompt length and every continuation", () => {
  const rec = { kind: "choice", question: "Q?", choices: ["x", "y", "z"], answer: 1 } as const
  const prompt = "Q?\nA. x\nB. y\nC. z\nAnswer:"
  const ex = tokenizeRecord(rec, charTokenizer, opts({ trainOnInputs: false }), 0)
  const p = 1 + prompt.length
  assert.deepEqual(ex.ids, [1, ...chars(prompt + " B"), 2])
  assert.deepEqual(ex.labels, [...new Array(p).fill(-100), ...chars(" B"), 2])
  assert.deepEqual(ex.choices, { promptLength: p, continuations: [chars(" A"), chars(" B"), chars(" C")], answer: 1 })
  throwsConfig(
    () => tokenizeRecord(rec, charTokenizer, opts({ cutoffLen: p + 1 }), 3),
    "d.jsonl",
    "record[3]",
    /needs 28 tokens/,
  )
})

const ex = (ids: readonly number[], labels = ids): Example => ({ ids, labels })

Deno.test("padBatch: right and left padding give a correct BatchDescriptor, labels and shifted targets", () => {
  const a = ex([1, 10, 11, 12, 2], [-100, -100, 11, 12, 2])
  const b = ex([1, 20, 2])
  const c = ex([1, 30])
  for (const padSide of ["right", "left"] as const) {
    const { batch, labels, targets } = padBatch([{ slot: 0, examples: [a, b] }, { slot: 3, examples: [c] }], {
      padSide,
      padId: 0,
    })
    checkBatch(batch, { vocabSize: 64 })
    assert.equal(batch.rows, 3)
    assert.equal(batch.seqLen, 5)
    assert.deepEqual(batch.lengths, [5, 3, 2])
    assert.equal(batch.padSide, padSide)
    assert.deepEqual(batch.segments, [{ start: 0, end: 2, slot: 0 }, { start: 2, end: 3, slot: 3 }])
    const P = -100
    if (padSide === "right") {
      assert.deepEqual([...batch.tokens], [1, 10, 11, 12, 2, 1, 20, 2, 0, 0, 1, 30, 0, 0, 0])
      assert.deepEqual([...labels], [P, P, 11, 12, 2, 1, 20, 2, P, P, 1, 30, P, P, P])
      assert.deepEqual([...targets], [-1, 11, 12, 2, -1, 20, 2, -1, -1, -1, 30, -1, -1, -1, -1])
    } else {
      assert.deepEqual([...batch.tokens], [1, 10, 11, 12, 2, 0, 0, 1, 20, 2, 0, 0, 0, 1, 30])
      assert.deepEqual([...labels], [P, P, 11, 12, 2, P, P, 1, 20, 2, P, P, P, 1, 30])
      assert.deepEqual([...targets], [-1, 11, 12, 2, -1, -1, -1, 20, 2, -1, -1, -1, -1, 30, -1])
    }
    // with every token predicted the targets are the reference next-token targets
    const full = padBatch([{ slot: 0, examples: [ex(a.ids), b, c] }], { padSide, padId: 0 })
    assert.deepEqual([...full.targets], [...nextTokenTargets(full.batch)])
  }
  const rounded = padBatch([{ slot: 1, examples: [b] }], { padSide: "left", padId: 5, padMultiple: 8 })
  assert.equal(rounded.batch.seqLen, 8)
  assert.deepEqual([...rounded.batch.tokens], [5, 5, 5, 5, 5, 1, 20, 2])
  assert.throws(() => padBatch([{ slot: 0, examples: [] }], { padSide: "left", padId: 0 }), RangeError)
  assert.deepEqual(sequentialBatches([a, b, c], 2), [[a, b], [c]])
})

/** n examples of lengths drawn from a fixed stream (1..20). */
const examples = (n: number): Example[] => {
  const rng = Rng.fromSeed(7)
  return Array.from({ length: n }, (_, i) => ex(Array.from({ length: 1 + rng.nextInt(20) }, () => i % 50)))
}

Deno.test("group_by_length: HF mega-batches sorted longest first, the longest example leads", () => {
  const lengths = examples(45).map((e) => e.ids.length)
  const order = lengthGroupedOrder(lengths, 2, Rng.fromSeed(3))
  assert.deepEqual([...order].sort((x, y) => x - y), Array.from({ length: 45 }, (_, i) => i))
  assert.equal(lengths[order[0]], Math.max(...lengths))
  // mega-batch = min(⌊45 / 8⌋, 50) · 2 = 10 examples; apart from the swapped first elements each is sorted
  for (let s = 0; s < 45; s += 10) {
    const mb = order.slice(s, s + 10).map((i) => lengths[i])
    for (let k = 2; k < mb.length; k++) assert.ok(mb[k - 1] >= mb[k], `mega-batch at ${s} sorted: ${mb}`)
  }
  const it = new EpochIterator(examples(45), {
    microBatchSize: 2,
    numEpochs: 1,
    groupByLength: true,
    batchSize: 2,
    rng: Rng.fromSeed(3),
  })
  assert.deepEqual(it.next()!.indices, order.slice(0, 2))
})

/** All micro-batches of an iterator as index lists tagged with epoch. */
const drain = (it: EpochIterator): string[] => {
  const out: string[] = []
  for (let mb = it.next(); mb !== null; mb = it.next()) out.push(`${mb.epoch}:${mb.indices.join(",")}`)
  return out
}

Deno.test("epochs: seeded shuffle is deterministic, each epoch a permutation, and resume is exact", () => {
  const data = examples(23)
  for (const groupByLength of [false, true]) {
    const o = { microBatchSize: 4, numEpochs: 3, groupByLength, batchSize: 8 }
    const it = new EpochIterator(data, { ...o, rng: Rng.fromSeed(11) })
    assert.equal(it.microBatchesPerEpoch, 6)
    const full = drain(it)
    assert.equal(full.length, 18)
    assert.ok(it.done)
    assert.equal(it.next(), null)
    assert.deepEqual(drain(new EpochIterator(data, { ...o, rng: Rng.fromSeed(11) })), full)
    assert.notDeepEqual(drain(new EpochIterator(data, { ...o, rng: Rng.fromSeed(12) })), full)
    const epochs = [0, 1, 2].map((e) =>
      full.filter((s) => s.startsWith(`${e}:`)).flatMap((s) => s.slice(2).split(",").map(Number))
    )
    for (const e of epochs) assert.deepEqual([...e].sort((x, y) => x - y), Array.from({ length: 23 }, (_, i) => i))
    assert.notDeepEqual(epochs[0], epochs[1])

    // stop after k micro-batches, save the state as JSON, resume in a fresh iterator
    for (const k of [0, 1, 5, 6, 7, 13, 17, 18]) {
      const first = new EpochIterator(data, { ...o, rng: Rng.fromSeed(11) })
      const head: string[] = []
      for (let i = 0; i < k; i++) {
        const mb = first.next()!
        head.push(`${mb.epoch}:${mb.indices.join(",")}`)
      }
      const saved = JSON.parse(JSON.stringify(first.state()))
      const resumed = new EpochIterator(data, { ...o, rng: Rng.fromSeed(999), state: saved })
      assert.deepEqual([...head, ...drain(resumed)], full, `resume after ${k} micro-batches`)
    }
  }
  const o = { microBatchSize: 4, numEpochs: 2, groupByLength: false, batchSize: 4, rng: Rng.fromSeed(1) }
  const state = new EpochIterator(data, o).state()
  assert.throws(
    () => new EpochIterator(examples(22), { ...o, state }),
    /saved state is for 23 examples, the data has 22/,
  )
  assert.throws(() => new EpochIterator(data, { ...o, state: { ...state, epoch: 5 } }), /outside 2 epochs/)
  const it = new EpochIterator(data, o)
  assert.equal(it.peekMaxLength(), Math.max(...it.next()!.examples.map((e) => e.ids.length)))
})

Deno.test("demo data: regenerating gives the committed files; every record fits 64 tokens of the default tokenizer", async () => {
  const dir = repo("config/data")
  for (const [name, text] of Object.entries(demoDataFiles())) {
    assert.equal(await Deno.readTextFile(join(dir, name)), text, `${name} is stale: run config/data/make_demo_data.ts`)
  }
  const tokenizer = await loadTokenizer(await ensureDefaultModel())
  const { config } = await loadTrainConfig(repo("config/demo.json"))
  for (const adapter of config.adapters) {
    const template = await loadPromptTemplate(adapter.prompt)
    const train = tokenizeRecords(await loadRecords(adapter.data), tokenizer, {
      ...opts({ template }),
      file: adapter.data,
    })
    const test = tokenizeRecords(await loadRecords(adapter.testData!), tokenizer, {
      ...opts({ template }),
      file: adapter.data,
    })
    const trainText = new Set(train.map((e) => e.ids.join(",")))
    assert.ok(test.every((e) => !trainText.has(e.ids.join(","))), `${adapter.name}: test records are held out`)
    const longest = Math.max(...[...train, ...test].map((e) => e.ids.length))
    assert.ok(longest <= config.cutoffLen, `${adapter.name}: longest ${longest} tokens`)
    for (const e of test.filter((e) => e.choices)) {
      assert.ok(e.choices!.continuations.every((c) => c.length === 1), "each choice letter is one token")
    }
  }
})
