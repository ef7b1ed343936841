/**
 * Evaluation (src/eval/evaluate.ts, src/eval/run.ts, `deno task eval`) on the embedded model, f32 base, with
 * three non-trivial adapters (LoRA, MixLoRA top-2, MixLoRA dynamic: seeded init, then random B matrices and
 * routers) and a few demo test records each:
 * - packed evaluation equals evaluating each adapter alone (loss, scores: rel 1e-5; tokens and accuracy exact),
 *   one readback per packed batch;
 * - the loss equals the f32 reference (src/reference/llama_train.ts, per-segment mean next-token CE): rel 1e-4;
 * - every choice's score equals −Σ reference CE over its continuation tokens (each choice in its own reference
 *   row; abs 1e-4 · max(1, |score|)), and accuracy follows argmax: answers forced to the reference's favourite
 *   choice give 1, to its least liked 0, alternating 0.5;
 * - the CLI: `--report` writes exactly the spec's JSON with the in-process numbers, the table shows before/after
 *   columns, the fresh "before" adapters are what `deno task train` starts from; a missing adapter directory or a
 *   bad test record gives one error line naming it, exit 1;
 * - `--inference`: the report's generations have exactly the spec's keys, the prompts are the test records' prompts
 *   (or the lines piped to stdin, rendered with the template), at most max_new_tokens new tokens each (EOS only
 *   last), text = decode(output_ids); greedy runs repeat exactly, seeded sampling too, and the CLI's packed outputs
 *   equal each adapter generating alone; the terminal stream prints exactly the finished blocks.
 */
import assert from "node:assert/strict"
import { loadTrainConfig } from "../src/config/train_config.ts"
import { padBatch } from "../src/data/batches.ts"
import { type DataRecord, loadPromptTemplate, loadRecords } from "../src/data/records.ts"
import { type Example, promptIds, tokenizeRecords } from "../src/data/tokenize.ts"
import { argmax, type EvalTask, evaluate } from "../src/eval/evaluate.ts"
import { formatGeneration, GenerationStream, type PromptLabel } from "../src/eval/generation_output.ts"
import { type GenerationSettings, runGenerations } from "../src/eval/generations.ts"
import { freshAdapter, prepareEvaluation, runEvaluation } from "../src/eval/run.ts"
import { GpuContext } from "../src/gpu/context.ts"
import { loadTokenizer } from "../src/io/tokenizer.ts"
import type { AdapterSpec, AdapterWeights, LoraPair, MoeSpec } from "../src/model/adapter.ts"
import { downloadAdapter } from "../src/model/adapter_device.ts"
import { initAdapter } from "../src/model/adapter_init.ts"
import { saveAdapter } from "../src/model/adapter_io.ts"
import { loadHostBase, uploadBase } from "../src/model/base_weights.ts"
import { ensureDefaultModel } from "../src/model/default_model.ts"
import { readLlamaConfig } from "../src/model/hf_config.ts"
import { LlamaModel } from "../src/model/llama.ts"
import type { BatchDescriptor } from "../src/model/types.ts"
import { nextTokenTargets, rowStart } from "../src/reference/batch.ts"
import { referenceTrainForward } from "../src/reference/llama_train.ts"
import { TrainJob } from "../src/train/job.ts"
import { Rng } from "../src/util/rng.ts"

const ROOT = new URL("../", import.meta.url).pathname
const DATA = `${ROOT}config/data`
const TEMPLATE = `${ROOT}config/templates/short.json`
const ctx = await GpuContext.create()
const baseDir = await ensureDefaultModel()
const config = await readLlamaConfig(baseDir)
const base = await uploadBase(ctx, baseDir, config, { load8bit: false })
const host = await loadHostBase(baseDir, config, { load8bit: false })
const tokenizer = await loadTokenizer(baseDir)
const model = new LlamaModel(ctx, base)
const template = await loadPromptTemplate(TEMPLATE)

const moe = (m: Partial<MoeSpec>): MoeSpec => ({
  routing: "mixlora",
  numExperts: 3,
  topK: 2,
  topP: 1,
  expertCapacity: 0,
  actFn: "silu",
  routerAuxLossCoef: 0.001,
  routerInitRange: 0.02,
  jitterNoise: 0,
  ...m,
})

