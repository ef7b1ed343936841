/**
 * Launchers for shaders/cross_entropy.wgsl (per-position loss and logsumexp, and the mean over ranges) and
 * shaders/cross_entropy_backward.wgsl (per-position gradient scales, and dlogits).
 * @module
 */
import { GpuValidationError } from "../errors.ts"
import type { Step } from "../gpu/context.ts"

const WG = 64
/** columns per thread in the backward */
const CH = 64
/** factor slots in the grad_scale uniform (array<vec4<f32>, 256>) */
export const MAX_RANGES = 1024

function guard(ok: boolean, reason: string): void {
  if (!ok) throw new GpuValidationError({ label: "cross_entropy", reason })
}

/**
 * For the logits chunk (N, V) holding positions N0 .. N0+N−1 (N0 default 0): lse[N0+n] = logsumexp of
 * row n, loss[N0+n] = lse − logits[n, target] where targets[N0+n] ≥ 0, else 0; both written.
 * loss, lse and targets (i32, −1 = ignored) are indexed by global position; targets must be < V.
 */
export function crossEntropyForward(
  step: Step,
  buffers: { loss: GPUBuffer; lse: GPUBuffer; logits: GPUBuffer; targets: GPUBuffer },
  dims: { N: number; V: number; N0?: number },
): void {
  const { N, V } = dims
  const N0 = dims.N0 ?? 0
  guard(Number.isInteger(N) && N >= 1 && Number.isInteger(V) && V >= 1, `N=${N}, V=${V} must be ≥ 1`)
  guard(Number.isInteger(N0) && N0 >= 0, `N0=${N0} must be ≥ 0`)
  guard(N * V < 2 ** 32, `N·V = ${N * V} over u32`)
  guard(buffers.logits.size >= N * V * 4, `logits holds ${buffers.logits.size} bytes, needs N·V·4 = ${N * V * 4}`)
  const end = (N0 + N) * 4
  for (const [name, buf] of [["loss", buffers.loss], ["lse", buffers.lse], ["targets", buffers.targets]] as const) {
    guard(buf.size >= end, `${name} holds ${buf.size} bytes, needs (N0+N)·4 = ${end}`)
  }
  guard(buffers.loss !== buffers.lse, "loss and lse are the same buffer")
  const ctx = step.ctx
  const groups = Math.ceil(N / WG)
  const gx = Math.min(groups, ctx.limits.maxComputeWorkgroupsPerDimension)
  step.dispatch(ctx.pipeline({ shader: "cross_entropy.wgsl", constants: { WG } }), [
    ctx.uniform([N, V, N0, 0]),
    buffers.loss,
    buffers.lse,
    buffers.logits,
    buffers.targets,
  ], [gx, Math.ceil(groups / gx)])
}

/**
 * out (S, 2) = (mean loss, count) over the predicted positions (target ≥ 0) of each range; `ranges` (S, 2) u32
 * holds [start, end) position pairs inside [0, N) (e.g. rows·T of one adapter's rows). A range with nothing
 * predicted gives (0, 0).
 */
export function crossEntropyMean(
  step: Step,
  buffers: { out: GPUBuffer; loss: GPUBuffer; targets: GPUBuffer; ranges: GPUBuffer },
  dims: { N: number; S: number },
): void {
  const { N, S } = dims
  guard(Number.isInteger(N) && N >= 1 && Number.isInteger(S) && S >= 1, `N=${N}, S=${S} must be ≥ 1`)
  guard(buffers.out.size >= S * 8, `out holds ${buffers.out.size} bytes, needs S·2·4 = ${S * 8}`)
  guard(buffers.ranges.size >= S * 8, `ranges holds ${buffers.ranges.size} bytes, needs S·2·4 = ${S * 8}`)
  guard(buffers.loss.size >= N * 4, `loss holds ${buffers.loss.size} bytes, needs N·4 = ${N * 4}`)
  guard(buffers.targets.size >= N * 4, `targets holds ${buffers.targets.size} bytes, needs N·4 = ${N * 4}`)
  const ctx = step.ctx
  guard(S <= ctx.limits.maxComputeWorkgroupsPerDimension, `S=${S} ranges over the workgroup limit`)
  step.dispatch(ctx.pipeline({ shader: "cross_entropy.wgsl", entryPoint: "mean" }), [
    ctx.uniform([N, 0, 0, S]),
    buffers.out,
    buffers.loss,
    buffers.targets,
    buffers.ranges,
  ], [S])
}

/**
 * gscale (Ntot) f32 = factors[s] / count_s at the predicted positions (target ≥ 0) of range s and 0 at its ignored
 * ones, written; count_s = predicted positions in the range, so the gradient is that of each range's mean loss
 * (spec §3), times `factors` (default all 1; e.g. 1 / gradient-accumulation steps). `ranges` (S, 2) u32 as in
 * `crossEntropyMean`; positions outside every range are left as they are (give ranges that cover [0, Ntot)).
 */
