/**
 * Plain reference for rotary position embeddings (oracle of shaders/rope.wgsl), HF `rotate_half`
 * convention: for i < Dh/2, with angle a_i = pos · inv_freq_i,
 *   out[i]        = x[i] · cos a_i − x[i + Dh/2] · sin a_i
 *   out[i + Dh/2] = x[i + Dh/2] · cos a_i + x[i] · sin a_i
 * All in f32 the way HF computes it: inv_freq_i = 1 / theta^(2i/Dh) in f32, then a_i = f32(pos · inv_freq_i),
 * then cos/sin of that f32 angle. The kernel gets the same inv_freq table (see `ropeInvFreq`), so both
 * sides rotate by the same f32 angle even at position 511, where one ulp of inv_freq moves the angle by ~3e-5.
 * @module
 */

/**
 * (Dh/2) inv_freq_i = 1 / theta^(2i/Dh), each step rounded to f32 like HF
 * `1.0 / (base ** (torch.arange(0, dim, 2).float() / dim))`.
 */
export function ropeInvFreq(Dh: number, theta: number): Float32Array {
  if (!Number.isInteger(Dh) || Dh < 2 || Dh % 2 !== 0) throw new RangeError(`rope: head size ${Dh} must be even`)
  const inv = new Float32Array(Dh / 2)
  for (let i = 0; i < Dh / 2; i++) {
    const e = Math.fround((2 * i) / Dh)
    inv[i] = Math.fround(1 / Math.fround(Math.pow(theta, e)))
  }
  return inv
}

/**
 * Rotates x (N, heads, Dh) by the positions (N) (see `tokenPositions` in batch.ts); returns a new array.
 * Called once for q (heads = H) and once for k (heads = KV).
 */
export function ropeForward(
  x: Float32Array,
  positions: Int32Array,
  dims: { N: number; heads: number; Dh: number; theta: number },
): Float32Array {
  return rotate(x, positions, dims, 1)
}

/**
 * dx (N, heads, Dh) of the rotation: the transpose of a rotation by a is the rotation by −a, so
 *   dx[i]        = dy[i] · cos a + dy[i + Dh/2] · sin a
 *   dx[i + Dh/2] = dy[i + Dh/2] · cos a − dy[i] · sin a
 * Same argument order as `ropeForward` (dy in place of x); the kernel does it in place on dq and dk.
 */
export function ropeBackward(
  dy: Float32Array,
  positions: Int32Array,
  dims: { N: number; heads: number; Dh: number; theta: number },
): Float32Array {
  return rotate(dy, positions, dims, -1)
}

/** Rotation by sign · a_i (sin a is negated exactly, so sign = 1 is bit for bit the forward). */
function rotate(
  x: Float32Array,
  positions: Int32Array,
  dims: { N: number; heads: number; Dh: number; theta: number },
  sign: 1 | -1,
): Float32Array {
  const { N, heads, Dh } = dims
  const half = Dh / 2
  const inv = ropeInvFreq(Dh, dims.theta)
  const out = new Float32Array(x.length)
  const cos = new Float32Array(half)
  const sin = new Float32Array(half)
  for (let n = 0; n < N; n++) {
    for (let i = 0; i < half; i++) {
      const a = Math.fround(positions[n] * inv[i])
      cos[i] = Math.cos(a)
      sin[i] = sign * Math.sin(a)
    }
    for (let h = 0; h < heads; h++) {
      const o = (n * heads + h) * Dh
      for (let i = 0; i < half; i++) {
        const x1 = x[o + i]
        const x2 = x[o + i + half]
        out[o + i] = Math.fround(x1 * cos[i]) - Math.fround(x2 * sin[i])
        out[o + i + half] = Math.fround(x2 * cos[i]) + Math.fround(x1 * sin[i])
      }
    }
  }
  return out
}
