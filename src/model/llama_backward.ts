/**
 * The backward of `LlamaModel.encodeForward` with adapters: from each segment's mean next-token loss down to
 * every adapter's LoRA gradients. The frozen base gets no gradient; only activations flow back through it
 * (linearBackwardInput over f32 or int8 weights). Layer by layer, in reverse, with the forward's saved
 * activations (`keepActivations`), into the same command buffer as the forward:
 *
 *   dlogits = (softmax − onehot) · factor_s / count_s               (in place over the logits)
 *   dx      = rmsnorm_bwd(lm_headᵀ dlogits)                          residual-stream gradient (N, D)
 *   per layer ℓ = L−1 … 0:
 *     dh = W_downᵀ dx (+ LoRA_down);  dg, du = swiglu_bwd(dh);  dn2 = W_gateᵀ dg + W_upᵀ du (+ LoRA)
 *     dx += rmsnorm_bwd(dn2) at xMid
 *     da = W_oᵀ dx (+ LoRA_o);  dq, dk, dv = attention_bwd(da);  rope_bwd(dq, dk)
 *     dn1 = W_qᵀ dq + W_kᵀ dk + W_vᵀ dv (+ LoRA);  dx += rmsnorm_bwd(dn1) at xIn
 * @module
 */
import type { Step } from "../gpu/context.ts"
import { attentionBackward } from "../kernels/attention.ts"
import { crossEntropyBackward, crossEntropyGradScale } from "../kernels/cross_entropy.ts"
import { linearBackwardInput } from "../kernels/matmul.ts"
import { rmsnormBackward } from "../kernels/rmsnorm.ts"
import { ropeBackward } from "../kernels/rope.ts"
import { swigluBackward } from "../kernels/swiglu.ts"
import { activationOf } from "../reference/swiglu.ts"
import {
  type AdapterRows,
  loraProjectionBackward,
  type LoraSaved,
  moeAux,
  moeExpertsBackward,
  moeInputBackward,
  type MoeState,
} from "./adapter_layers.ts"
import type { ForwardBuffers, LlamaModel } from "./llama.ts"
import type { BatchDescriptor, Projection } from "./types.ts"

export interface BackwardOptions {
  /** per segment: multiplies that segment's mean-loss gradient (1 / gradient-accumulation steps); default 1 */
  readonly factors?: readonly number[]
}

/**
 * Encodes the backward into `step` after `model.encodeForward(step, bufs, batch, adapters, saved)` ran with
 * `keepActivations`. Adapter gradients accumulate (+=) into each adapter's gradient buffer.
 */
