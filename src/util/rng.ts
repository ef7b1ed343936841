/**
 * A small seeded pseudo-random generator (xoshiro128**, Blackman & Vigna) with a serialisable state.
 * Used for the default model's weights, LoRA init, router init, dropout masks and data shuffling, so that a run
 * with the same seed is reproducible and a checkpoint can store `state()` and resume with `Rng.fromState`.
 *
 * Seeding expands the seed with splitmix64 (the generator's recommended seeder), so nearby seeds give
 * unrelated streams. All arithmetic is on u32 (`Math.imul`, `>>> 0`), identical on every platform;
 * `normal()` additionally uses `Math.log`, `Math.sqrt`, `Math.cos` (deterministic for one Deno/V8 version).
 * @module
 */

const MASK64 = (1n << 64n) - 1n

/** splitmix64 step: returns [next state, output]. z = (z ^ z>>30)·0xbf58476d1ce4e5b9; z = (z ^ z>>27)·0x94d049bb133111eb. */
function splitmix64(state: bigint): [bigint, bigint] {
  const next = (state + 0x9e3779b97f4a7c15n) & MASK64
  let z = next
  z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & MASK64
  z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & MASK64
  return [next, z ^ (z >> 31n)]
}

/** 64-bit FNV-1a of the UTF-8 bytes of `label`. */
function fnv1a64(label: string): bigint {
  let h = 0xcbf29ce484222325n
  for (const byte of new TextEncoder().encode(label)) h = ((h ^ BigInt(byte)) * 0x100000001b3n) & MASK64
  return h
}

/** Four u32 words from two splitmix64 outputs; never all zero (the one state xoshiro cannot leave). */
function expand(seed64: bigint): [number, number, number, number] {
  let s = seed64 & MASK64
  const words: number[] = []
  for (let i = 0; i < 2; i++) {
    const [next, out] = splitmix64(s)
    s = next
    words.push(Number(out & 0xffffffffn), Number(out >> 32n))
  }
  if (!words.some((w) => w !== 0)) words[0] = 1
  return words as [number, number, number, number]
}

const rotl = (x: number, k: number): number => ((x << k) | (x >>> (32 - k))) >>> 0

/**
 * xoshiro128** generator. `state()` is 4 u32 words; `Rng.fromState(rng.state())` continues the same stream.
 *
 * @example
 * ```ts
 * import { Rng } from "./rng.ts"
 * const rng = Rng.fromSeed(42)
 * const dropoutRng = rng.fork("dropout") // an independent stream; `rng` itself is not advanced
 * const x = rng.normal() * 0.02
 * ```
 */
export class Rng {
  #s: Uint32Array

  private constructor(words: readonly number[]) {
    this.#s = Uint32Array.from(words)
  }

  /** A generator seeded from an integer in [0, 2^53) (e.g. the CLI's `--seed`). */
  static fromSeed(seed: number): Rng {
    if (!Number.isSafeInteger(seed) || seed < 0) {
      throw new RangeError(`seed must be an integer in [0, 2^53), got ${seed}`)
    }
    return new Rng(expand(BigInt(seed)))
  }

  /** A generator continuing from a saved `state()`: 4 integers in [0, 2^32), not all zero. */
  static fromState(state: readonly number[]): Rng {
    const ok = state.length === 4 && state.every((w) => Number.isInteger(w) && w >= 0 && w <= 0xffffffff) &&
      state.some((w) => w !== 0)
    if (!ok) throw new RangeError(`RNG state must be 4 u32 words, not all zero, got ${JSON.stringify(state)}`)
    return new Rng(state)
  }

  /** The current state, 4 u32 words (JSON-serialisable). */
  state(): number[] {
    return Array.from(this.#s)
  }

  /** Next u32: result = rotl(s1·5, 7)·9, then the xoshiro128 linear update. */
  nextU32(): number {
    const s = this.#s
    const result = Math.imul(rotl(Math.imul(s[1], 5) >>> 0, 7), 9) >>> 0
    const t = (s[1] << 9) >>> 0
    s[2] ^= s[0]
    s[3] ^= s[1]
    s[1] ^= s[2]
    s[0] ^= s[3]
    s[2] ^= t
    s[3] = rotl(s[3], 11)
    return result
  }

  /** Uniform in [0, 1) with 32 random bits: u32 / 2^32. */
  nextFloat(): number {
    return this.nextU32() / 4294967296
  }

  /** Uniform in [lo, hi). */
  uniform(lo: number, hi: number): number {
    return lo + (hi - lo) * this.nextFloat()
  }

  /** Uniform integer in [0, n) for n ≤ 2^32 (rejection sampling, no modulo bias). */
  nextInt(n: number): number {
    if (!Number.isInteger(n) || n <= 0 || n > 4294967296) throw new RangeError(`nextInt bound must be in [1, 2^32]`)
    const limit = 4294967296 - (4294967296 % n)
    for (;;) {
      const u = this.nextU32()
      if (u < limit) return u % n
    }
  }

  /**
   * Normal(mean, std) by Box-Muller: z = sqrt(-2 ln u1) · cos(2π u2), u1 ∈ (0, 1], u2 ∈ [0, 1).
   * The second value of each pair is discarded so the state stays 4 words (no cached spare to serialise).
   */
  normal(mean = 0, std = 1): number {
    const u1 = 1 - this.nextFloat()
    const u2 = this.nextFloat()
    return mean + std * Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2)
  }

  /**
   * An independent child generator for a named purpose, derived from this state and `label`
   * (splitmix64(fnv1a64(label) ^ state)). This generator is not advanced, so the same label at the same
   * point gives the same child, and adding a fork never shifts the parent's stream.
   */
  fork(label: string): Rng {
    const s = this.#s
    const lo = BigInt(s[0]) | (BigInt(s[1]) << 32n)
    const hi = BigInt(s[2]) | (BigInt(s[3]) << 32n)
    const [, mixed] = splitmix64(fnv1a64(label) ^ lo)
    return new Rng(expand(mixed ^ hi))
  }
}
