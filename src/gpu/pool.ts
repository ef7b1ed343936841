/**
 * A pool of scratch storage buffers for activations, reused across steps by exact size, so that a
 * training loop at a fixed batch shape allocates nothing after its first step.
 * @module
 */
import type { GpuContext, MemoryCategory } from "./context.ts"

const USAGE = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST

export class BufferPool {
  private readonly free = new Map<number, GPUBuffer[]>()
  private readonly sizes = new Map<GPUBuffer, number>()

  constructor(private readonly ctx: GpuContext, private readonly category: MemoryCategory = "activations") {}

  /** A storage buffer of at least `bytes` (rounded to 256), from the free list when possible. */
  acquire(label: string, bytes: number): GPUBuffer {
    const size = Math.max(256, Math.ceil(bytes / 256) * 256)
    const list = this.free.get(size)
    const hit = list?.pop()
    if (hit) return hit
    const buf = this.ctx.buffer({ label, size, usage: USAGE, category: this.category })
    this.sizes.set(buf, size)
    return buf
  }

  /** Returns a buffer for reuse (its contents are garbage to the next user). */
  release(buf: GPUBuffer): void {
    const size = this.sizes.get(buf)
    if (size === undefined) return
    let list = this.free.get(size)
    if (!list) this.free.set(size, list = [])
    list.push(buf)
  }

  /** Destroys every buffer the pool made. */
  clear(): void {
    for (const buf of this.sizes.keys()) this.ctx.release(buf)
    this.sizes.clear()
    this.free.clear()
  }
}
