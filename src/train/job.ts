/**
 * One adapter's training job: its config, data iterator, device weights, optimizer and counters, plus
 * checkpoint save / exact resume. The trainer packs the next micro-batches of several jobs into one pass.
 * `TrainJobBase` is the backend-independent part shared with the CPU trainer (src/train/cpu_trainer.ts).
 *
 * Accumulation (m-LoRA / HF): each micro-batch's mean loss is divided by `accumulation_steps` = batch / micro;
 * the optimizer steps after that many micro-batches, or at the end of an epoch with what has accumulated.
 * Determinism: data order comes from the iterator's saved RNG state, dropout masks from (seed, micro-step), so
 * a resumed job replays exactly what an uninterrupted one would have done.
 * @module
 */
import type { AdapterConfig } from "../config/train_config.ts"
import { warmupStepsFor } from "../config/train_config.ts"
import { EpochIterator, type EpochIteratorState, type MicroBatch } from "../data/batches.ts"
import type { Example } from "../data/tokenize.ts"
import type { GpuContext } from "../gpu/context.ts"
import type { AdapterSpec, AdapterWeights } from "../model/adapter.ts"
import {
  type DeviceAdapter,
  downloadAdapter,
  releaseAdapter,
  uploadAdapter,
  writeAdapter,
} from "../model/adapter_device.ts"
import { initAdapter } from "../model/adapter_init.ts"
import { saveAdapter } from "../model/adapter_io.ts"
import { latestCheckpoint, loadCheckpoint, type LoadedCheckpoint, saveCheckpoint } from "../model/checkpoint_io.ts"
import type { LlamaConfig } from "../model/types.ts"
import { Rng } from "../util/rng.ts"
import { AdapterOptimizer, optimizerHyper, type OptimizerState } from "./optimizer.ts"
import { learningRateAt, type Schedule } from "./schedule.ts"

/** The math-shaping part of an adapter config (spec §3). */
export function adapterSpecOf(cfg: AdapterConfig): AdapterSpec {
  const m = cfg.mixlora
  return {
    name: cfg.name,
    kind: m ? "mixlora" : "lora",
    r: cfg.r,
    alpha: cfg.loraAlpha,
    useRslora: cfg.useRslora,
    dropout: cfg.loraDropout,
    targets: cfg.targetModules,
    moe: m
      ? {
        routing: m.routingStrategy,
        numExperts: m.numExperts,
        topK: m.routingStrategy === "switch" ? 1 : m.routingStrategy === "dynamic" ? m.numExperts : m.topK ?? 2,
        topP: m.topP ?? 1,
        expertCapacity: m.expertCapacity ?? 0,
        actFn: m.actFn ?? "silu",
        routerAuxLossCoef: m.routerAuxLossCoef,
        routerInitRange: m.routerInitRange,
        jitterNoise: m.jitterNoise,
      }
      : undefined,
  }
}

/** Whether every parameter of `w` is finite. */
export function allFinite(w: AdapterWeights): boolean {
  const ok = (a: Float32Array) => a.every(Number.isFinite)
  return w.layers.every((l) =>
    Object.values(l.lora).every((p) => ok(p!.a) && ok(p!.b)) && (!l.router || ok(l.router)) &&
    (l.experts ?? []).every((e) => Object.values(e).every((p) => ok(p!.a) && ok(p!.b)))
  )
}

/** The adapter's own seed: `--seed` ^ FNV-1a(name), so it doesn't depend on its position in the config. */
export function jobSeed(seed: number, name: string): number {
  let h = 0x811c9dc5
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 0x01000193) >>> 0
  return (seed ^ h) >>> 0
}

/** The weights a fresh job starts from (also the "before" column of `deno task eval`). */
export function initialWeights(cfg: AdapterConfig, model: LlamaConfig, seed: number): AdapterWeights {
  return initAdapter(adapterSpecOf(cfg), model, Rng.fromSeed(jobSeed(seed, cfg.name)).fork("init"))
}

export type JobStatus = "running" | "done" | "failed"

export interface JobOptions {
  readonly seed: number
  /** `--dir`: where checkpoints and the final adapter go */
  readonly dir: string
  readonly baseModel: string
  /** `--load_adapter`: continue from the latest checkpoint (or the saved adapter) when there is one */
  readonly resume: boolean
}

/** What a job starts from, derived the same way for the device and the CPU trainer. */
export interface JobStart {
  readonly spec: AdapterSpec
  /** `jobSeed(--seed, name)` */
  readonly seed: number
  readonly schedule: Schedule
  /** positioned at the resumed checkpoint's data position, or at the start */
  readonly iter: EpochIterator
  /** fresh (`initialWeights`) or the checkpoint's */
  readonly weights: AdapterWeights
  /** the checkpoint resumed from (`--load_adapter`), or null */
  readonly loaded: LoadedCheckpoint | null
}

