/**
 * Launcher for shaders/kv_cache.wgsl: appends the real tokens' k and v (after RoPE) of a packed batch to one
 * layer's KV cache, kc and vc (slots, KV, maxLen, Dh). Prefill writes whole prompts (T tokens per row, padded),
 * a decode step writes one token per row (T = 1).
 * @module
 */
import { GpuValidationError } from "../errors.ts"
import type { Step } from "../gpu/context.ts"

const WG = 64

/**
 * For each batch row r (tokens r·T .. r·T + T − 1 of k and v (rows·T, KV, Dh)) and each of its real tokens
 * t ∈ [start, start + len) (len = lengths[r], start = T − len with left padding, 0 with right padding):
 *   kc[slots[r], g, pos0[r] + t − start, :] = k[r·T + t, g, :], likewise vc from v.
 * `slots`, `pos0`, `lengths` are (rows) u32. Positions at or past maxLen are skipped: size the cache so that
 * none occurs (the launcher cannot see the positions).
 */
export function kvCacheWrite(
  step: Step,
  buffers: {
    kc: GPUBuffer
    vc: GPUBuffer
    k: GPUBuffer
    v: GPUBuffer
    slots: GPUBuffer
    pos0: GPUBuffer
    lengths: GPUBuffer
  },
  dims: {
    rows: number
    T: number
    KV: number
    Dh: number
    maxLen: number
    slotCount: number
    padSide: "left" | "right"
  },
): void {
  const guard = (ok: boolean, reason: string) => {
    if (!ok) throw new GpuValidationError({ label: "kv_cache", reason })
  }
  const { rows, T, KV, Dh, maxLen, slotCount } = dims
  for (const [key, n] of Object.entries({ rows, T, KV, Dh, maxLen, slotCount })) {
    guard(Number.isInteger(n) && n >= 1, `${key}=${n} must be an integer ≥ 1`)
  }
  const count = rows * T * KV * Dh
  const cache = slotCount * KV * maxLen * Dh
  guard(count < 2 ** 32 && cache < 2 ** 32, `sizes over u32 indexing`)
  const need: [string, GPUBuffer, number][] = [
    ["kc", buffers.kc, cache],
    ["vc", buffers.vc, cache],
    ["k", buffers.k, count],
    ["v", buffers.v, count],
    ["slots", buffers.slots, rows],
    ["pos0", buffers.pos0, rows],
    ["lengths", buffers.lengths, rows],
  ]
  for (const [name, buf, n] of need) guard(buf.size >= n * 4, `${name} holds ${buf.size} bytes, needs ${n * 4}`)
  guard(buffers.kc !== buffers.vc, "kc and vc are the same buffer")
  const ctx = step.ctx
  const groups = Math.ceil(count / WG)
  const gx = Math.min(groups, ctx.limits.maxComputeWorkgroupsPerDimension)
  step.dispatch(ctx.pipeline({ shader: "kv_cache.wgsl", constants: { WG } }), [
    ctx.uniform([rows, T, KV, Dh, maxLen, dims.padSide === "left" ? 1 : 0]),
    buffers.kc,
    buffers.vc,
    buffers.k,
    buffers.v,
    buffers.slots,
    buffers.pos0,
    buffers.lengths,
  ], [gx, Math.ceil(groups / gx)])
}
