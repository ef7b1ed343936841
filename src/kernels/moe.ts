/**
 * Launchers for the MixLoRA FFN kernels, forward and backward, for one adapter's tokens [row0, row0 + N) of a
 * packed batch (whole sequences: row0 and N are multiples of T). The math and its stage names are those of
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
 * `mixloraExpertsForward` / `mixloraDownForward` / `mixloraExpertsBackward` / `mixloraInputBackward` are the
 * adapter stages between them. `mixloraFfnForward` / `mixloraFfnBackward` compose everything, base included,
 * for buffers that hold exactly one adapter's tokens (row0 = 0).
 *
 * Buffers: batch-shaped (row row0 + i): x, y, g0, u0, mix, dy, dx, dmix, dg0, du0 (widths D or F).
 * Adapter-local: `MixloraSavedBuffers` (per layer, kept from forward to backward) and `MixloraScratch` (reused).
 * Everything is deterministic: no atomics; each output is written by one invocation with a fixed loop order.
 * Parameter gradients accumulate (+=).
 * @module
 */
import { GpuValidationError } from "../errors.ts"
import type { Binding, GpuContext, Step } from "../gpu/context.ts"
import { FFN_PROJECTIONS, type FfnProjection, type MoeSpec } from "../model/adapter.ts"
import { jitterParams } from "../reference/lora.ts"
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
  /** tokens per sequence (capacity groups, padding) */
  readonly T: number
  readonly padSide: "left" | "right"
  readonly D: number
  readonly F: number
  readonly R: number
  readonly moe: Pick<MoeSpec, "routing" | "numExperts" | "topK" | "topP" | "expertCapacity" | "actFn">
  /** loraScale(spec) */
  readonly scale: number
  /** row of `stats` this layer writes (its index among the adapter's MoE layers) */
  readonly layer: number
  /** router-input jitter while training (seed per step, layer, adapter) */
  readonly jitter?: { readonly j: number; readonly seed: number } | null
  /** expert LoRA dropout while training (same seed may serve jitter: streams differ) */
  readonly dropout?: { readonly p: number; readonly seed: number } | null
}

/** Per-layer activations kept from forward to backward (adapter-local, category "activations"). */
export interface MixloraSavedBuffers {
  /** (N, E) f32 */
  readonly P: GPUBuffer
  /** (N, S) f32 slot weights */
  readonly w: GPUBuffer
  /** (N, S) i32 slot experts, −1 none */
  readonly expertOf: GPUBuffer
  /** (N, E) u32 selection codes */
  readonly sel: GPUBuffer
  /** (E, N) u32 pair indices i·S + j per expert */
  readonly list: GPUBuffer
  /** (E) u32 */
  readonly counts: GPUBuffer
  /** (3, N, S, R) f32: t1, t3, t2 */
  readonly t: GPUBuffer
  /** (N, F) base products, only for the composed launchers */
  readonly g0?: GPUBuffer
  readonly u0?: GPUBuffer
}

