/**
 * Adapter weights on the device: one flat f32 parameter block per adapter and a gradient block of the same
 * layout, both in the adapter arena's shared slabs (memory category "adapters"), so that an optimizer updates
 * every parameter of an adapter in one fused kernel over its block, and one kernel can reach every adapter.
 *
 * Layout (`paramLayout`): layer after layer, each layer's block starting on a 64-float (256-byte) boundary so
 * that kernels can bind one layer's range (minStorageBufferOffsetAlignment). Inside a layer:
 * - LoRA: for each targeted projection in PROJECTIONS order, A (R, in) then B (out, R);
 * - MixLoRA: router G (E, D); then per targeted FFN projection in FFN_PROJECTIONS order the A of experts
 *   0..E−1 back to back, then their B (expert e's A at a + e·R·in, B at b + e·out·R: the stride the MoE
 *   kernels use); then the attention LoRA pairs as for LoRA.
 * Entries carry the checkpoint tensor names of spec §5 (MoE-PEFT names).
 * @module
 */
import { GpuValidationError } from "../errors.ts"
import type { GpuContext, Step } from "../gpu/context.ts"
import type { TensorRef } from "../kernels/lora.ts"
import type { MixloraParamRefs } from "../kernels/moe.ts"
import {
  type AdapterLayerWeights,
  type AdapterSpec,
  type AdapterWeights,
  FFN_PROJECTIONS,
  type FfnProjection,
  type LoraPair,
  projectionShape,
} from "./adapter.ts"
import { type ArenaBlock, arenaOf } from "./adapter_arena.ts"
import type { AdapterModelDims } from "./adapter_init.ts"
import { type Projection, PROJECTIONS } from "./types.ts"

/** One tensor of the flat layout: checkpoint name, element offset, element count, (rows, cols). */
export interface ParamEntry {
  readonly name: string
  readonly offset: number
  readonly length: number
  readonly shape: readonly [number, number]
}

/** Element offsets of one layer's tensors in the flat buffer. */
export interface LayerParamLayout {
  /** first element of the layer's block (a multiple of 64) */
  readonly offset: number
  readonly length: number
  /** plain LoRA pairs (attention for MixLoRA) */
  readonly lora: Partial<Record<Projection, { readonly a: number; readonly b: number }>>
  /** MixLoRA: router (E, D) */
  readonly router?: number
  /** MixLoRA: A and B of expert 0 per targeted FFN projection; expert e at + e·R·in / + e·out·R */
  readonly experts?: Partial<Record<FfnProjection, { readonly a: number; readonly b: number }>>
}

export interface ParamLayout {
  readonly entries: readonly ParamEntry[]
  readonly layers: readonly LayerParamLayout[]
  /** floats in the buffer (a multiple of 64) */
  readonly total: number
}

const ALIGN = 64
const alignUp = (n: number) => Math.ceil(n / ALIGN) * ALIGN
const isFfn = (p: Projection): p is FfnProjection => (FFN_PROJECTIONS as readonly string[]).includes(p)

/** The flat layout of `spec`'s parameters for a model of `config`'s shape. */
export function paramLayout(spec: AdapterSpec, config: AdapterModelDims): ParamLayout {
  const entries: ParamEntry[] = []
  const layers: LayerParamLayout[] = []
  const R = spec.r
  let at = 0
  const add = (name: string, rows: number, cols: number): number => {
    const offset = at
    entries.push({ name, offset, length: rows * cols, shape: [rows, cols] })
    at += rows * cols
    return offset
  }
  for (let l = 0; l < config.numLayers; l++) {
    const start = at
    const lora: Partial<Record<Projection, { a: number; b: number }>> = {}
    const addPair = (prefix: string, p: Projection) => {
      const { inDim, outDim } = projectionShape(p, config)
      const a = add(`${prefix}.lora_A.weight`, R, inDim)
      const b = add(`${prefix}.lora_B.weight`, outDim, R)
      lora[p] = { a, b }
    }
    if (spec.kind === "lora") {
      for (const p of PROJECTIONS) {
        if (!spec.targets.includes(p)) continue
        addPair(`base_model.model.model.layers.${l}.${isFfn(p) ? "mlp" : "self_attn"}.${p}`, p)
      }
      layers.push({ offset: start, length: at - start, lora })
    } else {
      const moe = spec.moe
      if (!moe) throw new RangeError(`adapter ${spec.name}: kind "mixlora" without moe settings`)
      const E = moe.numExperts
      const router = add(`mixlora.layers.${l}.mlp.moe_gate.weight`, E, config.hiddenSize)
      const experts: Partial<Record<FfnProjection, { a: number; b: number }>> = {}
      for (const p of FFN_PROJECTIONS) {
        if (!spec.targets.includes(p)) continue
        const { inDim, outDim } = projectionShape(p, config)
        const name = (e: number, ab: "A" | "B") => `mixlora.layers.${l}.mlp.${p}.experts.${e}.lora_${ab}.weight`
        const offs = Array.from({ length: E }, (_, e) => add(name(e, "A"), R, inDim))
        const offsB = Array.from({ length: E }, (_, e) => add(name(e, "B"), outDim, R))
        experts[p] = { a: offs[0], b: offsB[0] }
      }
      for (const p of PROJECTIONS) {
        if (isFfn(p) || !spec.targets.includes(p)) continue
        addPair(`mixlora.layers.${l}.self_attn.${p}`, p)
      }
      layers.push({ offset: start, length: at - start, lora, router, experts })
    }
    at = alignUp(at)
  }
  return { entries, layers, total: Math.max(ALIGN, alignUp(at)) }
}

