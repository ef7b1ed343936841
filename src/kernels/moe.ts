/**
 * Launchers for the MixLoRA FFN kernels, forward and backward, for the MixLoRA adapters of a packed batch, each
 * on its tokens [row0, row0 + N) (whole sequences: row0 and N are multiples of T). SGMV-style segments: adapters
 * that share a kernel variant (`mixloraKernelKey`) and a parameter buffer (a slab of the adapter arena) run each
 * stage in ONE dispatch (per 16 adapters), each adapter a segment with its own router, experts, routing
 * settings, masks and rows (shaders/moe_common.wgsl describes the segment table). A segment computes exactly what
 * it computes alone (same code, same summation order, and masks / jitter keyed by each token's sequence within
 * the segment and position in that sequence, `token_key`, not by its batch row), so packed results equal
 * per-adapter results bit for bit, at any row0, T or pad side. The math and its stage names are those of
 * src/reference/mixlora.ts (the oracle). Routing kernels are files (shaders/moe_route, moe_lists, moe_bwd_router,
 * moe_aux .wgsl); the expert kernels are generated register-tile code (src/kernels/moe_codegen.ts, where each
 * is described). The efficient form:
 *
 *   forward                                                   backward (dy = ∂L/∂y)
 *   [base]  g0 = x W1ᵀ, u0 = x W3ᵀ        (all batch rows)   [base]  dmix = dy W2                (all rows)
 *   moe_route        P, slots, weights    (token-major)       bwd_experts  per expert list tile: u2 = s B2ᵀ dy;
 *   moe_lists        per-expert lists, capacity, stats           recompute g, u, h; dg, du → hs; dt1 = s B1ᵀ dg,
 *   fwd_experts      per expert list tile: t1 = A1 m1x,          dt3 = s B3ᵀ du; dw = dmix·h + t2·u2
 *                    t3 = A3 m3x; h = act(g) u → hs;          moe_bwd_router   dP (selection, aux) → dlogits
 *                    t2 = A2 m2h                              bwd_grads    dA*, dB* += (per-expert lists);
 *   mix              mix = Σ_j w h                               dg0, du0 = Σ_j dg, du; dG += dlogitsᵀ (x ⊙ n)
 *   [base]  y = mix W2ᵀ                   (all batch rows)    [base]  dx = dg0 W1 + du0 W3        (all rows)
 *   expand_down      y += Σ w s B2 t2      (token-major)      bwd_dx       dx += A1ᵀdt1 m1 + A3ᵀdt3 m3 + n Gᵀdlogits
 *
 * The [base] steps are the frozen matmuls (src/kernels/matmul.ts), which a shared batch runs once over all rows;
 * `mixloraSegmentsForward` / `mixloraSegmentsDown` / `mixloraSegmentsBackward` / `mixloraSegmentsInputBackward`
 * are the adapter stages between them (`mixloraExpertsForward` … `mixloraInputBackward`: the same for one
 * adapter). `mixloraFfnForward` / `mixloraFfnBackward` compose everything, base included, for buffers that hold
 * exactly one adapter's tokens (row0 = 0).
 *
 * Buffers: batch-shaped (row row0 + i): x, y, g0, u0, mix, dy, dx, dmix, dg0, du0 (widths D or F).
 * Group-local (every segment of the call back to back, Σ N tokens): `MixloraSavedBuffers` (per layer, kept from
 * forward to backward) and `MixloraScratch` (reused).
 * Everything is deterministic: no atomics; each output is written by one invocation with a fixed loop order.
 * Parameter gradients accumulate (+=).
 * @module
 */
import { GpuValidationError } from "../errors.ts"
import type { GpuContext, Step } from "../gpu/context.ts"
import type { FfnProjection, MoeSpec } from "../model/adapter.ts"
import { moeSlots } from "../reference/mixlora.ts"
import { grid1d, preludedPipeline } from "./lora.ts"
import { type DeviceMatrix, linear, linearBackwardInput } from "./matmul.ts"
import { moeListTile } from "./moe_codegen.ts"
import { checkSaved, type MixloraSegment, needRows, prepare, run, runGenerated } from "./moe_segments.ts"

export { mixloraKernelKey, type MixloraSegment, MOE_MAX_SEGMENTS } from "./moe_segments.ts"

