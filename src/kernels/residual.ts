/**
 * Launcher for shaders/residual.wgsl: x += y.
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
