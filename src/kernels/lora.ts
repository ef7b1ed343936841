/**
 * Launchers for the LoRA kernels (shaders/lora_*.wgsl) over one adapter's tokens [row0, row0 + N) of a packed
 * batch, forward and backward side by side (same argument order: activations, parameters, saved, dims):
 *
 *   loraShrink         t (N, R)         =  drop(x) · Aᵀ
 *   loraExpand         y (·, OUT)       += scale · t · Bᵀ
 *   loraBackwardDt     dt (N, R)        =  scale · dy · B
 *   loraBackwardGrads  dB (OUT, R)      += scale · dyᵀ t,   dA (R, IN) += dtᵀ drop(x)
 *   loraBackwardDx     dx (·, IN)       += m ⊙ (dt · A)
 *   loraForward / loraBackward compose them.
 *
 * x, y, dy, dx are batch-shaped (row row0 + i); t, dt are local (N, R). A and B are `TensorRef`s into one f32
 * buffer (the adapter's flat parameters, src/model/adapter_device.ts), dA and dB into one gradient buffer; the
 * kernels bind the covering range (offset aligned down to 256 bytes) and address tensors by element offsets.
 * Dropout is regenerated on the device from (seed, stream, row, col) (src/reference/lora.ts), so no mask is
 * stored or uploaded and backward reuses the forward's mask. Parameter gradients accumulate (+=): zero them at
 * the start of an optimizer step (adapter_device.ts `zeroGrads`).
 * @module
 */
import { GpuValidationError } from "../errors.ts"
import type { Binding, GpuContext, Step } from "../gpu/context.ts"
import { loadShader } from "../gpu/shaders.ts"
import { dropoutParams } from "../reference/lora.ts"

const WG = 64

/** An f32 tensor inside a buffer, `offset` in elements. */
export interface TensorRef {
  readonly buffer: GPUBuffer
  readonly offset: number
}

/** Training-time dropout on the LoRA input: probability p, per-(step, layer, adapter) seed, stream. */
export interface DropoutArgs {
  readonly p: number
  readonly seed: number
  readonly stream: number
}

export interface LoraDims {
  /** first token row in the batch-shaped buffers */
  readonly row0: number
  /** tokens */
  readonly N: number
  readonly inDim: number
  readonly outDim: number
  readonly R: number
  /** loraScale(spec) */
  readonly scale: number
  /** absent or p = 0: no dropout (evaluation) */
  readonly dropout?: DropoutArgs | null
}

// ---- helpers shared with src/kernels/moe.ts --------------------------------------------------------

const pipelines = new WeakMap<GpuContext, Map<string, GPUComputePipeline>>()

/** The pipeline of `file` with `preludes` prepended (cached per context by file + constants). */
export function preludedPipeline(
  ctx: GpuContext,
  preludes: readonly string[],
  file: string,
  constants: Readonly<Record<string, number>>,
): GPUComputePipeline {
  let cache = pipelines.get(ctx)
  if (!cache) pipelines.set(ctx, cache = new Map())
  const key = `${file}|${Object.keys(constants).sort().map((k) => `${k}=${constants[k]}`).join(",")}`
  let p = cache.get(key)
  if (!p) {
    const code = [...preludes, file].map(loadShader).join("\n")
    cache.set(key, p = ctx.pipeline({ shader: file, code, constants }))
  }
  return p
}

/** Workgroups for `count` invocations of WG lanes, folded into 2-D under maxComputeWorkgroupsPerDimension. */
export function grid1d(ctx: GpuContext, count: number, wg = WG): [number, number] {
  const groups = Math.ceil(count / wg)
  const gx = Math.max(1, Math.min(groups, ctx.limits.maxComputeWorkgroupsPerDimension))
  return [groups === 0 ? 0 : gx, Math.max(1, Math.ceil(groups / gx))]
}

/**
 * One binding covering the element ranges [offset, offset + length) of `buffer`: starts at the largest
 * 256-byte boundary at or below the first range; returns each range's offset relative to the binding.
 */
export function spanBinding(
  ctx: GpuContext,
  label: string,
  buffer: GPUBuffer,
  ranges: readonly { offset: number; length: number }[],
): { binding: Binding; rel: number[] } {
  const guard = (ok: boolean, reason: string) => {
    if (!ok) throw new GpuValidationError({ label, reason })
  }
  guard(ranges.length > 0, "no tensors to bind")
  for (const r of ranges) {
    guard(Number.isInteger(r.offset) && r.offset >= 0 && r.length >= 0, `bad range ${r.offset}+${r.length}`)
  }
  const align = ctx.limits.minStorageBufferOffsetAlignment
  const start = Math.min(...ranges.map((r) => r.offset)) * 4
  const end = Math.max(...ranges.map((r) => r.offset + r.length)) * 4
  const base = Math.floor(start / align) * align
  guard(end <= buffer.size, `tensors end at byte ${end}, buffer holds ${buffer.size}`)
  const size = Math.max(4, end - base)
  guard(
    size <= ctx.limits.maxStorageBufferBindingSize,
    `range of ${size} bytes over maxStorageBufferBindingSize ${ctx.limits.maxStorageBufferBindingSize}`,
  )
  return { binding: { buffer, offset: base, size }, rel: ranges.map((r) => r.offset - base / 4) }
}

