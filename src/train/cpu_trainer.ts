/**
 * `deno task train --device cpu`: the packed training loop of src/train/trainer.ts on the plain TypeScript
 * reference (src/reference/llama_train.ts for the forward + backward, src/reference/optimizer.ts for the update).
 * Slow, but the same results as the device within test tolerances, and the same files: a CPU-trained adapter
 * loads in a GPU eval, and checkpoints resume on either backend.
 *
 * Shared with the device trainer, so both make the same decisions: the job counters, seeds, data iterator,
 * schedule, accumulation, NaN handling and checkpoint files (`TrainJobBase`, src/train/job.ts) and the picking /
 * fairness policy (`pickJobs`, src/train/trainer.ts). Per micro-step, like the device:
 *   parts   = next micro-batch of each picked job, packed with padBatch (one segment per job, slot = index)
 *   total   = Σ_s (1 / accumulation_s) · (loss_s + aux_s)        (referenceTrainStep with those factors)
 *   g_job  += d total / dθ_job                                      (f32, the flat device layout)
 *   optimizer step when the job's accumulation completes or its epoch ends, then g_job = 0
 * The host weights are one flat f32 image in the device layout (`paramLayout`), so the optimizer state has the
 * device's length and order and a checkpoint written here is the one the device writes.
 *
 * Random streams: the device gives every segment its own job's dropout seed (`TrainJobBase.dropoutSeed`), the
 * reference takes one seed per call. A segment's results do not depend on the other segments (rows never
 * interact) and masks depend on the global token row only, so a micro-step whose parts need different seeds
 * runs one reference pass per seeded part over the whole packed batch, the other segments base-only (slot −1);
 * parts without dropout or jitter ride along in the first pass. Without randomness it is a single pass.
 * @module
 */
import type { AdapterConfig } from "../config/train_config.ts"
import { type MicroBatch, padBatch } from "../data/batches.ts"
import type { Example } from "../data/tokenize.ts"
import { ConfigError } from "../errors.ts"
import type { AdapterWeights } from "../model/adapter.ts"
import { packAdapter, type ParamLayout, paramLayout, unpackAdapter } from "../model/adapter_device.ts"
import { OPTIMIZER_FILE } from "../model/checkpoint_io.ts"
import type { BatchDescriptor, LlamaConfig, LlamaWeights } from "../model/types.ts"
import { referenceTrainStep } from "../reference/llama_train.ts"
import {
  initialOptimizerState,
  type OptimizerHyper,
  optimizerHyper,
  type OptimizerState,
  optimizerStep,
} from "../reference/optimizer.ts"
import { type JobOptions, type JobStart, startJob, TrainJobBase } from "./job.ts"
import { pickJobs, type TrainerOptions } from "./trainer.ts"

const fr = Math.fround

/** Checks a resumed optimizer state against the adapter (the device guards the same in `restoreState`). */
function checkState(state: OptimizerState, h: OptimizerHyper, count: number, file: string): OptimizerState {
  const fail = (key: string, reason: string) => new ConfigError({ file, key, reason })
  if (state.kind !== h.kind) throw fail("kind", `state is ${state.kind}, the adapter's optim is ${h.kind}`)
  const arrays: [string, Float32Array | undefined, boolean][] = [
    ["exp_avg", state.m, h.kind === "adamw"],
    ["exp_avg_sq", state.v, h.kind === "adamw"],
    ["momentum_buffer", state.momentum, h.kind === "sgd" && h.momentum !== 0],
  ]
  for (const [key, data, wanted] of arrays) {
    if (wanted && !data) throw fail(key, "missing")
    if (!wanted && data) throw fail(key, `not kept by this optimizer (${h.kind}, momentum ${h.momentum})`)
    if (data && data.length !== count) throw fail(key, `${data.length} values, the adapter has ${count}`)
  }
  return state
}

/** A job on the host: flat f32 parameters and gradients in the device layout, and the reference optimizer. */
export class CpuTrainJob extends TrainJobBase {
  /** (layout.total) f32 gradients accumulated since the last optimizer step */
  readonly grads: Float32Array