/** Where one MixLoRA layer's router and experts sit in the adapter's flat buffers (element offsets). */
export interface MixloraParamRefs {
  readonly params: GPUBuffer
  /** same layout as params; needed by backward */
  readonly grads?: GPUBuffer
  /** G (E, D) */
  readonly router: number
  /** expert 0's A and B per targeted FFN projection; expert e at + e·R·in / + e·out·R */
  readonly experts: Partial<Record<FfnProjection, { readonly a: number; readonly b: number }>>
}

export interface MixloraDims {
  /** first token of the adapter in the batch-shaped buffers (a multiple of T) */
  readonly row0: number
  /** tokens (a multiple of T) */
  readonly N: number
  /** tokens per sequence (capacity groups, padding, the masks' keys), at most 65536 */
  readonly T: number
  readonly padSide: "left" | "right"
  readonly D: number
  readonly F: number
  readonly R: number
  readonly moe: Pick<MoeSpec, "routing" | "numExperts" | "topK" | "topP" | "expertCapacity" | "actFn">
  /** loraScale(spec) */
  readonly scale: number
  /**
   * row of `stats` this layer writes (its index among the adapter's MoE layers; in a segmented call whose stats
   * buffer holds several adapters, e.g. k·L + layer for the k-th)
   */
  readonly layer: number
  /** router-input jitter while training (seed per step, layer, adapter) */
  readonly jitter?: { readonly j: number; readonly seed: number } | null
  /** expert LoRA dropout while training (same seed may serve jitter: streams differ) */
  readonly dropout?: { readonly p: number; readonly seed: number } | null
}

/**
 * Per-layer activations kept from forward to backward (group-local: N = Σ N of the call's segments, and counts
 * holds E entries per segment; category "activations").
 */
export interface MixloraSavedBuffers {
  /** (N, E) f32 */
  readonly P: GPUBuffer
  /** (N, S) f32 slot weights */
  readonly w: GPUBuffer
  /** (N, S) i32 slot experts, −1 none */
  readonly expertOf: GPUBuffer
  /** (N, E) u32 selection codes */
  readonly sel: GPUBuffer
  /** (E, N) u32 pair indices i·S + j per expert (per segment: (E, N_seg) from loc0·E) */
  readonly list: GPUBuffer
  /** (segments, E) u32 */
  readonly counts: GPUBuffer
  /** (3, N, S, R) f32: t1, t3, t2 */
  readonly t: GPUBuffer
  /** (N, F) base products, only for the composed launchers */
  readonly g0?: GPUBuffer
  readonly u0?: GPUBuffer
}

/**
 * Group-local scratch reused by every layer (and by forward and backward). The backward writes hs and dts rows
 * and dw entries of routed pairs only (empty slots are never read).
 */
export interface MixloraScratch {
  /** (3, N, S, F): h, dg, du */
  readonly hs: GPUBuffer
  /** (3, N, S, R): w u2, dt1, dt3 */
  readonly dts: GPUBuffer
  /** (N, S) */
  readonly dw: GPUBuffer
  /** (N, E) */
  readonly dlogits: GPUBuffer
  /** (N, F) batch-shaped base scratch, only for the composed launchers */
  readonly mix?: GPUBuffer
  readonly dmix?: GPUBuffer
  readonly dg0?: GPUBuffer
  readonly du0?: GPUBuffer
}

type SizeDims = Pick<MixloraDims, "N" | "F" | "R" | "moe">

function storage(ctx: GpuContext, label: string, floats: number): GPUBuffer {
  return ctx.buffer({
    label,
    size: Math.max(1, floats) * 4,
    usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
    category: "activations",
  })
}

/**
 * Allocates one layer's saved buffers for N tokens of `segments` segments (default 1); `base` adds g0 and u0
 * (N, F) for the composed launchers.
 */
