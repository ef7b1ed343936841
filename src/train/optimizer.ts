/**
 * Optimizer step on the device: one fused dispatch per adapter per step (shaders/optimizer.wgsl) over the
 * adapter's ONE flat f32 parameter buffer and its gradient buffer of the same length. AdamW and SGD with
 * momentum follow torch exactly (formulas in src/reference/optimizer.ts, which is the oracle and the CPU path).
 *
 * Step-dependent scalars (this step's learning rate from the schedule, bias corrections) are written into a
 * small per-adapter uniform buffer before the step is submitted; they are not part of any pipeline key, so
 * every adapter and every step share the three pipelines of the shader. The same kernel zeroes the gradient
 * after reading it, so accumulation of the next step starts from 0.
 *
 * No gradient clipping: m-LoRA / MoE-PEFT step the optimizer without `clip_grad_norm_`.
 * @module
 */
import { GpuValidationError } from "../errors.ts"
import type { GpuContext, Step } from "../gpu/context.ts"
import {
  type AdamwScalars,
  adamwScalars,
  type OptimizerHyper,
  type OptimizerState,
  type SgdScalars,
  sgdScalars,
} from "../reference/optimizer.ts"

export type { OptimizerHyper, OptimizerKind, OptimizerState } from "../reference/optimizer.ts"
export { optimizerHyper } from "../reference/optimizer.ts"

const WG = 64
const SHADER = "optimizer.wgsl"
/** Params struct of the shader: count, first, then 10 f32 → 12 words (48 bytes, a multiple of 16). */
const PARAM_WORDS = 12

function guardFor(label: string) {
  return (ok: boolean, reason: string) => {
    if (!ok) throw new GpuValidationError({ label, reason })
  }
}

/** The 12 words of the Params uniform. */
function paramWords(count: number, s: { adamw?: AdamwScalars; sgd?: SgdScalars }): Uint32Array {
  const words = new Uint32Array(PARAM_WORDS)
  const f = new Float32Array(words.buffer)
  words[0] = count
  if (s.sgd) {
    words[1] = s.sgd.first ? 1 : 0
    f[2] = s.sgd.lr
    f[3] = s.sgd.weightDecay
    f[4] = s.sgd.momentum
  }
  if (s.adamw) {
    f[5] = s.adamw.decay
    f[6] = s.adamw.stepSize
    f[7] = s.adamw.bc2Sqrt
    f[8] = s.adamw.w1
    f[9] = s.adamw.beta2
    f[10] = s.adamw.w2
    f[11] = s.adamw.eps
  }
  return words
}

/** Checks count and that every buffer holds ⌈count/4⌉ whole vec4 (the kernel reads quads). */
/** A whole buffer or a 256-byte aligned range of one (an adapter's block of an arena slab). */
export type OptimizerBuffer = GPUBuffer | { readonly buffer: GPUBuffer; readonly offset: number; readonly size: number }

function checkBuffers(label: string, count: number, buffers: Record<string, OptimizerBuffer>): number {
  const guard = guardFor(label)
  guard(Number.isInteger(count) && count >= 1 && count <= 2 ** 32 - 4, `count=${count} must be in [1, 2^32 − 4]`)
  const quads = Math.ceil(count / 4)
  const seen = new Set<GPUBuffer>()
  for (const [name, b] of Object.entries(buffers)) {
    const buf = b instanceof GPUBuffer ? b : b.buffer
    guard(!seen.has(buf), `${name} is the same buffer as another binding`)
    seen.add(buf)
    guard(b.size >= quads * 16, `${name} holds ${b.size} bytes, needs ⌈count/4⌉·16 = ${quads * 16}`)
  }
  return quads
}

function dispatch(step: Step, entryPoint: string, bindings: OptimizerBuffer[], quads: number): void {
  const ctx = step.ctx
  const groups = Math.ceil(quads / WG)
  const gx = Math.min(groups, ctx.limits.maxComputeWorkgroupsPerDimension)
  step.dispatch(ctx.pipeline({ shader: SHADER, entryPoint, constants: { WG } }), bindings, [gx, Math.ceil(groups / gx)])
}

