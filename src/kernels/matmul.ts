/**
 * Linear layers of the frozen base model on the device (issue "forward pass", matmul part):
 *
 *   linear               y (M, N)  (= | +=)  x (M, K) · Wᵀ          W (N, K) like torch nn.Linear.weight
 *   linearBackwardInput  dx (M, K) (= | +=)  dy (M, N) · W
 *
 * W is a `DeviceMatrix`: f32, or int8 symmetric per output row (spec §4, W[n, k] = q[n, k] · scale[n]; the
 * kernels sum q·x in f32 and multiply by scale[n] in the epilogue). Either way it lives in rgba32uint
 * textures, one per block of at most `maxTextureDimension2D` − 1 rows (a 32000-row lm_head is two blocks):
 * one 16-byte texel holds 4 f32 bit patterns or 16 int8 (byte 0 = lowest k), rows zero-padded to whole
 * texels, so K and N need no alignment (K = 45, N = 97 work). Textures, because a textureLoad costs 2–3× less
 * than a storage load on lavapipe and a texture is not bound by maxStorageBufferBindingSize (128 MiB).
 * f32 matrices carry a unit scale so that every kernel has the same bindings. No texture side is a power of
 * two (see `npot`: llvmpipe would compile another shader variant for each such texture).
 *
 * Forward variants (`chooseVariant`; tests and the bench force each one):
 * - "tile", "tile_m4", "tile_m1": software adapters. Generated straight-line register tiles
 *   (src/kernels/matmul_codegen.ts) reading x from an rgba32float staging texture that `linear` fills
 *   inside the same command buffer (a copy, plus a pad kernel when K is not a multiple of 64); tile sizes
 *   in `TILES`, chosen by measurement on this CPU (see bench/matmul.ts). "tile_m4" / "tile_m1" serve small
 *   M (decode) without wasting an 8- or 16-row tile.
 * - "smem": hardware GPUs, the shared-memory tiled kernel (shaders/matmul_smem.wgsl).
 * - "naive": one output per invocation (shaders/matmul_naive.wgsl); the bench baseline and the tiny-M
 *   kernel on hardware GPUs, where it is a GEMV.
 * Input-gradient variants (`chooseBackwardVariant`): "bwd_tile" (generated, dy staged like x) on software
 * adapters, "bwd_simple" (shaders/matmul_bwd.wgsl) on hardware GPUs.
 *
 * Staging textures are cached per context and K and reused by later calls; `releaseMatmulScratch` frees them.
 * @module
 */
import { GpuValidationError } from "../errors.ts"
import type { Binding, GpuContext, MemoryCategory, Step } from "../gpu/context.ts"
import type { HostTensor, QuantizedMatrix } from "../model/types.ts"
import {
  bwdTileName,
  type BwdTileSpec,
  generateBwdTileKernel,
  generateTileKernel,
  tileName,
  type TileSpec,
} from "./matmul_codegen.ts"

export type MatrixDtype = "f32" | "int8"

/** Rows [row0, row0 + rows) of W in one texture. */
export interface MatrixBlock {
  readonly row0: number
  /** Nb */
  readonly rows: number
  /** rgba32uint, npot(Nb) rows × npot(Kt) texels (the padding is zero and never read) */
  readonly texture: GPUTexture
  readonly view: GPUTextureView
  /** (Nb) f32 per-row scale, ones for f32 weights */
  readonly scale: GPUBuffer
}

/** A weight W (N out rows, K in columns) on the device, f32 or int8 (see the module doc). */
export interface DeviceMatrix {
  readonly label: string
  readonly dtype: MatrixDtype
  readonly N: number
  readonly K: number
  /** texels per row: ceil(K / 4) for f32, ceil(K / 16) for int8 */
  readonly Kt: number
  readonly blocks: readonly MatrixBlock[]
}

export type MatmulVariant = "naive" | "smem" | "tile" | "tile_m4" | "tile_m1"
export const MATMUL_VARIANTS: readonly MatmulVariant[] = ["naive", "smem", "tile", "tile_m4", "tile_m1"]

