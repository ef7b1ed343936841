/**
 * A pool of scratch storage buffers for activations, reused across steps and across batch shapes.
 *
 * Requests are rounded up to a size class, 2^k · {1, 1.25, 1.5, 1.75} bytes (at least 256), and a free
 * buffer of the request's class serves any request of that class. A request of b bytes in (2^k, 2^(k+1)]
 * gets a class c < b + 2^k / 4 < 1.25 · b, so each buffer wastes under 25 %. Exact-size reuse (what this
 * pool did before) kept one set of buffers per padded length a training loop ever saw, so peak device memory
 * grew with the number of distinct shapes; with classes it grows with the number of classes those shapes
 * fall into (4 per doubling of the length). A pool still keeps a buffer of every class it has seen until
 * `clear`: the classes ≤ X add up to at most 6.5·X and a request's largest class is < 1.25 × its largest
 * size (or 256), so over any number of shapes a loop holds < 8.125 × Σ over a step's requests of
 * max(256, the largest size each has had); `stats().peakInUseBytes` is what one step needed at most.
 *
 * Contents of an acquired buffer are garbage. Buffers are handed out last-released first; a buffer released
 * and acquired again while one command buffer is recorded is used in recording order, which WebGPU orders
 * after its earlier uses (dispatches and copies of one command buffer see each other's writes in order).
 * @module
 */
import type { GpuContext, MemoryCategory } from "./context.ts"

const USAGE = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST

/** The smallest class: the old pool's 256-byte granule. */
const MIN_CLASS = 256

/**
 * The size class of a `bytes` request: the least 2^k · {1, 1.25, 1.5, 1.75} ≥ max(bytes, 256).
 * For bytes in (2^k, 2^(k+1)] the step between classes is 2^k / 4, so class − bytes < bytes / 4.
 */
export function sizeClass(bytes: number): number {
  if (bytes <= MIN_CLASS) return MIN_CLASS
  const k = Math.floor(Math.log2(bytes - 1))
  // bytes − 1 guards exact powers of two: 2^(k+1) is itself a class (1 · 2^(k+1))
  const quarter = 2 ** k / 4
  return Math.ceil(bytes / quarter) * quarter
}

/** Buffers and bytes the pool holds (in use + free), and the most bytes it had handed out at once. */
export interface PoolStats {
  readonly buffers: number
  readonly bytes: number
  readonly freeBuffers: number
  /** bytes acquired and not yet released, most at any time since creation or `clear` */
  readonly peakInUseBytes: number
}

export class BufferPool {
  /** free buffers by size, last released at the end */
  private readonly free = new Map<number, GPUBuffer[]>()
  /** every buffer the pool made, with its size key */
  private readonly sizes = new Map<GPUBuffer, number>()
  private readonly idle = new Set<GPUBuffer>()
  private inUse = 0
  private peakInUse = 0

  constructor(private readonly ctx: GpuContext, private readonly category: MemoryCategory = "activations") {}

  /**
   * The size a `bytes` request is served with: its class, or (when the class is over a device limit the
   * request itself is under) the request rounded to 256, so that rounding never makes a request fail or
   * makes a buffer too large to bind whole.
   */
  sizeFor(bytes: number): number {
    const cls = sizeClass(bytes)
    const exact = Math.max(MIN_CLASS, Math.ceil(bytes / MIN_CLASS) * MIN_CLASS)
    const { maxStorageBufferBindingSize: bind, maxBufferSize: max } = this.ctx.limits
    const limit = exact <= bind ? bind : max
    // an exact size that is not a class never collides with a class key: the class is the least class ≥ it
    return cls > limit && exact <= limit ? exact : cls
  }

  /** A storage buffer of at least `bytes` (its size class), from the free list of that class when possible. */
  acquire(label: string, bytes: number): GPUBuffer {
    const size = this.sizeFor(bytes)
    let buf = this.free.get(size)?.pop()
    if (buf) this.idle.delete(buf)
    else {
      buf = this.ctx.buffer({ label, size, usage: USAGE, category: this.category })
      this.sizes.set(buf, size)
    }
    this.inUse += buf.size
    this.peakInUse = Math.max(this.peakInUse, this.inUse)
    return buf
  }

  /** Returns a buffer for reuse (its contents are garbage to the next user); unknown or free buffers are ignored. */
  release(buf: GPUBuffer): void {
    const size = this.sizes.get(buf)
    if (size === undefined || this.idle.has(buf)) return
    let list = this.free.get(size)
    if (!list) this.free.set(size, list = [])
    list.push(buf)
    this.idle.add(buf)
    this.inUse -= buf.size
  }

  /** Buffers and bytes held now. */
  stats(): PoolStats {
    let bytes = 0
    for (const b of this.sizes.keys()) bytes += b.size
    return { buffers: this.sizes.size, bytes, freeBuffers: this.idle.size, peakInUseBytes: this.peakInUse }
  }

  /** Destroys every buffer the pool made. */
  clear(): void {
    for (const buf of this.sizes.keys()) this.ctx.release(buf)
    this.sizes.clear()
    this.free.clear()
    this.idle.clear()
    this.inUse = 0
    this.peakInUse = 0
  }
}
