/**
 * Launchers for shaders/residual.wgsl: x += y, and the gradient helpers x += α·y and x = α·x.
 *
 * The residual's backward is a pass-through: z = x + y gives dx = dy = dz, so the stream's gradient buffer is
 * handed to the branch's backward unchanged and the branch's input gradient is added back into it
 * (`rmsnormBackward` with `accumulate`, or `axpy`).
 * @module
 */
import { GpuValidationError } from "../errors.ts"
import type { Step } from "../gpu/context.ts"

const WG = 64

/** x (N, D) += y (N, D), in place. x and y must be different buffers. */
export function residualForward(
  step: Step,
  buffers: { x: GPUBuffer; y: GPUBuffer },
  dims: { N: number; D: number },
): void {
  const guard = (ok: boolean, reason: string) => {
    if (!ok) throw new GpuValidationError({ label: "residual", reason })
  }
  const { N, D } = dims
  guard(Number.isInteger(N) && N >= 1 && Number.isInteger(D) && D >= 1, `N=${N}, D=${D} must be ≥ 1`)
  const count = N * D
  guard(count < 2 ** 32, `N·D = ${count} over u32`)
  guard(buffers.x !== buffers.y, "x and y are the same buffer")
  guard(buffers.x.size >= count * 4, `x holds ${buffers.x.size} bytes, needs N·D·4 = ${count * 4}`)
  guard(buffers.y.size >= count * 4, `y holds ${buffers.y.size} bytes, needs N·D·4 = ${count * 4}`)
  const ctx = step.ctx
  const groups = Math.ceil(count / WG)
  const gx = Math.min(groups, ctx.limits.maxComputeWorkgroupsPerDimension)
  step.dispatch(ctx.pipeline({ shader: "residual.wgsl", constants: { WG } }), [
    ctx.uniform([count]),
    buffers.x,
    buffers.y,
  ], [gx, Math.ceil(groups / gx)])
}

/** x (count) += alpha · y (count), in place (alpha = 1: a gradient sum). x and y must be different buffers. */
export function axpy(
  step: Step,
  buffers: { x: GPUBuffer; y: GPUBuffer },
  dims: { count: number; alpha: number },
): void {
  helper(step, "axpy", [buffers.x, buffers.y], dims)
}

/** x (count) = alpha · x, in place (e.g. 1 / accumulation steps). */
export function scale(step: Step, buffers: { x: GPUBuffer }, dims: { count: number; alpha: number }): void {
  helper(step, "scale", [buffers.x], dims)
}

function helper(
  step: Step,
  entryPoint: "axpy" | "scale",
  buffers: readonly GPUBuffer[],
  dims: { count: number; alpha: number },
): void {
  const guard = (ok: boolean, reason: string) => {
    if (!ok) throw new GpuValidationError({ label: entryPoint, reason })
  }
  const { count, alpha } = dims
  guard(Number.isInteger(count) && count >= 1 && count < 2 ** 32, `count=${count} must be in [1, 2^32)`)
  guard(Number.isFinite(alpha), `alpha=${alpha} must be finite`)
  guard(buffers.length < 2 || buffers[0] !== buffers[1], "x and y are the same buffer")
  for (const buf of buffers) guard(buf.size >= count * 4, `${buf.label} holds ${buf.size} bytes, needs ${count * 4}`)
  const ctx = step.ctx
  const groups = Math.ceil(count / WG)
  const gx = Math.min(groups, ctx.limits.maxComputeWorkgroupsPerDimension)
  step.dispatch(ctx.pipeline({ shader: "residual.wgsl", entryPoint, constants: { WG } }), [
    ctx.uniform([count], [alpha]),
    ...buffers,
  ], [gx, Math.ceil(groups / gx)])
}
