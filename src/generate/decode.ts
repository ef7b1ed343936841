/**
 * The two device passes of generation, composed from kernel launchers (no WebGPU calls beyond buffer helpers):
 *
 * prefill  the packed prompts (left padded, one segment per adapter) through `LlamaModel.encodeForward` with every
 *          layer's activations kept; each layer's k (after RoPE) and v of the real tokens → KV cache slots
 *          (positions 0 .. len − 1); the logits of each row's last real token → next-token choice.
 * decode   one token per live sequence (n rows, row i its own sequence of T = 1 token at position pos_i):
 *            x = embed[token]
 *            per layer: n1 = rmsnorm(x); q, k, v = n1 Wᵀ (+ each adapter's LoRA on its rows)
 *                       q, k ← rope(·, pos_i);  cache[slot_i, :, pos_i] ← k, v
 *                       attn = softmax(q Kᵀ / √Dh) V over cache positions 0 .. pos_i
 *                       xMid = x + attn W_oᵀ (+ LoRA);  n2 = rmsnorm(xMid)
 *                       x = xMid + down(act(gate(n2)) ⊙ up(n2)) (+ LoRA; MixLoRA rows: the MoE FFN with T = 1)
 *            logits = rmsnorm(x) lm_headᵀ → next-token choice
 *          all in one command buffer; the only readback is the (n) chosen ids.
 * Rows of one adapter are contiguous (AdapterRows {row0, N}); the frozen matmuls run once over all n rows.
 * @module
 */
import type { Step } from "../gpu/context.ts"
import { attentionDecode } from "../kernels/attention_decode.ts"
import { embeddingForward } from "../kernels/embedding.ts"
import { kvCacheWrite } from "../kernels/kv_cache.ts"
import { linear } from "../kernels/matmul.ts"
import { rmsnormForward } from "../kernels/rmsnorm.ts"
import { ropeAtPositions } from "../kernels/rope_positions.ts"
import { sampleTokens } from "../kernels/sample_tokens.ts"
import { swigluForward } from "../kernels/swiglu.ts"
import {
  type AdapterRows,
  loraProjectionForward,
  type LoraSaved,
  moeDownForward,
  moeExpertsForward,
  type MoeState,
} from "../model/adapter_layers.ts"
import type { ForwardBuffers, LlamaModel } from "../model/llama.ts"
import type { BatchDescriptor, Projection } from "../model/types.ts"
import { activationOf } from "../reference/swiglu.ts"
import type { KvCache } from "./kv_cache.ts"

/** A decode step's rows are whole sequences of one token each (the MixLoRA kernels' T). */
const DECODE_LAYOUT = { seqLen: 1, padSide: "left" as const }

/** Pooled buffers of decode steps for up to `rows` live sequences (also the prefill's per-row inputs). */
export class DecodeWorkspace {
  /** (rows) i32 token of each live row; u32 cache slot; u32 position (= cache length before this token) */
  readonly tokens: GPUBuffer
  readonly slots: GPUBuffer
  readonly pos: GPUBuffer
  /** (rows) u32 ones: every decode row is one real token (MixLoRA kernels, cache writes) */
  readonly ones: GPUBuffer
  /** (rows, 4) u32 sampling words; (rows) i32 chosen ids */
  readonly params: GPUBuffer
  readonly ids: GPUBuffer
  /** (rows, ·) activations of one decode step */
  readonly x: GPUBuffer
  readonly xMid: GPUBuffer
  readonly n1: GPUBuffer
  readonly n2: GPUBuffer
  readonly rstd: GPUBuffer
  readonly q: GPUBuffer
  readonly k: GPUBuffer
  readonly v: GPUBuffer
  readonly attn: GPUBuffer
  /** (rows, H, maxLen) attention scores */
  readonly scores: GPUBuffer
  readonly g: GPUBuffer
  readonly u: GPUBuffer
  readonly h: GPUBuffer
  /** (rows, V) */
  readonly logits: GPUBuffer
  private readonly all: GPUBuffer[] = []

