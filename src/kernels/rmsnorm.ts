/**
 * Launchers for shaders/rmsnorm.wgsl: y = x · rsqrt(mean(x²) + eps) · w and its input gradient, one thread per
 * row each.
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
  // vec4 entries when D % 4 = 0 (same results, a quarter of the memory instructions)
  step.dispatch(
    ctx.pipeline({ shader: "rmsnorm.wgsl", entryPoint: D % 4 === 0 ? "main4" : "main", constants: { WG } }),
    [
      ctx.uniform([N, D], [eps]),
      buffers.y,
      buffers.rstd,
      buffers.x,
      buffers.w,
    ],
    [gx, Math.ceil(groups / gx)],
  )
}

/**
 * dx (N, D) = rstd · (w⊙dy − x̂ · mean(x̂ ⊙ w⊙dy)), x̂ = x · rstd, written, or added to dx with `accumulate`
 * (the residual stream's gradient). Same buffers as `rmsnormForward`: dy (N, D), x (N, D) its input, w (D),
 * rstd (N) it saved. w is frozen: no dw. dx must be neither dy nor x.
 */
export function rmsnormBackward(
  step: Step,
  buffers: { dx: GPUBuffer; dy: GPUBuffer; x: GPUBuffer; w: GPUBuffer; rstd: GPUBuffer },
  dims: { N: number; D: number; accumulate?: boolean },
): void {
  const guard = (ok: boolean, reason: string) => {
    if (!ok) throw new GpuValidationError({ label: "rmsnorm backward", reason })
  }
  const { N, D } = dims
  guard(Number.isInteger(N) && N >= 1 && Number.isInteger(D) && D >= 1, `N=${N}, D=${D} must be ≥ 1`)
  guard(N * D < 2 ** 32, `N·D = ${N * D} over u32`)
  guard(buffers.dx !== buffers.dy && buffers.dx !== buffers.x, "dx aliases dy or x")
  for (const name of ["dx", "dy", "x"] as const) {
    guard(buffers[name].size >= N * D * 4, `${name} holds ${buffers[name].size} bytes, needs N·D·4 = ${N * D * 4}`)
  }
  guard(buffers.rstd.size >= N * 4, `rstd holds ${buffers.rstd.size} bytes, needs N·4 = ${N * 4}`)
  guard(buffers.w.size >= D * 4, `w holds ${buffers.w.size} bytes, needs D·4 = ${D * 4}`)
  const ctx = step.ctx
  const groups = Math.ceil(N / WG)
  const gx = Math.min(groups, ctx.limits.maxComputeWorkgroupsPerDimension)
  const pipeline = ctx.pipeline({
    shader: "rmsnorm.wgsl",
    entryPoint: D % 4 === 0 ? "backward4" : "backward",
    constants: { WG, ACC: dims.accumulate ? 1 : 0 },
  })
  step.dispatch(pipeline, [ctx.uniform([N, D]), buffers.dx, buffers.dy, buffers.x, buffers.w, buffers.rstd], [
    gx,
    Math.ceil(groups / gx),
  ])
}