export function createMixloraSaved(
  ctx: GpuContext,
  d: SizeDims,
  opts: { base?: boolean; segments?: number } = {},
): MixloraSavedBuffers {
  const E = d.moe.numExperts, S = moeSlots(d.moe), N = d.N
  return {
    P: storage(ctx, "moe P", N * E),
    w: storage(ctx, "moe w", N * S),
    expertOf: storage(ctx, "moe expertOf", N * S),
    sel: storage(ctx, "moe sel", N * E),
    list: storage(ctx, "moe list", E * N),
    counts: storage(ctx, "moe counts", (opts.segments ?? 1) * E),
    t: storage(ctx, "moe t", 3 * N * S * d.R),
    ...(opts.base ? { g0: storage(ctx, "moe g0", N * d.F), u0: storage(ctx, "moe u0", N * d.F) } : {}),
  }
}

/** Allocates the scratch; `base` adds mix, dmix, dg0, du0 (N, F) for the composed launchers. */
export function createMixloraScratch(ctx: GpuContext, d: SizeDims, opts: { base?: boolean } = {}): MixloraScratch {
  const S = moeSlots(d.moe), N = d.N
  const base = opts.base
    ? Object.fromEntries(["mix", "dmix", "dg0", "du0"].map((k) => [k, storage(ctx, `moe ${k}`, N * d.F)]))
    : {}
  return {
    hs: storage(ctx, "moe hs", 3 * N * S * d.F),
    dts: storage(ctx, "moe dts", 3 * N * S * d.R),
    dw: storage(ctx, "moe dw", N * S),
    dlogits: storage(ctx, "moe dlogits", N * d.moe.numExperts),
    ...base,
  }
}

/** Frees every buffer of a saved or scratch struct. */
export function releaseMoeBuffers(ctx: GpuContext, bufs: MixloraSavedBuffers | MixloraScratch): void {
  for (const b of Object.values(bufs)) if (b) ctx.release(b as GPUBuffer)
  ctx.forgetBindGroups()
}

// ---- forward ---------------------------------------------------------------------------------------

/**
 * Adapter stages before the frozen down matmul for every segment of the call (one dispatch per stage per
 * MOE_MAX_SEGMENTS segments): route, lists (+ each segment's stats row), fwd_experts (t1, t3, h, t2), mix (mix
 * rows written). Inputs x, g0 = x W1ᵀ, u0 = x W3ᵀ are batch-shaped; `lengths` (rows) u32 real tokens per batch
 * row; `stats` (rows, 2E + 1) f32; saved and scratch hold Σ N tokens (group-local).
 */
export function mixloraSegmentsForward(
  step: Step,
  args: {
    x: GPUBuffer
    g0: GPUBuffer
    u0: GPUBuffer
    mix: GPUBuffer
    lengths: GPUBuffer
    stats: GPUBuffer
    saved: MixloraSavedBuffers
    scratch: MixloraScratch
  },
  segs: readonly MixloraSegment[],
): void {
  const c = prepare(step, segs)
  const { x, g0, u0, mix, lengths, stats, saved: s, scratch } = args
  const { D, F } = segs[0].dims
  const { S, E, R, ctx } = c
  needRows(c, segs, { x }, D)
  needRows(c, segs, { g0, u0, mix }, F)
  needRows(c, segs, { lengths }, 1, { perSequence: true })
  c.need("stats", stats, (Math.max(...segs.map((g) => g.dims.layer)) + 1) * (2 * E + 1))
  checkSaved(c, s)
  c.need("hs", scratch.hs, c.Nt * S * F)
  run(step, c, "moe_route.wgsl", [s.P, s.w, s.expertOf, s.sel, x, c.params, lengths], (n) => grid1d(ctx, n))
  run(step, c, "moe_lists.wgsl", [s.list, s.counts, s.sel, s.expertOf, s.w, stats, s.P, lengths], () => [E, 1])
  const hs = scratch.hs
  const lists = { list: s.list, counts: s.counts }
  runGenerated(step, c, "fwd_experts", { ...lists, t: s.t, hs, expert_of: s.expertOf, x, g0, u0, lengths }, {
    invocations: (n) => Math.ceil(n / moeListTile(R)),
    z: E + 1,
  })
  runGenerated(step, c, "mix", { mix, hs, wt: s.w, expert_of: s.expertOf }, { invocations: (n) => n * (F / c.w) })
}