/** Dropout and jitter are set so that a forward that applied them at evaluation would not match. */
const SPECS: AdapterSpec[] = [
  {
    name: "lora",
    kind: "lora",
    r: 4,
    alpha: 8,
    useRslora: false,
    dropout: 0.1,
    targets: ["q_proj", "v_proj", "down_proj"],
  },
  {
    name: "moe_top2",
    kind: "mixlora",
    r: 4,
    alpha: 8,
    useRslora: false,
    dropout: 0.05,
    targets: ["q_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    moe: moe({ jitterNoise: 0.1 }),
  },
  {
    name: "moe_dynamic",
    kind: "mixlora",
    r: 3,
    alpha: 6,
    useRslora: false,
    dropout: 0,
    targets: ["v_proj", "gate_proj", "down_proj"],
    moe: moe({ routing: "dynamic", numExperts: 4, topK: 4, topP: 0.75 }),
  },
]
const FILES = ["copy_digits_test.jsonl", "category_choice_test.jsonl", "digit_shift_test.jsonl"]
const COUNTS = [5, 4, 3]

/** Seeded init, then B ~ N(0, 0.05²) everywhere and the router ~ N(0, 0.5²), so every part of the adapter acts. */
function perturbed(spec: AdapterSpec, seed: number): AdapterWeights {
  const rng = Rng.fromSeed(seed)
  const w = initAdapter(spec, config, rng.fork("init"))
  const noise = (n: number, std: number) => Float32Array.from({ length: n }, () => rng.normal(0, std))
  const pairs = <K extends string>(ps: Partial<Record<K, LoraPair>>) =>
    Object.fromEntries(
      Object.entries<LoraPair | undefined>(ps).map(([p, pr]) => [p, { a: pr!.a, b: noise(pr!.b.length, 0.05) }]),
    )
  return {
    spec,
    layers: w.layers.map((l) => ({
      lora: pairs(l.lora),
      router: l.router && noise(l.router.length, 0.5),
      experts: l.experts?.map((ex) => pairs(ex)),
    })),
  }
}

const WEIGHTS = SPECS.map((s, i) => perturbed(s, 100 + i))

const tokenize = (records: readonly DataRecord[], file: string): Example[] =>
  tokenizeRecords(records, tokenizer, { cutoffLen: 64, trainOnInputs: false, template, file })

async function testRecords(i: number, count = COUNTS[i]): Promise<DataRecord[]> {
  return (await loadRecords(`${DATA}/${FILES[i]}`)).slice(0, count)
}

const TASKS: EvalTask[] = await Promise.all(SPECS.map(async (s, i) => ({
  name: s.name,
  weights: WEIGHTS[i],
  examples: tokenize(await testRecords(i), FILES[i]),
  batchSize: 2,
  padSide: i === 1 ? "left" as const : "right" as const,
})))

const relClose = (a: number, b: number, tol: number) => Math.abs(a - b) <= tol * Math.max(Math.abs(b), 1e-30)

Deno.test("eval: packing adapters into shared batches gives the results of evaluating each alone", async () => {
  const packed = await evaluate(model, TASKS, { padId: tokenizer.padId })
  // the choice adapter has 4 loss rows + 8 wrong-choice rows = 6 chunks of 2; the others fewer
  assert.equal(packed.stats.batches, 6)
  assert.equal(packed.stats.roundTrips, packed.stats.batches)
  for (const [i, task] of TASKS.entries()) {
    const alone = await evaluate(model, [task], { padId: tokenizer.padId })
    const p = packed.results[i], a = alone.results[0]
    assert.equal(p.name, task.name)
    assert.ok(relClose(p.loss, a.loss, 1e-5), `${task.name}: packed ${p.loss} vs alone ${a.loss}`)
    assert.equal(p.tokens, a.tokens)
    assert.equal(p.tokens, task.examples.reduce((n, e) => n + e.ids.length - 1, 0))
    assert.ok(Math.abs(p.perplexity - Math.exp(p.loss)) <= 1e-12 * p.perplexity)
    assert.equal(p.accuracy, a.accuracy)
    p.scores.forEach((s, e) => s.forEach((x, c) => assert.ok(relClose(x, a.scores[e][c], 1e-5), `${e}/${c}`)))
  }
  assert.equal(packed.results[0].accuracy, null)
  assert.equal(packed.results[1].choiceRecords, 4)
  assert.ok(packed.results[1].accuracy !== null)
})

Deno.test("eval: the loss is the reference's mean next-token cross-entropy per adapter", async () => {
  const { results } = await evaluate(model, TASKS, { padId: tokenizer.padId })
  const { batch } = padBatch(TASKS.map((t, slot) => ({ slot, examples: t.examples })), {
    padSide: "right",
    padId: tokenizer.padId,
  })
  const ref = referenceTrainForward(config, host, batch, WEIGHTS, { targets: nextTokenTargets(batch) })
  for (const [i, r] of results.entries()) {
    assert.equal(r.tokens, ref.losses[i].count, r.name)
    assert.ok(relClose(r.loss, ref.losses[i].loss, 1e-4), `${r.name}: ${r.loss} vs reference ${ref.losses[i].loss}`)
  }
  // the adapters matter: the base model alone gives other losses
  const baseOnly = referenceTrainForward(
    config,
    host,
    { ...batch, segments: batch.segments.map((g) => ({ ...g, slot: -1 })) },
    [],
    {
      targets: nextTokenTargets(batch),
    },
  )
  for (const [i, r] of results.entries()) {
    assert.ok(
      Math.abs(r.loss - baseOnly.losses[i].loss) > 1e-3,
      `${r.name}: ${r.loss} vs base ${baseOnly.losses[i].loss}`,
    )
  }
})

/** Reference log-likelihood of every choice of every example: each choice a row (and segment) of its own. */
function referenceScores(examples: readonly Example[], w: AdapterWeights): number[][] {
  const rows = examples.flatMap((ex, e) =>
    ex.choices!.continuations.map((cont, c) => ({
      e,
      c,
      P: ex.choices!.promptLength,
      ids: [...ex.ids.slice(0, ex.choices!.promptLength), ...cont],
    }))
  )
  const T = Math.max(...rows.map((r) => r.ids.length))
  const tokens = new Int32Array(rows.length * T).fill(tokenizer.padId)
  const targets = new Int32Array(rows.length * T).fill(-1)
  const batch: BatchDescriptor = {
    rows: rows.length,
    seqLen: T,
    lengths: rows.map((r) => r.ids.length),
    padSide: "left",
    tokens,
    segments: rows.map((_, r) => ({ start: r, end: r + 1, slot: 0 })),
  }
  rows.forEach((row, r) => {
    const s = r * T + rowStart(batch, r)
    tokens.set(row.ids, s)
    for (let t = row.P - 1; t + 1 < row.ids.length; t++) targets[s + t] = row.ids[t + 1]
  })
  const ref = referenceTrainForward(config, host, batch, [w], { targets })
  const out = examples.map((ex) => ex.choices!.continuations.map(() => NaN))
  rows.forEach((row, r) => {
    assert.equal(ref.losses[r].count, row.ids.length - row.P)
    out[row.e][row.c] = -ref.losses[r].loss * ref.losses[r].count
  })
  return out
}

Deno.test("eval: choice scores are the reference log-likelihoods; accuracy is argmax against the answer", async () => {
  const records = (await testRecords(1, 8)) as Extract<DataRecord, { kind: "choice" }>[]
  const w = WEIGHTS[1]
  const want = referenceScores(tokenize(records, FILES[1]), w)
  const { results } = await evaluate(model, [{ ...TASKS[1], examples: tokenize(records, FILES[1]) }], {
    padId: tokenizer.padId,
  })
  want.forEach((s, e) =>
    s.forEach((x, c) => {
      const got = results[0].scores[e][c]
      assert.ok(Math.abs(got - x) <= 1e-4 * Math.max(1, Math.abs(x)), `record ${e} choice ${c}: ${got} vs ${x}`)
    })
  )
  // force the answers: only records whose best and worst choices are clear of the runner-up by 1e-3
  const clear = want.map((s, e) => ({ e, s })).filter(({ s }) => {
    const sorted = [...s].sort((a, b) => b - a)
    return sorted[0] - sorted[1] > 1e-3 && sorted[sorted.length - 2] - sorted[sorted.length - 1] > 1e-3
  })
  assert.ok(clear.length >= 4, `only ${clear.length} records with clear margins`)
  const argmin = (s: number[]) => argmax(s.map((x) => -x))
  const accuracyWith = async (pick: (s: number[], k: number) => number) => {
    const recs = clear.map(({ e, s }, k) => ({ ...records[e], answer: pick(s, k) }))
    const r = await evaluate(model, [{ ...TASKS[1], examples: tokenize(recs, FILES[1]) }], { padId: tokenizer.padId })
    return r.results[0].accuracy
  }
  assert.equal(await accuracyWith((s) => argmax(s)), 1)
  assert.equal(await accuracyWith((s) => argmin(s)), 0)
  const half = clear.length % 2 === 0 ? 0.5 : Math.ceil(clear.length / 2) / clear.length
  assert.equal(await accuracyWith((s, k) => k % 2 === 0 ? argmax(s) : argmin(s)), half)
})

// ---- the command line -----------------------------------------------------------------------------------

const EVAL = `${ROOT}src/cli/eval.ts`
const PRELOAD = `${ROOT}src/no_async_hooks.ts`

/** Runs `deno task eval` with `args`; `stdin` piped when given, else stdin is /dev/null (never the test's own). */
async function runCli(
  args: string[],
  opts: { stdin?: string } = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--preload", PRELOAD, EVAL, ...args],
    stdin: opts.stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn()
  if (opts.stdin !== undefined) {
    const w = child.stdin.getWriter()
    await w.write(new TextEncoder().encode(opts.stdin))
    await w.close()
  }
  const out = await child.output()
  const dec = new TextDecoder()
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) }
}

