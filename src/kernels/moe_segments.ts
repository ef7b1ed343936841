/**
 * The segment machinery of the MixLoRA launchers (src/kernels/moe.ts): validation of a call's segments, the segment
 * table (one `Dims` per adapter, shaders/moe_common.wgsl), the binding of the slab range that covers every
 * segment's router and experts, and the dispatch of the routing shaders and generated expert kernels over all
 * segments at once (grid z = segment · Z + z').
 * @module
 */
import { GpuValidationError } from "../errors.ts"
import type { Binding, GpuContext, Step } from "../gpu/context.ts"
import { FFN_PROJECTIONS, type FfnProjection } from "../model/adapter.ts"
import { jitterParams, MAX_MASK_T } from "../reference/lora.ts"
import { moeSlots } from "../reference/mixlora.ts"
import { ACT, activationOf } from "../reference/swiglu.ts"
import { dropoutWords, grid1d, preludedPipeline, spanBinding } from "./lora.ts"
import type { MixloraDims, MixloraParamRefs, MixloraSavedBuffers } from "./moe.ts"
import {
  generateMoeKernel,
  gradSegments,
  type MoeKernel,
  type MoeKernelCode,
  moeKernelName,
  type MoeKernelSpec,
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
export interface Call {
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

export function prepare(step: Step, segs: readonly MixloraSegment[], opts: { aux?: boolean } = {}): Call {
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
    // per-step seeds (dropout, jitter) change the table every training step: a step-slot uniform, not a new one
    const seeded = part.some((s) => s.dims.dropout != null || (s.dims.jitter?.j ?? 0) > 0)
    const uniform = seeded ? ctx.stepUniform(step, table) : ctx.uniform(table)
    chunks.push({ uniform, count: part.length, maxN: Math.max(...part.map((s) => s.dims.N)) })
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

export function checkSegment(d: MixloraDims, guard: (ok: boolean, reason: string) => void): void {
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
export function needRows(
  c: Call,
  segs: readonly MixloraSegment[],
  bufs: Record<string, GPUBuffer>,
  width: number,
  opts: { perSequence?: boolean } = {},
): void {
  const rows = Math.max(...segs.map((s) => s.dims.row0 + s.dims.N))
  for (const [k, b] of Object.entries(bufs)) c.need(k, b, opts.perSequence ? rows / segs[0].dims.T : rows * width)
}

export function checkSaved(c: Call, s: MixloraSavedBuffers): void {
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
export function run(
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
export function runGenerated(
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
