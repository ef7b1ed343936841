/**
 * The packed training loop: every micro-step takes the next micro-batch of up to `simultaneous` running jobs,
 * packs them into one batch (a segment per adapter), runs the forward and backward once over the shared
 * frozen base, and steps each job's optimizer when its accumulation is complete — all in one command buffer.
 *
 * Losses stay on the device: each micro-step copies its per-segment (mean, count) into a loss log, read back
 * every `readEvery` micro-steps (and before a checkpoint), so queue round trips stay below one per optimizer
 * step. A NaN/Inf loss stops that adapter (its last good checkpoint stays); the others go on.
 * @module
 */
import { padBatch } from "../data/batches.ts"
import type { AdapterRows } from "../model/adapter_layers.ts"
import { LoraSaved, MoeState } from "../model/adapter_layers.ts"
import type { Step } from "../gpu/context.ts"
import type { LlamaModel } from "../model/llama.ts"
import { encodeBackward } from "../model/llama_backward.ts"
import type { TrainJob, TrainJobBase } from "./job.ts"
import { adapterRegion } from "../model/adapter_device.ts"

export interface TrainerOptions {
  /** checkpoint every this many optimizer steps of an adapter (0: never) */
  readonly saveStep: number
  /** adapters packed per micro-step (`train_lora_simultaneously_num`) */
  readonly simultaneous: number
  /** `train_strategy`: "none" packs jobs in config order; "optim" prefers jobs whose batches pad least */
  readonly strategy: "none" | "optim"
  readonly padId: number
  /** most tokens (rows × padded length) of one fused batch; default unlimited */
  readonly maxBatchTokens?: number
  /** micro-steps between loss readbacks */
  readonly readEvery?: number
  /** called after each readback with the jobs whose losses arrived */
  readonly onProgress?: (jobs: readonly TrainJob[]) => void
  /** called with one line for events (checkpoint, NaN, done) */
  readonly onEvent?: (line: string) => void
}

interface LogEntry {
  readonly job: TrainJob
  readonly slot: number
  readonly microStep: number
  readonly tokens: number
}

/** Options of `pickJobs` (a subset of `TrainerOptions`). */
export type PickOptions = Pick<TrainerOptions, "simultaneous" | "strategy" | "maxBatchTokens" | "onEvent">

/**
 * The jobs packed into the next micro-step. Fairness first: the jobs that have run the fewest micro-steps
 * lead (ties in submission order), so no job starves. "none" then packs them in that order; "optim" keeps
 * the leader and prefers partners whose next micro-batch has a similar length (least padding). A fused
 * batch never exceeds `maxBatchTokens` (rows × padded length); a job whose micro-batch alone does fails.
 * Shared by the device trainer and the CPU trainer (src/train/cpu_trainer.ts).
 */
export function pickJobs<J extends TrainJobBase>(jobs: readonly J[], opts: PickOptions): J[] {
  const order = jobs.filter((j) => j.status === "running").sort((a, b) => a.microSteps - b.microSteps)
  const len = (j: J) => j.iter.peekMaxLength()
  let ranked = order
  if (opts.strategy === "optim" && order.length > opts.simultaneous) {
    const lead = len(order[0])
    ranked = [order[0], ...order.slice(1).sort((a, b) => Math.abs(len(a) - lead) - Math.abs(len(b) - lead))]
  }
  const budget = opts.maxBatchTokens ?? Infinity
  const out: J[] = []
  let rows = 0, T = 0
  for (const j of ranked) {
    if (out.length === opts.simultaneous) break
    const r = j.cfg.microBatchSize, t = len(j)
    if (r * t > budget) {
      j.status = "failed"
      j.failure = `a micro-batch of ${r} rows × ${t} tokens is over the batch budget of ${budget} tokens`
      opts.onEvent?.(`${j.name}: stopped, ${j.failure}`)
      continue
    }
    if ((rows + r) * Math.max(T, t) > budget) continue
    out.push(j)
    rows += r
    T = Math.max(T, t)
  }
  return out
}

export class Trainer {
  /** micro-steps run, and queue round trips spent in `run` */
  microSteps = 0
  private log: LogEntry[] = []
  private logBuf: GPUBuffer | null = null
  private logSlots = 0
  private readonly readEvery: number

  readonly jobs: TrainJob[]

  constructor(readonly model: LlamaModel, jobs: readonly TrainJob[], readonly opts: TrainerOptions) {
    this.jobs = [...jobs]
    this.readEvery = opts.readEvery ?? 8
  }

  private get ctx() {
    return this.model.ctx
  }

  /** Adds a job while others run (it joins the next micro-step it is picked for). */
  add(job: TrainJob): void {
    this.jobs.push(job)
  }