/** A config of the three adapters over a few test records each, and the adapters saved under `{tmp}/out`. */
async function cliSetup(tmp: string): Promise<string> {
  const lora = SPECS.map((s, i) => ({
    name: s.name,
    lr: 1e-3,
    batch_size: 2,
    num_epochs: 1,
    test_batch_size: 2,
    r: s.r,
    lora_alpha: s.alpha,
    lora_dropout: s.dropout,
    target_modules: s.targets,
    prompt: TEMPLATE,
    data: `${tmp}/${FILES[i]}`,
    test_data: `${tmp}/${FILES[i]}`,
    expand_side: i === 1 ? "left" : "right",
    ...(s.moe
      ? s.moe.routing === "dynamic"
        ? { routing_strategy: "dynamic", num_experts: s.moe.numExperts, top_p: s.moe.topP }
        : { routing_strategy: "mixlora", num_experts: s.moe.numExperts, top_k: s.moe.topK, jitter_noise: 0.1 }
      : {}),
  }))
  for (const [i, f] of FILES.entries()) {
    const lines = (await Deno.readTextFile(`${DATA}/${f}`)).trim().split("\n").slice(0, COUNTS[i])
    await Deno.writeTextFile(`${tmp}/${f}`, lines.join("\n") + "\n")
  }
  await Deno.writeTextFile(`${tmp}/eval.json`, JSON.stringify({ cutoff_len: 64, lora }))
  for (const w of WEIGHTS) await saveAdapter(`${tmp}/out`, w.spec.name, w, { baseModel: baseDir })
  return `${tmp}/eval.json`
}

