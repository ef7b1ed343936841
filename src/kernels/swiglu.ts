/**
 * Launchers for shaders/swiglu.wgsl: h = act(g) ⊙ u and its backward dg = dh ⊙ u ⊙ act'(g), du = dh ⊙ act(g);
 * the vec4 entries whenever N·F is a multiple of 4 (a quarter of the memory instructions, same results).
 * @module
 */
import { GpuValidationError } from "../errors.ts"
import type { Step } from "../gpu/context.ts"
import { ACT, type ActName } from "../reference/swiglu.ts"

const WG = 64

/**
 * h (N, F) = act(g) ⊙ u for g, u (N, F), written; act "silu" (default), "gelu" (erf) or "gelu_tanh"
 * (see `activationOf` for config.json names). h must be neither g nor u.
 */
export function swigluForward(
  step: Step,
  buffers: { h: GPUBuffer; g: GPUBuffer; u: GPUBuffer },
  dims: { N: number; F: number; act?: ActName },
): void {
  const guard = (ok: boolean, reason: string) => {
    if (!ok) throw new GpuValidationError({ label: "swiglu", reason })
  }
  const { N, F } = dims
  const act = dims.act ?? "silu"
  guard(Number.isInteger(N) && N >= 1 && Number.isInteger(F) && F >= 1, `N=${N}, F=${F} must be ≥ 1`)
  guard(act in ACT, `unknown activation ${act}`)
  const count = N * F
  guard(count < 2 ** 32, `N·F = ${count} over u32`)
  guard(buffers.h !== buffers.g && buffers.h !== buffers.u, "h aliases g or u")
  for (const [name, buf] of Object.entries(buffers)) {
    guard(buf.size >= count * 4, `${name} holds ${buf.size} bytes, needs N·F·4 = ${count * 4}`)
  }
  const ctx = step.ctx
  const [gx, gy, v4] = grid(step, count)
  step.dispatch(
    ctx.pipeline({
      shader: "swiglu.wgsl",
      preludes: ["activation.wgsl"],
      entryPoint: v4 ? "main4" : "main",
      constants: { WG, ACT: ACT[act] },
    }),
    [
      ctx.uniform([count]),
      buffers.h,
      buffers.g,
      buffers.u,
    ],
    [gx, gy],
  )
}

/**
 * dg = dh ⊙ u ⊙ act'(g) and du = dh ⊙ act(g), all (N, F), written. Same buffers as `swigluForward` (dh in place
 * of h). With dg = g and du = u (both, the same buffers) the gradients overwrite g and u in place, which the
 * backward no longer needs; otherwise dg and du must alias none of dh, g, u.
 */
export function swigluBackward(
  step: Step,
  buffers: { dg: GPUBuffer; du: GPUBuffer; dh: GPUBuffer; g: GPUBuffer; u: GPUBuffer },
  dims: { N: number; F: number; act?: ActName },
): void {
  const guard = (ok: boolean, reason: string) => {
    if (!ok) throw new GpuValidationError({ label: "swiglu backward", reason })
  }
  const { N, F } = dims
  const act = dims.act ?? "silu"
  guard(Number.isInteger(N) && N >= 1 && Number.isInteger(F) && F >= 1, `N=${N}, F=${F} must be ≥ 1`)
  guard(act in ACT, `unknown activation ${act}`)
  const count = N * F
  guard(count < 2 ** 32, `N·F = ${count} over u32`)
  const { dg, du, dh, g, u } = buffers
  const inPlace = dg === g && du === u
  guard(g !== u && dh !== g && dh !== u, "dh, g and u must be three buffers")
  guard(inPlace || ![dh, g, u].includes(dg) && ![dh, g, u].includes(du) && dg !== du, "dg or du aliases an input")
  for (const [name, buf] of Object.entries(buffers)) {
    guard(buf.size >= count * 4, `${name} holds ${buf.size} bytes, needs N·F·4 = ${count * 4}`)
  }
  const ctx = step.ctx
  const [gx, gy, v4] = grid(step, count)
  const pipeline = ctx.pipeline({
    shader: "swiglu.wgsl",
    preludes: ["activation.wgsl"],
    entryPoint: (inPlace ? "backward_inplace" : "backward") + (v4 ? "4" : ""),
    constants: { WG, ACT: ACT[act] },
  })
  const bindings = inPlace ? [ctx.uniform([count]), g, u, dh] : [ctx.uniform([count]), dg, du, dh, g, u]
  step.dispatch(pipeline, bindings, [gx, gy])
}

/** The 2-D grid over count elements, in chunks of 4 (the vec4 entries) when count % 4 = 0. */
function grid(step: Step, count: number): [number, number, boolean] {
  const v4 = count % 4 === 0
  const groups = Math.ceil((v4 ? count / 4 : count) / WG)
  const gx = Math.min(groups, step.ctx.limits.maxComputeWorkgroupsPerDimension)
  return [gx, Math.ceil(groups / gx), v4]
}
