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
import type { Binding, GpuContext, Step } from "../gpu/context.ts"
import { FFN_PROJECTIONS, type FfnProjection, type MoeSpec } from "../model/adapter.ts"
import { jitterParams, MAX_MASK_T } from "../reference/lora.ts"
import { moeSlots } from "../reference/mixlora.ts"
import { ACT, activationOf } from "../reference/swiglu.ts"
import { dropoutWords, grid1d, preludedPipeline, spanBinding } from "./lora.ts"
import { type DeviceMatrix, linear, linearBackwardInput } from "./matmul.ts"
import {
  generateMoeKernel,
  gradSegments,
  type MoeKernel,
  type MoeKernelCode,
  moeKernelName,
  type MoeKernelSpec,
  moeListTile,
} from "./moe_codegen.ts"
import { SHORT } from "./moe_tile_codegen.ts"

const WG = 64
const PRELUDE = ["lora_common.wgsl", "activation.wgsl", "moe_common.wgsl"]
/** Workgroup sizes of the generated kernels: one 8-lane SIMD group for the per-pair / per-token / per-tile ones
 * (few hundred invocations; lavapipe's threads take whole workgroups), 64 for the per-element mix. */
const GEN_WG: Record<MoeKernel, number> = {
  fwd_experts: 8,
  mix: 64,
  expand_down: 8,
  bwd_experts: 8,
  bwd_grads: 8,
  bwd_dx: 8,
}
const ROUTING = { mixlora: 0, switch: 1, dynamic: 2 } as const

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
  /** (3, N, S, R): u2, dt1, dt3 */
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

// ---- segments: validation, segment table, parameter binding -----------------------------------------

/** Segments per dispatch (MOE_MAX_SEG of shaders/moe_common.wgsl); longer lists take several dispatches. */
export const MOE_MAX_SEGMENTS = 16
/** u32 words of one Dims entry of the segment table (struct Dims of shaders/moe_common.wgsl) */
const DIMS_WORDS = 36

/**
 * One MixLoRA adapter of a segmented call: its parameter (and gradient) refs, its dims (rows [row0, row0 + N) of
 * the batch, routing, scale, masks; `layer` is the row of the call's `stats` it writes) and, in the backward, the
 * row of the call's aux buffer (1 + E floats per row, from `moeAuxLossSegments`) whose gradient it adds (absent
 * or null: no aux term). Its tokens take rows loc0 .. loc0 + N − 1 of the call's group-local buffers (saved,
 * scratch), loc0 = Σ N of the segments before it, and counts entries k·E .. k·E + E − 1 (k = its index).
 */
export interface MixloraSegment {
  readonly params: MixloraParamRefs
  readonly dims: MixloraDims
  readonly auxRow?: number | null
}

/**
 * What decides the kernel variant of a segment: segments of one call must agree on it (and on D, F, T, pad side,
 * and share the parameter and gradient buffers). E, slots S, R, activation, targeted projections and the vector
 * width (4 when D, F, R and every tensor offset are multiples of 4 floats, else 1).
 */
export function mixloraKernelKey(refs: MixloraParamRefs, d: Pick<MixloraDims, "D" | "F" | "R" | "moe">): string {
  const targets = FFN_PROJECTIONS.filter((p) => refs.experts[p] !== undefined)
  const offsets = [refs.router, ...targets.flatMap((p) => [refs.experts[p]!.a, refs.experts[p]!.b])]
  const w = [d.D, d.F, d.R, ...offsets].every((v) => v % 4 === 0) ? 4 : 1
  const act = activationOf(d.moe.actFn)
  return `E${d.moe.numExperts} S${moeSlots(d.moe)} R${d.R} ${act} ${targets.map((t) => SHORT[t]).join("")} w${w}`
}