/**
 * Register tiles (rows × columns per invocation) of the software variants. Sweep at 256×2048×2048 on the
 * 2-core box (GFLOP/s, kernel time, one noisy session): int8 8×32 44.7, 16×16 43.2, 16×32 49.2 (but 20 s cold
 * compile), 8×16 32.9; f32 16×16 27.5, 8×32 21.6, 16×32 26.5 (18 s cold compile), 32×16 32.4 (18 s). For
 * M = 1 (4096×4096) 1×32 beats 4×32 (int8 11.8 vs 8.3, f32 4.4 vs 3.7); for M = 4, 4×32 beats the big
 * tile 3–5×. bench/matmul.ts on a quiet machine: int8 8×32 52, f32 16×16 36. Cold compiles: f32 16×16 3.9 s,
 * int8 8×32 4.9 s, tile_m4 0.5 / 1.6 s, tile_m1 0.3 / 0.4 s (from Mesa's warm disk cache: < 0.2 s each).
 * int8 uses 16×16 since the training shapes of small models were measured (.prof sweeps, M = 160 / 640 rows,
 * K, N ∈ {64, 128, 352}): 16×16 takes 22–35% less time than 8×32 there (8×32 stores 256 accumulators per
 * invocation, a heavy epilogue when K is short and N = 64 leaves half of its columns idle), and the same within
 * noise at 256×2048×5632.
 */
export const TILES: Readonly<Record<"tile" | "tile_m4" | "tile_m1", Readonly<Record<MatrixDtype, TileSpec>>>> = {
  tile: {
    f32: { dtype: "f32", tm: 16, tn: 16, wgx: 8, wgy: 4 },
    int8: { dtype: "int8", tm: 16, tn: 16, wgx: 8, wgy: 4 },
  },
  tile_m4: {
    f32: { dtype: "f32", tm: 4, tn: 16, wgx: 32, wgy: 1 },
    int8: { dtype: "int8", tm: 4, tn: 32, wgx: 32, wgy: 1 },
  },
  tile_m1: {
    f32: { dtype: "f32", tm: 1, tn: 32, wgx: 32, wgy: 1 },
    int8: { dtype: "int8", tm: 1, tn: 32, wgx: 32, wgy: 1 },
  },
}

export type BackwardVariant = "bwd_simple" | "bwd_tile"
export const BACKWARD_VARIANTS: readonly BackwardVariant[] = ["bwd_simple", "bwd_tile"]

/**
 * Register tiles of the software input gradient (rows × weight texels), measured at 256×2048×2048 (GFLOP/s):
 * f32 16×4 36.0, 8×4 26.0, 8×8 26.5; int8 16×1 45.7, 8×2 44.0, 8×1 37.1 (shaders/matmul_bwd.wgsl: 5.9 / 21.3).
 * Cold compiles of the chosen ones: 5.0 s (f32), 4.8 s (int8).
 */
export const BACKWARD_TILES: Readonly<Record<MatrixDtype, BwdTileSpec>> = {
  f32: { dtype: "f32", tm: 16, tk: 4, wgx: 8, wgy: 4 },
  int8: { dtype: "int8", tm: 16, tk: 1, wgx: 8, wgy: 4 },
}

/**
 * The input-gradient kernel `linearBackwardInput` uses when none is forced: software → "bwd_tile" (generated,
 * dy staged in a texture) unless M is over the staging texture's rows; hardware → "bwd_simple"
 * (shaders/matmul_bwd.wgsl, 4 rows × one texel per invocation).
 */
export function chooseBackwardVariant(ctx: GpuContext, shape: { M: number }): BackwardVariant {
  return ctx.isSoftware && shape.M <= ctx.limits.maxTextureDimension2D ? "bwd_tile" : "bwd_simple"
}

/** M below which hardware GPUs use the naive (GEMV-like) kernel rather than a 64-row shared-memory tile. */
const HW_SMALL_M = 16

/**
 * The variant `linear` uses when none is forced, by adapter and shape (like tfjs picks programs):
 * software → "tile" ("tile_m1" for M = 1, "tile_m4" while M is under the tile height; "smem" when M is over
 * the staging texture's maxTextureDimension2D rows); hardware → "smem" ("naive" for M < 16).
 */
export function chooseVariant(ctx: GpuContext, shape: { M: number; dtype: MatrixDtype }): MatmulVariant {
  if (!ctx.isSoftware) return shape.M < HW_SMALL_M ? "naive" : "smem"
  if (shape.M > ctx.limits.maxTextureDimension2D) return "smem"
  if (shape.M === 1) return "tile_m1"
  return shape.M < TILES.tile[shape.dtype].tm ? "tile_m4" : "tile"
}

