/**
 * The frozen base model on the device (or on the host for `--device cpu`), loaded tensor by tensor
 * so that a checkpoint never sits whole in host memory: each tensor is read, (with `load8bit`)
 * quantised per spec §4, uploaded, and dropped before the next one is read.
 *
 * With `load8bit` the seven projections of every layer are int8 (4 per u32 on the device, one f32
 * scale per output row); embeddings, norms and lm_head stay f32. On the CPU backend the int8
 * weights are kept dequantised, so CPU and GPU compute on exactly the same weight values.
 * @module
 */
import type { GpuContext } from "../gpu/context.ts"
import { type DeviceMatrix, releaseMatrix, uploadMatrix } from "../kernels/matmul.ts"
import { type LlamaTensor, streamLlamaTensors } from "./checkpoint.ts"
import { dequantizeRows, quantizeRows } from "./quantize.ts"
import {
  type HostTensor,
  type LayerWeights,
  type LlamaConfig,
  type LlamaWeights,
  type Projection,
  PROJECTIONS,
} from "./types.ts"

export interface DeviceLayer {
  /** (D) */
  readonly inputNorm: GPUBuffer
  /** (D) */
  readonly postAttentionNorm: GPUBuffer
  /** q (H*Dh, D), k/v (KV*Dh, D), o (D, H*Dh), gate/up (F, D), down (D, F); int8 with load8bit */
  readonly proj: Readonly<Record<Projection, DeviceMatrix>>
}

export interface DeviceBase {
  readonly config: LlamaConfig
  readonly load8bit: boolean
  /** (V, D) f32, gathered by token id */
  readonly embed: GPUBuffer
  readonly layers: readonly DeviceLayer[]
  /** (D) */
  readonly norm: GPUBuffer
  /** (V, D) f32 (a second copy of the embedding when tied: the gather and the matmul want different layouts) */
  readonly lmHead: DeviceMatrix
}

export interface LoadOptions {
  readonly load8bit: boolean
  /** called after each tensor with (tensors done, tensors total, name) */
  readonly onTensor?: (done: number, total: number, name: string) => void
}

/** Tensor count of a checkpoint for `config` (progress bars): 9 per layer + embed + norm (+ lm_head). */
export const tensorCount = (c: LlamaConfig): number => 9 * c.numLayers + 2 + (c.tieWordEmbeddings ? 0 : 1)

/** One tensor of the checkpoint stream, by role (see `streamLlamaTensors`). */
type Part = Pick<LlamaTensor, "kind" | "layer" | "part" | "name" | "shape"> & { readonly data: Float32Array }

/** Streams `dir` onto the device. */
export function uploadBase(ctx: GpuContext, dir: string, config: LlamaConfig, opts: LoadOptions): Promise<DeviceBase> {
  return uploadParts(ctx, config, streamLlamaTensors(dir, config), opts)
}

/** Uploads host weights (tests, generated models) exactly as `uploadBase` would load them from disk. */
export function uploadHostBase(
  ctx: GpuContext,
  config: LlamaConfig,
  weights: LlamaWeights,
  opts: LoadOptions,
): Promise<DeviceBase> {
  return uploadParts(ctx, config, hostParts(config, weights), opts)
}

async function* hostParts(config: LlamaConfig, w: LlamaWeights): AsyncGenerator<Part> {
  const t = (kind: Part["kind"], name: string, h: HostTensor, layer?: number, part?: Part["part"]): Part => ({
    kind,
    name,
    layer,
    part,
    shape: [...h.shape],
    data: h.data,
  })
  yield t("embed", "model.embed_tokens.weight", w.embed)
  for (const [i, l] of w.layers.entries()) {
    yield t("layer", `model.layers.${i}.input_layernorm.weight`, l.inputNorm, i, "input_norm")
    yield t("layer", `model.layers.${i}.post_attention_layernorm.weight`, l.postAttentionNorm, i, "post_attention_norm")
    for (const p of PROJECTIONS) yield t("layer", `model.layers.${i}.${p}.weight`, l.proj[p], i, p)
  }
  yield t("norm", "model.norm.weight", w.norm)
  if (!config.tieWordEmbeddings) yield t("lm_head", "lm_head.weight", w.lmHead)
}

