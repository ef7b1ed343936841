/**
 * Launcher for shaders/attention.wgsl: causal grouped-query attention over packed padded rows.
 * @module
 */
import { GpuValidationError } from "../errors.ts"
import type { Step } from "../gpu/context.ts"

/** queries per thread in the shader (fixed: its 4 × 8 register tile is written out by hand) */
const QUERIES_PER_THREAD = 4

/**
 * out (N, H, Dh) = softmax(q kᵀ / sqrt(Dh), causal, real keys of the same row) v and lse (rows, H, T), both
 * written; q (N, H, Dh) after rope, k and v (N, KV, Dh), N = rows · T; `lengths` (rows) u32 real tokens per
 * row, `padSide` as in the batch. Head h reads kv head h / (H / KV). Pad queries get out = 0, lse = 0.
 */
export function attentionForward(
  step: Step,
  buffers: { out: GPUBuffer; lse: GPUBuffer; q: GPUBuffer; k: GPUBuffer; v: GPUBuffer; lengths: GPUBuffer },
  dims: { rows: number; T: number; H: number; KV: number; Dh: number; padSide: "left" | "right" },
): void {
  const guard = (ok: boolean, reason: string) => {
    if (!ok) throw new GpuValidationError({ label: "attention", reason })
  }
  const { rows, T, H, KV, Dh } = dims
  for (const [key, n] of Object.entries({ rows, T, H, KV, Dh })) {
    guard(Number.isInteger(n) && n >= 1, `${key}=${n} must be an integer ≥ 1`)
  }
  guard(H % KV === 0, `H=${H} is not a multiple of KV=${KV}`)
  const N = rows * T
  guard(N * H * Dh < 2 ** 32, `N·H·Dh = ${N * H * Dh} over u32`)
  const need: [string, GPUBuffer, number][] = [
    ["out", buffers.out, N * H * Dh],
    ["lse", buffers.lse, rows * H * T],
    ["q", buffers.q, N * H * Dh],
    ["k", buffers.k, N * KV * Dh],
    ["v", buffers.v, N * KV * Dh],
    ["lengths", buffers.lengths, rows],
  ]
  for (const [name, buf, n] of need) guard(buf.size >= n * 4, `${name} holds ${buf.size} bytes, needs ${n * 4}`)
  const inputs = [buffers.q, buffers.k, buffers.v, buffers.lengths]
  guard(!inputs.includes(buffers.out) && !inputs.includes(buffers.lse), "an output aliases an input")
  const ctx = step.ctx
  const max = ctx.limits.maxComputeWorkgroupsPerDimension
  guard(H <= max && rows <= max, `H=${H} or rows=${rows} over ${max} workgroups`)
  const uniform = ctx.uniform([rows, T, H, KV, Dh, dims.padSide === "left" ? 1 : 0], [1 / Math.sqrt(Dh)])
  // lavapipe runs 8 lanes per SIMD group and measured fastest with one group per workgroup
  const WG = ctx.isSoftware ? 8 : 32
  const constants = { WG, ALIGNED: Dh % 4 === 0 ? 1 : 0 }
  step.dispatch(ctx.pipeline({ shader: "attention.wgsl", constants }), [
    uniform,
    buffers.out,
    buffers.lse,
    buffers.q,
    buffers.k,
    buffers.v,
    buffers.lengths,
  ], [Math.ceil(T / (QUERIES_PER_THREAD * WG)), H, rows])
}