// ---- upload ----------------------------------------------------------------------------------------

/** Host bytes staged per writeTexture when rows need padding (bounds the temporary copy). */
const UPLOAD_CHUNK_BYTES = 16 << 20

/**
 * Uploads W: an f32 HostTensor of shape [N, K] becomes an f32 matrix, a QuantizedMatrix an int8 one.
 * Rows are split into blocks of at most `maxBlockRows` (default and cap: maxTextureDimension2D − 1) rounded
 * down to a multiple of 16 (≥ 16).
 * Memory is accounted under `category` (the caller's choice, e.g. "base_f32" / "base_int8").
 */
export function uploadMatrix(
  ctx: GpuContext,
  w: HostTensor | QuantizedMatrix,
  opts: { label: string; category: MemoryCategory; maxBlockRows?: number },
): DeviceMatrix {
  const guard = (ok: boolean, reason: string) => {
    if (!ok) throw new GpuValidationError({ label: opts.label, reason })
  }
  const q8 = "q" in w
  const N = q8 ? w.rows : w.shape[0]
  const K = q8 ? w.cols : w.shape[1]
  if (q8) {
    guard(
      w.q.length === N * K && w.scale.length === N,
      `int8 matrix (${N}, ${K}) has ${w.q.length} q, ${w.scale.length} scales`,
    )
  } else {
    guard(w.shape.length === 2, `expected a matrix, got shape [${w.shape}]`)
    guard(w.data.length === N * K, `shape [${w.shape}] but ${w.data.length} values`)
  }
  guard(Number.isInteger(N) && N >= 1 && Number.isInteger(K) && K >= 1, `N=${N}, K=${K} must be ≥ 1`)
  // − 1: room for the padding row of `npot`
  const limit = Math.min(opts.maxBlockRows ?? Infinity, ctx.limits.maxTextureDimension2D - 1)
  guard(Number.isInteger(limit) && limit >= 16, `maxBlockRows=${opts.maxBlockRows} must be an integer ≥ 16`)
  // blocks start on multiples of 16 rows, so that a block's columns of a staged dy start on a whole texel
  const maxRows = Math.floor(limit / 16) * 16
  const Kt = Math.ceil(K / (q8 ? 16 : 4))
  const texelBytes = 16
  const rowBytes = Kt * texelBytes
  // source bytes of one row: K f32 or K int8
  const src = q8
    ? new Uint8Array(w.q.buffer as ArrayBuffer, w.q.byteOffset, w.q.byteLength)
    : new Uint8Array(w.data.buffer as ArrayBuffer, w.data.byteOffset, w.data.byteLength)
  const srcRowBytes = q8 ? K : K * 4
  const blocks: MatrixBlock[] = []
  for (let row0 = 0; row0 < N; row0 += maxRows) {
    const rows = Math.min(maxRows, N - row0)
    const name = `${opts.label}[${row0}:${row0 + rows}]`
    const texture = ctx.texture({
      label: name,
      width: npot(Kt),
      height: npot(rows),
      format: "rgba32uint",
      bytesPerTexel: texelBytes,
      category: opts.category,
    })
    const chunk = Math.max(1, Math.floor(UPLOAD_CHUNK_BYTES / rowBytes))
    for (let r = 0; r < rows; r += chunk) {
      const h = Math.min(chunk, rows - r)
      const from = (row0 + r) * srcRowBytes
      let data: Uint8Array<ArrayBuffer>
      if (srcRowBytes === rowBytes) data = src.subarray(from, from + h * rowBytes)
      else {
        // zero-pad every row to whole texels: the kernels rely on weights past K being 0
        data = new Uint8Array(h * rowBytes)
        for (let i = 0; i < h; i++) {
          data.set(src.subarray(from + i * srcRowBytes, from + (i + 1) * srcRowBytes), i * rowBytes)
        }
      }
      ctx.device.queue.writeTexture({ texture, origin: { x: 0, y: r } }, data, {
        bytesPerRow: rowBytes,
        rowsPerImage: h,
      }, {
        width: Kt,
        height: h,
      })
    }
    const scale = q8 ? w.scale.subarray(row0, row0 + rows) : new Float32Array(rows).fill(1)
    blocks.push({
      row0,
      rows,
      texture,
      view: texture.createView(),
      scale: ctx.upload(`${name}.scale`, scale, opts.category),
    })
  }
  return { label: opts.label, dtype: q8 ? "int8" : "f32", N, K, Kt, blocks }
}