async function uploadParts(
  ctx: GpuContext,
  config: LlamaConfig,
  parts: AsyncIterable<Part>,
  opts: LoadOptions,
): Promise<DeviceBase> {
  const layers = Array.from({ length: config.numLayers }, () => ({ proj: {} } as Record<string, unknown> & {
    proj: Record<string, DeviceMatrix>
  }))
  let embed: GPUBuffer | undefined, norm: GPUBuffer | undefined, lmHead: DeviceMatrix | undefined
  let done = 0
  const total = tensorCount(config)
  try {
    for await (const t of parts) {
      const host: HostTensor = { shape: t.shape, data: t.data }
      if (t.kind === "embed") {
        embed = ctx.upload(t.name, t.data, "base_other")
        if (config.tieWordEmbeddings) lmHead = uploadMatrix(ctx, host, { label: "lm_head", category: "base_other" })
      } else if (t.kind === "lm_head") lmHead = uploadMatrix(ctx, host, { label: t.name, category: "base_other" })
      else if (t.kind === "norm") norm = ctx.upload(t.name, t.data, "base_other")
      else if (t.part === "input_norm") layers[t.layer!].inputNorm = ctx.upload(t.name, t.data, "base_other")
      else if (t.part === "post_attention_norm") {
        layers[t.layer!].postAttentionNorm = ctx.upload(t.name, t.data, "base_other")
      } else {
        const [rows, cols] = t.shape
        layers[t.layer!].proj[t.part!] = opts.load8bit
          ? uploadMatrix(ctx, quantizeRows(t.data, rows, cols), { label: t.name, category: "base_int8" })
          : uploadMatrix(ctx, host, { label: t.name, category: "base_f32" })
      }
      opts.onTensor?.(++done, total, t.name)
    }
  } catch (e) {
    // a bad tensor half way: free what was uploaded so the device is as before
    for (const l of layers) {
      for (const v of Object.values(l)) if (v instanceof GPUBuffer) ctx.release(v)
      for (const m of Object.values(l.proj)) releaseMatrix(ctx, m)
    }
    for (const b of [embed, norm]) if (b) ctx.release(b)
    if (lmHead) releaseMatrix(ctx, lmHead)
    throw e
  }
  return {
    config,
    load8bit: opts.load8bit,
    embed: embed!,
    layers: layers as unknown as DeviceLayer[],
    norm: norm!,
    lmHead: lmHead!,
  }
}

/** Frees every buffer of `base`. */
export function releaseBase(ctx: GpuContext, base: DeviceBase): void {
  for (const l of base.layers) {
    ctx.release(l.inputNorm)
    ctx.release(l.postAttentionNorm)
    for (const m of Object.values(l.proj)) releaseMatrix(ctx, m)
  }
  ctx.release(base.embed)
  ctx.release(base.norm)
  releaseMatrix(ctx, base.lmHead)
}

/** Host weights for the CPU backend; with `load8bit` the projections are quantised then dequantised. */
export async function loadHostBase(dir: string, config: LlamaConfig, opts: LoadOptions): Promise<LlamaWeights> {
  const layers = Array.from({ length: config.numLayers }, () => ({ proj: {} } as Record<string, unknown> & {
    proj: Record<string, HostTensor>
  }))
  let embed: HostTensor | undefined, norm: HostTensor | undefined, lmHead: HostTensor | undefined
  let done = 0
  const total = tensorCount(config)
  for await (const t of streamLlamaTensors(dir, config)) {
    const host: HostTensor = { shape: t.shape, data: t.data }
    if (t.kind === "embed") embed = host
    else if (t.kind === "lm_head") lmHead = host
    else if (t.kind === "norm") norm = host
    else if (t.part === "input_norm") layers[t.layer!].inputNorm = host
    else if (t.part === "post_attention_norm") layers[t.layer!].postAttentionNorm = host
    else {
      const [rows, cols] = t.shape
      layers[t.layer!].proj[t.part!] = opts.load8bit
        ? { shape: t.shape, data: dequantizeRows(quantizeRows(t.data, rows, cols)) }
        : host
    }
    opts.onTensor?.(++done, total, t.name)
  }
  return {
    embed: embed!,
    layers: layers as unknown as LayerWeights[],
    norm: norm!,
    lmHead: config.tieWordEmbeddings ? embed! : lmHead!,
  }
}