/**
 * Schedule, data iterator and weights of a job: fresh from `jobSeed(opts.seed, name)`, or, with `opts.resume`,
 * from the latest checkpoint in `opts.dir` (weights, iterator state; the caller restores the optimizer).
 */
export async function startJob(
  model: LlamaConfig,
  cfg: AdapterConfig,
  examples: readonly Example[],
  opts: JobOptions,
): Promise<JobStart> {
  const spec = adapterSpecOf(cfg)
  const seed = jobSeed(opts.seed, cfg.name)
  const rng = Rng.fromSeed(seed)
  const perEpoch = Math.ceil(examples.length / cfg.microBatchSize)
  const totalSteps = cfg.numEpochs * Math.ceil(perEpoch / cfg.accumulationSteps)
  const schedule: Schedule = {
    type: cfg.schedulerType,
    lr: cfg.lr,
    warmupSteps: warmupStepsFor(cfg, totalSteps),
    totalSteps,
  }
  const ckpt = opts.resume ? await latestCheckpoint(opts.dir, cfg.name) : null
  const loaded = ckpt ? await loadCheckpoint(ckpt.path, model) : null
  const weights: AdapterWeights = loaded?.weights ?? initialWeights(cfg, model, opts.seed)
  const state = loaded?.counters.iterator as EpochIteratorState | undefined
  const iter = new EpochIterator(examples, {
    microBatchSize: cfg.microBatchSize,
    batchSize: cfg.batchSize,
    numEpochs: cfg.numEpochs,
    groupByLength: cfg.groupByLength,
    rng: rng.fork("data"),
    state,
  })
  return { spec, seed, schedule, iter, weights, loaded }
}

/**
 * The backend-independent part of a training job: config, data iterator, schedule, seeds and counters, and
 * the bookkeeping both trainers share (accumulation, loss / NaN handling, checkpoint and final-adapter files).
 * Subclasses hold the tensors: `TrainJob` on the device, `CpuTrainJob` (cpu_trainer.ts) on the host.
 */
export abstract class TrainJobBase {
  status: JobStatus = "running"
  /** micro-batches consumed so far (also the dropout stream index) */
  microSteps = 0
  /** micro-batches accumulated since the last optimizer step */
  pending = 0
  /** real tokens trained on, and the last losses read back */
  tokens = 0
  lastLoss = NaN
  failure = ""
  /** optimizer step of the last checkpoint written (or resumed from) */
  lastCheckpoint = 0

  protected constructor(
    readonly cfg: AdapterConfig,
    readonly spec: AdapterSpec,
    readonly iter: EpochIterator,
    readonly schedule: Schedule,
    readonly seed: number,
    readonly opts: JobOptions,
  ) {}

  /** Optimizer steps taken. */
  abstract get step(): number

  get name(): string {
    return this.cfg.name
  }

  get totalSteps(): number {
    return this.schedule.totalSteps
  }

  /** Restores the counters of a resumed checkpoint; a job whose data is all consumed is done. */
  protected resumeCounters(loaded: LoadedCheckpoint | null): void {
    if (loaded) {
      this.microSteps = Number(loaded.counters.microSteps ?? 0)
      this.tokens = Number(loaded.counters.tokens ?? 0)
      this.lastCheckpoint = loaded.counters.step
    }
    if (this.iter.done) this.status = "done"
  }

  /** The next micro-batch, or null when every epoch is done. */
  next(): MicroBatch | null {
    return this.iter.done ? null : this.iter.next()
  }

  /** Dropout seed of the micro-step about to run. */
  dropoutSeed(): number {
    return (this.seed ^ Math.imul(this.microSteps + 1, 0x9e3779b1)) >>> 0
  }

  /** Learning rate of the next optimizer step. */
  lr(): number {
    return learningRateAt(this.schedule, this.step)
  }

  /**
   * Counts a micro-batch of `tokens` real tokens just trained on; true when the optimizer steps now (its
   * accumulation of `accumulation_steps` micro-batches is complete, or the epoch ended), which restarts it.
   */
  advance(tokens: number, opts: { endOfEpoch: boolean }): boolean {
    this.microSteps++
    this.pending++
    this.tokens += tokens
    if (this.pending !== this.cfg.accumulationSteps && !opts.endOfEpoch) return false
    this.pending = 0
    return true
  }