Deno.test("eval cli: --report writes the spec's JSON with the in-process numbers; the table has before/after", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "mixlora-eval-" })
  try {
    const file = await cliSetup(tmp)
    const p = await prepareEvaluation({ baseDir, config: file, dir: `${tmp}/out`, seed: 42, before: false })
    const { after } = await runEvaluation(ctx, base, p)
    const run = await runCli(["--config", file, "--dir", `${tmp}/out`, "--report", `${tmp}/report.json`])
    assert.equal(run.code, 0, run.stderr)
    const report = JSON.parse(await Deno.readTextFile(`${tmp}/report.json`))
    assert.deepEqual(Object.keys(report), ["adapters"])
    assert.equal(report.adapters.length, 3)
    report.adapters.forEach((a: Record<string, unknown>, i: number) => {
      assert.deepEqual(Object.keys(a), ["name", "loss", "perplexity", "tokens", "accuracy"])
      assert.equal(a.name, SPECS[i].name)
      for (const k of ["loss", "perplexity"] as const) {
        assert.ok(relClose(a[k] as number, after[i][k], 1e-5), `${a.name}.${k}: ${a[k]} vs ${after[i][k]}`)
      }
      assert.equal(a.tokens, after[i].tokens)
      assert.equal(a.accuracy, after[i].accuracy)
    })
    assert.equal(report.adapters[0].accuracy, null)
    assert.equal(typeof report.adapters[1].accuracy, "number")

    const table = await runCli(["--config", file, "--dir", `${tmp}/out`])
    assert.equal(table.code, 0, table.stderr)
    assert.match(table.stdout, /adapter\s+tokens\s+loss before\s+loss after\s+ppl before\s+ppl after\s+acc before/)
    for (const s of SPECS) assert.match(table.stdout, new RegExp(`^${s.name}\\s`, "m"))
    assert.match(table.stdout, /tokens\/s/)
  } finally {
    await Deno.remove(tmp, { recursive: true })
  }
})

