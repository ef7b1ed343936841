/**
 * Launcher for shaders/rope.wgsl: rotary embedding of q and k in place, one dispatch for both, and its backward
 * (the rotation by −angle, in place on dq and dk).
 * @module
 */
import { GpuValidationError } from "../errors.ts"
import type { Step } from "../gpu/context.ts"
import { ropeInvFreq } from "../reference/rope.ts"

const WG = 64
/** inv_freq slots in the uniform (array<vec4<f32>, 32>), so Dh ≤ 256 */
const MAX_HALF = 128

/** rows, T, H, KV, Dh of the batch, rope theta and the batch's pad side. */
export interface RopeDims {
  readonly rows: number
  readonly T: number
  readonly H: number
  readonly KV: number
  readonly Dh: number
  readonly theta: number
  readonly padSide: "left" | "right"
}

/**
 * q (N, H, Dh) and k (N, KV, Dh), N = rows · T, rotated in place by each token's position counted from its
 * row's first real token (`lengths` (rows) u32, `padSide` as in the batch). inv_freq = 1/theta^(2i/Dh) is
 * rounded on the host like HF and passed in the uniform; angles and cos/sin are computed on the device.
 */
export function ropeForward(
  step: Step,
  buffers: { q: GPUBuffer; k: GPUBuffer; lengths: GPUBuffer },
  dims: RopeDims,
): void {
  rope(step, buffers, dims, { inverse: false })
}

/**
 * dq (N, H, Dh) and dk (N, KV, Dh) rotated in place by −angle of each token (the transpose of `ropeForward`'s
 * rotation): the gradients with respect to q and k before rope. Same dims as the forward.
 */
export function ropeBackward(
  step: Step,
  buffers: { dq: GPUBuffer; dk: GPUBuffer; lengths: GPUBuffer },
  dims: RopeDims,
): void {
  rope(step, { q: buffers.dq, k: buffers.dk, lengths: buffers.lengths }, dims, { inverse: true })
}

function rope(
  step: Step,
  buffers: { q: GPUBuffer; k: GPUBuffer; lengths: GPUBuffer },
  dims: RopeDims,
  opts: { inverse: boolean },
): void {
  const guard = (ok: boolean, reason: string) => {
    if (!ok) throw new GpuValidationError({ label: opts.inverse ? "rope backward" : "rope", reason })
  }
  const { rows, T, H, KV, Dh, theta } = dims
  for (const [key, n] of Object.entries({ rows, T, H, KV, Dh })) {
    guard(Number.isInteger(n) && n >= 1, `${key}=${n} must be an integer ≥ 1`)
  }
  guard(Dh % 2 === 0 && Dh / 2 <= MAX_HALF, `Dh=${Dh} must be even and ≤ ${2 * MAX_HALF}`)
  guard(Number.isFinite(theta) && theta > 0, `theta=${theta} must be > 0`)
  guard(buffers.q !== buffers.k, "q and k are the same buffer")
  const N = rows * T
  const threads = N * (H + KV) * (Dh / 2)
  guard(threads < 2 ** 32, `N·(H+KV)·Dh/2 = ${threads} over u32`)
  guard(buffers.q.size >= N * H * Dh * 4, `q holds ${buffers.q.size} bytes, needs N·H·Dh·4 = ${N * H * Dh * 4}`)
  guard(buffers.k.size >= N * KV * Dh * 4, `k holds ${buffers.k.size} bytes, needs N·KV·Dh·4 = ${N * KV * Dh * 4}`)
  guard(buffers.lengths.size >= rows * 4, `lengths holds ${buffers.lengths.size} bytes, needs rows·4 = ${rows * 4}`)
  const ctx = step.ctx
  const invFreq = new Float32Array(MAX_HALF)
  invFreq.set(ropeInvFreq(Dh, theta))
  const uniform = ctx.uniform([N, T, H, KV, Dh, dims.padSide === "left" ? 1 : 0, 0, 0], Array.from(invFreq))
  // Dh % 8 = 0: the vec4 entry, a thread per 4 pairs (same results)
  const v4 = Dh % 8 === 0
  const groups = Math.ceil((v4 ? threads / 4 : threads) / WG)
  const gx = Math.min(groups, ctx.limits.maxComputeWorkgroupsPerDimension)
  step.dispatch(
    ctx.pipeline({
      shader: "rope.wgsl",
      preludes: ["rope_common.wgsl"],
      entryPoint: v4 ? "main4" : "main",
      constants: opts.inverse ? { WG, INVERSE: 1 } : { WG },
    }),
    [
      uniform,
      buffers.q,
      buffers.k,
      buffers.lengths,
    ],
    [gx, Math.ceil(groups / gx)],
  )
}
