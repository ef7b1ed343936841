/**
 * Launcher for shaders/rmsnorm.wgsl: y = x · rsqrt(mean(x²) + eps) · w, one thread per row.
 * @module
 */
import { GpuValidationError } from "../errors.ts"
import type { Step } from "../gpu/context.ts"

const WG = 64

/**
 * y (N, D) = rmsnorm(x (N, D)) · w (D) and rstd (N) = 1 / sqrt(mean(x²) + eps), both written.
 * y must not be x (WebGPU forbids one buffer bound writable and read-only in a dispatch).
 */
export function rmsnormForward(
  step: Step,
  buffers: { y: GPUBuffer; rstd: GPUBuffer; x: GPUBuffer; w: GPUBuffer },
  dims: { N: number; D: number; eps: number },
): void {
  const guard = (ok: boolean, reason: string) => {
    if (!ok) throw new GpuValidationError({ label: "rmsnorm", reason })
  }
  const { N, D, eps } = dims
  guard(Number.isInteger(N) && N >= 1 && Number.isInteger(D) && D >= 1, `N=${N}, D=${D} must be ≥ 1`)
  guard(N * D < 2 ** 32, `N·D = ${N * D} over u32`)
  guard(Number.isFinite(eps) && eps >= 0, `eps=${eps} must be finite and ≥ 0`)
  guard(buffers.y !== buffers.x, "y and x are the same buffer")
  guard(buffers.y.size >= N * D * 4, `y holds ${buffers.y.size} bytes, needs N·D·4 = ${N * D * 4}`)
  guard(buffers.x.size >= N * D * 4, `x holds ${buffers.x.size} bytes, needs N·D·4 = ${N * D * 4}`)
  guard(buffers.rstd.size >= N * 4, `rstd holds ${buffers.rstd.size} bytes, needs N·4 = ${N * 4}`)
  guard(buffers.w.size >= D * 4, `w holds ${buffers.w.size} bytes, needs D·4 = ${D * 4}`)
  const ctx = step.ctx
  const groups = Math.ceil(N / WG)
  const gx = Math.min(groups, ctx.limits.maxComputeWorkgroupsPerDimension)
  step.dispatch(ctx.pipeline({ shader: "rmsnorm.wgsl", constants: { WG } }), [
    ctx.uniform([N, D], [eps]),
    buffers.y,
    buffers.rstd,
    buffers.x,
    buffers.w,
  ], [gx, Math.ceil(groups / gx)])
}