/** One adapter's `mixloraSegmentsForward` (its saved and scratch hold N tokens). */
export function mixloraExpertsForward(
  step: Step,
  args: Parameters<typeof mixloraSegmentsForward>[1] & { params: MixloraParamRefs },
  dims: MixloraDims,
): void {
  mixloraSegmentsForward(step, args, [{ params: args.params, dims }])
}

/** y[rows] += Σ_j w s B2_e t2 after the frozen y = mix W2ᵀ, every segment (no-op without down_proj LoRA). */
export function mixloraSegmentsDown(
  step: Step,
  args: { y: GPUBuffer; saved: MixloraSavedBuffers },
  segs: readonly MixloraSegment[],
): void {
  const c = prepare(step, segs)
  needRows(c, segs, { y: args.y }, segs[0].dims.D)
  checkSaved(c, args.saved)
  if (!c.targets.has("down_proj")) return
  const s = args.saved
  runGenerated(step, c, "expand_down", { y: args.y, t: s.t, wt: s.w, expert_of: s.expertOf }, {
    invocations: (n) => n,
  })
}

/** One adapter's `mixloraSegmentsDown`. */
export function mixloraDownForward(
  step: Step,
  args: { y: GPUBuffer; params: MixloraParamRefs; saved: MixloraSavedBuffers },
  dims: MixloraDims,
): void {
  mixloraSegmentsDown(step, args, [{ params: args.params, dims }])
}

/**
 * The whole MixLoRA FFN for buffers holding one adapter's N tokens (row0 = 0): y (N, D) = MoE(x), written.
 * Uses saved.g0 / saved.u0 and scratch.mix (allocate with `{ base: true }`).
 */
export function mixloraFfnForward(
  step: Step,
  args: {
    x: GPUBuffer
    y: GPUBuffer
    w1: DeviceMatrix
    w2: DeviceMatrix
    w3: DeviceMatrix
    lengths: GPUBuffer
    stats: GPUBuffer
    params: MixloraParamRefs
    saved: MixloraSavedBuffers
    scratch: MixloraScratch
  },
  dims: Omit<MixloraDims, "row0">,
): void {
  const d: MixloraDims = { ...dims, row0: 0 }
  const { g0, u0 } = args.saved, mix = args.scratch.mix
  if (!g0 || !u0 || !mix) {
    throw new GpuValidationError({ label: "mixloraFfnForward", reason: "saved/scratch allocated without base" })
  }
  linear(step, { x: args.x, w: args.w1, y: g0 }, { M: d.N })
  linear(step, { x: args.x, w: args.w3, y: u0 }, { M: d.N })
  mixloraExpertsForward(step, { ...args, g0, u0, mix }, d)
  linear(step, { x: mix, w: args.w2, y: args.y }, { M: d.N })
  mixloraDownForward(step, args, d)
}

// ---- backward --------------------------------------------------------------------------------------

/** Batch-shaped buffers of the MixLoRA backward stages (see `mixloraSegmentsBackward`). */
export interface MixloraBackwardIo {
  readonly dy: GPUBuffer
  readonly x: GPUBuffer
  readonly dmix: GPUBuffer
  readonly g0: GPUBuffer
  readonly u0: GPUBuffer
  readonly dg0: GPUBuffer
  readonly du0: GPUBuffer
  readonly lengths: GPUBuffer
}

/**
 * Adapter stages between the frozen dmix = dy W2 and dx = dg0 W1 + du0 W3 for every segment: bwd_experts (u2, h,
 * dg, du, dt1, dt3, dw), router (dlogits; aux gradient of segments with an `auxRow` of `aux` (rows, 1 + E) from
 * `moeAuxLossSegments`), bwd_grads (expert and router gradients +=, dg0 and du0 rows written). Every segment's
 * `params.grads` is required.
 */
