/**
 * The work behind `deno task train`, kept apart from flag parsing so that tests can call it:
 * `prepareTraining` validates everything on the host first (config, data, templates, output directories —
 * nothing is written yet), then `runTraining` creates the jobs on the device and runs the packed loop
 * (`runCpuTraining`: the same on the CPU reference, `--device cpu`).
 * @module
 */
import { type AdapterConfig, loadTrainConfig, type TrainConfig } from "../config/train_config.ts"
import { loadPromptTemplate, loadRecords } from "../data/records.ts"
import { type Example, tokenizeRecords } from "../data/tokenize.ts"
import { ConfigError } from "../errors.ts"
import type { GpuContext } from "../gpu/context.ts"
import { loadTokenizer } from "../io/tokenizer.ts"
import type { DeviceBase } from "../model/base_weights.ts"
import { readLlamaConfig } from "../model/hf_config.ts"
import { LlamaModel } from "../model/llama.ts"
import type { LlamaConfig, LlamaWeights } from "../model/types.ts"
import { CpuTrainer, CpuTrainJob } from "../train/cpu_trainer.ts"
import { TrainJob, type TrainJobBase } from "../train/job.ts"
import { Trainer } from "../train/trainer.ts"
import { ProgressBoard } from "./board.ts"

export interface TrainFlags {
  readonly baseDir: string
  readonly config: string
  readonly dir: string
  readonly seed: number
  readonly loadAdapter: boolean
  readonly overwrite: boolean
  readonly logFile: string
}

export interface PreparedTraining {
  readonly flags: TrainFlags
  readonly model: LlamaConfig
  readonly train: TrainConfig
  readonly examples: ReadonlyMap<string, readonly Example[]>
  readonly padId: number
  readonly warnings: readonly string[]
}

export interface TrainSummary {
  readonly rows: {
    name: string
    steps: number
    firstLoss: number
    lastLoss: number
    tokens: number
    tokensPerSecond: number
    status: string
  }[]
  /** where it ran: the WebGPU device or the CPU reference (no round trips, no device activations) */
  readonly backend: "gpu" | "cpu"
  readonly microSteps: number
  readonly seconds: number
  readonly roundTrips: number
  readonly peakActivationBytes: number
}

const exists = async (path: string) => {
  try {
    await Deno.stat(path)
    return true
  } catch {
    return false
  }
}

/** Loads and checks config, data and output directories; throws ConfigError naming file and key. */
export async function prepareTraining(flags: TrainFlags): Promise<PreparedTraining> {
  const { config: train, warnings } = await loadTrainConfig(flags.config)
  const model = await readLlamaConfig(flags.baseDir)
  const tokenizer = await loadTokenizer(flags.baseDir)
  const examples = new Map<string, readonly Example[]>()
  for (const [i, a] of train.adapters.entries()) {
    const key = (k: string) => `lora[${i}](${a.name}).${k}`
    const template = await loadPromptTemplate(a.prompt)
    const records = await loadRecords(a.data)
    const ex = tokenizeRecords(records, tokenizer, {
      cutoffLen: train.cutoffLen,
      trainOnInputs: a.trainOnInputs,
      template,
      file: a.data,
    })
    if (ex.length === 0) throw new ConfigError({ file: a.data, key: key("data"), reason: "no records" })
    const out = `${flags.dir}/${a.name}`
    if (!flags.loadAdapter && !flags.overwrite && await exists(out)) {
      throw new ConfigError({
        file: flags.config,
        key: key("name"),
        reason: `${out} already exists; pass --load_adapter to resume it or --overwrite to replace it`,
      })
    }
    examples.set(a.name, ex)
  }
  return { flags, model, train, examples, padId: tokenizer.padId, warnings }
}

/** What `drive` needs of a trainer of either backend. */
interface TrainLoop {
  readonly microSteps: number
  run(): Promise<void>
}

/** The hooks `drive` hands to the trainer it makes (progress board, log file). */
interface DriveHooks<J extends TrainJobBase> {
  readonly saveStep: number
  readonly simultaneous: number
  readonly strategy: "none" | "optim"
  readonly padId: number
  readonly onProgress: (touched: readonly J[]) => void
  readonly onEvent: (line: string) => void
}

/** With `--overwrite` (and no `--load_adapter`): removes the adapters' previous output directories. */
async function removeOld(p: PreparedTraining): Promise<void> {
  if (!p.flags.overwrite || p.flags.loadAdapter) return
  for (const a of p.train.adapters) await Deno.remove(`${p.flags.dir}/${a.name}`, { recursive: true }).catch(() => {})
}