export function crossEntropyGradScale(
  step: Step,
  buffers: { gscale: GPUBuffer; targets: GPUBuffer; ranges: GPUBuffer },
  dims: { N: number; S: number; factors?: readonly number[] },
): void {
  const { N, S } = dims
  guard(Number.isInteger(N) && N >= 1 && Number.isInteger(S) && S >= 1, `N=${N}, S=${S} must be ≥ 1`)
  guard(S <= MAX_RANGES, `S=${S} ranges over ${MAX_RANGES}`)
  const factors = dims.factors ?? new Array<number>(S).fill(1)
  guard(factors.length === S, `${factors.length} factors for S=${S} ranges`)
  guard(factors.every(Number.isFinite), "factors must be finite")
  guard(buffers.gscale.size >= N * 4, `gscale holds ${buffers.gscale.size} bytes, needs N·4 = ${N * 4}`)
  guard(buffers.targets.size >= N * 4, `targets holds ${buffers.targets.size} bytes, needs N·4 = ${N * 4}`)
  guard(buffers.ranges.size >= S * 8, `ranges holds ${buffers.ranges.size} bytes, needs S·2·4 = ${S * 8}`)
  guard(buffers.gscale !== buffers.targets && buffers.gscale !== buffers.ranges, "gscale aliases an input")
  const ctx = step.ctx
  const slots = new Array<number>(MAX_RANGES).fill(0)
  factors.forEach((f, s) => slots[s] = f)
  step.dispatch(ctx.pipeline({ shader: "cross_entropy_backward.wgsl", entryPoint: "grad_scale" }), [
    ctx.uniform([S, 0, 0, 0], slots),
    buffers.gscale,
    buffers.targets,
    buffers.ranges,
  ], [S])
}

/**
 * dlogits (N, V) = (softmax(logits) − onehot(target)) · gscale for the logits chunk (N, V) holding positions
 * N0 .. N0+N−1 (N0 default 0, the chunking of `crossEntropyForward`), written; rows whose target is −1 get 0.
 * lse (saved by the forward), targets (i32) and gscale (from `crossEntropyGradScale`) are indexed by global
 * position. With dlogits = logits the chunk is overwritten by its gradient (no second N·V buffer); otherwise
 * dlogits must alias no input.
 */
export function crossEntropyBackward(
  step: Step,
  buffers: { dlogits: GPUBuffer; gscale: GPUBuffer; logits: GPUBuffer; targets: GPUBuffer; lse: GPUBuffer },
  dims: { N: number; V: number; N0?: number },
): void {
  const { N, V } = dims
  const N0 = dims.N0 ?? 0
  guard(Number.isInteger(N) && N >= 1 && Number.isInteger(V) && V >= 1, `N=${N}, V=${V} must be ≥ 1`)
  guard(Number.isInteger(N0) && N0 >= 0, `N0=${N0} must be ≥ 0`)
  guard(N * V < 2 ** 32, `N·V = ${N * V} over u32`)
  const { dlogits, gscale, logits, targets, lse } = buffers
  const inPlace = dlogits === logits
  guard(![gscale, targets, lse].includes(dlogits), "dlogits aliases gscale, targets or lse")
  for (const [name, buf] of [["dlogits", dlogits], ["logits", logits]] as const) {
    guard(buf.size >= N * V * 4, `${name} holds ${buf.size} bytes, needs N·V·4 = ${N * V * 4}`)
  }
  const end = (N0 + N) * 4
  for (const [name, buf] of [["lse", lse], ["targets", targets], ["gscale", gscale]] as const) {
    guard(buf.size >= end, `${name} holds ${buf.size} bytes, needs (N0+N)·4 = ${end}`)
  }
  const ctx = step.ctx
  const chunks = Math.ceil(V / CH)
  guard(N * chunks < 2 ** 32, `N·ceil(V/${CH}) over u32`)
  const groups = Math.ceil((N * chunks) / WG)
  const gx = Math.min(groups, ctx.limits.maxComputeWorkgroupsPerDimension)
  const pipeline = ctx.pipeline({
    shader: "cross_entropy_backward.wgsl",
    entryPoint: inPlace ? "inplace" : "main",
    constants: { WG, CH },
  })
  const uniform = ctx.uniform([N, V, N0, chunks])
  const bindings = inPlace ? [uniform, logits, lse, targets, gscale] : [uniform, dlogits, logits, lse, targets, gscale]
  step.dispatch(pipeline, bindings, [gx, Math.ceil(groups / gx)])
}