/** Frees the textures and scales of `m` and drops cached bind groups (they would keep them alive). */
export function releaseMatrix(ctx: GpuContext, m: DeviceMatrix): void {
  for (const b of m.blocks) {
    ctx.release(b.texture)
    ctx.release(b.scale)
  }
  ctx.forgetBindGroups()
}

/** Device bytes of `m` (textures + scales), as accounted by the context. */
export function matrixBytes(m: DeviceMatrix): number {
  return m.blocks.reduce((s, b) => s + b.texture.width * b.texture.height * 16 + b.scale.size, 0)
}

/**
 * The least m ≥ n that is not a power of two. Every texture the kernels read has non-power-of-two sides because
 * llvmpipe keys its compiled shader variants on whether each bound texture's width and height are powers
 * of two: a 256-row and a 200-row weight would each cost a full cold compile (~4 s for the big tiles).
 * The padding texel columns / rows are zero and never read.
 */
function npot(n: number): number {
  const pot = (v: number) => (v & (v - 1)) === 0
  return !pot(n) ? n : pot(n + 1) ? n + 2 : n + 1 // 1 → 3, 2 → 3, 4 → 5, 12 → 12
}

// ---- forward ---------------------------------------------------------------------------------------

/**
 * y (M, N) = x (M, K) · Wᵀ, or y += x · Wᵀ with `accumulate`. x and y are f32 storage buffers with rows of
 * exactly K and N floats; y must not be x. `variant` forces a kernel (default `chooseVariant`).
 */
export function linear(
  step: Step,
  args: { x: GPUBuffer; w: DeviceMatrix; y: GPUBuffer },
  dims: { M: number; accumulate?: boolean; variant?: MatmulVariant },
): void {
  const { x, w, y } = args
  const { M } = dims
  const ctx = step.ctx
  const variant = dims.variant ?? chooseVariant(ctx, { M, dtype: w.dtype })
  const guard = (ok: boolean, reason: string) => {
    if (!ok) throw new GpuValidationError({ label: `linear ${w.label} (${variant})`, reason })
  }
  guard(Number.isInteger(M) && M >= 1, `M=${M} must be an integer ≥ 1`)
  guard(MATMUL_VARIANTS.includes(variant), `unknown variant ${variant}`)
  guard(M * w.N < 2 ** 32 && M * w.K < 2 ** 32, `M=${M} rows over u32 indexing`)
  guard(x !== y, "y and x are the same buffer")
  guard(x.size >= M * w.K * 4, `x holds ${x.size} bytes, needs M·K·4 = ${M * w.K * 4}`)
  guard(y.size >= M * w.N * 4, `y holds ${y.size} bytes, needs M·N·4 = ${M * w.N * 4}`)
  const maxBind = ctx.limits.maxStorageBufferBindingSize
  guard(
    M * w.N * 4 <= maxBind,
    `y (M·N·4 = ${M * w.N * 4} bytes) is over maxStorageBufferBindingSize ${maxBind}: split M`,
  )
  const yb = bound(y, M * w.N * 4, maxBind)
  const acc = dims.accumulate ? 1 : 0
  const uniform = (b: MatrixBlock) => ctx.uniform([M, w.N, w.K, b.row0, b.rows, acc, w.Kt, 0])
  if (variant === "naive" || variant === "smem") {
    const pipeline = ctx.pipeline({ shader: `matmul_${variant}.wgsl`, constants: { Q8: w.dtype === "int8" ? 1 : 0 } })
    for (const b of w.blocks) {
      const groups: [number, number] = variant === "naive"
        ? [Math.ceil(b.rows / 64), M]
        : [Math.ceil(b.rows / 64), Math.ceil(M / 64)]
      step.dispatch(pipeline, [uniform(b), yb, bound(x, M * w.K * 4, maxBind), b.view, b.scale], groups)
    }
    return
  }
  guard(
    M <= ctx.limits.maxTextureDimension2D,
    `M=${M} is over the staging texture's ${ctx.limits.maxTextureDimension2D} rows`,
  )
  const spec = TILES[variant][w.dtype]
  const xs = stageInput(step, x, M, w.K)
  const pipeline = cachedPipeline(ctx, tileName(spec), () => generateTileKernel(spec))
  for (const b of w.blocks) {
    step.dispatch(pipeline, [uniform(b), yb, xs, b.view, b.scale], [
      Math.ceil(b.rows / (spec.tn * spec.wgx)),
      Math.ceil(M / (spec.tm * spec.wgy)),
    ])
  }
}

