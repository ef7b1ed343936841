/**
 * Matmul benchmark: GFLOP/s = 2·M·N·K / time of the naive kernel, the f32 and int8 tiled kernels that
 * `chooseVariant` picks for this adapter, and (with `extra`) the shared-memory kernel and the input gradient,
 * side by side in one run: every round runs each kernel once in turn, the table gives the median round.
 *
 * Two clocks: "kernel" from timestamp queries around every compute pass when the device has
 * "timestamp-query" (the x → texture staging copy of the tile variants sits between passes and is not in it),
 * and "wall" from encoding to the end of the read-back of y (includes the ~11.5 ms completion latency of
 * one round trip, the staging copy, nothing subtracted). Without timestamps only "wall" is reported.
 *
 *   deno run -A --preload src/no_async_hooks.ts bench/matmul.ts [--rounds 3] [--extra] [--shape 256x11008x4096 ...]
 * @module
 */
import { GpuContext, Step } from "../src/gpu/context.ts"
import type { Binding } from "../src/gpu/context.ts"
import {
  type BackwardVariant,
  chooseBackwardVariant,
  chooseVariant,
  type DeviceMatrix,
  linear,
  linearBackwardInput,
  type MatmulVariant,
  releaseMatmulScratch,
  releaseMatrix,
  uploadMatrix,
} from "../src/kernels/matmul.ts"
import { quantizeRows } from "../src/model/quantize.ts"

export interface MatmulBenchRow {
  /** "M×N×K" */
  readonly shape: string
  readonly kernel: string
  readonly variant: MatmulVariant | BackwardVariant
  readonly dtype: "f32" | "int8"
  /** median GFLOP/s by timestamp queries (null without "timestamp-query") */
  readonly kernelGflops: number | null
  /** median GFLOP/s by wall clock */
  readonly wallGflops: number
  /** wall ms of the first run (pipeline compile, cold or from Mesa's shader cache, + one run) */
  readonly firstMs: number
  /** per-round kernel (or wall) GFLOP/s */
  readonly runs: readonly number[]
}

export interface MatmulBenchOptions {
  /** [M, N, K] shapes; default 256×2048×2048 and 1024×1024×1024 */
  readonly shapes?: readonly (readonly [number, number, number])[]
  /** rounds per shape (≥ 3) */
  readonly rounds?: number
  /** also the shared-memory variant and linearBackwardInput */
  readonly extra?: boolean
}

interface Kernel {
  readonly name: string
  readonly variant: MatmulVariant | BackwardVariant
  readonly dtype: "f32" | "int8"
  readonly run: (step: Step) => GPUBuffer
}

/**
 * Runs the benchmark on `ctx` and returns one row per (shape, kernel). Weights are uniform in [-0.5, 0.5),
 * int8 ones quantised from the same values; every kernel reads the same x.
 */