Deno.test("eval: the fresh 'before' adapters are the weights deno task train starts from", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "mixlora-eval-fresh-" })
  try {
    const { config: train } = await loadTrainConfig(await cliSetup(tmp))
    for (const cfg of train.adapters) {
      const examples = tokenize(await loadRecords(cfg.data), cfg.data)
      const job = await TrainJob.create(ctx, config, cfg, examples, {
        seed: 9,
        dir: `${tmp}/train`,
        baseModel: baseDir,
        resume: false,
      })
      try {
        const started = await downloadAdapter(ctx, job.dev)
        assert.deepEqual(freshAdapter(cfg, config, 9).layers, started.layers, cfg.name)
      } finally {
        job.release()
      }
    }
  } finally {
    await Deno.remove(tmp, { recursive: true })
  }
})

Deno.test("eval cli: a missing adapter or a bad test record → one error line naming it, exit 1", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "mixlora-eval-bad-" })
  try {
    const file = await cliSetup(tmp)
    const errors = (s: string) => s.trim().split("\n").filter((l) => l.startsWith("error"))
    await Deno.remove(`${tmp}/out/moe_dynamic`, { recursive: true })
    const missing = await runCli(["--config", file, "--dir", `${tmp}/out`, "--report", `${tmp}/r.json`])
    assert.equal(missing.code, 1)
    assert.equal(errors(missing.stderr).length, 1, missing.stderr)
    assert.match(errors(missing.stderr)[0], new RegExp(`${tmp}/out/moe_dynamic: no saved adapter "moe_dynamic"`))
    assert.ok(!(await Deno.stat(`${tmp}/r.json`).then(() => true, () => false)), "no report on error")

    const lines = (await Deno.readTextFile(`${tmp}/${FILES[0]}`)).trim().split("\n")
    lines[1] = JSON.stringify({ instruction: 5, output: "x" })
    await Deno.writeTextFile(`${tmp}/${FILES[0]}`, lines.join("\n") + "\n")
    const bad = await runCli(["--config", file, "--dir", `${tmp}/out`])
    assert.equal(bad.code, 1)
    assert.equal(errors(bad.stderr).length, 1, bad.stderr)
    assert.match(errors(bad.stderr)[0], new RegExp(`${FILES[0]}: key "record\\[1\\] \\(line 2\\)\\.instruction"`))

    const topP = await runCli(["--config", file, "--dir", `${tmp}/out`, "--inference", "--top_p", "2"])
    assert.equal(topP.code, 1)
    assert.deepEqual(errors(topP.stderr), ["error: --top_p: 2 must be in [0, 1]"])
    const maxNew = await runCli(["--config", file, "--dir", `${tmp}/out`, "--inference", "--max_new_tokens", "-1"])
    assert.equal(maxNew.code, 1)
    assert.deepEqual(errors(maxNew.stderr), ["error: --max_new_tokens: -1 must be an integer ≥ 0"])
  } finally {
    await Deno.remove(tmp, { recursive: true })
  }
})

// ---- generation (--inference) ------------------------------------------------------------------------------

type ReportGeneration = { prompt_ids: number[]; output_ids: number[]; text: string }
type ReportAdapter = Record<string, unknown> & { name: string; generations: ReportGeneration[] }

const MAX_NEW = 6
const GREEDY: GenerationSettings = { maxNewTokens: MAX_NEW, temperature: 0, topP: 1, topK: 0, seed: 42 }