/**
 * dx (M, K) = dy (M, N) · W, or dx += dy · W with `accumulate`: the input gradient of `linear` for the same
 * DeviceMatrix (f32 or int8; the frozen W gets no gradient). Row blocks after the first accumulate.
 * `variant` forces a kernel (default `chooseBackwardVariant`).
 */
export function linearBackwardInput(
  step: Step,
  args: { dy: GPUBuffer; w: DeviceMatrix; dx: GPUBuffer },
  dims: { M: number; accumulate?: boolean; variant?: BackwardVariant },
): void {
  const { dy, w, dx } = args
  const { M } = dims
  const ctx = step.ctx
  const variant = dims.variant ?? chooseBackwardVariant(ctx, { M })
  const guard = (ok: boolean, reason: string) => {
    if (!ok) throw new GpuValidationError({ label: `linearBackwardInput ${w.label} (${variant})`, reason })
  }
  guard(Number.isInteger(M) && M >= 1, `M=${M} must be an integer ≥ 1`)
  guard(BACKWARD_VARIANTS.includes(variant), `unknown variant ${variant}`)
  guard(M * w.N < 2 ** 32 && M * w.K < 2 ** 32, `M=${M} rows over u32 indexing`)
  guard(dx !== dy, "dx and dy are the same buffer")
  guard(dy.size >= M * w.N * 4, `dy holds ${dy.size} bytes, needs M·N·4 = ${M * w.N * 4}`)
  guard(dx.size >= M * w.K * 4, `dx holds ${dx.size} bytes, needs M·K·4 = ${M * w.K * 4}`)
  const maxBind = ctx.limits.maxStorageBufferBindingSize
  guard(
    M * w.K * 4 <= maxBind,
    `dx (M·K·4 = ${M * w.K * 4} bytes) is over maxStorageBufferBindingSize ${maxBind}: split M`,
  )
  const dxb = bound(dx, M * w.K * 4, maxBind)
  // dx = Σ over blocks: the first block writes (or accumulates when asked), the others add
  const uniform = (b: MatrixBlock, i: number) =>
    ctx.uniform([M, w.N, w.K, b.row0, b.rows, i === 0 && !dims.accumulate ? 0 : 1, w.Kt, 0])
  if (variant === "bwd_simple") {
    const pipeline = ctx.pipeline({ shader: "matmul_bwd.wgsl", constants: { Q8: w.dtype === "int8" ? 1 : 0 } })
    w.blocks.forEach((b, i) => {
      step.dispatch(pipeline, [uniform(b, i), dxb, bound(dy, M * w.N * 4, maxBind), b.view, b.scale], [
        Math.ceil(w.Kt / 64),
        Math.ceil(M / 4),
      ])
    })
    return
  }
  guard(
    M <= ctx.limits.maxTextureDimension2D,
    `M=${M} is over the staging texture's ${ctx.limits.maxTextureDimension2D} rows`,
  )
  const spec = BACKWARD_TILES[w.dtype]
  const dys = stageInput(step, dy, M, w.N)
  const pipeline = cachedPipeline(ctx, bwdTileName(spec), () => generateBwdTileKernel(spec))
  w.blocks.forEach((b, i) => {
    step.dispatch(pipeline, [uniform(b, i), dxb, dys, b.view, b.scale], [
      Math.ceil(w.Kt / (spec.tk * spec.wgx)),
      Math.ceil(M / (spec.tm * spec.wgy)),
    ])
  })
}

/**
 * `buf` bound whole, or its first `bytes` when the whole buffer is over the binding limit (pooled buffers
 * may be larger than the M rows in use). Throws when even `bytes` is over it.
 */
function bound(buf: GPUBuffer, bytes: number, maxBind: number): Binding {
  if (buf.size <= maxBind) return buf
  if (bytes > maxBind) {
    throw new GpuValidationError({
      label: buf.label,
      reason: `${bytes} bytes in use are over maxStorageBufferBindingSize ${maxBind}: split M`,
    })
  }
  return { buffer: buf, offset: 0, size: Math.ceil(bytes / 4) * 4 }
}

