/**
 * The LLaMA forward on the device, composed from kernel launchers (no WebGPU calls here beyond the
 * context's buffer helpers). Same math as `src/reference/llama.ts` (HF `LlamaForCausalLM`, spec §2):
 *   x = embed[tokens]
 *   per layer: x += o_proj(attn(rope(q_proj(n1)), rope(k_proj(n1)), v_proj(n1))),  n1 = rmsnorm(x, input_norm)
 *              x += down_proj(act(gate_proj(n2)) ⊙ up_proj(n2)),                   n2 = rmsnorm(x, post_attention_norm)
 *   logits = lm_head(rmsnorm(x, norm))
 * over a packed padded batch (BatchDescriptor: rows, per-row lengths, pad side, row → adapter segments).
 * A whole forward is encoded into one Step (one command buffer); reading the result is the only round trip.
 * @module
 */
import type { GpuContext, Step } from "../gpu/context.ts"
import { BufferPool } from "../gpu/pool.ts"
import { attentionForward } from "../kernels/attention.ts"
import { crossEntropyForward, crossEntropyMean } from "../kernels/cross_entropy.ts"
import { embeddingForward } from "../kernels/embedding.ts"
import { linear } from "../kernels/matmul.ts"
import { rmsnormForward } from "../kernels/rmsnorm.ts"
import { ropeForward } from "../kernels/rope.ts"
import { swigluForward } from "../kernels/swiglu.ts"
import { checkBatch, lengthsU32, nextTokenTargets } from "../reference/batch.ts"
import { activationOf } from "../reference/swiglu.ts"
import type { DeviceBase } from "./base_weights.ts"
import {
  type AdapterRows,
  loraProjectionForward,
  LoraSaved,
  moeDownForward,
  moeExpertsForward,
  type MoeState,
} from "./adapter_layers.ts"
import type { BatchDescriptor, Projection } from "./types.ts"

/** Activations of one decoder layer (kept per layer when the backward will need them). */
export interface LayerActivations {
  /** (N, D) residual stream entering the layer */
  readonly xIn: GPUBuffer
  /** (N, D) rmsnorm(x, input_norm); (N) its rstd */
  readonly n1: GPUBuffer
  readonly rstd1: GPUBuffer
  /** (N, H·Dh) after RoPE; (N, KV·Dh) k after RoPE and v */
  readonly q: GPUBuffer
  readonly k: GPUBuffer
  readonly v: GPUBuffer
  /** (N, H·Dh) attention output; (rows, H, T) log-sum-exp */
  readonly attn: GPUBuffer
  readonly lse: GPUBuffer
  /** (N, D) residual stream after attention */
  readonly xMid: GPUBuffer
  /** (N, D) rmsnorm(xMid, post_attention_norm); (N) its rstd */
  readonly n2: GPUBuffer
  readonly rstd2: GPUBuffer
  /** (N, F) gate and up projections, (N, F) act(g) ⊙ u */
  readonly g: GPUBuffer
  readonly u: GPUBuffer
  readonly h: GPUBuffer
}

/** Buffers of one forward at one batch shape; `layers` has L entries when activations are kept, else 1. */
export interface ForwardBuffers {
  readonly N: number
  /** (N) i32 token ids; (rows) u32 lengths; (N) i32 next-token targets (−1 ignored) */
  readonly tokens: GPUBuffer
  readonly lengths: GPUBuffer
  readonly targets: GPUBuffer
  readonly layers: readonly LayerActivations[]
  /** (N, D) residual stream after the last layer, its final norm and rstd */
  readonly xOut: GPUBuffer
  readonly nf: GPUBuffer
  readonly rstdf: GPUBuffer
  /** (N, V) */
  readonly logits: GPUBuffer
  /** (N) per-position loss and log-sum-exp; (S, 2) per-segment (mean, count); (S, 2) u32 ranges */
  readonly loss: GPUBuffer
  readonly logitLse: GPUBuffer
  readonly segLoss: GPUBuffer
  readonly ranges: GPUBuffer
}

export interface ForwardOptions {
  /** keep every layer's activations (for a backward); default false reuses one set */
  readonly keepActivations?: boolean
  /** per-position targets (N) instead of next-token targets of the batch (−1 = not predicted) */
  readonly targets?: Int32Array
}