export async function benchMatmul(ctx: GpuContext, opts: MatmulBenchOptions = {}): Promise<MatmulBenchRow[]> {
  const shapes = opts.shapes ?? [[256, 2048, 2048], [1024, 1024, 1024]]
  const rounds = Math.max(3, opts.rounds ?? 3)
  const timed = ctx.device.features.has("timestamp-query")
  const rows: MatmulBenchRow[] = []
  for (const [M, N, K] of shapes) {
    const w = random(N * K, 1)
    const wf = uploadMatrix(ctx, { shape: [N, K], data: w }, { label: "bench f32", category: "base_f32" })
    const wq = uploadMatrix(ctx, quantizeRows(w, N, K), { label: "bench int8", category: "base_int8" })
    const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST
    const x = ctx.upload("bench x", random(M * K, 2), "activations")
    const y = ctx.buffer({ label: "bench y", size: M * N * 4, usage, category: "activations" })
    const dy = ctx.upload("bench dy", random(M * N, 3), "activations")
    const dx = ctx.buffer({ label: "bench dx", size: M * K * 4, usage, category: "activations" })
    const fwd = (m: DeviceMatrix, variant: MatmulVariant, name: string): Kernel => ({
      name,
      variant,
      dtype: m.dtype,
      run: (step) => (linear(step, { x, w: m, y }, { M, variant }), y),
    })
    const kernels: Kernel[] = [
      fwd(wf, "naive", "naive"),
      fwd(wf, chooseVariant(ctx, { M, dtype: "f32" }), "f32 tiled"),
      fwd(wq, chooseVariant(ctx, { M, dtype: "int8" }), "int8 tiled"),
    ]
    if (opts.extra) {
      kernels.push(fwd(wf, "smem", "f32 smem"), fwd(wq, "smem", "int8 smem"))
      const variant = chooseBackwardVariant(ctx, { M })
      for (const m of [wf, wq]) {
        kernels.push({
          name: `${m.dtype} dx = dy·W`,
          variant,
          dtype: m.dtype,
          run: (step) => (linearBackwardInput(step, { dy, w: m, dx }, { M, variant }), dx),
        })
      }
    }
    const flop = 2 * M * N * K
    const firstMs: number[] = []
    for (const k of kernels) firstMs.push((await runOnce(ctx, k, timed)).wallMs)
    const kernelRuns: number[][] = kernels.map(() => [])
    const wallRuns: number[][] = kernels.map(() => [])
    for (let r = 0; r < rounds; r++) {
      for (let i = 0; i < kernels.length; i++) {
        const t = await runOnce(ctx, kernels[i], timed)
        wallRuns[i].push(flop / t.wallMs / 1e6)
        if (t.kernelMs !== null) kernelRuns[i].push(flop / t.kernelMs / 1e6)
      }
    }
    kernels.forEach((k, i) => {
      rows.push({
        shape: `${M}×${N}×${K}`,
        kernel: k.name,
        variant: k.variant,
        dtype: k.dtype,
        kernelGflops: timed ? median(kernelRuns[i]) : null,
        wallGflops: median(wallRuns[i]),
        firstMs: firstMs[i],
        runs: timed ? kernelRuns[i] : wallRuns[i],
      })
    })
    releaseMatrix(ctx, wf)
    releaseMatrix(ctx, wq)
    for (const b of [x, y, dy, dx]) ctx.release(b)
    releaseMatmulScratch(ctx)
  }
  return rows
}

/** One kernel in its own command buffer, timed by pass timestamps (when available) and by the wall clock. */
async function runOnce(
  ctx: GpuContext,
  k: Kernel,
  timed: boolean,
): Promise<{ kernelMs: number | null; wallMs: number }> {
  const t0 = performance.now()
  if (!timed) {
    const step = ctx.begin("bench")
    const out = k.run(step)
    await ctx.read([{ buffer: out, offset: 0, size: 4 }], step)
    return { kernelMs: null, wallMs: performance.now() - t0 }
  }
  const step = new TimedStep(ctx, ctx.device.createCommandEncoder({ label: "bench" }))
  const out = k.run(step)
  const stamps = step.resolve()
  const [, t] = await ctx.read([{ buffer: out, offset: 0, size: 4 }, stamps], step)
  const wallMs = performance.now() - t0
  const ns = new BigUint64Array(t)
  let kernelNs = 0n
  for (let i = 0; i < step.passes; i++) kernelNs += ns[2 * i + 1] - ns[2 * i]
  ctx.release(stamps)
  step.querySet.destroy()
  return { kernelMs: Number(kernelNs) / 1e6, wallMs }
}

/** A Step whose compute passes write begin / end timestamps (bench only; the runtime never needs them). */
class TimedStep extends Step {
  static readonly MAX_PASSES = 16
  readonly querySet: GPUQuerySet
  passes = 0
  private timedPass: GPUComputePassEncoder | null = null

  constructor(ctx: GpuContext, encoder: GPUCommandEncoder) {
    super(ctx, encoder)
    this.querySet = ctx.device.createQuerySet({ type: "timestamp", count: 2 * TimedStep.MAX_PASSES })
  }