/** The tensors of `w` in layout order (the same order `paramLayout` assigns offsets). */
function tensorsOf(w: AdapterWeights): Float32Array[] {
  const out: Float32Array[] = []
  const { spec } = w
  w.layers.forEach((layer: AdapterLayerWeights) => {
    const pair = (p: Projection) => {
      const lp = layer.lora[p]
      if (!lp) throw new GpuValidationError({ label: `adapter ${spec.name}`, reason: `missing LoRA on ${p}` })
      out.push(lp.a, lp.b)
    }
    if (spec.kind === "lora") {
      for (const p of PROJECTIONS) if (spec.targets.includes(p)) pair(p)
      return
    }
    if (!layer.router || !layer.experts) {
      throw new GpuValidationError({ label: `adapter ${spec.name}`, reason: "MixLoRA layer without router/experts" })
    }
    out.push(layer.router)
    for (const p of FFN_PROJECTIONS) {
      if (!spec.targets.includes(p)) continue
      const pairs = layer.experts.map((ex, e) => {
        const lp = ex[p]
        if (!lp) throw new GpuValidationError({ label: `adapter ${spec.name}`, reason: `expert ${e} lacks ${p}` })
        return lp
      })
      out.push(...pairs.map((lp) => lp.a), ...pairs.map((lp) => lp.b))
    }
    for (const p of PROJECTIONS) if (!isFfn(p) && spec.targets.includes(p)) pair(p)
  })
  return out
}

/** The flat f32 image of `w` in `layout`; throws when a tensor is missing or has the wrong size. */
export function packAdapter(w: AdapterWeights, layout: ParamLayout): Float32Array {
  const flat = new Float32Array(layout.total)
  const tensors = tensorsOf(w)
  if (tensors.length !== layout.entries.length) {
    throw new GpuValidationError({
      label: `adapter ${w.spec.name}`,
      reason: `${tensors.length} tensors for a layout of ${layout.entries.length}`,
    })
  }
  layout.entries.forEach((e, i) => {
    if (tensors[i].length !== e.length) {
      throw new GpuValidationError({
        label: `adapter ${w.spec.name}`,
        reason: `${e.name} has ${tensors[i].length} values, expected ${e.shape[0]}×${e.shape[1]}`,
      })
    }
    flat.set(tensors[i], e.offset)
  })
  return flat
}

/** Host weights of `spec` read back from a flat image (copies). */
export function unpackAdapter(spec: AdapterSpec, layout: ParamLayout, flat: Float32Array): AdapterWeights {
  const get = (off: number, n: number) => flat.slice(off, off + n)
  const entryAt = new Map(layout.entries.map((e) => [e.offset, e]))
  const len = (off: number) => entryAt.get(off)!.length
  const pairAt = (o: { a: number; b: number }): LoraPair => ({ a: get(o.a, len(o.a)), b: get(o.b, len(o.b)) })
  const layers = layout.layers.map((ll): AdapterLayerWeights => {
    const lora: Partial<Record<Projection, LoraPair>> = {}
    for (const [p, o] of Object.entries(ll.lora)) lora[p as Projection] = pairAt(o!)
    if (ll.router === undefined) return { lora }
    const E = spec.moe!.numExperts
    const experts = Array.from({ length: E }, (_, e) => {
      const ex: Partial<Record<FfnProjection, LoraPair>> = {}
      for (const [p, o] of Object.entries(ll.experts ?? {})) {
        const na = len(o!.a), nb = len(o!.b)
        ex[p as FfnProjection] = { a: get(o!.a + e * na, na), b: get(o!.b + e * nb, nb) }
      }
      return ex
    })
    return { lora, router: get(ll.router, len(ll.router)), experts }
  })
  return { spec, layers }
}

/**
 * An adapter's parameters and gradients on the device: the block [base, base + layout.total) of a slab of the
 * adapter arena (src/model/adapter_arena.ts), the same block in the slab's parameter and gradient buffers.
 */
