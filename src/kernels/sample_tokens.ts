/**
 * Launcher for shaders/sample_tokens.wgsl: the next token of each row from its logits, greedy or sampled
 * (temperature, top-k, top-p, one host-supplied uniform per row), so a decode step reads back only (rows) ids.
 * @module
 */
import { GpuValidationError } from "../errors.ts"
import type { Step } from "../gpu/context.ts"

/** lanes per row (a power of two: tree reductions) */
const WG = 64

/**
 * ids (rows) i32 = the chosen token of each row of logits (rows, V), written. `params` (rows, 4) u32 holds
 * [bits(1 / temperature) or 0 for greedy, top_k (0 = off), bits(top_p) (≥ 1 = off), bits(u)], u ∈ [0, 1) —
 * see `samplingWords` in src/generate/sampling.ts.
 */
export function sampleTokens(
  step: Step,
  buffers: { ids: GPUBuffer; logits: GPUBuffer; params: GPUBuffer },
  dims: { rows: number; V: number },
): void {
  const guard = (ok: boolean, reason: string) => {
    if (!ok) throw new GpuValidationError({ label: "sample_tokens", reason })
  }
  const { rows, V } = dims
  for (const [key, n] of Object.entries({ rows, V })) {
    guard(Number.isInteger(n) && n >= 1, `${key}=${n} must be an integer ≥ 1`)
  }
  const ctx = step.ctx
  guard(rows <= ctx.limits.maxComputeWorkgroupsPerDimension, `rows=${rows} over the workgroup limit`)
  guard(rows * V < 2 ** 31, `rows·V = ${rows * V} over i32 ids / u32 indexing`)
  guard(buffers.ids.size >= rows * 4, `ids holds ${buffers.ids.size} bytes, needs ${rows * 4}`)
  guard(buffers.logits.size >= rows * V * 4, `logits holds ${buffers.logits.size} bytes, needs ${rows * V * 4}`)
  guard(buffers.params.size >= rows * 16, `params holds ${buffers.params.size} bytes, needs ${rows * 16}`)
  guard(buffers.ids !== buffers.logits && buffers.ids !== buffers.params, "ids aliases an input")
  step.dispatch(ctx.pipeline({ shader: "sample_tokens.wgsl", constants: { WG } }), [
    ctx.uniform([rows, V]),
    buffers.ids,
    buffers.logits,
    buffers.params,
  ], [rows])
}