/** The segment tables of one call (≤ MOE_MAX_SEGMENTS segments each) and what its kernels share. */
interface Call {
  readonly ctx: GpuContext
  readonly S: number
  readonly E: number
  readonly R: number
  readonly targets: ReadonlySet<FfnProjection>
  readonly w: 1 | 4
  readonly params: Binding
  readonly grads: Binding | null
  readonly constants: Readonly<Record<string, number>>
  /** Σ N: rows of the group-local buffers */
  readonly Nt: number
  readonly segments: number
  /** one per dispatch: the uniform segment table, its segment count and largest N */
  readonly chunks: readonly { readonly uniform: GPUBuffer; readonly count: number; readonly maxN: number }[]
  readonly need: (name: string, buf: GPUBuffer, floats: number) => void
}

function prepare(step: Step, segs: readonly MixloraSegment[], opts: { aux?: boolean } = {}): Call {
  const label = "mixlora"
  const guard = (ok: boolean, reason: string) => {
    if (!ok) throw new GpuValidationError({ label, reason })
  }
  guard(segs.length >= 1, "no segments")
  const d0 = segs[0].dims, r0 = segs[0].params
  const key = mixloraKernelKey(r0, d0)
  const byRow = [...segs].sort((a, b) => a.dims.row0 - b.dims.row0)
  byRow.forEach((s, k) => {
    const next = byRow[k + 1]
    guard(!next || s.dims.row0 + s.dims.N <= next.dims.row0, `segments overlap at row ${next?.dims.row0}`)
  })
  for (const { dims } of segs) checkSegment(dims, guard)
  for (const { dims: d, params: refs } of segs) {
    for (const k of ["D", "F", "T", "padSide"] as const) guard(d[k] === d0[k], `segments differ in ${k}`)
    guard(mixloraKernelKey(refs, d) === key, `segment kernel ${mixloraKernelKey(refs, d)} ≠ ${key}`)
    guard(refs.params === r0.params && refs.grads === r0.grads, "segments must share parameter/gradient buffers")
  }
  const { D, F, R, T, moe } = d0
  const E = moe.numExperts, S = moeSlots(moe)
  const Nt = segs.reduce((n, s) => n + s.dims.N, 0)
  guard(Nt * S * F * 3 < 2 ** 32 && Nt * E < 2 ** 32, "group-local sizes over u32 indexing")
  const ctx = step.ctx
  const targets = FFN_PROJECTIONS.filter((p) => r0.experts[p] !== undefined)
  const inOut = (p: FfnProjection) => p === "down_proj" ? [F, D] : [D, F]
  const ranges = segs.flatMap(({ params: refs }) => [
    { offset: refs.router, length: E * D },
    ...targets.flatMap((p) => {
      const [i, o] = inOut(p)
      return [{ offset: refs.experts[p]!.a, length: E * R * i }, { offset: refs.experts[p]!.b, length: E * o * R }]
    }),
  ])
  const per = 1 + 2 * targets.length
  const pb = spanBinding(ctx, `${label} params`, r0.params, ranges)
  const gb = r0.grads ? spanBinding(ctx, `${label} grads`, r0.grads, ranges).binding : null
  const targetBits = (targets.includes("gate_proj") ? 1 : 0) | (targets.includes("up_proj") ? 2 : 0) |
    (targets.includes("down_proj") ? 4 : 0)
  const words = (s: MixloraSegment, k: number, loc0: number): number[] => {
    const d = s.dims, m = d.moe
    const rel = pb.rel.slice(k * per, (k + 1) * per)
    const at = (p: FfnProjection, ab: 0 | 1) => targets.includes(p) ? rel[1 + 2 * targets.indexOf(p) + ab] : 0
    const drop = dropoutWords(d.dropout ? { ...d.dropout, stream: 0 } : null)
    const jit = d.jitter && d.jitter.j > 0 ? jitterParams(d.jitter.j) : null
    const aux = opts.aux && s.auxRow != null
    // word order = struct Dims of shaders/moe_common.wgsl: 31 u32 fields, then 5 f32 ones (as bits)
    const u = [
      ...[d.N, D, F, R],
      ...[E, S, T, d.row0],
      ...[d.padSide === "left" ? 1 : 0, ROUTING[m.routing], m.routing === "mixlora" ? m.topK : 1],
      m.routing === "switch" ? m.expertCapacity : 0xffffffff,
      ...[d.layer * (2 * E + 1), jit ? 1 : 0, jit ? d.jitter!.seed >>> 0 : 0, drop.words[0]],
      ...[drop.words[1], drop.words[3], targetBits, rel[0]],
      ...[at("gate_proj", 0), at("gate_proj", 1), at("up_proj", 0), at("up_proj", 1)],
      ...[at("down_proj", 0), at("down_proj", 1), aux ? 1 : 0, loc0],
      ...[Nt, k * E, aux ? s.auxRow! * (1 + E) : 0],
    ]
    const f = new Float32Array([m.routing === "dynamic" ? m.topP : 0, d.scale, drop.keep, jit?.lo ?? 1, jit?.span ?? 0])
    return [...u, ...new Uint32Array(f.buffer)]
  }
  const chunks = []
  let loc0 = 0
  for (let c0 = 0; c0 < segs.length; c0 += MOE_MAX_SEGMENTS) {
    const part = segs.slice(c0, c0 + MOE_MAX_SEGMENTS)
    const table = new Uint32Array(MOE_MAX_SEGMENTS * DIMS_WORDS)
    part.forEach((s, j) => {
      table.set(words(s, c0 + j, loc0), j * DIMS_WORDS)
      loc0 += s.dims.N
    })
    chunks.push({ uniform: ctx.uniform(table), count: part.length, maxN: Math.max(...part.map((s) => s.dims.N)) })
  }
  const need = (name: string, buf: GPUBuffer, floats: number) =>
    guard(buf.size >= floats * 4, `${name} holds ${buf.size} bytes, needs ${floats * 4}`)
  return {
    ctx,
    S,
    E,
    R,
    targets: new Set(targets),
    w: key.endsWith("w4") ? 4 : 1,
    params: pb.binding,
    grads: gb,
    constants: { WG, ACT: ACT[activationOf(moe.actFn)] },
    Nt,
    segments: segs.length,
    chunks,
    need,
  }
}