/**
 * AdamW over `count` parameters: params, m, v updated in place, grads zeroed. `scalars` is a uniform buffer
 * (≥ 48 bytes) the caller has filled with `writeAdamwScalars` before this step is submitted.
 */
export function adamwUpdate(
  step: Step,
  buffers: { scalars: GPUBuffer; params: OptimizerBuffer; grads: OptimizerBuffer; m: GPUBuffer; v: GPUBuffer },
  dims: { count: number },
): void {
  const { scalars, ...data } = buffers
  const quads = checkBuffers("optimizer adamw", dims.count, data)
  guardFor("optimizer adamw")(scalars.size >= PARAM_WORDS * 4, `scalars holds ${scalars.size} bytes, needs 48`)
  dispatch(step, "adamw", [scalars, data.params, data.grads, data.m, data.v], quads)
}

/**
 * SGD over `count` parameters: params updated in place, grads zeroed; with `momentum` (a buffer) the torch
 * momentum buffer is updated too. `scalars` is filled with `writeSgdScalars` before the step is submitted.
 */
export function sgdUpdate(
  step: Step,
  buffers: { scalars: GPUBuffer; params: OptimizerBuffer; grads: OptimizerBuffer; momentum?: GPUBuffer },
  dims: { count: number },
): void {
  const { scalars, momentum, ...data } = buffers
  const quads = checkBuffers("optimizer sgd", dims.count, momentum ? { ...data, momentum } : data)
  guardFor("optimizer sgd")(scalars.size >= PARAM_WORDS * 4, `scalars holds ${scalars.size} bytes, needs 48`)
  if (momentum) dispatch(step, "sgd_momentum", [scalars, data.params, data.grads, momentum], quads)
  else dispatch(step, "sgd", [scalars, data.params, data.grads], quads)
}

/** Queues the AdamW scalars of one step into `scalars` (ordered before the next submit). */
export function writeAdamwScalars(ctx: GpuContext, scalars: GPUBuffer, count: number, s: AdamwScalars): void {
  ctx.write(scalars, paramWords(count, { adamw: s }))
}

/** Queues the SGD scalars of one step into `scalars` (ordered before the next submit). */
export function writeSgdScalars(ctx: GpuContext, scalars: GPUBuffer, count: number, s: SgdScalars): void {
  ctx.write(scalars, paramWords(count, { sgd: s }))
}

/**
 * The optimizer of one adapter on the device: owns the state buffers (m, v or the momentum buffer, category
 * "optimizer"), the scalars uniform and the step counter.
 *
 * @example
 * ```ts ignore
 * const opt = AdapterOptimizer.create(ctx, { label: "alpaca", count, hyper: optimizerHyper({ kind: "adamw" }) })
 * const step = ctx.begin()
 * // ... forward, backward accumulate into grads ...
 * opt.encode(step, { params, grads }, learningRateAt(schedule, opt.step))
 * await ctx.read([...], step)
 * ```
 */
export class AdapterOptimizer {
  #step: number
  #lastStep: Step | null = null
  #released = false

  private constructor(
    readonly ctx: GpuContext,
    readonly hyper: OptimizerHyper,
    readonly count: number,
    readonly label: string,
    private readonly scalars: GPUBuffer,
    private readonly m: GPUBuffer | null,
    private readonly v: GPUBuffer | null,
  ) {
    this.#step = 0
  }

  /** Allocates zeroed state for `count` parameters (AdamW: m and v; SGD with momentum: one buffer). */
  static create(ctx: GpuContext, opts: { label: string; count: number; hyper: OptimizerHyper }): AdapterOptimizer {
    const { label, count, hyper } = opts
    const guard = guardFor(`optimizer ${label}`)
    guard(Number.isInteger(count) && count >= 1 && count <= 2 ** 32 - 4, `count=${count} must be in [1, 2^32 − 4]`)
    const size = Math.ceil(count / 4) * 16
    const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC
    const state = (name: string) => ctx.buffer({ label: `${label}.${name}`, size, usage, category: "optimizer" })
    const scalars = ctx.buffer({
      label: `${label}.optimizer_scalars`,
      size: PARAM_WORDS * 4,
      usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
      category: "optimizer",
    })
    const m = hyper.kind === "adamw" || hyper.momentum !== 0
      ? state(hyper.kind === "adamw" ? "exp_avg" : "momentum")
      : null
    const v = hyper.kind === "adamw" ? state("exp_avg_sq") : null
    return new AdapterOptimizer(ctx, hyper, count, label, scalars, m, v)
  }