  override dispatch(
    pipeline: GPUComputePipeline,
    bindings: readonly Binding[],
    groups: readonly [number, number?, number?],
  ): void {
    const [x, y = 1, z = 1] = groups
    if (x === 0 || y === 0 || z === 0) return
    if (!this.timedPass) {
      const i = 2 * this.passes++
      if (this.passes > TimedStep.MAX_PASSES) throw new Error("bench: too many passes in one step")
      this.timedPass = this.encoder.beginComputePass({
        timestampWrites: { querySet: this.querySet, beginningOfPassWriteIndex: i, endOfPassWriteIndex: i + 1 },
      })
    }
    this.timedPass.setPipeline(pipeline)
    this.timedPass.setBindGroup(0, this.ctx.bindGroup(pipeline, bindings))
    this.timedPass.dispatchWorkgroups(x, y, z)
  }

  override endPass(): GPUCommandEncoder {
    if (this.timedPass) {
      this.timedPass.end()
      this.timedPass = null
    }
    return super.endPass()
  }

  /** Resolves the timestamps into a buffer (2 u64 per pass) that the caller reads with the result. */
  resolve(): GPUBuffer {
    const buf = this.ctx.buffer({
      label: "bench timestamps",
      size: 16 * Math.max(1, this.passes),
      usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
      category: "activations",
    })
    if (this.passes > 0) this.endPass().resolveQuerySet(this.querySet, 0, 2 * this.passes, buf, 0)
    return buf
  }
}

function random(n: number, seed: number): Float32Array {
  let s = seed * 2654435761 >>> 0 || 1
  const a = new Float32Array(n)
  for (let i = 0; i < n; i++) {
    s ^= s << 13
    s ^= s >>> 17
    s ^= s << 5
    a[i] = (s >>> 0) / 2 ** 32 - 0.5
  }
  return a
}

function median(v: readonly number[]): number {
  const s = [...v].sort((a, b) => a - b)
  const h = s.length >> 1
  return s.length % 2 ? s[h] : (s[h - 1] + s[h]) / 2
}

/** The rows as an aligned text table. */
export function formatMatmulBench(rows: readonly MatmulBenchRow[]): string {
  const head = ["shape M×N×K", "kernel", "variant", "kernel GF/s", "wall GF/s", "first run ms", "rounds (GF/s)"]
  const body = rows.map((r) => [
    r.shape,
    r.kernel,
    r.variant,
    r.kernelGflops === null ? "n/a" : r.kernelGflops.toFixed(1),
    r.wallGflops.toFixed(1),
    r.firstMs.toFixed(0),
    r.runs.map((g) => g.toFixed(1)).join(" "),
  ])
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)))
  const line = (cells: string[]) =>
    cells.map((c, i) => i >= 3 && i <= 5 ? c.padStart(widths[i]) : c.padEnd(widths[i])).join("  ").trimEnd()
  return [line(head), widths.map((n) => "-".repeat(n)).join("  "), ...body.map(line)].join("\n")
}

if (import.meta.main) {
  const arg = (name: string) => Deno.args.indexOf(name)
  const rounds = arg("--rounds") >= 0 ? Number(Deno.args[arg("--rounds") + 1]) : 3
  const ctx = await GpuContext.create()
  console.log(
    `adapter: ${ctx.description}; clock: ${
      ctx.device.features.has("timestamp-query") ? "timestamp queries" : "wall only"
    }`,
  )
  // --shape MxNxK (repeatable) replaces the default shapes
  const shapes = Deno.args.flatMap((a, i) =>
    a === "--shape" ? [Deno.args[i + 1].split("x").map(Number) as [number, number, number]] : []
  )
  const rows = await benchMatmul(ctx, {
    rounds,
    extra: arg("--extra") >= 0,
    shapes: shapes.length ? shapes : undefined,
  })
  console.log(formatMatmulBench(rows))
  ctx.destroy()
}