  /**
   * Takes the mean loss of micro-step `microStep`; a non-finite loss stops the job (its last good checkpoint
   * stays) and reports it through `onEvent`. True when the loss was taken (the job is running and it is finite).
   */
  observeLoss(loss: number, microStep: number, onEvent?: (line: string) => void): boolean {
    if (this.status !== "running") return false
    if (!Number.isFinite(loss)) {
      this.status = "failed"
      this.failure = `loss is ${loss} at micro-step ${microStep}`
      onEvent?.(this.stoppedLine())
      return false
    }
    this.lastLoss = loss
    return true
  }

  /** The event line of a job that stopped on a failure. */
  stoppedLine(): string {
    return `${this.name}: stopped, ${this.failure}; its last good checkpoint (step ${this.lastCheckpoint}) is kept`
  }

  /**
   * Writes checkpoint-{step} with `weights`, the optimizer state (read only when the weights are finite),
   * counters, data position and RNG. Weights that are no longer finite are never saved: the job fails instead
   * and keeps its last checkpoint.
   */
  protected async writeCheckpoint(
    weights: AdapterWeights,
    readOptimizer: () => Promise<OptimizerState> | OptimizerState,
  ): Promise<string | null> {
    if (!allFinite(weights)) {
      this.status = "failed"
      this.failure = `weights are not finite at step ${this.step}`
      return null
    }
    const optimizer = await readOptimizer()
    const it = this.iter.state()
    const path = await saveCheckpoint(this.opts.dir, this.name, this.step, {
      weights,
      optimizer,
      baseModel: this.opts.baseModel,
      counters: {
        step: this.step,
        epoch: it.epoch,
        dataPosition: it.position,
        rngState: it.rng,
        iterator: it,
        microSteps: this.microSteps,
        tokens: this.tokens,
      },
    })
    this.lastCheckpoint = this.step
    return path
  }

  /** Saves `weights` as the final adapter in `{dir}/{name}/` (MoE-PEFT layout). */
  protected writeFinal(weights: AdapterWeights): Promise<string> {
    return saveAdapter(this.opts.dir, this.name, weights, { baseModel: this.opts.baseModel })
  }
}

/** A job on the device: weights, gradients and optimizer state in GPU buffers. */
export class TrainJob extends TrainJobBase {
  private constructor(
    readonly ctx: GpuContext,
    cfg: AdapterConfig,
    spec: AdapterSpec,
    iter: EpochIterator,
    readonly dev: DeviceAdapter,
    readonly opt: AdapterOptimizer,
    schedule: Schedule,
    seed: number,
    opts: JobOptions,
  ) {
    super(cfg, spec, iter, schedule, seed, opts)
  }

  /** Creates the job: fresh weights (or resumed from `opts.dir`), uploaded with a zeroed optimizer state. */
  static async create(
    ctx: GpuContext,
    model: LlamaConfig,
    cfg: AdapterConfig,
    examples: readonly Example[],
    opts: JobOptions,
  ): Promise<TrainJob> {
    const { spec, seed, schedule, iter, weights, loaded } = await startJob(model, cfg, examples, opts)
    const dev = uploadAdapter(ctx, weights, model)
    const opt = AdapterOptimizer.create(ctx, {
      label: cfg.name,
      count: dev.layout.total,
      hyper: optimizerHyper({ kind: cfg.optim, weightDecay: cfg.weightDecay, momentum: cfg.momentum }),
    })
    const job = new TrainJob(ctx, cfg, spec, iter, dev, opt, schedule, seed, opts)
    if (loaded) opt.restoreState(loaded.optimizer)
    job.resumeCounters(loaded)
    return job
  }

  /** Optimizer steps taken. */
  get step(): number {
    return this.opt.step
  }

  /**
   * Writes checkpoint-{step}: weights, optimizer state, counters, data position and RNG (two round trips).
   * Weights that are no longer finite are never saved: the job fails instead and keeps its last checkpoint.
   */
  async checkpoint(): Promise<string | null> {
    return this.writeCheckpoint(await downloadAdapter(this.ctx, this.dev), () => this.opt.readState())
  }

  /** Saves the final adapter to `{dir}/{name}/` (MoE-PEFT layout). */
  async saveFinal(): Promise<string> {
    return this.writeFinal(await downloadAdapter(this.ctx, this.dev))
  }

  /** Replaces the device weights (tests: start from given weights). */
  setWeights(w: AdapterWeights): void {
    writeAdapter(this.ctx, this.dev, w)
  }

  release(): void {
    this.opt.release()
    releaseAdapter(this.ctx, this.dev)
  }
}