  private constructor(
    start: JobStart,
    cfg: AdapterConfig,
    opts: JobOptions,
    readonly layout: ParamLayout,
    /** (layout.total) f32 parameters, the image the device holds */
    readonly params: Float32Array,
    /** the parameters as the reference reads them (unpacked from `params` after every change) */
    public weights: AdapterWeights,
    readonly hyper: OptimizerHyper,
    private state: OptimizerState,
  ) {
    super(cfg, start.spec, start.iter, start.schedule, start.seed, opts)
    this.grads = new Float32Array(layout.total)
  }

  /** Creates the job: fresh weights (or resumed from `opts.dir`) with a zeroed (or the resumed) optimizer state. */
  static async create(
    model: LlamaConfig,
    cfg: AdapterConfig,
    examples: readonly Example[],
    opts: JobOptions,
  ): Promise<CpuTrainJob> {
    const start = await startJob(model, cfg, examples, opts)
    // like uploadAdapter: the layout follows the weights' own spec (a resumed adapter's saved config)
    const spec = start.weights.spec
    const layout = paramLayout(spec, model)
    const hyper = optimizerHyper({ kind: cfg.optim, weightDecay: cfg.weightDecay, momentum: cfg.momentum })
    const state = start.loaded
      ? checkState(start.loaded.optimizer, hyper, layout.total, `${start.loaded.path}/${OPTIMIZER_FILE}`)
      : initialOptimizerState(hyper, layout.total)
    const params = packAdapter(start.weights, layout)
    const weights = unpackAdapter(spec, layout, params)
    const job = new CpuTrainJob(start, cfg, opts, layout, params, weights, hyper, state)
    job.resumeCounters(start.loaded)
    return job
  }

  /** Optimizer steps taken. */
  get step(): number {
    return this.state.step
  }

  /** grads += g (in f32, like the kernels accumulate into the gradient buffer). */
  accumulate(g: AdapterWeights): void {
    const flat = packAdapter(g, this.layout)
    for (let i = 0; i < flat.length; i++) this.grads[i] = fr(this.grads[i] + flat[i])
  }

  /** One optimizer step at the scheduled rate (params updated, grads zeroed). */
  optimize(): void {
    this.state = optimizerStep(this.hyper, this.state, this.params, this.grads, this.lr())
    this.weights = unpackAdapter(this.weights.spec, this.layout, this.params)
  }

  /** Writes checkpoint-{step} (not when the weights are no longer finite: the job fails instead). */
  checkpoint(): Promise<string | null> {
    return this.writeCheckpoint(this.weights, () => this.state)
  }

  /** Saves the final adapter to `{dir}/{name}/` (MoE-PEFT layout). */
  saveFinal(): Promise<string> {
    return this.writeFinal(this.weights)
  }

  /** Replaces the weights (tests: start from given weights). */
  setWeights(w: AdapterWeights): void {
    this.params.set(packAdapter(w, this.layout))
    this.weights = unpackAdapter(this.weights.spec, this.layout, this.params)
  }
}

/** Options of the CPU trainer: the device trainer's, without its loss-readback interval. */
export type CpuTrainerOptions = Omit<TrainerOptions, "readEvery" | "onProgress"> & {
  /** called after each micro-step with the jobs whose losses arrived */
  readonly onProgress?: (jobs: readonly CpuTrainJob[]) => void
}

interface Part {
  readonly job: CpuTrainJob
  readonly mb: MicroBatch
  /** the job's dropout / jitter seed of this micro-step */
  readonly seed: number
}

/** Whether an adapter draws random numbers while training (LoRA dropout or router jitter). */
const usesRandom = (w: AdapterWeights) => w.spec.dropout > 0 || (w.spec.moe?.jitterNoise ?? 0) > 0

/**
 * The reference micro-step of the packed batch (segment i = part i, slot i): per part its mean loss and
 * d total / dθ, with total = Σ_i factors_i · (loss_i + aux_i). One pass per part that needs its own random
 * seed (module doc), else one pass.
 */
