/**
 * Launcher for shaders/attention_decode.wgsl: one query token per live sequence against its cached keys and
 * values (grouped-query), three dispatches: scores, softmax, weighted sum of values.
 * @module
 */
import { GpuValidationError } from "../errors.ts"
import type { Step } from "../gpu/context.ts"

const WG = 64

/** rows live sequences, heads, cache capacity, and Lk = max over rows of (pos + 1) this step. */
export interface DecodeAttentionDims {
  readonly rows: number
  readonly H: number
  readonly KV: number
  readonly Dh: number
  /** positions per slot in the cache */
  readonly maxLen: number
  /** slots in the cache */
  readonly slotCount: number
  /** max_r (pos[r] + 1): the scores grid covers j < Lk (≤ maxLen) */
  readonly Lk: number
}

/**
 * out (rows, H, Dh) = softmax(q kᵀ / sqrt(Dh)) v over the first pos[r] + 1 cached positions of slot slots[r],
 * written; q (rows, H, Dh) after RoPE; kc, vc (slotCount, KV, maxLen, Dh) one layer's cache (this step's token
 * already appended); `slots`, `pos` (rows) u32; `scores` (rows, H, maxLen) f32 scratch. Head h reads kv head
 * h / (H / KV).
 */
export function attentionDecode(
  step: Step,
  buffers: {
    out: GPUBuffer
    scores: GPUBuffer
    q: GPUBuffer
    kc: GPUBuffer
    vc: GPUBuffer
    slots: GPUBuffer
    pos: GPUBuffer
  },
  dims: DecodeAttentionDims,
): void {
  const guard = (ok: boolean, reason: string) => {
    if (!ok) throw new GpuValidationError({ label: "attention_decode", reason })
  }
  const { rows, H, KV, Dh, maxLen, slotCount, Lk } = dims
  for (const [key, n] of Object.entries({ rows, H, KV, Dh, maxLen, slotCount, Lk })) {
    guard(Number.isInteger(n) && n >= 1, `${key}=${n} must be an integer ≥ 1`)
  }
  guard(H % KV === 0, `H=${H} is not a multiple of KV=${KV}`)
  guard(Lk <= maxLen, `Lk=${Lk} over maxLen=${maxLen}`)
  const cache = slotCount * KV * maxLen * Dh
  guard(cache < 2 ** 32 && rows * H * maxLen < 2 ** 32, "sizes over u32 indexing")
  const need: [string, GPUBuffer, number][] = [
    ["out", buffers.out, rows * H * Dh],
    ["scores", buffers.scores, rows * H * maxLen],
    ["q", buffers.q, rows * H * Dh],
    ["kc", buffers.kc, cache],
    ["vc", buffers.vc, cache],
    ["slots", buffers.slots, rows],
    ["pos", buffers.pos, rows],
  ]
  for (const [name, buf, n] of need) guard(buf.size >= n * 4, `${name} holds ${buf.size} bytes, needs ${n * 4}`)
  const inputs = [buffers.q, buffers.kc, buffers.vc, buffers.slots, buffers.pos]
  guard(!inputs.includes(buffers.out) && !inputs.includes(buffers.scores), "an output aliases an input")
  guard(buffers.out !== buffers.scores, "out and scores are the same buffer")
  const ctx = step.ctx
  const uniform = ctx.uniform([rows, H, KV, Dh, maxLen, Lk], [1 / Math.sqrt(Dh)])
  const grid = (threads: number): [number, number] => {
    const groups = Math.ceil(threads / WG)
    const gx = Math.min(groups, ctx.limits.maxComputeWorkgroupsPerDimension)
    return [gx, Math.ceil(groups / gx)]
  }
  const preludes = Dh % 4 === 0
    ? ["attention_decode_io_vec4.wgsl"]
    : ["attention_mask4.wgsl", "attention_decode_io_scalar.wgsl"]
  const pipe = (entryPoint: string) =>
    ctx.pipeline({ shader: "attention_decode.wgsl", preludes, entryPoint, constants: { WG } })
  const { out, scores, q, kc, vc, slots, pos } = buffers
  step.dispatch(pipe("scores"), [uniform, scores, q, kc, slots, pos], grid(rows * H * Lk))
  step.dispatch(pipe("softmax"), [uniform, scores, pos], grid(rows * H))
  step.dispatch(pipe("mix"), [uniform, out, scores, vc, slots, pos], grid(rows * H * Math.ceil(Dh / 4)))
}
