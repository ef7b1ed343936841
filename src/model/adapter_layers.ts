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
import {
  mixloraDownForward,
  mixloraExpertsBackward,
  mixloraExpertsForward,
  mixloraInputBackward,
  type MixloraSavedBuffers,
  type MixloraScratch,
  moeAuxLoss,
} from "../kernels/moe.ts"
import { maskHash } from "../reference/lora.ts"
import { moeSlots } from "../reference/mixlora.ts"
import { loraScale, projectionShape } from "./adapter.ts"
import { type DeviceAdapter, loraRefs, mixloraRefs } from "./adapter_device.ts"
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

// ---- MixLoRA FFN inside a packed batch ---------------------------------------------------------------

/**
 * Seed of the MixLoRA jitter / expert dropout of `layer` (its kernels' streams don't include the layer):
 * the mask hash of (step seed, stream 2³²−1, row = layer, col 0), shared with src/reference/llama_train.ts.
 */
export const moeLayerSeed = (seed: number, layer: number): number => maskHash(seed, 0xffffffff, layer, 0)

/** Per-step state of one MixLoRA adapter in a batch: saved buffers per layer, scratch, stats, aux. */
export interface MoeRows {
  readonly rows: AdapterRows
  readonly saved: readonly MixloraSavedBuffers[]
  readonly scratch: MixloraScratch
  /** (L, 2E + 1) routing statistics written by the forward */
  readonly stats: GPUBuffer
  /** (1 + E): aux loss and its gradient per expert */
  readonly aux: GPUBuffer
}

/** Pooled buffers of every MixLoRA adapter in `adapters` (forward and backward of one step). */
export class MoeState {
  readonly entries: MoeRows[] = []
  private readonly held: GPUBuffer[] = []

  constructor(private readonly pool: BufferPool, config: LlamaConfig, adapters: readonly AdapterRows[]) {
    const f = (label: string, n: number) => {
      const b = pool.acquire(label, Math.max(1, n) * 4)
      this.held.push(b)
      return b
    }
    for (const rows of adapters) {
      const moe = rows.dev.spec.moe
      if (!moe) continue
      const E = moe.numExperts, S = moeSlots(moe), N = rows.N, R = rows.dev.spec.r, F = config.intermediateSize
      const saved = Array.from({ length: config.numLayers }, (): MixloraSavedBuffers => ({
        P: f("moe P", N * E),
        w: f("moe w", N * S),
        expertOf: f("moe expertOf", N * S),
        sel: f("moe sel", N * E),
        list: f("moe list", E * N),
        counts: f("moe counts", E),
        t: f("moe t", 3 * N * S * R),
      }))
      const scratch: MixloraScratch = {
        hs: f("moe hs", 3 * N * S * F),
        dts: f("moe dts", 3 * N * S * R),
        dw: f("moe dw", N * S),
        dlogits: f("moe dlogits", N * E),
      }
      this.entries.push({
        rows,
        saved,
        scratch,
        stats: f("moe stats", config.numLayers * (2 * E + 1)),
        aux: f("moe aux", 1 + E),
      })
    }
  }

  release(): void {
    for (const b of this.held) this.pool.release(b)
    this.held.length = 0
  }
}

function moeDims(config: LlamaConfig, m: MoeRows, layer: number, batch: { seqLen: number; padSide: "left" | "right" }) {
  const spec = m.rows.dev.spec, moe = spec.moe!
  const seed = m.rows.dropoutSeed
  const training = seed != null
  return {
    row0: m.rows.row0,
    N: m.rows.N,
    T: batch.seqLen,
    padSide: batch.padSide,
    D: config.hiddenSize,
    F: config.intermediateSize,
    R: spec.r,
    moe,
    scale: loraScale(spec),
    layer,
    jitter: training && moe.jitterNoise > 0 ? { j: moe.jitterNoise, seed: moeLayerSeed(seed, layer) } : null,
    dropout: training && spec.dropout > 0 ? { p: spec.dropout, seed: moeLayerSeed(seed, layer) } : null,
  }
}