export interface DeviceAdapter {
  readonly spec: AdapterSpec
  readonly layout: ParamLayout
  /** the slab's f32 parameter buffer (shared with other adapters) */
  readonly params: GPUBuffer
  /** the slab's f32 gradient buffer, same layout; this adapter's block is zero after upload */
  readonly grads: GPUBuffer
  /** first element of this adapter's block in both buffers (a multiple of 64) */
  readonly base: number
  readonly block: ArenaBlock
}

/** A byte range of a buffer. */
export interface BufferRange {
  readonly buffer: GPUBuffer
  readonly offset: number
  readonly size: number
}

/** Uploads `w` into a block of the context's adapter arena, gradients zeroed (category "adapters"). */
export function uploadAdapter(ctx: GpuContext, w: AdapterWeights, config: AdapterModelDims): DeviceAdapter {
  const layout = paramLayout(w.spec, config)
  const flat = packAdapter(w, layout)
  const block = arenaOf(ctx).alloc(w.spec.name, layout.total)
  const { slab, offset: base } = block
  ctx.write(slab.params, flat, base * 4)
  ctx.write(slab.grads, new Float32Array(layout.total), base * 4)
  return { spec: w.spec, layout, params: slab.params, grads: slab.grads, base, block }
}

/** The adapter's block of its parameter and gradient buffers as bindings (e.g. for the optimizer). */
export function adapterRegion(dev: DeviceAdapter): { params: BufferRange; grads: BufferRange } {
  const range = (buffer: GPUBuffer) => ({ buffer, offset: dev.base * 4, size: dev.layout.total * 4 })
  return { params: range(dev.params), grads: range(dev.grads) }
}

/** Overwrites the device parameters with `w` (e.g. after loading a checkpoint). */
export function writeAdapter(ctx: GpuContext, dev: DeviceAdapter, w: AdapterWeights): void {
  ctx.write(dev.params, packAdapter(w, dev.layout), dev.base * 4)
}

/** Reads the parameters back (one round trip). */
export async function downloadAdapter(ctx: GpuContext, dev: DeviceAdapter): Promise<AdapterWeights> {
  const [b] = await ctx.read([{ buffer: dev.params, offset: dev.base * 4, size: dev.layout.total * 4 }])
  return unpackAdapter(dev.spec, dev.layout, new Float32Array(b))
}

/** Reads the gradients back in the shape of the weights (one round trip). */
export async function downloadGrads(ctx: GpuContext, dev: DeviceAdapter): Promise<AdapterWeights> {
  const [b] = await ctx.read([{ buffer: dev.grads, offset: dev.base * 4, size: dev.layout.total * 4 }])
  return unpackAdapter(dev.spec, dev.layout, new Float32Array(b))
}

/** Records gradients = 0 in `step` (start of an optimizer step; the kernels accumulate). */
export function zeroGrads(step: Step, dev: DeviceAdapter): void {
  step.endPass().clearBuffer(dev.grads, dev.base * 4, dev.layout.total * 4)
}

/** Returns the adapter's block to the arena (the slab is freed with its last adapter). */
export function releaseAdapter(ctx: GpuContext, dev: DeviceAdapter): void {
  arenaOf(ctx).release(dev.block)
}

/** Parameter and gradient refs of layer l's LoRA on projection p (for src/kernels/lora.ts). */
export function loraRefs(
  dev: DeviceAdapter,
  l: number,
  p: Projection,
): { a: TensorRef; b: TensorRef; da: TensorRef; db: TensorRef } | null {
  const o = dev.layout.layers[l]?.lora[p]
  if (!o) return null
  return {
    a: { buffer: dev.params, offset: dev.base + o.a },
    b: { buffer: dev.params, offset: dev.base + o.b },
    da: { buffer: dev.grads, offset: dev.base + o.a },
    db: { buffer: dev.grads, offset: dev.base + o.b },
  }
}

/** Router and expert offsets of MixLoRA layer l (for src/kernels/moe.ts). */
export function mixloraRefs(dev: DeviceAdapter, l: number): MixloraParamRefs {
  const ll = dev.layout.layers[l]
  if (ll?.router === undefined) {
    throw new GpuValidationError({ label: `adapter ${dev.spec.name}`, reason: `layer ${l} has no MixLoRA router` })
  }
  const experts: Partial<Record<FfnProjection, { a: number; b: number }>> = {}
  for (const [p, o] of Object.entries(ll.experts ?? {})) {
    experts[p as FfnProjection] = { a: dev.base + o!.a, b: dev.base + o!.b }
  }
  return { params: dev.params, grads: dev.grads, router: dev.base + ll.router, experts }
}