export function mixloraSegmentsBackward(
  step: Step,
  args: MixloraBackwardIo & {
    aux?: GPUBuffer | null
    saved: MixloraSavedBuffers
    scratch: MixloraScratch
  },
  segs: readonly MixloraSegment[],
): void {
  const c = prepare(step, segs, { aux: !!args.aux })
  if (!c.grads) throw new GpuValidationError({ label: "mixlora backward", reason: "params.grads is required" })
  const { dy, x, dmix, g0, u0, dg0, du0, lengths, saved: s, scratch: sc } = args
  const { D, F } = segs[0].dims
  const { S, E, R, ctx, Nt } = c
  needRows(c, segs, { dy, x }, D)
  needRows(c, segs, { dmix, g0, u0, dg0, du0 }, F)
  needRows(c, segs, { lengths }, 1, { perSequence: true })
  if (args.aux) c.need("aux", args.aux, (Math.max(0, ...segs.map((g) => g.auxRow ?? 0)) + 1) * (1 + E))
  checkSaved(c, s)
  c.need("hs", sc.hs, 3 * Nt * S * F)
  c.need("dts", sc.dts, 3 * Nt * S * R)
  c.need("dw", sc.dw, Nt * S)
  c.need("dlogits", sc.dlogits, Nt * E)
  const pair = { t: s.t, wt: s.w, expert_of: s.expertOf, hs: sc.hs, dts: sc.dts }
  const lists = { list: s.list, counts: s.counts }
  runGenerated(step, c, "bwd_experts", { ...pair, ...lists, dw: sc.dw, dy, dmix, g0, u0, lengths }, {
    invocations: (n) => Math.ceil(n / moeListTile(R)),
    z: E,
  })
  const router = [sc.dlogits, s.P, sc.dw, s.w, s.expertOf, args.aux ?? s.P, lengths]
  run(step, c, "moe_bwd_router.wgsl", router, (n) => grid1d(ctx, n))
  const grads = { ...pair, ...lists, dg0, du0, x, dlogits: sc.dlogits, dy, lengths }
  runGenerated(step, c, "bwd_grads", grads, { dims: { D, F } })
}

/** One adapter's `mixloraSegmentsBackward`; `aux` (1 + E) from `moeAuxLoss` adds the load-balancing gradient. */
export function mixloraExpertsBackward(
  step: Step,
  args: Parameters<typeof mixloraSegmentsBackward>[1] & { params: MixloraParamRefs },
  dims: MixloraDims,
): void {
  mixloraSegmentsBackward(step, args, [{ params: args.params, dims, auxRow: args.aux ? 0 : null }])
}

/**
 * dx[rows] += every segment's input gradient (expert gate/up LoRA and router), after dx = dg0 W1 + du0 W3;
 * `lengths` (rows) u32 as in the forward (the masks' keys).
 */
export function mixloraSegmentsInputBackward(
  step: Step,
  args: { dx: GPUBuffer; lengths: GPUBuffer; saved: MixloraSavedBuffers; scratch: MixloraScratch },
  segs: readonly MixloraSegment[],
): void {
  const c = prepare(step, segs)
  needRows(c, segs, { dx: args.dx }, segs[0].dims.D)
  needRows(c, segs, { lengths: args.lengths }, 1, { perSequence: true })
  checkSaved(c, args.saved)
  c.need("dts", args.scratch.dts, 3 * c.Nt * c.S * c.R)
  c.need("dlogits", args.scratch.dlogits, c.Nt * c.E)
  const sc = args.scratch
  const { dx, lengths } = args
  runGenerated(step, c, "bwd_dx", { dx, dts: sc.dts, dlogits: sc.dlogits, expert_of: args.saved.expertOf, lengths }, {
    invocations: (n) => n,
  })
}

/** One adapter's `mixloraSegmentsInputBackward`. */
export function mixloraInputBackward(
  step: Step,
  args: {
    dx: GPUBuffer
    lengths: GPUBuffer
    params: MixloraParamRefs
    saved: MixloraSavedBuffers
    scratch: MixloraScratch
  },
  dims: MixloraDims,
): void {
  mixloraSegmentsInputBackward(step, args, [{ params: args.params, dims }])
}

/**
 * Backward of `mixloraFfnForward` (row0 = 0): gradients += into params.grads, dx (N, D) written (or added with
 * `accumulateDx`). `aux` (1 + E) from `moeAuxLoss` adds the load-balancing gradient; scratch needs `{ base: true }`.
 */
