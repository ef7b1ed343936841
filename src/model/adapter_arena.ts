/**
 * Where adapters live on the device: slabs of (parameters, gradients) buffer pairs shared by many adapters, so
 * that one kernel binding can reach the weights of every adapter of a packed batch (the segmented LoRA kernels
 * address each adapter by an element offset, like Punica's SGMV takes a pointer per segment; WebGPU has no
 * pointers, so the adapters have to share buffers). S-LoRA keeps its adapters in one unified pool for the same
 * reason.
 *
 * A new slab holds `SLAB_FLOATS` floats (4 MiB of parameters + 4 MiB of gradients), or room for `SLAB_ADAPTERS`
 * adapters of the size that opened it when they are larger, up to maxStorageBufferBindingSize: the kernels bind the
 * range covering every segment's tensors of one projection, which must stay bindable. Blocks are 64-float
 * (256-byte) aligned, so every block can also be bound alone. Freed blocks merge with their
 * neighbours; a slab with no blocks left is destroyed. Slabs never move or grow, so a buffer recorded in a
 * command buffer stays valid until its adapters are released.
 * @module
 */
import { GpuValidationError } from "../errors.ts"
import type { GpuContext } from "../gpu/context.ts"

/** Floats per slab (parameters; the gradient buffer has the same size), at least. */
export const SLAB_FLOATS = 1 << 20
/** Adapters of the opening adapter's size a larger slab has room for (so that big adapters can share dispatches). */
export const SLAB_ADAPTERS = 4
const ALIGN = 64

const USAGE = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST

/** One slab: parameter and gradient buffers of `capacity` floats and its free ranges (sorted, merged). */
export interface Slab {
  readonly params: GPUBuffer
  readonly grads: GPUBuffer
  readonly capacity: number
  readonly free: { start: number; length: number }[]
  used: number
}

/** A block of one slab: [offset, offset + length) in both of its buffers. */
export interface ArenaBlock {
  readonly slab: Slab
  readonly offset: number
  readonly length: number
}

export class AdapterArena {
  readonly slabs: Slab[] = []

  constructor(private readonly ctx: GpuContext, private readonly slabFloats = SLAB_FLOATS) {}

  /** A block of at least `floats` floats (first fit; a new slab when none has room). */
  alloc(label: string, floats: number): ArenaBlock {
    const length = Math.max(ALIGN, Math.ceil(floats / ALIGN) * ALIGN)
    for (const slab of this.slabs) {
      const i = slab.free.findIndex((f) => f.length >= length)
      if (i < 0) continue
      const f = slab.free[i]
      const block = { slab, offset: f.start, length }
      if (f.length === length) slab.free.splice(i, 1)
      else slab.free[i] = { start: f.start + length, length: f.length - length }
      slab.used += length
      return block
    }
    this.newSlab(label, this.capacityFor(length))
    return this.alloc(label, length)
  }

  /** Returns a block; destroys its slab when nothing else lives there. */
  release(block: ArenaBlock): void {
    const { slab } = block
    if (!this.slabs.includes(slab)) return
    const free = slab.free
    free.push({ start: block.offset, length: block.length })
    free.sort((a, b) => a.start - b.start)
    for (let i = free.length - 1; i > 0; i--) {
      if (free[i - 1].start + free[i - 1].length === free[i].start) {
        free[i - 1] = { start: free[i - 1].start, length: free[i - 1].length + free[i].length }
        free.splice(i, 1)
      }
    }
    slab.used -= block.length
    if (slab.used === 0) {
      this.slabs.splice(this.slabs.indexOf(slab), 1)
      this.ctx.release(slab.params)
      this.ctx.release(slab.grads)
      this.ctx.forgetBindGroups()
    }
  }

  /** Floats of a new slab opened by a block of `length` floats (see the module doc). */
  capacityFor(length: number): number {
    const limits = this.ctx.limits
    const bindable = Math.floor(Math.min(limits.maxStorageBufferBindingSize, limits.maxBufferSize) / 4 / ALIGN) * ALIGN
    return Math.max(length, Math.min(Math.max(this.slabFloats, SLAB_ADAPTERS * length), bindable))
  }

  /** Bytes of blocks in use, parameters and gradients. */
  usedBytes(): number {
    return this.slabs.reduce((n, s) => n + s.used * 8, 0)
  }

  private newSlab(label: string, capacity: number): Slab {
    const bytes = capacity * 4
    if (bytes > this.ctx.limits.maxBufferSize) {
      throw new GpuValidationError({
        label: `adapter ${label}`,
        reason: `${bytes} bytes over maxBufferSize ${this.ctx.limits.maxBufferSize}`,
      })
    }
    const buffer = (kind: string) =>
      this.ctx.buffer({
        label: `adapter slab ${this.slabs.length} ${kind}`,
        size: bytes,
        usage: USAGE,
        category: "adapters",
      })
    const slab: Slab = {
      params: buffer("params"),
      grads: buffer("grads"),
      capacity,
      free: [{ start: 0, length: capacity }],
      used: 0,
    }
    this.slabs.push(slab)
    return slab
  }
}

const arenas = new WeakMap<GpuContext, AdapterArena>()

/** The arena of `ctx` (one per device context). */
export function arenaOf(ctx: GpuContext): AdapterArena {
  let a = arenas.get(ctx)
  if (!a) arenas.set(ctx, a = new AdapterArena(ctx))
  return a
}