/** Dropout uniform words [on, seed, stream, thr] and the kept-value multiplier. */
export function dropoutWords(d: DropoutArgs | null | undefined): { words: number[]; keep: number } {
  if (!d || d.p === 0) return { words: [0, 0, 0, 0], keep: 1 }
  const { thr, keepScale } = dropoutParams(d.p)
  return { words: [1, d.seed >>> 0, d.stream >>> 0, thr], keep: keepScale }
}

// ---- launchers -------------------------------------------------------------------------------------

const PRELUDE = ["lora_common.wgsl", "lora_dims.wgsl"]

function check(dims: LoraDims, label: string): void {
  const guard = (ok: boolean, reason: string) => {
    if (!ok) throw new GpuValidationError({ label, reason })
  }
  const { row0, N, inDim, outDim, R } = dims
  for (const [k, v] of Object.entries({ N, inDim, outDim, R })) {
    guard(Number.isInteger(v) && v >= 1, `${k}=${v} must be an integer ≥ 1`)
  }
  guard(Number.isInteger(row0) && row0 >= 0, `row0=${row0} must be an integer ≥ 0`)
  guard((row0 + N) * Math.max(inDim, outDim) < 2 ** 32, "rows over u32 indexing")
  guard(Number.isFinite(dims.scale), `scale=${dims.scale}`)
  const p = dims.dropout?.p ?? 0
  guard(p >= 0 && p < 1, `dropout p=${p} must be in [0, 1)`)
}

function need(label: string, name: string, buf: GPUBuffer, floats: number): void {
  if (buf.size < floats * 4) {
    throw new GpuValidationError({ label, reason: `${name} holds ${buf.size} bytes, needs ${floats * 4}` })
  }
}

/** Uniform of one launch: A / B element offsets relative to the bound range. */
function uniform(ctx: GpuContext, dims: LoraDims, a: number, b: number): GPUBuffer {
  const d = dropoutWords(dims.dropout)
  return ctx.uniform(
    [dims.N, dims.inDim, dims.outDim, dims.R, dims.row0, a, b, ...d.words, 0],
    [dims.scale, d.keep],
  )
}

/** Binding of A and B (or dA and dB) in their shared buffer, with their relative offsets. */
function pairBinding(ctx: GpuContext, label: string, a: TensorRef, b: TensorRef, dims: LoraDims) {
  if (a.buffer !== b.buffer) throw new GpuValidationError({ label, reason: "A and B must live in one buffer" })
  const { binding, rel } = spanBinding(ctx, label, a.buffer, [
    { offset: a.offset, length: dims.R * dims.inDim },
    { offset: b.offset, length: dims.outDim * dims.R },
  ])
  return { binding, a: rel[0], b: rel[1] }
}

/** t (N, R) = drop(x[row0 ..]) · Aᵀ, written. */
export function loraShrink(
  step: Step,
  args: { t: GPUBuffer; x: GPUBuffer; a: TensorRef; b: TensorRef },
  dims: LoraDims,
): void {
  const label = "lora_shrink"
  check(dims, label)
  need(label, "t", args.t, dims.N * dims.R)
  need(label, "x", args.x, (dims.row0 + dims.N) * dims.inDim)
  const ctx = step.ctx
  const pb = pairBinding(ctx, label, args.a, args.b, dims)
  step.dispatch(
    preludedPipeline(ctx, PRELUDE, "lora_shrink.wgsl", { WG }),
    [uniform(ctx, dims, pb.a, pb.b), args.t, args.x, pb.binding],
    grid1d(ctx, dims.N * dims.R),
  )
}

/** y[row0 ..] += scale · t · Bᵀ. */
export function loraExpand(
  step: Step,
  args: { y: GPUBuffer; t: GPUBuffer; a: TensorRef; b: TensorRef },
  dims: LoraDims,
): void {
  const label = "lora_expand"
  check(dims, label)
  need(label, "t", args.t, dims.N * dims.R)
  need(label, "y", args.y, (dims.row0 + dims.N) * dims.outDim)
  const ctx = step.ctx
  const pb = pairBinding(ctx, label, args.a, args.b, dims)
  step.dispatch(
    preludedPipeline(ctx, PRELUDE, "lora_expand.wgsl", { WG }),
    [uniform(ctx, dims, pb.a, pb.b), args.y, args.t, pb.binding],
    grid1d(ctx, dims.N * dims.outDim),
  )
}

