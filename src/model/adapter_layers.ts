/**
 * Adapter work inside a packed batch: after a frozen projection ran once over all rows, every adapter adds its
 * LoRA term on its own rows (forward), and in the backward accumulates its LoRA gradients and adds its share to
 * the input gradient, all adapters of a rank in one segmented dispatch per kernel (src/kernels/lora.ts). No
 * WebGPU calls here.
 *
 *   forward   y[rows] += scale · B (A · drop(x[rows]))              t = A · drop(x) (N_a, R) is saved
 *   backward  dt = scale · dy[rows] B,  dB += scale · dyᵀ t,  dA += dtᵀ drop(x),  dx[rows] += drop'(dt A)
 * @module
 */
import type { BufferPool } from "../gpu/pool.ts"
import type { Step } from "../gpu/context.ts"
import {
  type DropoutArgs,
  type LoraSegment,
  loraSegmentsBackward,
  loraSegmentsForward,
  type MaskLayout,
} from "../kernels/lora.ts"
import { loraScale, projectionShape } from "./adapter.ts"
import { type DeviceAdapter, loraRefs } from "./adapter_device.ts"
import { type LlamaConfig, type Projection, PROJECTIONS } from "./types.ts"

/** One adapter's token rows [row0, row0 + N) of a packed batch (N = its batch rows × T). */
export interface AdapterRows {
  readonly row0: number
  readonly N: number
  readonly dev: DeviceAdapter
  /** training: dropout seed of this step (null or absent: no dropout, evaluation) */
  readonly dropoutSeed?: number | null
}

/** Saved LoRA intermediates t (Σ N, R) of one segmented call, keyed by layer, projection and group. */
export class LoraSaved {
  private readonly map = new Map<string, GPUBuffer>()
  constructor(private readonly pool: BufferPool) {}

  get(layer: number, p: Projection, group: number, floats: number): GPUBuffer {
    const key = `${layer}.${p}.${group}`
    let b = this.map.get(key)
    if (!b) this.map.set(key, b = this.pool.acquire(`lora t ${key}`, floats * 4))
    return b
  }

  release(): void {
    for (const b of this.map.values()) this.pool.release(b)
    this.map.clear()
  }
}

/** Adapters with LoRA on (layer, p) as kernel segments, in batch order. */
function segmentsOf(adapters: readonly AdapterRows[], layer: number, p: Projection) {
  const out: { R: number; buffer: GPUBuffer; seg: LoraSegment }[] = []
  for (const rows of adapters) {
    const refs = loraRefs(rows.dev, layer, p)
    if (!refs) continue
    const spec = rows.dev.spec
    const dropout: DropoutArgs | null = rows.dropoutSeed != null && spec.dropout > 0
      ? { p: spec.dropout, seed: rows.dropoutSeed, stream: layer * PROJECTIONS.length + PROJECTIONS.indexOf(p) }
      : null
    const seg = { row0: rows.row0, N: rows.N, ...refs, scale: loraScale(spec), dropout }
    out.push({ R: spec.r, buffer: refs.a.buffer, seg })
  }
  return out
}

/**
 * The segmented calls of (layer, p): adapters of one rank whose weights share an arena slab go into one call
 * (one dispatch per kernel); `group` numbers the calls for the saved t buffers.
 */
function callsOf(config: LlamaConfig, adapters: readonly AdapterRows[], layer: number, p: Projection) {
  const { inDim, outDim } = projectionShape(p, config)
  const groups: { R: number; buffer: GPUBuffer; segs: LoraSegment[] }[] = []
  for (const { R, buffer, seg } of segmentsOf(adapters, layer, p)) {
    const g = groups.find((g) => g.R === R && g.buffer === buffer)
    if (g) g.segs.push(seg)
    else groups.push({ R, buffer, segs: [seg] })
  }
  return groups.map((g, group) => ({
    group,
    segs: g.segs,
    dims: { inDim, outDim, R: g.R },
    rows: g.segs.reduce((n, s) => n + s.N, 0),
  }))
}

/**
 * y[rows] += LoRA_p(x[rows]) for every adapter of the batch with LoRA on layer `layer`'s projection `p`.
 * `io.layout` (the batch's T, pad side and lengths buffer) keys the dropout masks; required when training.
 */
export function loraProjectionForward(
  step: Step,
  config: LlamaConfig,
  adapters: readonly AdapterRows[],
  saved: LoraSaved,
  layer: number,
  p: Projection,
  io: { x: GPUBuffer; y: GPUBuffer; layout?: MaskLayout | null },
): void {
  for (const c of callsOf(config, adapters, layer, p)) {
    const t = saved.get(layer, p, c.group, c.rows * c.dims.R)
    loraSegmentsForward(step, { ...io, t }, c.segs, c.dims)
  }
}

/**
 * The backward of `loraProjectionForward`: dA, dB += (into each adapter's gradient block) and, when `dx` is
 * given, dx[rows] += the LoRA input gradient (after the frozen weight's dx was written); `io.layout` as in the
 * forward.
 */
export function loraProjectionBackward(
  step: Step,
  config: LlamaConfig,
  adapters: readonly AdapterRows[],
  saved: LoraSaved,
  pool: BufferPool,
  layer: number,
  p: Projection,
  io: { x: GPUBuffer; dy: GPUBuffer; dx?: GPUBuffer; layout?: MaskLayout | null },
): void {
  for (const c of callsOf(config, adapters, layer, p)) {
    const t = saved.get(layer, p, c.group, c.rows * c.dims.R)
    const dt = pool.acquire("lora dt", c.rows * c.dims.R * 4)
    loraSegmentsBackward(step, { ...io, t, dt }, c.segs, c.dims)
    // dt is consumed by the dispatches just recorded; reusing it later in the same pass is ordered after them
    pool.release(dt)
  }
}

export type { MaskLayout } from "../kernels/lora.ts"
// the MixLoRA FFN layers live in moe_layers.ts; re-exported so that callers import one module
export {
  moeAux,
  moeDownForward,
  moeExpertsBackward,
  moeExpertsForward,
  moeInputBackward,
  moeLayerSeed,
  type MoeRows,
  MoeState,
} from "./moe_layers.ts"