export function mixloraFfnBackward(
  step: Step,
  args: {
    dy: GPUBuffer
    x: GPUBuffer
    dx: GPUBuffer
    w1: DeviceMatrix
    w2: DeviceMatrix
    w3: DeviceMatrix
    lengths: GPUBuffer
    aux?: GPUBuffer | null
    params: MixloraParamRefs
    saved: MixloraSavedBuffers
    scratch: MixloraScratch
  },
  dims: Omit<MixloraDims, "row0"> & { readonly accumulateDx?: boolean },
): void {
  const d: MixloraDims = { ...dims, row0: 0 }
  const { g0, u0 } = args.saved
  const { dmix, dg0, du0 } = args.scratch
  if (!g0 || !u0 || !dmix || !dg0 || !du0) {
    throw new GpuValidationError({ label: "mixloraFfnBackward", reason: "saved/scratch allocated without base" })
  }
  linearBackwardInput(step, { dy: args.dy, w: args.w2, dx: dmix }, { M: d.N })
  mixloraExpertsBackward(step, { ...args, dmix, g0, u0, dg0, du0 }, d)
  linearBackwardInput(step, { dy: dg0, w: args.w1, dx: args.dx }, { M: d.N, accumulate: dims.accumulateDx })
  linearBackwardInput(step, { dy: du0, w: args.w3, dx: args.dx }, { M: d.N, accumulate: true })
  mixloraInputBackward(step, args, d)
}

// ---- aux loss --------------------------------------------------------------------------------------

/** One adapter of `moeAuxLossSegments`: its L stats rows from `statsRow`, its output row `outRow` (default 0). */
export interface MoeAuxSegment {
  readonly layers: number
  readonly E: number
  readonly coef: number
  /** ∂loss/∂aux (e.g. 1 / accumulation steps) */
  readonly gradScale?: number
  readonly statsRow?: number
  readonly outRow?: number
}

const AUX_SEG = 16
const AUX_WORDS = 8

/**
 * out row (1 + E) = [aux, ∂aux/∂P_e · gradScale] over each segment's `layers` rows of stats (·, 2E + 1) written by
 * the forward's moe_lists (spec §3; see src/reference/mixlora.ts moeAuxLoss), one dispatch per 16 segments. Run
 * after every MoE layer's forward and before the backward.
 */
export function moeAuxLossSegments(
  step: Step,
  args: { stats: GPUBuffer; out: GPUBuffer },
  segs: readonly MoeAuxSegment[],
): void {
  const guard = (ok: boolean, reason: string) => {
    if (!ok) throw new GpuValidationError({ label: "moe_aux", reason })
  }
  guard(segs.length >= 1, "no segments")
  guard(args.out !== args.stats, "out aliases stats")
  for (const { layers, E, statsRow = 0, outRow = 0 } of segs) {
    guard(Number.isInteger(layers) && layers >= 1 && Number.isInteger(E) && E >= 1, `layers=${layers}, E=${E}`)
    guard(Number.isInteger(statsRow) && statsRow >= 0 && Number.isInteger(outRow) && outRow >= 0, "rows")
    guard(args.stats.size >= (statsRow + layers) * (2 * E + 1) * 4, `stats holds ${args.stats.size} bytes`)
    guard(args.out.size >= (outRow + 1) * (1 + E) * 4, `out holds ${args.out.size} bytes`)
  }
  const ctx = step.ctx
  const pipeline = preludedPipeline(ctx, [], "moe_aux.wgsl", {})
  for (let c0 = 0; c0 < segs.length; c0 += AUX_SEG) {
    const part = segs.slice(c0, c0 + AUX_SEG)
    const table = new Uint32Array(AUX_SEG * AUX_WORDS)
    const f = new Float32Array(table.buffer)
    part.forEach((s, j) => {
      const o = j * AUX_WORDS
      table.set([s.layers, s.E, (s.statsRow ?? 0) * (2 * s.E + 1), (s.outRow ?? 0) * (1 + s.E)], o)
      f.set([s.coef, s.gradScale ?? 1], o + 4)
    })
    step.dispatch(pipeline, [ctx.uniform(table), args.out, args.stats], [part.length])
  }
}

/** One adapter's `moeAuxLossSegments`: out (1 + E) over `layers` rows of stats (L, 2E + 1). */
export function moeAuxLoss(
  step: Step,
  args: { stats: GPUBuffer; out: GPUBuffer },
  dims: { layers: number; E: number; coef: number; gradScale?: number },
): void {
  moeAuxLossSegments(step, args, [dims])
}
