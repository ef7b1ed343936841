/**
 * Adapter work inside a packed batch: after a frozen projection ran once over all rows, each adapter adds its
 * LoRA term on its own rows (forward), and in the backward accumulates its LoRA gradients and adds its
 * share to the input gradient. Composed from src/kernels/lora.ts; no WebGPU calls here.
 *
 *   forward   y[rows] += scale · B (A · drop(x[rows]))              t = A · drop(x) (N_a, R) is saved
 *   backward  dt = scale · dy[rows] B,  dB += scale · dyᵀ t,  dA += dtᵀ drop(x),  dx[rows] += drop'(dt A)
 * @module
 */
import type { BufferPool } from "../gpu/pool.ts"
import type { Step } from "../gpu/context.ts"
import { type DropoutArgs, loraBackward, loraForward } from "../kernels/lora.ts"
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

/** Saved LoRA intermediates t (N_a, R), keyed by layer, projection and adapter index in the batch. */
export class LoraSaved {
  private readonly map = new Map<string, GPUBuffer>()
  constructor(private readonly pool: BufferPool) {}

  get(layer: number, p: Projection, i: number, floats: number): GPUBuffer {
    const key = `${layer}.${p}.${i}`
    let b = this.map.get(key)
    if (!b) this.map.set(key, b = this.pool.acquire(`lora t ${key}`, floats * 4))
    return b
  }

  release(): void {
    for (const b of this.map.values()) this.pool.release(b)
    this.map.clear()
  }
}

function dims(config: LlamaConfig, rows: AdapterRows, layer: number, p: Projection) {
  const spec = rows.dev.spec
  const { inDim, outDim } = projectionShape(p, config)
  const dropout: DropoutArgs | null = rows.dropoutSeed != null && spec.dropout > 0
    ? { p: spec.dropout, seed: rows.dropoutSeed, stream: layer * PROJECTIONS.length + PROJECTIONS.indexOf(p) }
    : null
  return { row0: rows.row0, N: rows.N, inDim, outDim, R: spec.r, scale: loraScale(spec), dropout }
}

/** y[rows] += LoRA_p(x[rows]) for every adapter of the batch with LoRA on layer `layer`'s projection `p`. */
export function loraProjectionForward(
  step: Step,
  config: LlamaConfig,
  adapters: readonly AdapterRows[],
  saved: LoraSaved,
  layer: number,
  p: Projection,
  io: { x: GPUBuffer; y: GPUBuffer },
): void {
  adapters.forEach((rows, i) => {
    const refs = loraRefs(rows.dev, layer, p)
    if (!refs) return
    const d = dims(config, rows, layer, p)
    loraForward(step, { y: io.y, x: io.x, a: refs.a, b: refs.b, t: saved.get(layer, p, i, d.N * d.R) }, d)
  })
}

/**
 * The backward of `loraProjectionForward`: dA, dB += (into each adapter's gradient buffer) and, when `dx` is
 * given, dx[rows] += the LoRA input gradient (after the frozen weight's dx was written).
 */
export function loraProjectionBackward(
  step: Step,
  config: LlamaConfig,
  adapters: readonly AdapterRows[],
  saved: LoraSaved,
  pool: BufferPool,
  layer: number,
  p: Projection,
  io: { x: GPUBuffer; dy: GPUBuffer; dx?: GPUBuffer },
): void {
  adapters.forEach((rows, i) => {
    const refs = loraRefs(rows.dev, layer, p)
    if (!refs) return
    const d = dims(config, rows, layer, p)
    const dt = pool.acquire("lora dt", d.N * d.R * 4)
    loraBackward(step, { ...refs, dy: io.dy, x: io.x, dx: io.dx, t: saved.get(layer, p, i, d.N * d.R), dt }, d)
    // dt is consumed by the dispatches just recorded; reusing it later in the same pass is ordered after them
    pool.release(dt)
  })
}

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
