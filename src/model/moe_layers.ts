/**
 * MixLoRA FFN work inside a packed batch (composed from src/kernels/moe.ts; no WebGPU calls here): between the
 * shared frozen gate/up matmuls and the shared down matmul, each MixLoRA adapter routes its own rows to its
 * experts (forward), and accumulates its router and expert gradients (backward).
 * @module
 */
import type { BufferPool } from "../gpu/pool.ts"
import type { Step } from "../gpu/context.ts"
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
import { loraScale } from "./adapter.ts"
import { mixloraRefs } from "./adapter_device.ts"
import type { AdapterRows } from "./adapter_layers.ts"
import type { LlamaConfig } from "./types.ts"

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