function checkSegment(d: MixloraDims, guard: (ok: boolean, reason: string) => void): void {
  const { row0, N, T, D, F, R, moe } = d
  for (const [k, v] of Object.entries({ N, T, D, F, R, E: moe.numExperts })) {
    guard(Number.isInteger(v) && v >= 1, `${k}=${v} must be an integer ≥ 1`)
  }
  guard(Number.isInteger(row0) && row0 >= 0 && row0 % T === 0, `row0=${row0} must be a multiple of T=${T}`)
  guard(N % T === 0, `N=${N} must be a multiple of T=${T} (whole sequences)`)
  guard(T <= MAX_MASK_T, `T=${T} over ${MAX_MASK_T}: the masks' keys hold a position in 16 bits`)
  const E = moe.numExperts
  guard(E <= 32, `E=${E} over the kernels' 32 experts`)
  guard(R <= 64, `R=${R} over the kernels' 64 ranks`)
  guard(moe.routing in ROUTING, `unknown routing ${moe.routing}`)
  guard(
    moe.routing !== "mixlora" || (Number.isInteger(moe.topK) && moe.topK >= 1 && moe.topK <= E),
    `top_k=${moe.topK}`,
  )
  guard(moe.routing !== "switch" || (Number.isInteger(moe.expertCapacity) && moe.expertCapacity >= 0), "capacity")
  guard(Number.isInteger(d.layer) && d.layer >= 0, `layer=${d.layer}`)
  guard((row0 + N) * Math.max(D, F) < 2 ** 32, "sizes over u32 indexing")
}

