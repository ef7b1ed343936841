/**
 * The work behind `deno task eval`, apart from flag parsing so that tests can call it: `prepareEvaluation`
 * reads and checks everything on the host (config, test data, saved adapters), `runEvaluation` packs the
 * adapters into shared forwards on the device (src/eval/evaluate.ts).
 *
 * "Before" adapters are freshly initialised exactly as `deno task train --seed S` starts them
 * (src/train/job.ts: seed S ^ FNV-1a(name), `initAdapter(spec, model, Rng.fromSeed(seed).fork("init"))`),
 * so the before/after columns show what training changed.
 *
 * With `--inference` the trained adapters also generate (src/eval/generations.ts), after the evaluation, all packed
 * into one `generate` call.
 * @module
 */
import { join } from "node:path"
import { loadTrainConfig, type TrainConfig } from "../config/train_config.ts"
import { loadPromptTemplate, loadRecords } from "../data/records.ts"
import { type Example, tokenizeRecords } from "../data/tokenize.ts"
import { ConfigError } from "../errors.ts"
import type { GpuContext } from "../gpu/context.ts"
import { loadTokenizer, type Tokenizer } from "../io/tokenizer.ts"
import type { AdapterWeights } from "../model/adapter.ts"
import { loadAdapter } from "../model/adapter_io.ts"
import type { DeviceBase } from "../model/base_weights.ts"
import { readLlamaConfig } from "../model/hf_config.ts"
import { LlamaModel } from "../model/llama.ts"
import type { LlamaConfig } from "../model/types.ts"
import { initialWeights } from "../train/job.ts"
import { type EvalResult, type EvalStats, type EvalTask, evaluate } from "./evaluate.ts"
import {
  type Generation,
  generationPrompts,
  type GenerationRef,
  type GenerationSettings,
  generationsJson,
  type GenerationStats,
  type PromptSource,
  runGenerations,
} from "./generations.ts"

export interface EvalFlags {
  /** HF model directory */
  readonly baseDir: string
  /** training config (m-LoRA JSON) naming the adapters and their `test_data` */
  readonly config: string
  /** where `deno task train` saved the adapters (`{dir}/{name}/`) */
  readonly dir: string
  /** seed of the fresh "before" adapters (`deno task train --seed`) */
  readonly seed: number
  /** also evaluate fresh adapters (the "before training" columns) */
  readonly before: boolean
  /** `--inference`: where the generation prompts come from; absent or null: no generation */
  readonly inference?: PromptSource | null
}

/** One adapter ready to evaluate: trained weights from `--dir`, and fresh weights when asked. */
export interface PreparedAdapter {
  readonly name: string
  readonly trained: AdapterWeights
  readonly fresh: AdapterWeights | null
  readonly examples: readonly Example[]
  readonly testBatchSize: number
  readonly padSide: "left" | "right"
  readonly testData: string
  /** generation prompts (token ids); empty without `flags.inference` */
  readonly prompts: readonly (readonly number[])[]
}

export interface PreparedEvaluation {
  readonly flags: EvalFlags
  readonly model: LlamaConfig
  readonly train: TrainConfig
  readonly adapters: readonly PreparedAdapter[]
  readonly padId: number
  readonly tokenizer: Tokenizer
  /** lines to print: unknown config keys, adapters without test_data, adapters with nothing to generate */
  readonly warnings: readonly string[]
}

export interface EvalSummary {
  readonly after: readonly EvalResult[]
  /** fresh adapters, same order; null unless `flags.before` */
  readonly before: readonly EvalResult[] | null
  readonly stats: EvalStats
  /** per trained adapter, its generations in prompt order; null unless asked */
  readonly generations: readonly (readonly Generation[])[] | null
  readonly generateStats: GenerationStats | null
}

/** The weights `deno task train --seed seed` starts adapter `cfg` from. */
export function freshAdapter(
  cfg: TrainConfig["adapters"][number],
  model: LlamaConfig,
  seed: number,
): AdapterWeights {
  return initialWeights(cfg, model, seed)
}

const isDir = (path: string) => Deno.stat(path).then((s) => s.isDirectory, () => false)

/**
 * Loads config, tokenizer, test data and each adapter saved under `flags.dir`; throws a ConfigError /
 * SafetensorsError naming the file and key (or tensor) on any problem, before the device is touched.
 */
