/**
 * Launchers for shaders/attention.wgsl (causal grouped-query attention over packed padded rows) and
 * shaders/attention_backward.wgsl (its input gradients, deterministic: no float atomics). Each shader gets the
 * prelude that binds its head-row tensors: vec4 arrays when Dh % 4 == 0 (one load per 4 elements; lavapipe pays
 * per load instruction), else f32 arrays with the last group of 4 masked (`*_io_vec4.wgsl` / `*_io_scalar.wgsl`).
 * @module
 */
import { GpuValidationError } from "../errors.ts"
import type { GpuContext, Step } from "../gpu/context.ts"

/** queries per thread in the shader (fixed: its 4 × 8 register tile is written out by hand) */
const QUERIES_PER_THREAD = 4

/**
 * Workgroups (gx, heads, gz) for one thread per (row, block of 4 positions) and WG lanes per group: the flat group
 * count folded into x and z under the per-dimension limit (the shaders index t = (z·gx + x)·WG + lid.x, row fastest).
 */
function blockGrid(
  ctx: GpuContext,
  dims: { rows: number; T: number; WG: number; heads: number },
): [number, number, number] {
  const groups = Math.ceil((dims.rows * Math.ceil(dims.T / QUERIES_PER_THREAD)) / dims.WG)
  const gx = Math.min(groups, ctx.limits.maxComputeWorkgroupsPerDimension)
  return [gx, dims.heads, Math.ceil(groups / gx)]
}

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
  guard(H <= max, `H=${H} over ${max} workgroups`)
  const uniform = ctx.uniform([rows, T, H, KV, Dh, dims.padSide === "left" ? 1 : 0], [1 / Math.sqrt(Dh)])
  // lavapipe runs 8 lanes per SIMD group and measured fastest with one group per workgroup
  const WG = ctx.isSoftware ? 8 : 32
  const preludes = Dh % 4 === 0
    ? ["attention_io_vec4.wgsl", "attention_qkv_vec4.wgsl"]
    : ["attention_mask4.wgsl", "attention_io_scalar.wgsl", "attention_qkv_scalar.wgsl"]
  step.dispatch(ctx.pipeline({ shader: "attention.wgsl", preludes, constants: { WG } }), [
    uniform,
    buffers.out,
    buffers.lse,
    buffers.q,
    buffers.k,
    buffers.v,
    buffers.lengths,
  ], blockGrid(ctx, { rows, T, WG, heads: H }))
}

/**
 * dq (N, H, Dh), dk and dv (N, KV, Dh), all written, of L = Σ dout ⊙ out, from the forward's inputs q, k, v
 * (after rope), its saved out (N, H, Dh) and lse (rows, H, T), and dout (N, H, Dh). dk and dv sum over the H/KV
 * query heads of each kv head. Pad queries contribute nothing (their dout is never read) and get dq = 0; pad keys
 * get dk = dv = 0. `stats` (rows, H, T, 2) f32 is scratch (lse, Δ = rowsum(dout ⊙ out) per query).
 *
 * Three dispatches: delta (stats), dq (a thread per 4 queries over their keys), dkdv (a thread per 4 keys over
 * their queries, head by head); each output element is summed by one thread in a fixed order, so two runs on the
 * same inputs give the same bits.
 */
export function attentionBackward(
  step: Step,
  buffers: {
    dq: GPUBuffer
    dk: GPUBuffer
    dv: GPUBuffer
    dout: GPUBuffer
    q: GPUBuffer
    k: GPUBuffer
    v: GPUBuffer
    out: GPUBuffer
    lse: GPUBuffer
    lengths: GPUBuffer
    stats: GPUBuffer
  },
  dims: { rows: number; T: number; H: number; KV: number; Dh: number; padSide: "left" | "right" },
): void {
  const guard = (ok: boolean, reason: string) => {
    if (!ok) throw new GpuValidationError({ label: "attention backward", reason })
  }
  const { rows, T, H, KV, Dh } = dims
  for (const [key, n] of Object.entries({ rows, T, H, KV, Dh })) {
    guard(Number.isInteger(n) && n >= 1, `${key}=${n} must be an integer ≥ 1`)
  }
  guard(H % KV === 0, `H=${H} is not a multiple of KV=${KV}`)
  const N = rows * T
  guard(N * H * Dh < 2 ** 32 && 2 * rows * H * T < 2 ** 32, `N·H·Dh = ${N * H * Dh} over u32`)
  const { dq, dk, dv, dout, q, k, v, out, lse, lengths, stats } = buffers
  const need: [string, GPUBuffer, number][] = [
    ["dq", dq, N * H * Dh],
    ["dk", dk, N * KV * Dh],
    ["dv", dv, N * KV * Dh],
    ["dout", dout, N * H * Dh],
    ["q", q, N * H * Dh],
    ["k", k, N * KV * Dh],
    ["v", v, N * KV * Dh],
    ["out", out, N * H * Dh],
    ["lse", lse, rows * H * T],
    ["lengths", lengths, rows],
    ["stats", stats, 2 * rows * H * T],
  ]
  for (const [name, buf, n] of need) guard(buf.size >= n * 4, `${name} holds ${buf.size} bytes, needs ${n * 4}`)
  const outputs = [dq, dk, dv, stats]
  guard(new Set(outputs).size === outputs.length, "dq, dk, dv and stats must be four buffers")
  const inputs = [dout, q, k, v, out, lse, lengths]
  guard(!outputs.some((b) => inputs.includes(b)), "an output aliases an input")
  const ctx = step.ctx
  const max = ctx.limits.maxComputeWorkgroupsPerDimension
  guard(H <= max, `H=${H} over ${max} workgroups`)
  const uniform = ctx.uniform([rows, T, H, KV, Dh, dims.padSide === "left" ? 1 : 0], [1 / Math.sqrt(Dh)])
  const shader = "attention_backward.wgsl"
  // delta: one thread per (row, head, query), 64 per workgroup
  const groups = Math.ceil((rows * H * T) / 64)
  const gx = Math.min(groups, max)
  const preludes = Dh % 4 === 0
    ? ["attention_backward_io_vec4.wgsl", "attention_qkv_vec4.wgsl"]
    : ["attention_mask4.wgsl", "attention_backward_io_scalar.wgsl", "attention_qkv_scalar.wgsl"]
  const pipeline = (entryPoint: string, constants: Record<string, number> = {}) =>
    ctx.pipeline({ shader, preludes, entryPoint, constants })
  step.dispatch(pipeline("delta"), [uniform, stats, dout, out, lse, lengths], [
    gx,
    Math.ceil(groups / gx),
  ])
  // as the forward: one 8-lane SIMD group per workgroup on lavapipe
  const WG = ctx.isSoftware ? 8 : 32
  const shared = [uniform, q, k, v, dout, stats, lengths]
  step.dispatch(pipeline("dq_main", { WG }), [...shared, dq], blockGrid(ctx, { rows, T, WG, heads: H }))
  step.dispatch(pipeline("dkdv", { WG }), [...shared, dk, dv], blockGrid(ctx, { rows, T, WG, heads: KV }))
}