/**
 * MixLoRA experts of layer `layer` for each MixLoRA adapter's rows, between the shared frozen gate/up matmuls
 * (g0 = x W1ᵀ, u0 = x W3ᵀ already in g, u for all rows) and the shared down matmul: overwrites h on the
 * adapter's rows with the routing-weighted mix Σ_k w_k act(g_k) ⊙ u_k.
 */
export function moeExpertsForward(
  step: Step,
  config: LlamaConfig,
  state: MoeState,
  layer: number,
  batch: { seqLen: number; padSide: "left" | "right" },
  io: { x: GPUBuffer; g: GPUBuffer; u: GPUBuffer; h: GPUBuffer; lengths: GPUBuffer },
): void {
  for (const m of state.entries) {
    mixloraExpertsForward(step, {
      x: io.x,
      g0: io.g,
      u0: io.u,
      mix: io.h,
      lengths: io.lengths,
      stats: m.stats,
      params: mixloraRefs(m.rows.dev, layer),
      saved: m.saved[layer],
      scratch: m.scratch,
    }, moeDims(config, m, layer, batch))
  }
}

/** After the shared y += W2 · mix: each MixLoRA adapter's down-projection LoRA, y += Σ_k w_k s B2_k t2_k. */
export function moeDownForward(
  step: Step,
  config: LlamaConfig,
  state: MoeState,
  layer: number,
  batch: { seqLen: number; padSide: "left" | "right" },
  y: GPUBuffer,
): void {
  for (const m of state.entries) {
    mixloraDownForward(step, { y, params: mixloraRefs(m.rows.dev, layer), saved: m.saved[layer] }, {
      ...moeDims(config, m, layer, batch),
    })
  }
}

/** The load-balancing loss of every MixLoRA adapter over all its layers (after the whole forward). */
export function moeAux(step: Step, config: LlamaConfig, state: MoeState, factors: ReadonlyMap<AdapterRows, number>) {
  for (const m of state.entries) {
    const moe = m.rows.dev.spec.moe!
    moeAuxLoss(step, { stats: m.stats, out: m.aux }, {
      layers: config.numLayers,
      E: moe.numExperts,
      coef: moe.routerAuxLossCoef,
      gradScale: factors.get(m.rows) ?? 1,
    })
  }
}

/**
 * MixLoRA backward of layer `layer` between the shared dmix = dy W2 (in `dmix` for all rows) and the shared
 * gate/up input gradient: writes dg0, du0 for each adapter's rows into `dg0`/`du0` (batch-shaped) and
 * accumulates the expert and router gradients.
 */
export function moeExpertsBackward(
  step: Step,
  config: LlamaConfig,
  state: MoeState,
  layer: number,
  batch: { seqLen: number; padSide: "left" | "right" },
  io: {
    dy: GPUBuffer
    x: GPUBuffer
    dmix: GPUBuffer
    g0: GPUBuffer
    u0: GPUBuffer
    dg0: GPUBuffer
    du0: GPUBuffer
    lengths: GPUBuffer
  },
): void {
  for (const m of state.entries) {
    mixloraExpertsBackward(step, {
      ...io,
      aux: m.rows.dev.spec.moe!.routerAuxLossCoef > 0 ? m.aux : null,
      params: mixloraRefs(m.rows.dev, layer),
      saved: m.saved[layer],
      scratch: m.scratch,
    }, moeDims(config, m, layer, batch))
  }
}

/** dx[rows] += each MixLoRA adapter's input gradient (expert gate/up LoRA and router) of layer `layer`. */
export function moeInputBackward(
  step: Step,
  config: LlamaConfig,
  state: MoeState,
  layer: number,
  batch: { seqLen: number; padSide: "left" | "right" },
  dx: GPUBuffer,
): void {
  for (const m of state.entries) {
    mixloraInputBackward(step, {
      dx,
      params: mixloraRefs(m.rows.dev, layer),
      saved: m.saved[layer],
      scratch: m.scratch,
    }, moeDims(config, m, layer, batch))
  }
}
