/**
 * Launcher for shaders/embedding.wgsl: x (N, D) = embed[tokens].
 * @module
 */
import { GpuValidationError } from "../errors.ts"
import type { Step } from "../gpu/context.ts"

const WG = 64

function guard(ok: boolean, reason: string): void {
  if (!ok) throw new GpuValidationError({ label: "embedding", reason })
}

/**
 * x[n, :] = embed[tokens[n] − V0, :] for every n whose token lies in [V0, V0 + V); other rows are left as
 * they are. `embed` holds V rows of the table starting at vocabulary row V0 (default 0), so a table over the
 * binding limit is gathered with one call per chunk. Tokens must already be in [0, vocab) (`checkBatch`).
 *
 * Buffers: x (N, D) f32 written; tokens (N) i32; embed (V, D) f32.
 */
export function embeddingForward(
  step: Step,
  buffers: { x: GPUBuffer; tokens: GPUBuffer; embed: GPUBuffer },
  dims: { N: number; D: number; V: number; V0?: number },
): void {
  const { N, D, V } = dims
  const V0 = dims.V0 ?? 0
  for (const [k, n] of Object.entries({ N, D, V })) guard(Number.isInteger(n) && n >= 1, `${k}=${n} must be ≥ 1`)
  guard(Number.isInteger(V0) && V0 >= 0, `V0=${V0} must be ≥ 0`)
  guard(buffers.x.size >= N * D * 4, `x holds ${buffers.x.size} bytes, needs N·D·4 = ${N * D * 4}`)
  guard(buffers.tokens.size >= N * 4, `tokens holds ${buffers.tokens.size} bytes, needs N·4 = ${N * 4}`)
  guard(buffers.embed.size >= V * D * 4, `embed holds ${buffers.embed.size} bytes, needs V·D·4 = ${V * D * 4}`)
  const ctx = step.ctx
  const pipeline = ctx.pipeline({ shader: "embedding.wgsl", constants: { WG } })
  const max = ctx.limits.maxComputeWorkgroupsPerDimension
  const gx = Math.min(N, max)
  step.dispatch(pipeline, [ctx.uniform([N, D, V0, V]), buffers.x, buffers.tokens, buffers.embed], [
    gx,
    Math.ceil(N / gx),
  ])
}