/** Runs the CLI with --inference and a report; the report's adapters and the CLI's stdout. */
async function inferenceRun(
  tmp: string,
  file: string,
  args: string[],
  opts: { stdin?: string } = {},
): Promise<{ adapters: ReportAdapter[]; stdout: string }> {
  const report = `${tmp}/report-${crypto.randomUUID().slice(0, 8)}.json`
  const run = await runCli(
    [
      "--config",
      file,
      "--dir",
      `${tmp}/out`,
      "--inference",
      "--max_new_tokens",
      String(MAX_NEW),
      "--report",
      report,
      ...args,
    ],
    opts,
  )
  assert.equal(run.code, 0, run.stderr)
  const parsed = JSON.parse(await Deno.readTextFile(report))
  assert.deepEqual(Object.keys(parsed), ["adapters"])
  return { adapters: parsed.adapters, stdout: run.stdout }
}

/** The spec's keys, lengths, EOS only last, text = decode(output_ids). */
function checkGenerations(adapters: readonly ReportAdapter[], prompts: readonly (readonly number[])[][]): void {
  assert.equal(adapters.length, SPECS.length)
  adapters.forEach((a, i) => {
    assert.deepEqual(Object.keys(a), ["name", "loss", "perplexity", "tokens", "accuracy", "generations"])
    assert.equal(a.name, SPECS[i].name)
    assert.equal(typeof a.loss, "number")
    assert.equal(a.generations.length, prompts[i].length, a.name)
    a.generations.forEach((g, k) => {
      assert.deepEqual(Object.keys(g), ["prompt_ids", "output_ids", "text"])
      assert.deepEqual(g.prompt_ids, prompts[i][k], `${a.name} prompt ${k}`)
      assert.ok(g.output_ids.length >= 1 && g.output_ids.length <= MAX_NEW, `${a.name} ${k}: ${g.output_ids.length}`)
      // a request stops early only on EOS, which ends its output
      g.output_ids.forEach((id, t) => {
        const last = t === g.output_ids.length - 1
        assert.ok(Number.isInteger(id) && id >= 0 && id < config.vocabSize)
        if (!last) assert.notEqual(id, tokenizer.eosId, `${a.name} ${k}: EOS at ${t}`)
        else if (g.output_ids.length < MAX_NEW) assert.equal(id, tokenizer.eosId)
      })
      assert.equal(g.text, tokenizer.decode(g.output_ids, { skipSpecial: true }))
    })
  })
}

Deno.test("eval cli --inference: spec generations from the test prompts; greedy repeats; packed = each adapter alone", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "mixlora-eval-gen-" })
  try {
    const file = await cliSetup(tmp)
    // the first 2 instruction / choice records of each adapter's test data (all of the demo records are)
    const records = await Promise.all(FILES.map((_, i) => testRecords(i)))
    const prompts = records.map((rs) => rs.slice(0, 2).map((r) => promptIds(r, tokenizer, template)!))
    const first = await inferenceRun(tmp, file, ["--num_prompts", "2"])
    checkGenerations(first.adapters, prompts)
    // piped but empty stdin falls back to the test data too
    const second = await inferenceRun(tmp, file, ["--num_prompts", "2"], { stdin: "" })
    assert.deepEqual(second.adapters, first.adapters)
    // at least one adapter says something other than EOS at once, and the adapters differ
    assert.ok(first.adapters.some((a) => a.generations.some((g) => g.output_ids.length > 1)))
    const outs = first.adapters.map((a) => JSON.stringify(a.generations.map((g) => g.output_ids)))
    assert.equal(new Set(outs).size, SPECS.length, outs.join("\n"))
    // the CLI packs the 3 adapters into one generate call; each alone gives the same tokens
    for (const [i, a] of first.adapters.entries()) {
      const alone = await runGenerations(
        model,
        tokenizer,
        [{ name: a.name, weights: WEIGHTS[i], prompts: prompts[i] }],
        {
          ...GREEDY,
        },
      )
      assert.deepEqual(alone.generations[0].map((g) => g.outputIds), a.generations.map((g) => g.output_ids), a.name)
    }
    // the metrics are the ones without --inference
    const p = await prepareEvaluation({ baseDir, config: file, dir: `${tmp}/out`, seed: 42, before: false })
    const { after } = await runEvaluation(ctx, base, p)
    first.adapters.forEach((a, i) => assert.ok(relClose(a.loss as number, after[i].loss, 1e-5), a.name))
    // non-terminal stdout: one block per adapter and prompt, and the generation summary
    const blocks = first.adapters.flatMap((a, i) =>
      a.generations.map((g, k) =>
        formatGeneration({ adapter: a.name, index: k, count: 2, promptIds: prompts[i][k] }, g.text, tokenizer)
      )
    ).join("")
    assert.ok(first.stdout.includes(blocks), first.stdout)
    assert.match(first.stdout, /^generation: 6 prompts, \d+ new tokens in [\d.]+ s: [\d.]+ tokens\/s/m)

    // seeded sampling repeats too, and is not greedy
    const sampled = ["--num_prompts", "2", "--temperature", "1.5", "--top_k", "50", "--seed", "7"]
    const s1 = await inferenceRun(tmp, file, sampled)
    const s2 = await inferenceRun(tmp, file, sampled)
    checkGenerations(s1.adapters, prompts)
    assert.deepEqual(s2.adapters, s1.adapters)
    assert.notDeepEqual(s1.adapters.map((a) => a.generations), first.adapters.map((a) => a.generations))
  } finally {
    await Deno.remove(tmp, { recursive: true })
  }
})