/** LoRA forward onto the base output: t = drop(x) Aᵀ (saved for backward), y += scale · t Bᵀ. */
export function loraForward(
  step: Step,
  args: { y: GPUBuffer; x: GPUBuffer; a: TensorRef; b: TensorRef; t: GPUBuffer },
  dims: LoraDims,
): void {
  loraShrink(step, args, dims)
  loraExpand(step, args, dims)
}

/** dt (N, R) = scale · dy[row0 ..] · B, written. */
export function loraBackwardDt(
  step: Step,
  args: { dt: GPUBuffer; dy: GPUBuffer; a: TensorRef; b: TensorRef },
  dims: LoraDims,
): void {
  const label = "lora_bwd_dt"
  check(dims, label)
  need(label, "dt", args.dt, dims.N * dims.R)
  need(label, "dy", args.dy, (dims.row0 + dims.N) * dims.outDim)
  const ctx = step.ctx
  const pb = pairBinding(ctx, label, args.a, args.b, dims)
  step.dispatch(
    preludedPipeline(ctx, PRELUDE, "lora_bwd_dt.wgsl", { WG }),
    [uniform(ctx, dims, pb.a, pb.b), args.dt, args.dy, pb.binding],
    grid1d(ctx, dims.N * dims.R),
  )
}

/** dB += scale · dyᵀ t and dA += dtᵀ drop(x) into the gradient buffer of `da` / `db`. */
export function loraBackwardGrads(
  step: Step,
  args: { da: TensorRef; db: TensorRef; dy: GPUBuffer; t: GPUBuffer; dt: GPUBuffer; x: GPUBuffer },
  dims: LoraDims,
): void {
  const label = "lora_bwd_grads"
  check(dims, label)
  need(label, "t", args.t, dims.N * dims.R)
  need(label, "dt", args.dt, dims.N * dims.R)
  need(label, "dy", args.dy, (dims.row0 + dims.N) * dims.outDim)
  need(label, "x", args.x, (dims.row0 + dims.N) * dims.inDim)
  const ctx = step.ctx
  const gb = pairBinding(ctx, label, args.da, args.db, dims)
  const inputs = [args.dy, args.t, args.dt, args.x]
  if (inputs.includes(args.da.buffer)) throw new GpuValidationError({ label, reason: "gradients alias an input" })
  step.dispatch(
    preludedPipeline(ctx, PRELUDE, "lora_bwd_grads.wgsl", { WG }),
    [uniform(ctx, dims, gb.a, gb.b), gb.binding, ...inputs],
    grid1d(ctx, dims.outDim * dims.R + dims.R * dims.inDim),
  )
}

/** dx[row0 ..] += m ⊙ (dt · A). */
export function loraBackwardDx(
  step: Step,
  args: { dx: GPUBuffer; dt: GPUBuffer; a: TensorRef; b: TensorRef },
  dims: LoraDims,
): void {
  const label = "lora_bwd_dx"
  check(dims, label)
  need(label, "dt", args.dt, dims.N * dims.R)
  need(label, "dx", args.dx, (dims.row0 + dims.N) * dims.inDim)
  const ctx = step.ctx
  const pb = pairBinding(ctx, label, args.a, args.b, dims)
  step.dispatch(
    preludedPipeline(ctx, PRELUDE, "lora_bwd_dx.wgsl", { WG }),
    [uniform(ctx, dims, pb.a, pb.b), args.dx, args.dt, pb.binding],
    grid1d(ctx, dims.N * dims.inDim),
  )
}

/**
 * LoRA backward for upstream dy: dt (scratch, N × R) = scale · dy B; dA, dB += (into the gradient buffer);
 * dx += m ⊙ (dt A) when `dx` is given (after the frozen weight's linearBackwardInput wrote dx).
 */
export function loraBackward(
  step: Step,
  args: {
    dy: GPUBuffer
    x: GPUBuffer
    dx?: GPUBuffer
    a: TensorRef
    b: TensorRef
    da: TensorRef
    db: TensorRef
    t: GPUBuffer
    dt: GPUBuffer
  },
  dims: LoraDims,
): void {
  loraBackwardDt(step, args, dims)
  loraBackwardGrads(step, args, dims)
  if (args.dx) loraBackwardDx(step, { dx: args.dx, dt: args.dt, a: args.a, b: args.b }, dims)
}