export async function prepareEvaluation(flags: EvalFlags): Promise<PreparedEvaluation> {
  const { config: train, warnings } = await loadTrainConfig(flags.config)
  const model = await readLlamaConfig(flags.baseDir)
  const tokenizer = await loadTokenizer(flags.baseDir)
  const adapters: PreparedAdapter[] = []
  const skipped: string[] = []
  const noPrompts: string[] = []
  for (const a of train.adapters) {
    if (a.testData === null) {
      skipped.push(a.name)
      continue
    }
    const records = await loadRecords(a.testData)
    const template = await loadPromptTemplate(a.prompt)
    const examples = tokenizeRecords(records, tokenizer, {
      cutoffLen: train.cutoffLen,
      trainOnInputs: a.trainOnInputs,
      template,
      file: a.testData,
    })
    const prompts = flags.inference ? generationPrompts(records, tokenizer, template, flags.inference) : []
    if (flags.inference && prompts.length === 0) {
      noPrompts.push(`${a.testData}: no instruction or multiple-choice record, nothing to generate for ${a.name}`)
    }
    const path = join(flags.dir, a.name)
    if (!(await isDir(path))) {
      throw new ConfigError({
        file: path,
        key: "",
        reason: `no saved adapter "${a.name}" here; run deno task train first, or point --dir at its output`,
      })
    }
    adapters.push({
      name: a.name,
      trained: await loadAdapter(flags.dir, a.name, model),
      fresh: flags.before ? freshAdapter(a, model, flags.seed) : null,
      examples,
      testBatchSize: a.testBatchSize,
      padSide: a.expandSide,
      testData: a.testData,
      prompts,
    })
  }
  if (adapters.length === 0) {
    throw new ConfigError({ file: flags.config, key: "lora", reason: "no adapter has test_data to evaluate" })
  }
  const notes = skipped.length ? [`${flags.config}: no test_data, not evaluated: ${skipped.join(", ")}`] : []
  return {
    flags,
    model,
    train,
    adapters,
    padId: tokenizer.padId,
    tokenizer,
    warnings: [...warnings, ...notes, ...noPrompts],
  }
}

/** Options of `runEvaluation`. */
export interface RunEvaluationOptions {
  /** after every packed evaluation batch: batches done, batches in all */
  readonly onBatch?: (done: number, total: number) => void
  /** generate from each trained adapter's prompts (`p.adapters[i].prompts`) after evaluating */
  readonly generate?: GenerationSettings & {
    /** every new token as it is read back (`ref.task` indexes `p.adapters`) */
    readonly onToken?: (ref: GenerationRef, id: number) => void
  }
}

/**
 * Evaluates the trained (and fresh) adapters of `p`, all packed into shared forwards; then, when asked, generates
 * from the trained adapters' prompts, all packed into one `generate` call.
 */
export async function runEvaluation(
  ctx: GpuContext,
  base: DeviceBase,
  p: PreparedEvaluation,
  opts: RunEvaluationOptions = {},
): Promise<EvalSummary> {
  const task = (a: PreparedAdapter, weights: AdapterWeights): EvalTask => ({
    name: a.name,
    weights,
    examples: a.examples,
    batchSize: a.testBatchSize,
    padSide: a.padSide,
    file: a.testData,
  })
  const tasks = p.adapters.map((a) => task(a, a.trained))
  const fresh = p.adapters.flatMap((a) => a.fresh ? [task(a, a.fresh)] : [])
  const model = new LlamaModel(ctx, base)
  try {
    const { results, stats } = await evaluate(model, [...tasks, ...fresh], { padId: p.padId, onBatch: opts.onBatch })
    const gen = opts.generate
      ? await runGenerations(
        model,
        p.tokenizer,
        p.adapters.map((a) => ({ name: a.name, weights: a.trained, prompts: a.prompts })),
        opts.generate,
        { onToken: opts.generate.onToken },
      )
      : null
    return {
      after: results.slice(0, tasks.length),
      before: fresh.length ? results.slice(tasks.length) : null,
      stats,
      generations: gen?.generations ?? null,
      generateStats: gen?.stats ?? null,
    }
  } finally {
    model.pool.clear()
  }
}

/**
 * The `--report` JSON of spec §7: `{"adapters": [{name, loss, perplexity, tokens, accuracy, generations?}]}`;
 * `generations` (per result, same order) only when given: `[{prompt_ids, output_ids, text}]`.
 */
export function reportJson(
  results: readonly EvalResult[],
  generations: readonly (readonly Generation[])[] | null = null,
): string {
  const adapters = results.map((r, i) => ({
    name: r.name,
    loss: r.loss,
    perplexity: r.perplexity,
    tokens: r.tokens,
    accuracy: r.accuracy,
    ...(generations ? { generations: generationsJson(generations[i]) } : {}),
  }))
  return JSON.stringify({ adapters }, null, 2) + "\n"
}