Deno.test("eval cli --inference: lines piped to stdin are the prompts, rendered with each adapter's template", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "mixlora-eval-stdin-" })
  try {
    const file = await cliSetup(tmp)
    const lines = ["Repeat 4711", "Add one to each digit."]
    const { adapters, stdout } = await inferenceRun(tmp, file, [], { stdin: `${lines[0]}\n\n${lines[1]}\r\n` })
    const prompts = lines.map((instruction) =>
      promptIds({ kind: "instruction", instruction, input: "", output: "" }, tokenizer, template)!
    )
    assert.equal(tokenizer.decode(prompts[0], { skipSpecial: true }), "### Repeat 4711\n### Response:\n")
    checkGenerations(adapters, SPECS.map(() => prompts))
    for (const s of SPECS) {
      assert.ok(stdout.includes(`── ${s.name} · prompt 2/2 ──\n### Add one to each digit.\n### Response:\n→ `), stdout)
    }
  } finally {
    await Deno.remove(tmp, { recursive: true })
  }
})

Deno.test("eval: the terminal stream prints each finished block, then streams the last request token by token", () => {
  const ids = (text: string) => tokenizer.encode(text, { addBos: false, addEos: false })
  const labels: PromptLabel[][] = [
    [{ adapter: "a", index: 0, count: 1, promptIds: ids("### first\n") }],
    [
      { adapter: "b", index: 0, count: 2, promptIds: ids("### second\n") },
      { adapter: "b", index: 1, count: 2, promptIds: ids("### third\n") },
    ],
  ]
  const eos = tokenizer.eosId!
  const long = ids("one two three four five")
  const writes: string[] = []
  const stream = new GenerationStream(labels, {
    tokenizer,
    eosId: eos,
    maxNewTokens: long.length,
    write: (t) => writes.push(t),
  })
  // step 1: every request; then b/0 ends with EOS, then a/0 with EOS; b/1 runs to max_new_tokens alone
  stream.token({ task: 0, prompt: 0 }, ids("x")[0])
  stream.token({ task: 1, prompt: 0 }, eos)
  stream.token({ task: 1, prompt: 1 }, long[0])
  assert.equal(writes.join(""), formatGeneration(labels[1][0], "", tokenizer))
  stream.token({ task: 0, prompt: 0 }, eos)
  stream.token({ task: 1, prompt: 1 }, long[1])
  const live = writes.length
  for (const id of long.slice(2)) stream.token({ task: 1, prompt: 1 }, id)
  stream.end()
  assert.ok(writes.length - live >= long.length - 2, "the last request is written token by token")
  const text = (xs: number[]) => tokenizer.decode(xs, { skipSpecial: true })
  assert.equal(
    writes.join(""),
    formatGeneration(labels[1][0], "", tokenizer) +
      formatGeneration(labels[0][0], text([ids("x")[0], eos]), tokenizer) +
      formatGeneration(labels[1][1], text(long), tokenizer),
  )
})