function referenceParts(
  config: LlamaConfig,
  base: LlamaWeights,
  batch: BatchDescriptor,
  targets: Int32Array,
  parts: readonly Part[],
  factors: readonly number[],
): { loss: number; grads: AdapterWeights }[] {
  const adapters = parts.map((p) => p.job.weights)
  const seeded = parts.flatMap((p, i) => usesRandom(p.job.weights) ? [i] : [])
  const passes = seeded.length <= 1
    ? [{ members: parts.map((_, i) => i), seed: seeded.length === 1 ? parts[seeded[0]].seed : null }]
    : seeded.map((i, k) => ({
      members: k === 0 ? parts.flatMap((_, j) => j === i || !seeded.includes(j) ? [j] : []) : [i],
      seed: parts[i].seed,
    }))
  const out: { loss: number; grads: AdapterWeights }[] = new Array(parts.length)
  for (const pass of passes) {
    const segments = batch.segments.map((s, i) => ({ ...s, slot: pass.members.includes(i) ? i : -1 }))
    const random = pass.seed === null ? null : { seed: pass.seed }
    const r = referenceTrainStep(config, base, { ...batch, segments }, adapters, {
      targets,
      factors,
      dropout: random,
      jitter: random,
    })
    for (const i of pass.members) out[i] = { loss: r.losses[i].loss, grads: r.grads[i] }
  }
  return out
}

/**
 * The packed training loop on the host. Losses are known after every micro-step (no readback), so a
 * non-finite loss stops its job at once; everything else follows `Trainer`.
 */
export class CpuTrainer {
  /** micro-steps run */
  microSteps = 0
  readonly jobs: CpuTrainJob[]

  constructor(
    readonly config: LlamaConfig,
    readonly base: LlamaWeights,
    jobs: readonly CpuTrainJob[],
    readonly opts: CpuTrainerOptions,
  ) {
    this.jobs = [...jobs]
  }

  /** One packed micro-step; false when no job has data left. */
  async step(): Promise<boolean> {
    const parts: Part[] = []
    for (const job of pickJobs(this.jobs, this.opts)) {
      // the seed is the one of the micro-step about to run, taken before `advance` counts it
      const seed = job.dropoutSeed()
      const mb = job.next()
      if (mb) parts.push({ job, mb, seed })
      else await this.finish(job)
    }
    if (parts.length === 0) return this.jobs.some((j) => j.status === "running")
    const { batch, targets } = padBatch(parts.map((p, slot) => ({ slot, examples: p.mb.examples })), {
      padSide: parts[0].job.cfg.expandSide,
      padId: this.opts.padId,
    })
    const factors = parts.map((p) => 1 / p.job.cfg.accumulationSteps)
    const results = referenceParts(this.config, this.base, batch, targets, parts, factors)
    const stepped: CpuTrainJob[] = []
    const touched: CpuTrainJob[] = []
    parts.forEach(({ job, mb }, i) => {
      job.accumulate(results[i].grads)
      if (job.advance(mb.examples.reduce((n, e) => n + e.ids.length, 0), { endOfEpoch: mb.endOfEpoch })) {
        job.optimize()
        stepped.push(job)
      }
      if (job.observeLoss(results[i].loss, job.microSteps, this.opts.onEvent)) touched.push(job)
    })
    this.microSteps++
    this.opts.onProgress?.(touched)
    const due = stepped.filter((j) => this.opts.saveStep > 0 && j.step % this.opts.saveStep === 0)
    for (const job of due) {
      if (job.status !== "running") continue
      const path = await job.checkpoint()
      this.opts.onEvent?.(path ? `${job.name}: checkpoint ${path}` : job.stoppedLine())
    }
    return true
  }

  /** Runs every job to the end. */
  async run(): Promise<void> {
    while (await this.step()) { /* next micro-step */ }
  }

  /** A job ran out of data: save the final adapter. */
  private async finish(job: CpuTrainJob): Promise<void> {
    if (job.status !== "running") return
    job.status = "done"
    const path = await job.saveFinal()
    this.opts.onEvent?.(`${job.name}: done after ${job.step} steps, saved ${path}`)
  }
}
