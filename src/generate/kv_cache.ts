/**
 * The device KV cache of a generation batch: per layer, keys and values (after RoPE) of every sequence slot,
 *   k[l], v[l]  (slots, KV, maxLen, Dh) f32,  element (slot, g, p, d) at cacheIndex(...)
 * one buffer per layer (rather than one (slots, L, KV, maxLen, Dh) buffer) so that each binding stays under
 * maxStorageBufferBindingSize for long contexts. A slot belongs to one sequence for the whole batch; finished
 * sequences simply stop being read (their rows leave the decode batch, see src/generate/generate.ts).
 * @module
 */
import { DeviceOutOfMemory } from "../errors.ts"
import type { GpuContext } from "../gpu/context.ts"
import type { LlamaConfig } from "../model/types.ts"

/** Shape of one layer's cache. */
export interface KvCacheDims {
  readonly slots: number
  readonly KV: number
  readonly maxLen: number
  readonly Dh: number
}

/** Flat index of (slot, kv head g, position p, element d) in one layer's k or v buffer. */
export function cacheIndex(dims: KvCacheDims, slot: number, g: number, p: number, d: number): number {
  return ((slot * dims.KV + g) * dims.maxLen + p) * dims.Dh + d
}

/**
 * Host mirror of shaders/kv_cache.wgsl on one cache array: for each batch row r and real token t ∈ [start,
 * start + len), cache[slots[r], g, pos0[r] + t − start, :] = x[r·T + t, g, :] (x is k or v, (rows·T, KV, Dh)).
 */
export function referenceKvWrite(
  cache: Float32Array,
  x: Float32Array,
  rows: { slots: readonly number[]; pos0: readonly number[]; lengths: readonly number[] },
  dims: KvCacheDims & { T: number; padSide: "left" | "right" },
): void {
  const { T, KV, Dh } = dims
  rows.slots.forEach((slot, r) => {
    const len = rows.lengths[r]
    const start = dims.padSide === "left" ? T - len : 0
    for (let t = start; t < start + len; t++) {
      const p = rows.pos0[r] + t - start
      if (p >= dims.maxLen) continue
      for (let g = 0; g < KV; g++) {
        for (let d = 0; d < Dh; d++) cache[cacheIndex(dims, slot, g, p, d)] = x[((r * T + t) * KV + g) * Dh + d]
      }
    }
  })
}

/** Keys and values of every layer for `slots` sequences of up to `maxLen` tokens (category "activations"). */
export class KvCache {
  private constructor(
    private readonly ctx: GpuContext,
    readonly dims: KvCacheDims,
    /** (L) buffers of (slots, KV, maxLen, Dh) */
    readonly k: readonly GPUBuffer[],
    readonly v: readonly GPUBuffer[],
  ) {}

  /** Allocates the cache; throws DeviceOutOfMemory when one layer's buffer is over the binding limit. */
  static create(ctx: GpuContext, config: LlamaConfig, opts: { slots: number; maxLen: number }): KvCache {
    const dims: KvCacheDims = { slots: opts.slots, KV: config.numKvHeads, maxLen: opts.maxLen, Dh: config.headDim }
    for (const [key, n] of Object.entries({ slots: opts.slots, maxLen: opts.maxLen })) {
      if (!Number.isInteger(n) || n < 1) throw new RangeError(`KV cache: ${key}=${n} must be an integer ≥ 1`)
    }
    const bytes = dims.slots * dims.KV * dims.maxLen * dims.Dh * 4
    if (bytes > ctx.limits.maxStorageBufferBindingSize) {
      throw new DeviceOutOfMemory({
        label: "kv cache",
        bytes,
        reason: `one layer's cache (${dims.slots} sequences × ${dims.maxLen} positions) is over ` +
          `maxStorageBufferBindingSize ${ctx.limits.maxStorageBufferBindingSize}: generate fewer rows at a time`,
      })
    }
    const make = (kind: string, l: number) =>
      ctx.buffer({
        label: `kv cache ${kind}${l}`,
        size: bytes,
        usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
        category: "activations",
      })
    const k: GPUBuffer[] = [], v: GPUBuffer[] = []
    try {
      for (let l = 0; l < config.numLayers; l++) {
        k.push(make("k", l))
        v.push(make("v", l))
      }
    } catch (e) {
      for (const b of [...k, ...v]) ctx.release(b)
      throw e
    }
    return new KvCache(ctx, dims, k, v)
  }

  /** Device bytes held (both k and v, all layers). */
  get bytes(): number {
    return this.k.reduce((s, b) => s + b.size, 0) * 2
  }

  /** Frees every buffer and the bind groups that referenced them. */
  release(): void {
    for (const b of [...this.k, ...this.v]) this.ctx.release(b)
    this.ctx.forgetBindGroups()
  }
}