/**
 * Adapter-local scratch reused by every layer (and by forward and backward). The backward writes hs and dts rows
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

/** Allocates one layer's saved buffers; `base` adds g0 and u0 (N, F) for the composed launchers. */
export function createMixloraSaved(ctx: GpuContext, d: SizeDims, opts: { base?: boolean } = {}): MixloraSavedBuffers {
  const E = d.moe.numExperts, S = moeSlots(d.moe), N = d.N
  return {
    P: storage(ctx, "moe P", N * E),
    w: storage(ctx, "moe w", N * S),
    expertOf: storage(ctx, "moe expertOf", N * S),
    sel: storage(ctx, "moe sel", N * E),
    list: storage(ctx, "moe list", E * N),
    counts: storage(ctx, "moe counts", E),
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

// ---- validation, uniform, parameter binding -------------------------------------------------------

interface Prepared {
  readonly ctx: GpuContext
  readonly S: number
  readonly E: number
  readonly R: number
  readonly targets: ReadonlySet<FfnProjection>
  /** 4 when D, F, R and every tensor offset are multiples of 4 floats (vec4 kernels), else 1 */
  readonly w: 1 | 4
  readonly uniform: GPUBuffer
  readonly params: Binding
  readonly grads: Binding | null
  readonly constants: Readonly<Record<string, number>>
  readonly need: (name: string, buf: GPUBuffer, floats: number) => void
}

function prepare(step: Step, refs: MixloraParamRefs, d: MixloraDims, opts: { aux?: boolean } = {}): Prepared {
  const label = "mixlora"
  const guard = (ok: boolean, reason: string) => {
    if (!ok) throw new GpuValidationError({ label, reason })
  }
  const { row0, N, T, D, F, R, moe } = d
  for (const [k, v] of Object.entries({ N, T, D, F, R, E: moe.numExperts })) {
    guard(Number.isInteger(v) && v >= 1, `${k}=${v} must be an integer ≥ 1`)
  }
  guard(Number.isInteger(row0) && row0 >= 0 && row0 % T === 0, `row0=${row0} must be a multiple of T=${T}`)
  guard(N % T === 0, `N=${N} must be a multiple of T=${T} (whole sequences)`)
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
  guard((row0 + N) * Math.max(D, F) < 2 ** 32 && N * moeSlots(moe) * F * 3 < 2 ** 32, "sizes over u32 indexing")
  const S = moeSlots(moe)
  const ctx = step.ctx
  const targets = new Set(FFN_PROJECTIONS.filter((p) => refs.experts[p] !== undefined))
  const inOut = (p: FfnProjection) => p === "down_proj" ? [F, D] : [D, F]
  const ranges = [{ offset: refs.router, length: E * D }]
  for (const p of targets) {
    const [i, o] = inOut(p)
    ranges.push({ offset: refs.experts[p]!.a, length: E * R * i }, { offset: refs.experts[p]!.b, length: E * o * R })
  }
  const pb = spanBinding(ctx, `${label} params`, refs.params, ranges)
  const gb = refs.grads ? spanBinding(ctx, `${label} grads`, refs.grads, ranges).binding : null
  const rel = (p: FfnProjection, k: "a" | "b") => {
    const at = [...targets].indexOf(p)
    return at < 0 ? 0 : pb.rel[1 + 2 * at + (k === "a" ? 0 : 1)]
  }
  const drop = dropoutWords(d.dropout ? { ...d.dropout, stream: 0 } : null)
  const jit = d.jitter && d.jitter.j > 0 ? jitterParams(d.jitter.j) : null
  const targetBits = (targets.has("gate_proj") ? 1 : 0) | (targets.has("up_proj") ? 2 : 0) |
    (targets.has("down_proj") ? 4 : 0)
  const cap = moe.routing === "switch" ? moe.expertCapacity : 0xffffffff
  // word order = struct Dims of shaders/moe_common.wgsl (u32 fields, then the f32 ones)
  const uniform = ctx.uniform([
    N,
    D,
    F,
    R,
    E,
    S,
    T,
    row0,
    d.padSide === "left" ? 1 : 0,
    ROUTING[moe.routing],
    moe.routing === "mixlora" ? moe.topK : 1,
    cap,
    d.layer * (2 * E + 1),
    jit ? 1 : 0,
    jit ? d.jitter!.seed >>> 0 : 0,
    drop.words[0],
    drop.words[1],
    drop.words[3],
    targetBits,
    pb.rel[0],
    rel("gate_proj", "a"),
    rel("gate_proj", "b"),
    rel("up_proj", "a"),
    rel("up_proj", "b"),
    rel("down_proj", "a"),
    rel("down_proj", "b"),
    opts.aux ? 1 : 0,
    0,
  ], [moe.routing === "dynamic" ? moe.topP : 0, d.scale, drop.keep, jit?.lo ?? 1, jit?.span ?? 0])
  const need = (name: string, buf: GPUBuffer, floats: number) =>
    guard(buf.size >= floats * 4, `${name} holds ${buf.size} bytes, needs ${floats * 4}`)
  const aligned = [D, F, R, ...pb.rel].every((v) => v % 4 === 0)
  return {
    ctx,
    S,
    E,
    R,
    targets,
    w: aligned ? 4 : 1,
    uniform,
    params: pb.binding,
    grads: gb,
    constants: { WG, ACT: ACT[activationOf(moe.actFn)] },
    need,
  }
}

function run(step: Step, p: Prepared, file: string, bindings: readonly Binding[], groups: [number, number]): void {
  step.dispatch(preludedPipeline(p.ctx, PRELUDE, file, p.constants), [p.uniform, ...bindings], groups)
}

const generated = new WeakMap<GpuContext, Map<string, { pipeline: GPUComputePipeline; gen: MoeKernelCode }>>()

/**
 * One dispatch of a generated kernel (src/kernels/moe_codegen.ts) over `invocations` (folded into x, y) times
 * `z` (the expert of the list kernels), or over the workgroups of its segments (bwd_grads). `buffers` maps
 * binding names to resources.
 */
function runGenerated(
  step: Step,
  p: Prepared,
  kernel: MoeKernel,
  buffers: Readonly<Record<string, Binding>>,
  size: { invocations: number; z?: number } | { dims: { N: number; D: number; F: number } },
): void {
  const spec: MoeKernelSpec = {
    kernel,
    R: p.R,
    E: p.E,
    w: p.w,
    targets: FFN_PROJECTIONS.filter((t) => p.targets.has(t)),
  }
  const name = moeKernelName(spec)
  let cache = generated.get(p.ctx)
  if (!cache) generated.set(p.ctx, cache = new Map())
  const constants = { ...p.constants, WG: GEN_WG[kernel] }
  const key = `${name}|${p.constants.ACT}`
  let hit = cache.get(key)
  if (!hit) {
    const gen = generateMoeKernel(spec)
    const pipeline = p.ctx.pipeline({ shader: name, preludes: PRELUDE, code: gen.code, constants })
    cache.set(key, hit = { pipeline, gen })
  }
  const all: Record<string, Binding> = { ...buffers, p: p.params, ...(p.grads ? { g: p.grads } : {}) }
  const bindings = hit.gen.bindings.map((n) => {
    const b = all[n]
    if (!b) throw new GpuValidationError({ label: name, reason: `no buffer for binding ${n}` })
    return b
  })
  const wg = GEN_WG[kernel]
  const groups: [number, number, number] = "invocations" in size
    ? [...grid1d(p.ctx, size.invocations, wg), size.z ?? 1]
    : [...grid1d(p.ctx, gradSegments(spec).reduce((a, s) => a + s.count({ ...size.dims, WG: wg }), 0), 1), 1]
  step.dispatch(hit.pipeline, [p.uniform, ...bindings], groups)
}

// ---- forward ---------------------------------------------------------------------------------------

/**
 * Adapter stages before the frozen down matmul: route, lists (+ this layer's stats row), fwd_experts (t1, t3,
 * h, t2), mix (mix rows written). Inputs x, g0 = x W1ᵀ, u0 = x W3ᵀ are batch-shaped; `lengths` (rows) u32
 * real tokens per batch row; `stats` (L, 2E + 1) f32.
 */
export function mixloraExpertsForward(
  step: Step,
  args: {
    x: GPUBuffer
    g0: GPUBuffer
    u0: GPUBuffer
    mix: GPUBuffer
    lengths: GPUBuffer
    stats: GPUBuffer
    params: MixloraParamRefs
    saved: MixloraSavedBuffers
    scratch: MixloraScratch
  },
  dims: MixloraDims,
): void {
  const p = prepare(step, args.params, dims)
  const { x, g0, u0, mix, lengths, stats, saved: s, scratch } = args
  const { N, D, F, R, row0, T } = dims
  const { S, E, ctx } = p
  p.need("x", x, (row0 + N) * D)
  for (const [k, b] of Object.entries({ g0, u0, mix })) p.need(k, b, (row0 + N) * F)
  p.need("lengths", lengths, (row0 + N) / T)
  p.need("stats", stats, (dims.layer + 1) * (2 * E + 1))
  checkSaved(p, s, dims)
  p.need("hs", scratch.hs, N * S * F)
  run(step, p, "moe_route.wgsl", [s.P, s.w, s.expertOf, s.sel, x, p.params, lengths], grid1d(ctx, N))
  run(step, p, "moe_lists.wgsl", [s.list, s.counts, s.sel, s.expertOf, s.w, stats, s.P, lengths], [E, 1])
  const hs = scratch.hs
  const lists = { list: s.list, counts: s.counts }
  runGenerated(step, p, "fwd_experts", { ...lists, t: s.t, hs, expert_of: s.expertOf, x, g0, u0 }, {
    invocations: Math.ceil(N / moeListTile(R)),
    z: E + 1,
  })
  runGenerated(step, p, "mix", { mix, hs, wt: s.w, expert_of: s.expertOf }, { invocations: N * (F / p.w) })
}

function checkSaved(p: Prepared, s: MixloraSavedBuffers, d: MixloraDims): void {
  const { N, R } = d
  const { S, E } = p
  p.need("P", s.P, N * E)
  p.need("w", s.w, N * S)
  p.need("expertOf", s.expertOf, N * S)
  p.need("sel", s.sel, N * E)
  p.need("list", s.list, E * N)
  p.need("counts", s.counts, E)
  p.need("t", s.t, 3 * N * S * R)
}

/** y[row0 ..] += Σ_j w s B2_e t2 after the frozen y = mix W2ᵀ (no-op without down_proj LoRA). */
export function mixloraDownForward(
  step: Step,
  args: { y: GPUBuffer; params: MixloraParamRefs; saved: MixloraSavedBuffers },
  dims: MixloraDims,
): void {
  const p = prepare(step, args.params, dims)
  p.need("y", args.y, (dims.row0 + dims.N) * dims.D)
  checkSaved(p, args.saved, dims)
  if (!p.targets.has("down_proj")) return
  const s = args.saved
  runGenerated(step, p, "expand_down", { y: args.y, t: s.t, wt: s.w, expert_of: s.expertOf }, {
    invocations: dims.N,
  })
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

/**
 * Adapter stages between the frozen dmix = dy W2 and dx = dg0 W1 + du0 W3: bwd_experts (u2, h, dg, du, dt1,
 * dt3, dw), router (dlogits; aux gradient when `aux` (1 + E) from `moeAuxLoss` is given), bwd_grads (expert
 * and router gradients +=, dg0 and du0 rows written). `params.grads` is required.
 */
export function mixloraExpertsBackward(
  step: Step,
  args: {
    dy: GPUBuffer
    x: GPUBuffer
    dmix: GPUBuffer
    g0: GPUBuffer
    u0: GPUBuffer
    dg0: GPUBuffer
    du0: GPUBuffer
    lengths: GPUBuffer
    aux?: GPUBuffer | null
    params: MixloraParamRefs
    saved: MixloraSavedBuffers
    scratch: MixloraScratch
  },
  dims: MixloraDims,
): void {
  const p = prepare(step, args.params, dims, { aux: !!args.aux })
  if (!p.grads) throw new GpuValidationError({ label: "mixlora backward", reason: "params.grads is required" })
  const { dy, x, dmix, g0, u0, dg0, du0, lengths, saved: s, scratch: c } = args
  const { N, D, F, R, row0, T } = dims
  const { S, E, ctx } = p
  for (const [k, b] of Object.entries({ dy, x })) p.need(k, b, (row0 + N) * D)
  for (const [k, b] of Object.entries({ dmix, g0, u0, dg0, du0 })) p.need(k, b, (row0 + N) * F)
  p.need("lengths", lengths, (row0 + N) / T)
  if (args.aux) p.need("aux", args.aux, 1 + E)
  checkSaved(p, s, dims)
  p.need("hs", c.hs, 3 * N * S * F)
  p.need("dts", c.dts, 3 * N * S * R)
  p.need("dw", c.dw, N * S)
  p.need("dlogits", c.dlogits, N * E)
  const pair = { t: s.t, wt: s.w, expert_of: s.expertOf, hs: c.hs, dts: c.dts }
  const lists = { list: s.list, counts: s.counts }
  runGenerated(step, p, "bwd_experts", { ...pair, ...lists, dw: c.dw, dy, dmix, g0, u0 }, {
    invocations: Math.ceil(N / moeListTile(R)),
    z: E,
  })
  run(step, p, "moe_bwd_router.wgsl", [c.dlogits, s.P, c.dw, s.w, s.expertOf, args.aux ?? s.P, lengths], grid1d(ctx, N))
  const grads = { ...pair, ...lists, dg0, du0, x, dlogits: c.dlogits, dy }
  runGenerated(step, p, "bwd_grads", grads, { dims: { N, D, F } })
}

/** dx[row0 ..] += the adapter's input gradient (expert gate/up LoRA and router), after dx = dg0 W1 + du0 W3. */
export function mixloraInputBackward(
  step: Step,
  args: { dx: GPUBuffer; params: MixloraParamRefs; saved: MixloraSavedBuffers; scratch: MixloraScratch },
  dims: MixloraDims,
): void {
  const p = prepare(step, args.params, dims)
  p.need("dx", args.dx, (dims.row0 + dims.N) * dims.D)
  checkSaved(p, args.saved, dims)
  const c = args.scratch
  runGenerated(step, p, "bwd_dx", { dx: args.dx, dts: c.dts, dlogits: c.dlogits, expert_of: args.saved.expertOf }, {
    invocations: dims.N,
  })
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

/**
 * out (1 + E) = [aux, ∂aux/∂P_e · gradScale] over `layers` rows of stats (L, 2E + 1) written by the forward's
 * moe_lists (spec §3; see src/reference/mixlora.ts moeAuxLoss). Run after every MoE layer's forward and before
 * the backward; `gradScale` is ∂loss/∂aux (e.g. 1 / accumulation steps).
 */
export function moeAuxLoss(
  step: Step,
  args: { stats: GPUBuffer; out: GPUBuffer },
  dims: { layers: number; E: number; coef: number; gradScale?: number },
): void {
  const { layers, E, coef } = dims
  const guard = (ok: boolean, reason: string) => {
    if (!ok) throw new GpuValidationError({ label: "moe_aux", reason })
  }
  guard(Number.isInteger(layers) && layers >= 1 && Number.isInteger(E) && E >= 1, `layers=${layers}, E=${E}`)
  guard(args.stats.size >= layers * (2 * E + 1) * 4, `stats holds ${args.stats.size} bytes`)
  guard(args.out.size >= (1 + E) * 4, `out holds ${args.out.size} bytes`)
  guard(args.out !== args.stats, "out aliases stats")
  const ctx = step.ctx
  const uniform = ctx.uniform([layers, E, 0, 0], [coef, dims.gradScale ?? 1])
  step.dispatch(preludedPipeline(ctx, [], "moe_aux.wgsl", {}), [uniform, args.out, args.stats], [1])
}