  constructor(private readonly model: LlamaModel, readonly rows: number, readonly maxLen: number) {
    const c = model.base.config
    const { hiddenSize: D, intermediateSize: F, numHeads: H, numKvHeads: KV, headDim: Dh, vocabSize: V } = c
    const f = (label: string, n: number) => {
      const b = model.pool.acquire(`decode ${label}`, Math.max(1, n) * 4)
      this.all.push(b)
      return b
    }
    this.tokens = f("tokens", rows)
    this.slots = f("slots", rows)
    this.pos = f("pos", rows)
    this.ones = f("ones", rows)
    this.params = f("params", rows * 4)
    this.ids = f("ids", rows)
    this.x = f("x", rows * D)
    this.xMid = f("xmid", rows * D)
    this.n1 = f("n1", rows * D)
    this.n2 = f("n2", rows * D)
    this.rstd = f("rstd", rows)
    this.q = f("q", rows * H * Dh)
    this.k = f("k", rows * KV * Dh)
    this.v = f("v", rows * KV * Dh)
    this.attn = f("attn", rows * H * Dh)
    this.scores = f("scores", rows * H * maxLen)
    this.g = f("g", rows * F)
    this.u = f("u", rows * F)
    this.h = f("h", rows * F)
    this.logits = f("logits", rows * V)
    model.ctx.write(this.ones, new Uint32Array(rows).fill(1))
  }

  /** Queues the per-row inputs of the next pass (written before its submit). */
  writeRows(rows: { tokens?: Int32Array; slots?: Uint32Array; pos?: Uint32Array; params?: Uint32Array }): void {
    const ctx = this.model.ctx
    if (rows.tokens) ctx.write(this.tokens, rows.tokens)
    if (rows.slots) ctx.write(this.slots, rows.slots)
    if (rows.pos) ctx.write(this.pos, rows.pos)
    if (rows.params) ctx.write(this.params, rows.params)
  }

  /** Returns the buffers to the model's pool. */
  release(): void {
    for (const b of this.all) this.model.pool.release(b)
    this.all.length = 0
  }
}

/** Adapter work of one pass: each adapter's rows, LoRA intermediates, MixLoRA state (null without MixLoRA). */
export interface PassAdapters {
  readonly rows: readonly AdapterRows[]
  readonly saved: LoraSaved
  readonly moe: MoeState | null
}

/**
 * Prefill: the forward of `batch` (left padded) into `bufs` (allocated with keepActivations), every layer's k, v
 * of the real tokens into cache slots `ws.slots` at positions from `ws.pos` (zeros), and the choice of each row's
 * next token from its last real token's logits into `ws.ids` with the sampling words in `ws.params`.
 */
export function encodePrefill(
  step: Step,
  model: LlamaModel,
  io: { bufs: ForwardBuffers; batch: BatchDescriptor; cache: KvCache; ws: DecodeWorkspace },
  adapters: PassAdapters,
): void {
  const { bufs, batch, cache, ws } = io
  const c = model.base.config
  const { rows, seqLen: T } = batch
  if (bufs.layers.length !== c.numLayers) throw new RangeError("prefill: allocate the forward with keepActivations")
  model.encodeForward(step, bufs, batch, adapters.rows, adapters.saved, adapters.moe)
  bufs.layers.forEach((a, l) => {
    kvCacheWrite(step, {
      kc: cache.k[l],
      vc: cache.v[l],
      k: a.k,
      v: a.v,
      slots: ws.slots,
      pos0: ws.pos,
      lengths: bufs.lengths,
    }, {
      rows,
      T,
      KV: c.numKvHeads,
      Dh: c.headDim,
      maxLen: cache.dims.maxLen,
      slotCount: cache.dims.slots,
      padSide: batch.padSide,
    })
  })
  // the last real token of row r sits at T − 1 (left padding) or len − 1 (right padding)
  const V = c.vocabSize
  for (let r = 0; r < rows; r++) {
    const t = batch.padSide === "left" ? T - 1 : batch.lengths[r] - 1
    step.copy(bufs.logits, (r * T + t) * V * 4, ws.logits, r * V * 4, V * 4)
  }
  sampleTokens(step, { ids: ws.ids, logits: ws.logits, params: ws.params }, { rows, V })
}