/** Rows of every segment fit in the batch-shaped `bufs` of `width` columns (`perSequence`: one value per T rows). */
function needRows(
  c: Call,
  segs: readonly MixloraSegment[],
  bufs: Record<string, GPUBuffer>,
  width: number,
  opts: { perSequence?: boolean } = {},
): void {
  const rows = Math.max(...segs.map((s) => s.dims.row0 + s.dims.N))
  for (const [k, b] of Object.entries(bufs)) c.need(k, b, opts.perSequence ? rows / segs[0].dims.T : rows * width)
}

function checkSaved(c: Call, s: MixloraSavedBuffers): void {
  const { S, E, R, Nt } = c
  c.need("P", s.P, Nt * E)
  c.need("w", s.w, Nt * S)
  c.need("expertOf", s.expertOf, Nt * S)
  c.need("sel", s.sel, Nt * E)
  c.need("list", s.list, E * Nt)
  c.need("counts", s.counts, c.segments * E)
  c.need("t", s.t, 3 * Nt * S * R)
}

/** One dispatch per chunk of a file kernel; `grid(maxN)` gives x, y; z = segment. */
function run(
  step: Step,
  c: Call,
  file: string,
  bindings: readonly Binding[],
  grid: (maxN: number) => [number, number],
): void {
  const pipeline = preludedPipeline(c.ctx, PRELUDE, file, c.constants)
  for (const ch of c.chunks) step.dispatch(pipeline, [ch.uniform, ...bindings], [...grid(ch.maxN), ch.count])
}

const generated = new WeakMap<GpuContext, Map<string, { pipeline: GPUComputePipeline; gen: MoeKernelCode }>>()

/**
 * One dispatch per chunk of a generated kernel (src/kernels/moe_codegen.ts) over `invocations(maxN)` (folded into
 * x, y) times `z` (per segment: E + 1 / E for the list kernels), or over the workgroups of its segments
 * (bwd_grads). `buffers` maps binding names to resources.
 */
function runGenerated(
  step: Step,
  c: Call,
  kernel: MoeKernel,
  buffers: Readonly<Record<string, Binding>>,
  size: { invocations: (maxN: number) => number; z?: number } | { dims: { D: number; F: number } },
): void {
  const spec: MoeKernelSpec = {
    kernel,
    R: c.R,
    E: c.E,
    w: c.w,
    targets: FFN_PROJECTIONS.filter((t) => c.targets.has(t)),
  }
  const name = moeKernelName(spec)
  let cache = generated.get(c.ctx)
  if (!cache) generated.set(c.ctx, cache = new Map())
  const constants = { ...c.constants, WG: GEN_WG[kernel] }
  const key = `${name}|${c.constants.ACT}`
  let hit = cache.get(key)
  if (!hit) {
    const gen = generateMoeKernel(spec)
    const pipeline = c.ctx.pipeline({ shader: name, preludes: PRELUDE, code: gen.code, constants })
    cache.set(key, hit = { pipeline, gen })
  }
  const all: Record<string, Binding> = { ...buffers, p: c.params, ...(c.grads ? { g: c.grads } : {}) }
  const bindings = hit.gen.bindings.map((n) => {
    const b = all[n]
    if (!b) throw new GpuValidationError({ label: name, reason: `no buffer for binding ${n}` })
    return b
  })
  const wg = GEN_WG[kernel]
  for (const ch of c.chunks) {
    const groups: [number, number, number] = "invocations" in size
      ? [...grid1d(c.ctx, size.invocations(ch.maxN), wg), (size.z ?? 1) * ch.count]
      : [
        ...grid1d(c.ctx, gradSegments(spec).reduce((a, s) => a + s.count({ ...size.dims, N: ch.maxN, WG: wg }), 0), 1),
        ch.count,
      ]
    step.dispatch(hit.pipeline, [ch.uniform, ...bindings], groups)
  }
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