  /** Optimizer steps taken so far; also the schedule index of the next update (HF LambdaLR). */
  get step(): number {
    return this.#step
  }

  /**
   * Encodes one update into `step` with learning rate `lr` (the schedule's value at `this.step`) and advances
   * the counter. The scalars are written to the queue now, so an adapter may be updated at most once per
   * submitted command buffer.
   */
  encode(step: Step, buffers: { params: OptimizerBuffer; grads: OptimizerBuffer }, lr: number): void {
    const guard = guardFor(`optimizer ${this.label}`)
    guard(!this.#released, "optimizer was released")
    guard(Number.isFinite(lr) && lr >= 0, `learning rate ${lr} must be finite and ≥ 0`)
    guard(this.#lastStep !== step, "updated twice in one command buffer (the scalars uniform holds one step)")
    const t = this.#step + 1
    if (this.hyper.kind === "adamw") {
      writeAdamwScalars(this.ctx, this.scalars, this.count, adamwScalars(this.hyper, lr, t))
      adamwUpdate(step, { scalars: this.scalars, ...buffers, m: this.m!, v: this.v! }, { count: this.count })
    } else {
      writeSgdScalars(this.ctx, this.scalars, this.count, sgdScalars(this.hyper, lr, t))
      sgdUpdate(step, { scalars: this.scalars, ...buffers, momentum: this.m ?? undefined }, { count: this.count })
    }
    this.#lastStep = step
    this.#step = t
  }

  /** Reads the state back (one round trip) for a checkpoint. */
  async readState(): Promise<OptimizerState> {
    const bytes = this.count * 4
    const sources = [this.m, this.v].filter((b): b is GPUBuffer => b !== null).map((buffer) => ({
      buffer,
      offset: 0,
      size: bytes,
    }))
    const got = sources.length > 0 ? await this.ctx.read(sources) : []
    const arrays = got.map((b) => new Float32Array(b))
    if (this.hyper.kind === "adamw") return { kind: "adamw", step: this.#step, m: arrays[0], v: arrays[1] }
    return this.m ? { kind: "sgd", step: this.#step, momentum: arrays[0] } : { kind: "sgd", step: this.#step }
  }

  /** Restores a saved state (same kind and parameter count) so that training continues exactly. */
  restoreState(state: OptimizerState): void {
    const guard = guardFor(`optimizer ${this.label}`)
    guard(!this.#released, "optimizer was released")
    guard(state.kind === this.hyper.kind, `state is ${state.kind}, this optimizer is ${this.hyper.kind}`)
    guard(Number.isInteger(state.step) && state.step >= 0, `state step ${state.step} must be an integer ≥ 0`)
    const put = (name: string, buf: GPUBuffer | null, data: Float32Array | undefined) => {
      if (!buf) {
        guard(data === undefined, `state has ${name} but this optimizer keeps none (momentum 0)`)
        return
      }
      guard(data !== undefined, `state lacks ${name}`)
      guard(data!.length === this.count, `state ${name} has ${data!.length} values, the adapter has ${this.count}`)
      this.ctx.write(buf, data!)
    }
    if (this.hyper.kind === "adamw") {
      put("m", this.m, state.m)
      put("v", this.v, state.v)
    } else put("momentum", this.m, state.momentum)
    this.#step = state.step
    this.#lastStep = null
  }

  /** Frees the state and scalars buffers. */
  release(): void {
    if (this.#released) return
    this.#released = true
    for (const b of [this.m, this.v, this.scalars]) if (b) this.ctx.release(b)
    this.ctx.forgetBindGroups()
  }
}