  /** Removes a job (its partly accumulated gradient is dropped); returns whether it was there. */
  remove(job: TrainJob): boolean {
    const i = this.jobs.indexOf(job)
    if (i >= 0) this.jobs.splice(i, 1)
    this.log = this.log.filter((e) => e.job !== job)
    return i >= 0
  }

  /** The jobs packed into the next micro-step (`pickJobs`). */
  private pick(): TrainJob[] {
    return pickJobs(this.jobs, this.opts)
  }

  /** One fused micro-step; false when no job has data left. */
  async step(): Promise<boolean> {
    const parts: { job: TrainJob; examples: Parameters<typeof padBatch>[0][number]["examples"]; end: boolean }[] = []
    for (const job of this.pick()) {
      const mb = job.next()
      if (mb) parts.push({ job, examples: mb.examples, end: mb.endOfEpoch })
      else await this.finish(job)
    }
    if (parts.length === 0) {
      if (this.jobs.some((j) => j.status === "running")) return true
      await this.flush()
      return false
    }
    const padded = padBatch(parts.map((p, slot) => ({ slot, examples: p.examples })), {
      padSide: parts[0].job.cfg.expandSide,
      padId: this.opts.padId,
    })
    const { batch, targets } = padded
    const T = batch.seqLen
    const adapters: AdapterRows[] = batch.segments.map((s, i) => ({
      row0: s.start * T,
      N: (s.end - s.start) * T,
      dev: parts[i].job.dev,
      dropoutSeed: parts[i].job.dropoutSeed(),
    }))
    const model = this.model
    const bufs = model.allocate(batch, { keepActivations: true })
    const saved = new LoraSaved(model.pool)
    const moe = new MoeState(model.pool, model.base.config, adapters)
    model.writeBatch(bufs, batch, { targets })
    const step = this.ctx.begin("train")
    model.encodeForward(step, bufs, batch, adapters, saved, moe)
    encodeBackward(step, model, bufs, batch, adapters, saved, moe, {
      factors: parts.map((p) => 1 / p.job.cfg.accumulationSteps),
    })
    const stepped: TrainJob[] = []
    for (const p of parts) {
      const job = p.job
      if (job.advance(p.examples.reduce((n, e) => n + e.ids.length, 0), { endOfEpoch: p.end })) {
        job.opt.encode(step, adapterRegion(job.dev), job.lr())
        stepped.push(job)
      }
    }
    this.appendLog(
      step,
      bufs.segLoss,
      parts.map((p, slot) => ({
        job: p.job,
        slot,
        microStep: p.job.microSteps,
        tokens: p.examples.reduce((n, e) => n + e.ids.length, 0),
      })),
    )
    step.submit()
    model.free(bufs)
    saved.release()
    moe.release()
    this.microSteps++
    const due = stepped.filter((j) => this.opts.saveStep > 0 && j.step % this.opts.saveStep === 0)
    if (due.length > 0 || this.logSlots >= this.readEvery) await this.flush()
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

  /** Copies this micro-step's per-segment (mean, count) into the loss log (no round trip). */
  private appendLog(step: Step, segLoss: GPUBuffer, entries: LogEntry[]): void {
    const width = this.opts.simultaneous * 8 // bytes of one micro-step: (mean, count) per segment
    if (!this.logBuf) {
      this.logBuf = this.ctx.buffer({
        label: "loss log",
        size: this.readEvery * width + width,
        usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC,
        category: "activations",
      })
    }
    step.copy(segLoss, 0, this.logBuf, this.logSlots * width, entries.length * 8)
    for (const e of entries) this.log.push({ ...e, slot: this.logSlots * this.opts.simultaneous + e.slot })
    this.logSlots++
  }

  /** Reads the loss log back (one round trip) and updates the jobs; stops jobs whose loss is not finite. */
  async flush(): Promise<void> {
    if (this.log.length === 0 || !this.logBuf) return
    const [bytes] = await this.ctx.read([this.logBuf])
    const f = new Float32Array(bytes)
    const touched = new Set<TrainJob>()
    for (const e of this.log) {
      if (e.job.observeLoss(f[2 * e.slot], e.microStep, this.opts.onEvent)) touched.add(e.job)
    }
    this.log = []
    this.logSlots = 0
    this.opts.onProgress?.([...touched])
  }

  /** A job ran out of data: read its last losses, save the final adapter. */
  private async finish(job: TrainJob): Promise<void> {
    await this.flush()
    if (job.status !== "running") return
    job.status = "done"
    const path = await job.saveFinal()
    this.opts.onEvent?.(`${job.name}: done after ${job.step} steps, saved ${path}`)
  }
}