/**
 * Runs `jobs` to the end with the trainer `makeTrainer` returns, drawing the progress board and appending to
 * `--log_file`; `meters` reads the backend's queue round trips and activation bytes (0 on the CPU).
 */
async function drive<J extends TrainJobBase>(
  p: PreparedTraining,
  jobs: readonly J[],
  makeTrainer: (hooks: DriveHooks<J>) => TrainLoop,
  meters: { readonly backend: "gpu" | "cpu"; readonly roundTrips: () => number; readonly activations: () => number },
): Promise<TrainSummary> {
  const { flags, train } = p
  const board = new ProgressBoard()
  const first = new Map<J, number>()
  const log = flags.logFile ? await Deno.open(flags.logFile, { append: true, create: true }) : null
  const write = (line: string) => log?.writeSync(new TextEncoder().encode(`${new Date().toISOString()} ${line}\n`))
  const rows = () =>
    jobs.map((j) => ({
      name: j.name,
      step: j.step,
      total: j.totalSteps,
      loss: j.lastLoss,
      tokens: j.tokens,
      status: j.status,
    }))
  const t0 = performance.now()
  const trips0 = meters.roundTrips()
  let peak = 0
  const trainer = makeTrainer({
    saveStep: train.saveStep,
    simultaneous: train.simultaneousNum,
    strategy: train.strategy,
    padId: p.padId,
    onProgress: (touched) => {
      for (const j of touched) if (!first.has(j)) first.set(j, j.lastLoss)
      peak = Math.max(peak, meters.activations())
      board.draw(rows())
      for (const j of touched) write(`${j.name} step ${j.step}/${j.totalSteps} loss ${j.lastLoss.toFixed(5)}`)
    },
    onEvent: (line) => {
      board.event(line)
      write(line)
    },
  })
  try {
    await trainer.run()
  } finally {
    board.draw(rows(), true)
    log?.close()
  }
  const seconds = (performance.now() - t0) / 1000
  return {
    rows: jobs.map((j) => ({
      name: j.name,
      steps: j.step,
      firstLoss: first.get(j) ?? NaN,
      lastLoss: j.lastLoss,
      tokens: j.tokens,
      tokensPerSecond: j.tokens / seconds,
      status: j.status === "failed" ? `failed: ${j.failure}` : j.status,
    })),
    backend: meters.backend,
    microSteps: trainer.microSteps,
    seconds,
    roundTrips: meters.roundTrips() - trips0,
    peakActivationBytes: peak,
  }
}

/** The job options of adapter jobs from the flags. */
const jobOptions = (flags: TrainFlags) => ({
  seed: flags.seed,
  dir: flags.dir,
  baseModel: flags.baseDir,
  resume: flags.loadAdapter,
})

/** Creates one job per adapter on `ctx` and trains them all, packed; returns the summary table's rows. */
export async function runTraining(ctx: GpuContext, base: DeviceBase, p: PreparedTraining): Promise<TrainSummary> {
  await removeOld(p)
  const jobs: TrainJob[] = []
  for (const a of p.train.adapters) {
    jobs.push(await TrainJob.create(ctx, p.model, a as AdapterConfig, p.examples.get(a.name)!, jobOptions(p.flags)))
  }
  const model = new LlamaModel(ctx, base)
  const summary = await drive(p, jobs, (hooks) => new Trainer(model, jobs, hooks), {
    backend: "gpu",
    roundTrips: () => ctx.roundTrips,
    activations: () => ctx.memory().activations,
  })
  for (const j of jobs) j.release()
  model.pool.clear()
  return summary
}

/**
 * `--device cpu`: the same jobs and packed loop on the plain TypeScript reference over host weights `base`
 * (the WeightCache's cpu LoadedBase; int8 already dequantised); the same files as `runTraining`.
 */
export async function runCpuTraining(base: LlamaWeights, p: PreparedTraining): Promise<TrainSummary> {
  await removeOld(p)
  const jobs: CpuTrainJob[] = []
  for (const a of p.train.adapters) {
    jobs.push(await CpuTrainJob.create(p.model, a as AdapterConfig, p.examples.get(a.name)!, jobOptions(p.flags)))
  }
  return await drive(p, jobs, (hooks) => new CpuTrainer(p.model, base, jobs, hooks), {
    backend: "cpu",
    roundTrips: () => 0,
    activations: () => 0,
  })
}
