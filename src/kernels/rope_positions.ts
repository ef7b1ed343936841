/**
 * Launcher for shaders/rope_positions.wgsl: rotary embedding of q and k in place at explicit per-token positions
 * (decode steps, where each token is one live sequence at its own cache length). Same rotation and the same
 * host-rounded inv_freq table as `ropeForward` (src/kernels/rope.ts), whose launcher is unchanged.
 * @module
 */
import { GpuValidationError } from "../errors.ts"
import type { Step } from "../gpu/context.ts"
import { ropeInvFreq } from "../reference/rope.ts"

const WG = 64
/** inv_freq slots in the uniform (array<vec4<f32>, 32>), so Dh ≤ 256 */
const MAX_HALF = 128

/**
 * q (N, H, Dh) and k (N, KV, Dh) rotated in place, token n by the angle positions[n] · inv_freq
 * (`positions` (N) u32). inv_freq = 1/theta^(2i/Dh) is rounded on the host like HF.
 */
export function ropeAtPositions(
  step: Step,
  buffers: { q: GPUBuffer; k: GPUBuffer; positions: GPUBuffer },
  dims: { N: number; H: number; KV: number; Dh: number; theta: number },
): void {
  const guard = (ok: boolean, reason: string) => {
    if (!ok) throw new GpuValidationError({ label: "rope_positions", reason })
  }
  const { N, H, KV, Dh, theta } = dims
  for (const [key, n] of Object.entries({ N, H, KV, Dh })) {
    guard(Number.isInteger(n) && n >= 1, `${key}=${n} must be an integer ≥ 1`)
  }
  guard(Dh % 2 === 0 && Dh / 2 <= MAX_HALF, `Dh=${Dh} must be even and ≤ ${2 * MAX_HALF}`)
  guard(Number.isFinite(theta) && theta > 0, `theta=${theta} must be > 0`)
  guard(buffers.q !== buffers.k, "q and k are the same buffer")
  const threads = N * (H + KV) * (Dh / 2)
  guard(threads < 2 ** 32, `N·(H+KV)·Dh/2 = ${threads} over u32`)
  guard(buffers.q.size >= N * H * Dh * 4, `q holds ${buffers.q.size} bytes, needs N·H·Dh·4 = ${N * H * Dh * 4}`)
  guard(buffers.k.size >= N * KV * Dh * 4, `k holds ${buffers.k.size} bytes, needs N·KV·Dh·4 = ${N * KV * Dh * 4}`)
  guard(buffers.positions.size >= N * 4, `positions holds ${buffers.positions.size} bytes, needs N·4 = ${N * 4}`)
  const ctx = step.ctx
  const invFreq = new Float32Array(MAX_HALF)
  invFreq.set(ropeInvFreq(Dh, theta))
  const uniform = ctx.uniform([N, H, KV, Dh], Array.from(invFreq))
  const groups = Math.ceil(threads / WG)
  const gx = Math.min(groups, ctx.limits.maxComputeWorkgroupsPerDimension)
  step.dispatch(ctx.pipeline({ shader: "rope_positions.wgsl", preludes: ["rope_common.wgsl"], constants: { WG } }), [
    uniform,
    buffers.q,
    buffers.k,
    buffers.positions,
  ], [gx, Math.ceil(groups / gx)])
}