export function encodeBackward(
  step: Step,
  model: LlamaModel,
  bufs: ForwardBuffers,
  batch: BatchDescriptor,
  adapters: readonly AdapterRows[],
  saved: LoraSaved,
  moe: MoeState | null,
  opts: BackwardOptions = {},
): void {
  const base = model.base, c = base.config, pool = model.pool
  const { hiddenSize: D, intermediateSize: F, numHeads: H, numKvHeads: KV, headDim: Dh, vocabSize: V } = c
  const { N } = bufs
  if (bufs.layers.length !== c.numLayers) throw new Error("encodeBackward needs a forward with keepActivations")
  const S = Math.max(1, batch.segments.length)
  const shape = { rows: batch.rows, T: batch.seqLen, H, KV, Dh, padSide: batch.padSide }
  const f = (label: string, n: number) => pool.acquire(label, n * 4)
  const gscale = f("gscale", N), dx = f("dx", N * D), dn = f("dn", N * D), dh = f("dh", N * F)
  const dattn = f("dattn", N * H * Dh), dq = f("dq", N * H * Dh), dk = f("dk", N * KV * Dh)
  const dv = f("dv", N * KV * Dh), stats = f("attn stats", batch.rows * H * batch.seqLen * 2)
  const layout = { T: batch.seqLen, padSide: batch.padSide, lengths: bufs.lengths }
  const lora = (layer: number, p: Projection, io: { x: GPUBuffer; dy: GPUBuffer; dx?: GPUBuffer }) => {
    if (adapters.length) loraProjectionBackward(step, c, adapters, saved, pool, layer, p, { ...io, layout })
  }

  const dgm = moe?.entries.length ? f("moe dg0", N * F) : null, dum = moe?.entries.length ? f("moe du0", N * F) : null
  if (moe) {
    // load balancing over all layers of each MixLoRA adapter: its gradient enters at each router backward
    const segmentOf = (r: AdapterRows) => batch.segments.findIndex((s) => s.start * batch.seqLen === r.row0)
    const factor = new Map(adapters.map((r) => [r, opts.factors?.[segmentOf(r)] ?? 1]))
    moeAux(step, c, moe, factor)
  }

  // loss → logits → final norm
  crossEntropyGradScale(step, { gscale, targets: bufs.targets, ranges: bufs.ranges }, { N, S, factors: opts.factors })
  crossEntropyBackward(step, {
    dlogits: bufs.logits,
    gscale,
    logits: bufs.logits,
    targets: bufs.targets,
    lse: bufs.logitLse,
  }, { N, V })
  linearBackwardInput(step, { dy: bufs.logits, w: base.lmHead, dx: dn }, { M: N })
  rmsnormBackward(step, { dx, dy: dn, x: bufs.xOut, w: base.norm, rstd: bufs.rstdf }, { N, D })

  for (let i = c.numLayers - 1; i >= 0; i--) {
    const w = base.layers[i], a = bufs.layers[i]
    // FFN: dx is the gradient of the layer output (= xMid + down(h))
    linearBackwardInput(step, { dy: dx, w: w.proj.down_proj, dx: dh }, { M: N })
    lora(i, "down_proj", { x: a.h, dy: dx, dx: dh })
    // MixLoRA rows: dh is dmix; their dg0, du0 come from the experts (before swiglu_bwd overwrites g, u)
    if (moe && dgm && dum) {
      moeExpertsBackward(step, c, moe, i, batch, {
        dy: dx,
        x: a.n2,
        dmix: dh,
        g0: a.g,
        u0: a.u,
        dg0: dgm,
        du0: dum,
        lengths: bufs.lengths,
      })
    }
    swigluBackward(step, { dg: a.g, du: a.u, dh, g: a.g, u: a.u }, { N, F, act: activationOf(c.hiddenAct) })
    for (const m of moe?.entries ?? []) {
      step.copy(dgm!, m.rows.row0 * F * 4, a.g, m.rows.row0 * F * 4, m.rows.N * F * 4)
      step.copy(dum!, m.rows.row0 * F * 4, a.u, m.rows.row0 * F * 4, m.rows.N * F * 4)
    }
    linearBackwardInput(step, { dy: a.g, w: w.proj.gate_proj, dx: dn }, { M: N })
    linearBackwardInput(step, { dy: a.u, w: w.proj.up_proj, dx: dn }, { M: N, accumulate: true })
    lora(i, "gate_proj", { x: a.n2, dy: a.g, dx: dn })
    lora(i, "up_proj", { x: a.n2, dy: a.u, dx: dn })
    if (moe) moeInputBackward(step, c, moe, i, batch, { dx: dn, lengths: bufs.lengths })
    rmsnormBackward(step, { dx, dy: dn, x: a.xMid, w: w.postAttentionNorm, rstd: a.rstd2 }, {
      N,
      D,
      accumulate: true,
    })
    // attention: dx is now the gradient of xMid (= xIn + o(attn))
    linearBackwardInput(step, { dy: dx, w: w.proj.o_proj, dx: dattn }, { M: N })
    lora(i, "o_proj", { x: a.attn, dy: dx, dx: dattn })
    attentionBackward(step, {
      dq,
      dk,
      dv,
      dout: dattn,
      q: a.q,
      k: a.k,
      v: a.v,
      out: a.attn,
      lse: a.lse,
      lengths: bufs.lengths,
      stats,
    }, shape)
    ropeBackward(step, { dq, dk, lengths: bufs.lengths }, { ...shape, theta: c.ropeTheta })
    // below layer 0 is the frozen embedding: its input gradient is not needed, only the LoRA gradients
    const below = i > 0 ? dn : undefined
    if (below) {
      linearBackwardInput(step, { dy: dq, w: w.proj.q_proj, dx: below }, { M: N })
      linearBackwardInput(step, { dy: dk, w: w.proj.k_proj, dx: below }, { M: N, accumulate: true })
      linearBackwardInput(step, { dy: dv, w: w.proj.v_proj, dx: below }, { M: N, accumulate: true })
    }
    lora(i, "q_proj", { x: a.n1, dy: dq, dx: below })
    lora(i, "k_proj", { x: a.n1, dy: dk, dx: below })
    lora(i, "v_proj", { x: a.n1, dy: dv, dx: below })
    if (below) {
      rmsnormBackward(step, { dx, dy: below, x: a.xIn, w: w.inputNorm, rstd: a.rstd1 }, { N, D, accumulate: true })
    }
  }
  for (const b of [gscale, dx, dn, dh, dattn, dq, dk, dv, stats, dgm, dum]) if (b) pool.release(b)
}