// ---- generated pipelines and the activation staging texture ----------------------------------------

const generated = new WeakMap<GpuContext, Map<string, GPUComputePipeline>>()

/** The pipeline of a generated kernel, cached here by name (hashing its ~100 KB source per call is not free). */
function cachedPipeline(ctx: GpuContext, name: string, code: () => string): GPUComputePipeline {
  let cache = generated.get(ctx)
  if (!cache) generated.set(ctx, cache = new Map())
  let p = cache.get(name)
  if (!p) cache.set(name, p = ctx.pipeline({ shader: name, code: code() }))
  return p
}

interface Staging {
  readonly rows: number
  readonly texture: GPUTexture
  readonly view: GPUTextureView
  /** (rows, Kp) row-padded copy of x, only for K % 64 ≠ 0 */
  pad: GPUBuffer | null
}

/** Staging textures by context and K, capacities 2^k + 1 rows, kept until releaseMatmulScratch. */
const stagings = new WeakMap<GpuContext, Map<number, Staging[]>>()

/**
 * Records x (M, K) → rgba32float texture (rows ≥ M, ceil(K/16)·4 texels, zeros past K) in `step`.
 * copyBufferToTexture needs a row pitch that is a multiple of 256 bytes: K % 64 = 0 copies x directly,
 * other K first pack x into rows of Kp = ceil(K/64)·64 floats (shaders/matmul_pack.wgsl). The texture is
 * shared by every linear with the same K; WebGPU orders its copies and reads within and across submits.
 */
function stageInput(step: Step, x: GPUBuffer, M: number, K: number): GPUTextureView {
  const ctx = step.ctx
  let byK = stagings.get(ctx)
  if (!byK) stagings.set(ctx, byK = new Map())
  let list = byK.get(K)
  if (!list) byK.set(K, list = [])
  let s = list.find((e) => e.rows >= M)
  const width = Math.ceil(K / 16) * 4
  if (!s) {
    // capacities 17, 33, 65, ... rows (powers of two + 1, see npot), so that a growing M allocates log₂ M textures
    const rows = Math.min(ctx.limits.maxTextureDimension2D, 2 ** Math.ceil(Math.log2(Math.max(M - 1, 16))) + 1)
    const texture = ctx.texture({
      label: `matmul x staging K=${K}`,
      width: npot(width),
      height: rows,
      format: "rgba32float",
      bytesPerTexel: 16,
      category: "activations",
    })
    s = { rows, texture, view: texture.createView(), pad: null }
    list.push(s)
    list.sort((a, b) => a.rows - b.rows)
  }
  if (K % 64 === 0 && (x.usage & GPUBufferUsage.COPY_SRC) !== 0) {
    step.endPass().copyBufferToTexture({ buffer: x, bytesPerRow: K * 4 }, { texture: s.texture }, { width, height: M })
    return s.view
  }
  const Kp = Math.ceil(K / 64) * 64
  s.pad ??= ctx.buffer({
    label: `matmul x pad K=${K}`,
    size: s.rows * Kp * 4,
    usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC,
    category: "activations",
  })
  const maxBind = ctx.limits.maxStorageBufferBindingSize
  // vec4 chunks when K % 4 = 0 (a quarter of the memory instructions)
  const v4 = K % 4 === 0
  step.dispatch(ctx.pipeline({ shader: "matmul_pack.wgsl", entryPoint: v4 ? "main4" : "main" }), [
    ctx.uniform([M, K, Kp, 0]),
    bound(s.pad, M * Kp * 4, maxBind),
    bound(x, M * K * 4, maxBind),
  ], [v4 ? Math.ceil(Kp / 256) : Kp / 64, M])
  step.endPass().copyBufferToTexture({ buffer: s.pad, bytesPerRow: Kp * 4 }, { texture: s.texture }, {
    width,
    height: M,
  })
  return s.view
}

/** Frees the activation staging textures of `ctx` (call when no recorded step still uses them). */
export function releaseMatmulScratch(ctx: GpuContext): void {
  for (const list of stagings.get(ctx)?.values() ?? []) {
    for (const s of list) {
      ctx.release(s.texture)
      if (s.pad) ctx.release(s.pad)
    }
  }
  stagings.delete(ctx)
  ctx.forgetBindGroups()
}