/**
 * One decode step for the first `n` rows of `ws` (tokens, slots, pos, params written), the longest of which
 * attends over `Lk` = max(pos) + 1 cache positions. Appends each row's k, v to the cache and writes the chosen
 * next tokens to `ws.ids`.
 */
export function encodeDecodeStep(
  step: Step,
  model: LlamaModel,
  io: { ws: DecodeWorkspace; cache: KvCache; n: number; Lk: number },
  adapters: PassAdapters,
): void {
  const { ws, cache, n, Lk } = io
  const c = model.base.config
  const base = model.base
  const { hiddenSize: D, intermediateSize: F, numHeads: H, numKvHeads: KV, headDim: Dh, vocabSize: V } = c
  if (n < 1 || n > ws.rows) throw new RangeError(`decode: ${n} rows for a workspace of ${ws.rows}`)
  const eps = c.rmsNormEps
  const act = activationOf(c.hiddenAct)
  const kv = { maxLen: cache.dims.maxLen, slotCount: cache.dims.slots }
  embeddingForward(step, { x: ws.x, tokens: ws.tokens, embed: base.embed }, { N: n, D, V })
  base.layers.forEach((w, l) => {
    const proj = (p: Projection, x: GPUBuffer, y: GPUBuffer, accumulate = false) => {
      linear(step, { x, w: w.proj[p], y }, { M: n, accumulate })
      if (adapters.rows.length) loraProjectionForward(step, c, adapters.rows, adapters.saved, l, p, { x, y })
    }
    rmsnormForward(step, { y: ws.n1, rstd: ws.rstd, x: ws.x, w: w.inputNorm }, { N: n, D, eps })
    proj("q_proj", ws.n1, ws.q)
    proj("k_proj", ws.n1, ws.k)
    proj("v_proj", ws.n1, ws.v)
    ropeAtPositions(step, { q: ws.q, k: ws.k, positions: ws.pos }, { N: n, H, KV, Dh, theta: c.ropeTheta })
    kvCacheWrite(step, {
      kc: cache.k[l],
      vc: cache.v[l],
      k: ws.k,
      v: ws.v,
      slots: ws.slots,
      pos0: ws.pos,
      lengths: ws.ones,
    }, { rows: n, T: 1, KV, Dh, ...kv, padSide: "left" })
    attentionDecode(step, {
      out: ws.attn,
      scores: ws.scores,
      q: ws.q,
      kc: cache.k[l],
      vc: cache.v[l],
      slots: ws.slots,
      pos: ws.pos,
    }, { rows: n, H, KV, Dh, ...kv, Lk })
    step.copy(ws.x, 0, ws.xMid, 0, n * D * 4)
    proj("o_proj", ws.attn, ws.xMid, true)
    rmsnormForward(step, { y: ws.n2, rstd: ws.rstd, x: ws.xMid, w: w.postAttentionNorm }, { N: n, D, eps })
    proj("gate_proj", ws.n2, ws.g)
    proj("up_proj", ws.n2, ws.u)
    swigluForward(step, { h: ws.h, g: ws.g, u: ws.u }, { N: n, F, act })
    const moe = adapters.moe
    if (moe) {
      moeExpertsForward(step, c, moe, l, DECODE_LAYOUT, { x: ws.n2, g: ws.g, u: ws.u, h: ws.h, lengths: ws.ones })
    }
    step.copy(ws.xMid, 0, ws.x, 0, n * D * 4)
    proj("down_proj", ws.h, ws.x, true)
    if (moe) moeDownForward(step, c, moe, l, DECODE_LAYOUT, ws.x)
  })
  rmsnormForward(step, { y: ws.n1, rstd: ws.rstd, x: ws.x, w: base.norm }, { N: n, D, eps })
  linear(step, { x: ws.n1, w: base.lmHead, y: ws.logits }, { M: n })
  sampleTokens(step, { ids: ws.ids, logits: ws.logits, params: ws.params }, { rows: n, V })
}
