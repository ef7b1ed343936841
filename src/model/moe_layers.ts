/**
 * MixLoRA FFN work inside a packed batch (composed from src/kernels/moe.ts; no WebGPU calls here): between the
 * shared frozen gate/up matmuls and the shared down matmul, each MixLoRA adapter routes its own rows to its
 * experts (forward), and accumulates its router and expert gradients (backward). Adapters that share a kernel
 * variant and a parameter slab form a group whose stages each run as one segmented dispatch.
 * @module
 */
import type { BufferPool } from "../gpu/pool.ts"
import type { Step } from "../gpu/context.ts"
import {
  type MixloraBackwardIo,
  mixloraKernelKey,
  type MixloraSavedBuffers,
  type MixloraScratch,
  type MixloraSegment,
  mixloraSegmentsBackward,
  mixloraSegmentsDown,
  mixloraSegmentsForward,
  mixloraSegmentsInputBackward,
  moeAuxLossSegments,
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

/**
 * MixLoRA adapters of a batch that share a kernel variant and a parameter slab: each stage of each layer is one
 * segmented call (src/kernels/moe.ts) over all of them. Group-local buffers hold the members' tokens back to back
 * (member k at rows loc0 = Σ N of the members before it); stats rows k·L + layer; aux row k.
 */
export interface MoeGroup {
  readonly members: readonly AdapterRows[]
  readonly E: number
  /** per layer, Σ N tokens */
  readonly saved: readonly MixloraSavedBuffers[]
  readonly scratch: MixloraScratch
  /** (members · L, 2E + 1) routing statistics written by the forward */
  readonly stats: GPUBuffer
  /** (members, 1 + E): aux loss and its gradient per expert */
  readonly aux: GPUBuffer
}

/** One MixLoRA adapter of a batch: its rows and its place in its group. */
export interface MoeRows {
  readonly rows: AdapterRows
  readonly group: MoeGroup
  /** segment index in the group */
  readonly index: number
}

/** Pooled buffers of every MixLoRA adapter in `adapters`, grouped by kernel variant (forward and backward of a step). */
export class MoeState {
  readonly entries: MoeRows[] = []
  readonly groups: MoeGroup[] = []
  private readonly held: GPUBuffer[] = []

  constructor(
    private readonly pool: BufferPool,
    private readonly config: LlamaConfig,
    adapters: readonly AdapterRows[],
  ) {
    const f = (label: string, n: number) => {
      const b = pool.acquire(label, Math.max(1, n) * 4)
      this.held.push(b)
      return b
    }
    const L = config.numLayers
    const keyed = new Map<GPUBuffer, Map<string, AdapterRows[]>>()
    for (const rows of adapters) {
      if (!rows.dev.spec.moe) continue
      const key = Array.from({ length: L }, (_, l) => {
        const d = { D: config.hiddenSize, F: config.intermediateSize, R: rows.dev.spec.r, moe: rows.dev.spec.moe! }
        return mixloraKernelKey(mixloraRefs(rows.dev, l), d)
      }).join("|")
      let bySlab = keyed.get(rows.dev.params)
      if (!bySlab) keyed.set(rows.dev.params, bySlab = new Map())
      const members = bySlab.get(key)
      if (members) members.push(rows)
      else bySlab.set(key, [rows])
    }
    for (const members of [...keyed.values()].flatMap((m) => [...m.values()])) {
      const moe = members[0].dev.spec.moe!
      const E = moe.numExperts, S = moeSlots(moe), R = members[0].dev.spec.r, F = config.intermediateSize
      const N = members.reduce((n, r) => n + r.N, 0)
      const saved = Array.from({ length: L }, (): MixloraSavedBuffers => ({
        P: f("moe P", N * E),
        w: f("moe w", N * S),
        expertOf: f("moe expertOf", N * S),
        sel: f("moe sel", N * E),
        list: f("moe list", E * N),
        counts: f("moe counts", members.length * E),
        t: f("moe t", 3 * N * S * R),
      }))
      const scratch: MixloraScratch = {
        hs: f("moe hs", 3 * N * S * F),
        dts: f("moe dts", 3 * N * S * R),
        dw: f("moe dw", N * S),
        dlogits: f("moe dlogits", N * E),
      }
      const stats = f("moe stats", members.length * L * (2 * E + 1)), aux = f("moe aux", members.length * (1 + E))
      const group: MoeGroup = { members, E, saved, scratch, stats, aux }
      this.groups.push(group)
      members.forEach((rows, index) => this.entries.push({ rows, group, index }))
    }
  }

  /** The segments of each group for layer `layer` (`aux`: the backward's aux rows where the coefficient is > 0). */
  segments(layer: number, batch: BatchLayout, opts: { aux?: boolean } = {}): MixloraSegment[][] {
    const L = this.config.numLayers
    return this.groups.map((g) =>
      g.members.map((rows, k): MixloraSegment => ({
        params: mixloraRefs(rows.dev, layer),
        dims: moeDims(this.config, rows, layer, k * L + layer, batch),
        auxRow: opts.aux && rows.dev.spec.moe!.routerAuxLossCoef > 0 ? k : null,
      }))
    )
  }

  release(): void {
    for (const b of this.held) this.pool.release(b)
    this.held.length = 0
  }
}

type BatchLayout = { seqLen: number; padSide: "left" | "right" }

function moeDims(config: LlamaConfig, rows: AdapterRows, layer: number, statsRow: number, batch: BatchLayout) {
  const spec = rows.dev.spec, moe = spec.moe!
  const seed = rows.dropoutSeed
  const training = seed != null
  return {
    row0: rows.row0,
    N: rows.N,
    T: batch.seqLen,
    padSide: batch.padSide,
    D: config.hiddenSize,
    F: config.intermediateSize,
    R: spec.r,
    moe,
    scale: loraScale(spec),
    layer: statsRow,
    jitter: training && moe.jitterNoise > 0 ? { j: moe.jitterNoise, seed: moeLayerSeed(seed, layer) } : null,
    dropout: training && spec.dropout > 0 ? { p: spec.dropout, seed: moeLayerSeed(seed, layer) } : null,
  }
}

/**
 * MixLoRA experts of layer `layer` for each MixLoRA adapter's rows, between the shared frozen gate/up matmuls
 * (g0 = x W1ᵀ, u0 = x W3ᵀ already in g, u for all rows) and the shared down matmul: overwrites h on the
 * adapters' rows with the routing-weighted mix Σ_k w_k act(g_k) ⊙ u_k. One segmented call per group.
 */
export function moeExpertsForward(
  step: Step,
  _config: LlamaConfig,
  state: MoeState,
  layer: number,
  batch: BatchLayout,
  io: { x: GPUBuffer; g: GPUBuffer; u: GPUBuffer; h: GPUBuffer; lengths: GPUBuffer },
): void {
  state.segments(layer, batch).forEach((segs, k) => {
    const g = state.groups[k]
    mixloraSegmentsForward(step, {
      x: io.x,
      g0: io.g,
      u0: io.u,
      mix: io.h,
      lengths: io.lengths,
      stats: g.stats,
      saved: g.saved[layer],
      scratch: g.scratch,
    }, segs)
  })
}

/** After the shared y += W2 · mix: each MixLoRA adapter's down-projection LoRA, y += Σ_k w_k s B2_k t2_k. */
export function moeDownForward(
  step: Step,
  _config: LlamaConfig,
  state: MoeState,
  layer: number,
  batch: BatchLayout,
  y: GPUBuffer,
): void {
  state.segments(layer, batch).forEach((segs, k) => {
    mixloraSegmentsDown(step, { y, saved: state.groups[k].saved[layer] }, segs)
  })
}

/** The load-balancing loss of every MixLoRA adapter over all its layers (after the whole forward). */
export function moeAux(step: Step, config: LlamaConfig, state: MoeState, factors: ReadonlyMap<AdapterRows, number>) {
  for (const g of state.groups) {
    moeAuxLossSegments(
      step,
      { stats: g.stats, out: g.aux },
      g.members.map((rows, k) => ({
        layers: config.numLayers,
        E: g.E,
        coef: rows.dev.spec.moe!.routerAuxLossCoef,
        gradScale: factors.get(rows) ?? 1,
        statsRow: k * config.numLayers,
        outRow: k,
      })),
    )
  }
}

/**
 * MixLoRA backward of layer `layer` between the shared dmix = dy W2 (in `dmix` for all rows) and the shared
 * gate/up input gradient: writes dg0, du0 for each adapter's rows into `dg0`/`du0` (batch-shaped) and
 * accumulates the expert and router gradients.
 */
export function moeExpertsBackward(
  step: Step,
  _config: LlamaConfig,
  state: MoeState,
  layer: number,
  batch: BatchLayout,
  io: MixloraBackwardIo,
): void {
  state.segments(layer, batch, { aux: true }).forEach((segs, k) => {
    const g = state.groups[k]
    mixloraSegmentsBackward(step, { ...io, aux: g.aux, saved: g.saved[layer], scratch: g.scratch }, segs)
  })
}

/**
 * dx[rows] += each MixLoRA adapter's input gradient (expert gate/up LoRA and router) of layer `layer`; `lengths`
 * the batch's (rows) u32 lengths, as in the forward (the masks' keys).
 */
export function moeInputBackward(
  step: Step,
  _config: LlamaConfig,
  state: MoeState,
  layer: number,
  batch: BatchLayout,
  io: { dx: GPUBuffer; lengths: GPUBuffer },
): void {
  state.segments(layer, batch).forEach((segs, k) => {
    const g = state.groups[k]
    mixloraSegmentsInputBackward(step, { ...io, saved: g.saved[layer], scratch: g.scratch }, segs)
  })
}