/** The frozen base model on one device, with pooled activation buffers. */
export class LlamaModel {
  readonly pool: BufferPool

  constructor(readonly ctx: GpuContext, readonly base: DeviceBase) {
    this.pool = new BufferPool(ctx)
  }

  /** Allocates (from the pool) the buffers of a forward at this batch shape. */
  allocate(batch: BatchDescriptor, opts: ForwardOptions = {}): ForwardBuffers {
    const c = this.base.config
    const { hiddenSize: D, intermediateSize: F, numHeads: H, numKvHeads: KV, headDim: Dh, vocabSize: V } = c
    const N = batch.rows * batch.seqLen
    const S = Math.max(1, batch.segments.length)
    const f = (label: string, n: number) => this.pool.acquire(label, n * 4)
    const layer = (): LayerActivations => ({
      xIn: f("x", N * D),
      n1: f("n1", N * D),
      rstd1: f("rstd1", N),
      q: f("q", N * H * Dh),
      k: f("k", N * KV * Dh),
      v: f("v", N * KV * Dh),
      attn: f("attn", N * H * Dh),
      lse: f("lse", batch.rows * H * batch.seqLen),
      xMid: f("xmid", N * D),
      n2: f("n2", N * D),
      rstd2: f("rstd2", N),
      g: f("g", N * F),
      u: f("u", N * F),
      h: f("h", N * F),
    })
    return {
      N,
      tokens: f("tokens", N),
      lengths: f("lengths", batch.rows),
      targets: f("targets", N),
      layers: Array.from({ length: opts.keepActivations ? c.numLayers : 1 }, layer),
      xOut: f("xout", N * D),
      nf: f("nf", N * D),
      rstdf: f("rstdf", N),
      logits: f("logits", N * V),
      loss: f("loss", N),
      logitLse: f("logit_lse", N),
      segLoss: f("seg_loss", S * 2),
      ranges: f("ranges", S * 2),
    }
  }

  /** Returns a forward's buffers to the pool. */
  free(bufs: ForwardBuffers): void {
    const { N: _, layers, ...rest } = bufs
    for (const b of Object.values(rest)) this.pool.release(b)
    for (const l of layers) for (const b of Object.values(l)) this.pool.release(b)
  }

  /** Uploads the batch (tokens, lengths, targets, segment ranges) — queued before the step's submit. */
  writeBatch(bufs: ForwardBuffers, batch: BatchDescriptor, opts: ForwardOptions = {}): void {
    checkBatch(batch, { vocabSize: this.base.config.vocabSize })
    const ctx = this.ctx
    ctx.write(bufs.tokens, batch.tokens)
    ctx.write(bufs.lengths, lengthsU32(batch))
    ctx.write(bufs.targets, opts.targets ?? nextTokenTargets(batch))
    const segs = batch.segments.length ? batch.segments : [{ start: 0, end: batch.rows, slot: -1 }]
    ctx.write(bufs.ranges, new Uint32Array(segs.flatMap((s) => [s.start * batch.seqLen, s.end * batch.seqLen])))
  }

  /**
   * Encodes the forward up to the logits (and the per-segment mean loss) into `step`. Each adapter in
   * `adapters` adds its LoRA terms on its own rows right after the shared frozen projection; `saved` keeps
   * their intermediates for a backward.
   */
  encodeForward(
    step: Step,
    bufs: ForwardBuffers,
    batch: BatchDescriptor,
    adapters: readonly AdapterRows[] = [],
    saved: LoraSaved = new LoraSaved(this.pool),
    moe: MoeState | null = null,
  ): void {
    const c = this.base.config
    const { hiddenSize: D, intermediateSize: F, numHeads: H, numKvHeads: KV, headDim: Dh, vocabSize: V } = c
    const { N } = bufs
    const eps = c.rmsNormEps
    const shape = { rows: batch.rows, T: batch.seqLen, H, KV, Dh, padSide: batch.padSide }
    const act = activationOf(c.hiddenAct)
    // the dropout masks' keys: each token's sequence within its adapter's rows and its position in it
    const layout = { T: batch.seqLen, padSide: batch.padSide, lengths: bufs.lengths }
    embeddingForward(step, { x: bufs.layers[0].xIn, tokens: bufs.tokens, embed: this.base.embed }, { N, D, V })
    this.base.layers.forEach((w, i) => {
      const a = bufs.layers[Math.min(i, bufs.layers.length - 1)]
      const next = bufs.layers[i + 1]?.xIn ?? (i + 1 === c.numLayers ? bufs.xOut : a.xIn)
      // frozen projection over all rows, then each adapter's LoRA on its own rows
      const proj = (p: Projection, x: GPUBuffer, y: GPUBuffer, accumulate = false) => {
        linear(step, { x, w: w.proj[p], y }, { M: N, accumulate })
        if (adapters.length) loraProjectionForward(step, c, adapters, saved, i, p, { x, y, layout })
      }
      rmsnormForward(step, { y: a.n1, rstd: a.rstd1, x: a.xIn, w: w.inputNorm }, { N, D, eps })
      proj("q_proj", a.n1, a.q)
      proj("k_proj", a.n1, a.k)
      proj("v_proj", a.n1, a.v)
      ropeForward(step, { q: a.q, k: a.k, lengths: bufs.lengths }, { ...shape, theta: c.ropeTheta })
      attentionForward(step, { out: a.attn, lse: a.lse, q: a.q, k: a.k, v: a.v, lengths: bufs.lengths }, shape)
      // xMid = xIn + o_proj(attn): copy then accumulate, so that xIn survives for the backward
      step.copy(a.xIn, 0, a.xMid, 0, N * D * 4)
      proj("o_proj", a.attn, a.xMid, true)
      rmsnormForward(step, { y: a.n2, rstd: a.rstd2, x: a.xMid, w: w.postAttentionNorm }, { N, D, eps })
      proj("gate_proj", a.n2, a.g)
      proj("up_proj", a.n2, a.u)
      swigluForward(step, { h: a.h, g: a.g, u: a.u }, { N, F, act })
      // MixLoRA rows: h becomes the routing-weighted mix of expert activations; W2 then runs once on it
      if (moe) moeExpertsForward(step, c, moe, i, batch, { x: a.n2, g: a.g, u: a.u, h: a.h, lengths: bufs.lengths })
      step.copy(a.xMid, 0, next, 0, N * D * 4)
      proj("down_proj", a.h, next, true)
      if (moe) moeDownForward(step, c, moe, i, batch, next)
    })
    rmsnormForward(step, { y: bufs.nf, rstd: bufs.rstdf, x: bufs.xOut, w: this.base.norm }, { N, D, eps })
    linear(step, { x: bufs.nf, w: this.base.lmHead, y: bufs.logits }, { M: N })
    crossEntropyForward(step, { loss: bufs.loss, lse: bufs.logitLse, logits: bufs.logits, targets: bufs.targets }, {
      N,
      V,
    })
    const S = Math.max(1, batch.segments.length)
    crossEntropyMean(step, { out: bufs.segLoss, loss: bufs.loss, targets: bufs.targets, ranges: bufs.ranges }, {
      N,
      S,
    })
  }

  /** Logits (N, V) of the batch: one command buffer, one round trip. */
  async logits(batch: BatchDescriptor): Promise<Float32Array> {
    const bufs = this.allocate(batch)
    try {
      this.writeBatch(bufs, batch)
      const step = this.ctx.begin("forward")
      this.encodeForward(step, bufs, batch)
      const [out] = await this.ctx.read([{
        buffer: bufs.logits,
        offset: 0,
        size: bufs.N * this.base.config.vocabSize * 4,
      }], step)
      return new Float32Array(out)
    } finally {
      this.free(bufs)
    }
  }

  /** Per-segment (mean next-token loss, predicted positions): one command buffer, one round trip. */
  async loss(batch: BatchDescriptor, opts: ForwardOptions = {}): Promise<{ loss: number; count: number }[]> {
    const bufs = this.allocate(batch)
    try {
      this.writeBatch(bufs, batch, opts)
      const step = this.ctx.begin("forward")
      this.encodeForward(step, bufs, batch)
      const S = Math.max(1, batch.segments.length)
      const [out] = await this.ctx.read([{ buffer: bufs.segLoss, offset: 0, size: S * 8 }], step)
      const f = new Float32Array(out)
      return Array.from({ length: S }, (_, s) => ({ loss: f[2 * s], count: f[2 * s + 1] }))
    } finally {
      this.free(bufs)
    }
  }
}
