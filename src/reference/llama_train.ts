/**
 * One training micro-step of a packed multi-adapter batch in plain TypeScript: the oracle of the GPU training
 * graph (src/model/llama.ts + llama_backward.ts + the LoRA / MoE launchers). Composed from the layer references
 * (forward, then backward in reverse with the saved activations, karpathy/llm.c style):
 *
 *   x = embed[tokens]                                                                      (N, D), N = rows · T
 *   per layer ℓ:  n1 = rmsnorm(x);  q, k, v = n1 Wᵀ (+ LoRA);  a = attn(rope(q), rope(k), v)
 *                 xMid = x + (a W_oᵀ + LoRA_o(a))
 *                 n2 = rmsnorm(xMid);  xOut = xMid + ffn(n2)
 *                 ffn = down(act(gate(n2)) ⊙ up(n2)) with plain LoRA on targeted projections,
 *                       or, on a MixLoRA segment's rows, the MixLoRA FFN (src/reference/mixlora.ts)
 *   logits = rmsnorm(x) lm_headᵀ;  loss_s = mean CE over segment s's predicted positions
 *   total = Σ_s factor_s · (loss_s + aux_s),  aux_s = MixLoRA load balancing over all layers of segment s
 * backward: dlogits → lm_head dX → final rmsnorm → per layer reversed: FFN (plain / MixLoRA per segment rows)
 * → rmsnorm2 → o_proj → attention → rope → q/k/v → rmsnorm1, accumulating each adapter's gradients.
 *
 * Segment s covers batch rows [start, end), i.e. token rows [start·T, end·T) of every (N, ·) buffer; slot −1
 * (base only) gets no adapter. Rows never interact (attention is per row, everything else per token), so a
 * segment's losses and gradients do not depend on the other segments; pad positions predict nothing, get zero
 * gradient and are never routed, so padding changes no result.
 *
 * Random streams (src/reference/lora.ts maskHash: a mask value is a pure function of (seed, stream, row, col)).
 * `row` is the token's key within its own adapter's micro-batch (src/reference/lora.ts maskRowKey):
 * r_local · 65536 + p, with r_local = the batch row's index within its segment (row − segment.start) and p the
 * token's position in its own sequence (right padding p = t; left padding p = t − (T − len)), as the kernels
 * key it (src/kernels/lora.ts and shaders/moe_*.wgsl: mask_key of shaders/lora_common.wgsl). So an adapter's
 * masks do not depend on where it sits in a packed batch, on the batch's padded length T or on the pad side:
 * it draws the same masks trained alone as packed with others.
 *   - plain LoRA dropout on layer ℓ, projection p (any adapter kind, e.g. MixLoRA attention LoRA):
 *       seed = dropout.seed, stream = ℓ · 7 + PROJECTIONS.indexOf(p)   (src/model/adapter_layers.ts)
 *   - MixLoRA FFN of layer ℓ: the MoE kernels use fixed streams (jitter STREAM.jitter = 7, expert e's dropout
 *     on proj expertStream(e, proj) = 8 + 3e + proj), so the layer goes into the seed:
 *       dropout seed = moeLayerSeed(dropout.seed, ℓ),  jitter seed = moeLayerSeed(jitter.seed, ℓ)
 *     (src/model/adapter_layers.ts `moeDims` derives both from the step's one dropout seed the same way, so
 *     the GPU graph corresponds to dropout = jitter = { seed: stepSeed }.)
 * Dropout applies when `opts.dropout` is given and spec.dropout > 0; jitter when `opts.jitter` is given and
 * moe.jitterNoise > 0 (training only, spec §3).
 *
 * precision "f32" (default) runs the f32 layer references, the numbers the GPU must match; "f64" runs the same
 * formulas in f64 end to end (LoRA / MixLoRA through their own precision option, the frozen layers through the
 * f64 loops at the end of this file), for finite-difference tests. Gradients are returned as f32 either way.
 * @module
 */
import {
  type AdapterLayerWeights,
  type AdapterWeights,
  FFN_PROJECTIONS,
  type FfnProjection,
  loraScale,
  projectionShape,
} from "../model/adapter.ts"
import {
  type BatchDescriptor,
  type LlamaConfig,
  type LlamaWeights,
  type Projection,
  PROJECTIONS,
} from "../model/types.ts"
import { attentionBackward, attentionForward } from "./attention.ts"
import { nextTokenTargets, realTokenMask, type RowLayout, rowStart, tokenPositions } from "./batch.ts"
import { crossEntropyBackward, crossEntropyForward, crossEntropyGradScale, crossEntropyMean } from "./cross_entropy.ts"
import { embeddingForward } from "./embedding.ts"
import { linear, linearBackwardInput } from "./linear.ts"
import {
  dropoutMask,
  expertStream,
  jitterNoise,
  loraBackward,
  type LoraDims,
  loraForward,
  maskHash,
  type MaskRows,
  type Precision,
  type Vec,
} from "./lora.ts"
import {
  mixloraBackward,
  mixloraForward,
  type MixloraLayer,
  type MixloraOptions,
  type MixloraSaved,
  moeAuxLoss,
  type MoeStats,
} from "./mixlora.ts"
import { residualForward } from "./residual.ts"
import { rmsnormBackward, rmsnormForward } from "./rmsnorm.ts"
import { ropeBackward, ropeForward, ropeInvFreq } from "./rope.ts"
import { activate, activateGrad, activationOf, type ActName, swigluBackward, swigluForward } from "./swiglu.ts"

export interface TrainStepOptions {
  /** (N) next-token targets, −1 ignored; default nextTokenTargets(batch) */
  readonly targets?: Int32Array
  /** per segment: multiplier of its objective (loss_s + aux_s), e.g. 1 / accumulation steps; default 1 */
  readonly factors?: readonly number[]
  /** LoRA dropout with this step's seed (null / absent: no dropout) */
  readonly dropout?: { readonly seed: number } | null
  /** MixLoRA router jitter with this step's seed (null / absent: no jitter) */
  readonly jitter?: { readonly seed: number } | null
  readonly precision?: Precision
}

/** Router decisions of one MixLoRA segment on one layer (token rows of the segment, local index i). */
export interface RoutingRecord {
  readonly segment: number
  readonly layer: number
  /** (Ns, E) router probabilities */
  readonly P: Vec
  /** (Ns, E) 0 not selected, j + 1 in slot j, DROPPED over capacity (mixlora.ts) */
  readonly sel: Uint32Array
  /** (Ns) 1 for real tokens */
  readonly real: Uint8Array
}

export interface TrainForwardResult {
  /** per segment: mean next-token CE over its predicted positions, and their count */
  readonly losses: { loss: number; count: number }[]
  /** per segment: MixLoRA load-balancing loss (0 for LoRA and base-only segments) */
  readonly aux: number[]
  /** Σ_s factor_s · (loss_s + aux_s) */
  readonly total: number
  readonly routing: RoutingRecord[]
}

export interface TrainStepResult extends TrainForwardResult {
  /** d total / dθ per adapter slot (zeros for adapters not in the batch), same shapes as `adapters` */
  readonly grads: AdapterWeights[]
}

/** Seed of layer ℓ's MixLoRA FFN streams (jitter, expert dropout): maskHash(seed, 2³² − 1, ℓ, 0). */
export function moeLayerSeed(seed: number, layer: number): number {
  return maskHash(seed >>> 0, 0xffffffff, layer, 0)
}

/** Forward only (losses, aux, total, routing) — what finite differences evaluate. */
export function referenceTrainForward(
  config: LlamaConfig,
  weights: LlamaWeights,
  batch: BatchDescriptor,
  adapters: readonly AdapterWeights[],
  opts: TrainStepOptions = {},
): TrainForwardResult {
  const { losses, aux, total, routing } = forward(config, weights, batch, adapters, opts)
  return { losses, aux, total, routing }
}

/**
 * One micro-step: forward, losses, and d total / dθ for every adapter (indexed by segment.slot), with
 * total = Σ_s factor_s · (loss_s + aux_s).
 */
export function referenceTrainStep(
  config: LlamaConfig,
  weights: LlamaWeights,
  batch: BatchDescriptor,
  adapters: readonly AdapterWeights[],
  opts: TrainStepOptions = {},
): TrainStepResult {
  const fw = forward(config, weights, batch, adapters, opts)
  return { losses: fw.losses, aux: fw.aux, total: fw.total, routing: fw.routing, grads: backward(fw) }
}

// ---- forward ---------------------------------------------------------------------------------------

interface Segment {
  readonly s: number
  readonly slot: number
  readonly adapter: AdapterWeights | null
  /** first token row (start · T) and token count ((end − start) · T) */
  readonly row0: number
  readonly n: number
  /** the segment's sequences as the mask keys see them (its rows' lengths, T, pad side) */
  readonly rows: MaskRows
}

interface LayerSaved {
  xIn: Vec
  rstd1: Vec
  n1: Vec
  q: Vec
  k: Vec
  v: Vec
  attn: Vec
  lse: Vec
  xMid: Vec
  rstd2: Vec
  n2: Vec
  g: Vec
  u: Vec
  h: Vec
  /** plain LoRA saved t and mask, keyed `${segment}.${projection}` */
  lora: Map<string, { t: Vec; mask: Vec | null }>
  /** MixLoRA saved activations and options, keyed by segment */
  moe: Map<number, { saved: MixloraSaved; o: MixloraOptions; layer: MixloraLayer }>
}

type Weights = LlamaWeights

interface ForwardState extends TrainForwardResult {
  config: LlamaConfig
  weights: Weights
  batch: BatchDescriptor
  adapters: readonly AdapterWeights[]
  opts: TrainStepOptions
  ops: Ops
  segs: Segment[]
  targets: Int32Array
  positions: Int32Array
  layers: LayerSaved[]
  xFinal: Vec
  rstdF: Vec
  logits: Vec
  lseF: Vec
  /** per segment: ∂aux_s/∂P_{t,e} (E), null without MixLoRA */
  auxGrad: (Float64Array | null)[]
}

function forward(
  config: LlamaConfig,
  weights: Weights,
  batch: BatchDescriptor,
  adapters: readonly AdapterWeights[],
  opts: TrainStepOptions,
): ForwardState {
  const { hiddenSize: D, intermediateSize: F, numHeads: H, numKvHeads: KV, headDim: Dh, vocabSize: V } = config
  const T = batch.seqLen, N = batch.rows * T, eps = config.rmsNormEps, theta = config.ropeTheta
  const act = activationOf(config.hiddenAct)
  const precision = opts.precision ?? "f32"
  const ops = precision === "f64" ? OPS64 : OPS32
  const positions = tokenPositions(batch)
  const real = realTokenMask(batch)
  const targets = opts.targets ?? nextTokenTargets(batch)
  if (targets.length !== N) throw new RangeError(`targets: ${targets.length} for ${batch.rows}×${T} tokens`)
  const segs = segmentsOf(batch, adapters, config.numLayers)
  const routing: RoutingRecord[] = []
  const stats: MoeStats[][] = segs.map(() => [])

  /** y = x Wᵀ (+ each segment's plain LoRA on p, its t and mask saved for the backward) */
  const project = (l: number, p: Projection, x: Vec, saved: LayerSaved): Vec => {
    const { inDim, outDim } = projectionShape(p, config)
    const y = ops.linear(x, weights.layers[l].proj[p].data, N, outDim, inDim)
    for (const sg of segs) {
      const pair = loraPair(sg, l, p)
      if (!pair) continue
      const spec = sg.adapter!.spec
      const mask = opts.dropout && spec.dropout > 0
        ? dropoutMask({
          p: spec.dropout,
          seed: opts.dropout.seed,
          stream: l * PROJECTIONS.length + PROJECTIONS.indexOf(p),
          rows: sg.rows,
          cols: inDim,
        })
        : null
      const { dy, t } = loraForward(rowsOf(x, sg, inDim), pair.a, pair.b, mask, loraDims(sg, p, config, precision))
      addRows(y, dy, sg.row0 * outDim)
      saved.lora.set(`${sg.s}.${p}`, { t, mask })
    }
    return y
  }

  let x: Vec = embeddingForward(weights.embed.data, batch.tokens, { N, D, V })
  if (precision === "f64") x = Float64Array.from(x)
  const layers: LayerSaved[] = []
  weights.layers.forEach((lw, l) => {
    const n1r = ops.rmsnorm(x, lw.inputNorm.data, { N, D, eps })
    const sv = { xIn: x, rstd1: n1r.rstd, n1: n1r.y, lora: new Map(), moe: new Map() } as LayerSaved
    sv.q = ops.rope(project(l, "q_proj", sv.n1, sv), positions, { N, heads: H, Dh, theta })
    sv.k = ops.rope(project(l, "k_proj", sv.n1, sv), positions, { N, heads: KV, Dh, theta })
    sv.v = project(l, "v_proj", sv.n1, sv)
    const at = ops.attention(sv.q, sv.k, sv.v, batch, { H, KV, Dh })
    sv.attn = at.out
    sv.lse = at.lse
    sv.xMid = ops.add(x, project(l, "o_proj", sv.attn, sv))
    const n2r = ops.rmsnorm(sv.xMid, lw.postAttentionNorm.data, { N, D, eps })
    sv.n2 = n2r.y
    sv.rstd2 = n2r.rstd
    // the plain FFN runs over all rows; a MixLoRA segment's rows of y are then replaced by its MoE output
    sv.g = project(l, "gate_proj", sv.n2, sv)
    sv.u = project(l, "up_proj", sv.n2, sv)
    sv.h = ops.swiglu(sv.g, sv.u, { N, F, act })
    const y = project(l, "down_proj", sv.h, sv)
    for (const sg of segs) {
      if (sg.adapter?.spec.kind !== "mixlora") continue
      const o = moeOptions(sg, l, config, batch, real, opts)
      const layer = moeLayer(sg.adapter.layers[l], sg.adapter.spec.name, l)
      const r = mixloraForward(rowsOf(sv.n2, sg, D), ffnBase(weights, l), layer, o)
      y.set(r.y, sg.row0 * D)
      sv.moe.set(sg.s, { saved: r.saved, o, layer })
      stats[sg.s].push(r.saved.stats)
      routing.push({ segment: sg.s, layer: l, P: r.saved.P, sel: r.saved.sel, real: o.real })
    }
    x = ops.add(sv.xMid, y)
    layers.push(sv)
  })
  const fr = ops.rmsnorm(x, weights.norm.data, { N, D, eps })
  const logits = ops.linear(fr.y, weights.lmHead.data, N, V, D)
  const ce = ops.ce(logits, targets, { N, V })
  const ranges = segs.map((sg) => ({ start: sg.row0, end: sg.row0 + sg.n }))
  const losses = ops.ceMean(ce.loss, targets, ranges)
  const factors = segs.map((sg) => opts.factors?.[sg.s] ?? 1)
  const auxes = segs.map((sg) => {
    const moe = sg.adapter?.spec.moe
    return moe && sg.adapter!.spec.kind === "mixlora"
      ? moeAuxLoss(stats[sg.s], { coef: moe.routerAuxLossCoef, E: moe.numExperts })
      : null
  })
  const aux = auxes.map((a) => a?.aux ?? 0)
  const total = segs.reduce((acc, sg) => acc + factors[sg.s] * (losses[sg.s].loss + aux[sg.s]), 0)
  const auxGrad = auxes.map((a, s) => a ? a.grad.map((g) => g * factors[s]) : null)
  return {
    losses,
    aux,
    total,
    routing,
    config,
    weights,
    batch,
    adapters,
    opts,
    ops,
    segs,
    targets,
    positions,
    layers,
    xFinal: x,
    rstdF: fr.rstd,
    logits,
    lseF: ce.lse,
    auxGrad,
  }
}

// ---- backward --------------------------------------------------------------------------------------

function backward(fw: ForwardState): AdapterWeights[] {
  const { config, weights, batch, ops, segs, layers, positions } = fw
  const { hiddenSize: D, intermediateSize: F, numHeads: H, numKvHeads: KV, headDim: Dh, vocabSize: V } = config
  const T = batch.seqLen, N = batch.rows * T, theta = config.ropeTheta
  const act = activationOf(config.hiddenAct)
  const precision = fw.opts.precision ?? "f32"
  const grads = fw.adapters.map(zeroGrads)

  /** dx = dy W (+ each segment's plain LoRA input gradient); dA, dB accumulate into grads */
  const projectBack = (l: number, p: Projection, x: Vec, dy: Vec): Vec => {
    const { inDim, outDim } = projectionShape(p, config)
    const dx = ops.linearBack(dy, weights.layers[l].proj[p].data, N, outDim, inDim)
    for (const sg of segs) {
      const pair = loraPair(sg, l, p)
      if (!pair) continue
      const { t, mask } = layers[l].lora.get(`${sg.s}.${p}`)!
      const dims = loraDims(sg, p, config, precision)
      const r = loraBackward(rowsOf(dy, sg, outDim), rowsOf(x, sg, inDim), pair.a, pair.b, t, mask, dims)
      const gp = grads[sg.slot].layers[l].lora[p]!
      addTo(gp.a, r.da)
      addTo(gp.b, r.db)
      addRows(dx, r.dx, sg.row0 * inDim)
    }
    return dx
  }

  const gscale = ops.gradScale(fw.targets, segs.map((sg) => ({ start: sg.row0, end: sg.row0 + sg.n })), {
    factors: segs.map((sg) => fw.opts.factors?.[sg.s] ?? 1),
  })
  const dlogits = ops.ceBack(gscale, fw.logits, fw.targets, fw.lseF, { N, V })
  let dx = ops.rmsnormBack(
    ops.linearBack(dlogits, weights.lmHead.data, N, V, D),
    fw.xFinal,
    weights.norm.data,
    fw.rstdF,
    {
      N,
      D,
    },
  )
  for (let l = layers.length - 1; l >= 0; l--) {
    const sv = layers[l], lw = weights.layers[l]
    // FFN: dx is the gradient of xOut = xMid + ffn(n2)
    const dh = projectBack(l, "down_proj", sv.h, dx)
    const { dg, du } = ops.swigluBack(dh, sv.g, sv.u, { N, F, act })
    const dn2 = ops.add(projectBack(l, "gate_proj", sv.n2, dg), projectBack(l, "up_proj", sv.n2, du))
    for (const sg of segs) {
      const m = sv.moe.get(sg.s)
      if (!m) continue
      const r = mixloraBackward(
        rowsOf(dx, sg, D),
        rowsOf(sv.n2, sg, D),
        ffnBase(weights, l),
        m.layer,
        m.saved,
        m.o,
        fw.auxGrad[sg.s],
      )
      dn2.set(r.dx, sg.row0 * D)
      const gl = grads[sg.slot].layers[l]
      addTo(gl.router!, r.router)
      r.experts.forEach((ex, e) => {
        for (const p of FFN_PROJECTIONS) {
          if (!ex[p]) continue
          addTo(gl.experts![e][p]!.a, ex[p]!.a)
          addTo(gl.experts![e][p]!.b, ex[p]!.b)
        }
      })
    }
    dx = ops.add(dx, ops.rmsnormBack(dn2, sv.xMid, lw.postAttentionNorm.data, sv.rstd2, { N, D }))
    // attention: dx is now the gradient of xMid = xIn + o_proj(attn)
    const dattn = projectBack(l, "o_proj", sv.attn, dx)
    const b = ops.attentionBack(dattn, sv.q, sv.k, sv.v, sv.attn, sv.lse, batch, { H, KV, Dh })
    const dq = ops.ropeBack(b.dq, positions, { N, heads: H, Dh, theta })
    const dk = ops.ropeBack(b.dk, positions, { N, heads: KV, Dh, theta })
    const dn1 = ops.add(
      ops.add(projectBack(l, "q_proj", sv.n1, dq), projectBack(l, "k_proj", sv.n1, dk)),
      projectBack(l, "v_proj", sv.n1, b.dv),
    )
    dx = ops.add(dx, ops.rmsnormBack(dn1, sv.xIn, lw.inputNorm.data, sv.rstd1, { N, D }))
  }
  return grads.map((g, slot) => toF32(g, fw.adapters[slot]))
}

// ---- segments, adapters, gradients -----------------------------------------------------------------

function segmentsOf(batch: BatchDescriptor, adapters: readonly AdapterWeights[], L: number): Segment[] {
  const T = batch.seqLen
  return batch.segments.map((seg, s) => {
    if (seg.start < 0 || seg.end > batch.rows || seg.start >= seg.end) {
      throw new RangeError(`segment ${s} [${seg.start}, ${seg.end}) not inside [0, ${batch.rows})`)
    }
    const adapter = seg.slot >= 0 ? adapters[seg.slot] : null
    if (seg.slot >= 0 && !adapter) throw new RangeError(`segment ${s}: no adapter in slot ${seg.slot}`)
    if (adapter && adapter.layers.length !== L) {
      throw new RangeError(`adapter ${adapter.spec.name}: ${adapter.layers.length} layers, model has ${L}`)
    }
    const rows = { T, padSide: batch.padSide, lengths: batch.lengths.slice(seg.start, seg.end) }
    return { s, slot: seg.slot, adapter, row0: seg.start * T, n: (seg.end - seg.start) * T, rows }
  })
}

const isFfn = (p: Projection): p is FfnProjection => (FFN_PROJECTIONS as readonly string[]).includes(p)

/** The plain LoRA pair of segment `sg` on layer l's projection p (MixLoRA: attention projections only). */
function loraPair(sg: Segment, l: number, p: Projection) {
  if (!sg.adapter) return undefined
  const pair = sg.adapter.layers[l].lora[p]
  if (pair && sg.adapter.spec.kind === "mixlora" && isFfn(p)) {
    throw new RangeError(`adapter ${sg.adapter.spec.name}: MixLoRA layer ${l} has plain LoRA on ${p}`)
  }
  return pair
}

function loraDims(sg: Segment, p: Projection, config: LlamaConfig, precision: Precision): LoraDims {
  const spec = sg.adapter!.spec
  const { inDim, outDim } = projectionShape(p, config)
  return { N: sg.n, inDim, outDim, R: spec.r, scale: loraScale(spec), precision }
}

function moeLayer(aw: AdapterLayerWeights, name: string, l: number): MixloraLayer {
  if (!aw.router || !aw.experts) throw new RangeError(`adapter ${name}: MixLoRA layer ${l} without router/experts`)
  return { router: aw.router, experts: aw.experts }
}

function ffnBase(weights: Weights, l: number) {
  const p = weights.layers[l].proj
  return { w1: p.gate_proj.data, w2: p.down_proj.data, w3: p.up_proj.data }
}

/** MixLoRA options of segment `sg` on layer l: dims, real-token mask, jitter factors and expert dropout masks. */
function moeOptions(
  sg: Segment,
  l: number,
  config: LlamaConfig,
  batch: BatchDescriptor,
  real: Uint8Array,
  opts: TrainStepOptions,
): MixloraOptions {
  const spec = sg.adapter!.spec, moe = spec.moe!
  const D = config.hiddenSize, F = config.intermediateSize
  const experts = sg.adapter!.layers[l].experts ?? []
  const drop = opts.dropout && spec.dropout > 0 ? moeLayerSeed(opts.dropout.seed, l) : null
  const masks = drop === null ? null : experts.map((ex, e) =>
    Object.fromEntries(
      FFN_PROJECTIONS.filter((p) => ex[p]).map((p) => [
        p,
        dropoutMask({
          p: spec.dropout,
          seed: drop,
          stream: expertStream(e, p),
          rows: sg.rows,
          cols: p === "down_proj" ? F : D,
        }),
      ]),
    )
  )
  const noise = opts.jitter && moe.jitterNoise > 0
    ? jitterNoise({ j: moe.jitterNoise, seed: moeLayerSeed(opts.jitter.seed, l), rows: sg.rows, D })
    : null
  return {
    moe,
    N: sg.n,
    D,
    F,
    R: spec.r,
    T: batch.seqLen,
    scale: loraScale(spec),
    real: real.subarray(sg.row0, sg.row0 + sg.n),
    noise,
    masks,
    precision: opts.precision,
  }
}

/** Gradient accumulators (f64) shaped like `aw`. */
function zeroGrads(aw: AdapterWeights) {
  const pair = (p: { a: ArrayLike<number>; b: ArrayLike<number> }) => ({
    a: new Float64Array(p.a.length),
    b: new Float64Array(p.b.length),
  })
  return {
    layers: aw.layers.map((lw) => ({
      lora: Object.fromEntries(Object.entries(lw.lora).map(([p, v]) => [p, pair(v!)])) as Partial<
        Record<Projection, { a: Float64Array; b: Float64Array }>
      >,
      router: lw.router ? new Float64Array(lw.router.length) : undefined,
      experts: lw.experts?.map((ex) =>
        Object.fromEntries(Object.entries(ex).map(([p, v]) => [p, pair(v!)])) as Partial<
          Record<FfnProjection, { a: Float64Array; b: Float64Array }>
        >
      ),
    })),
  }
}

function toF32(g: ReturnType<typeof zeroGrads>, aw: AdapterWeights): AdapterWeights {
  const f = (v: Float64Array) => Float32Array.from(v)
  const pairs = <K extends string>(r: Partial<Record<K, { a: Float64Array; b: Float64Array }>>) =>
    Object.fromEntries(
      Object.entries(r).map(([p, v]) => {
        const pv = v as { a: Float64Array; b: Float64Array }
        return [p, { a: f(pv.a), b: f(pv.b) }]
      }),
    ) as Partial<Record<K, { a: Float32Array; b: Float32Array }>>
  return {
    spec: aw.spec,
    layers: g.layers.map((lg) => ({
      lora: pairs<Projection>(lg.lora),
      ...(lg.router ? { router: f(lg.router) } : {}),
      ...(lg.experts ? { experts: lg.experts.map((ex) => pairs<FfnProjection>(ex)) } : {}),
    })),
  }
}

/** Rows [row0, row0 + n) of an (N, width) buffer, as a view. */
const rowsOf = (v: Vec, sg: Segment, width: number): Vec => v.subarray(sg.row0 * width, (sg.row0 + sg.n) * width)

/** dst[at + k] += src[k] (in dst's precision, like the kernels' +=). */
function addRows(dst: Vec, src: ArrayLike<number>, at: number): void {
  for (let k = 0; k < src.length; k++) dst[at + k] += src[k]
}

function addTo(dst: Float64Array, src: ArrayLike<number>): void {
  for (let k = 0; k < src.length; k++) dst[k] += src[k]
}

// ---- the frozen layers in each precision -----------------------------------------------------------

interface Ops {
  add(x: Vec, y: Vec): Vec
  linear(x: Vec, w: Float32Array, M: number, N: number, K: number): Vec
  linearBack(dy: Vec, w: Float32Array, M: number, N: number, K: number): Vec
  rmsnorm(x: Vec, w: Float32Array, d: { N: number; D: number; eps: number }): { y: Vec; rstd: Vec }
  rmsnormBack(dy: Vec, x: Vec, w: Float32Array, rstd: Vec, d: { N: number; D: number }): Vec
  rope(x: Vec, pos: Int32Array, d: RopeDims): Vec
  ropeBack(dy: Vec, pos: Int32Array, d: RopeDims): Vec
  attention(q: Vec, k: Vec, v: Vec, layout: RowLayout, d: AttnDims): { out: Vec; lse: Vec }
  attentionBack(
    dout: Vec,
    q: Vec,
    k: Vec,
    v: Vec,
    out: Vec,
    lse: Vec,
    layout: RowLayout,
    d: AttnDims,
  ): { dq: Vec; dk: Vec; dv: Vec }
  swiglu(g: Vec, u: Vec, d: { N: number; F: number; act: ActName }): Vec
  swigluBack(dh: Vec, g: Vec, u: Vec, d: { N: number; F: number; act: ActName }): { dg: Vec; du: Vec }
  ce(logits: Vec, targets: Int32Array, d: { N: number; V: number }): { loss: Vec; lse: Vec }
  ceMean(loss: Vec, targets: Int32Array, ranges: { start: number; end: number }[]): { loss: number; count: number }[]
  gradScale(targets: Int32Array, ranges: { start: number; end: number }[], o: { factors: number[] }): Vec
  ceBack(gscale: Vec, logits: Vec, targets: Int32Array, lse: Vec, d: { N: number; V: number }): Vec
}
type RopeDims = { N: number; heads: number; Dh: number; theta: number }
type AttnDims = { H: number; KV: number; Dh: number }

/** f32: the layer references themselves (every Vec is a Float32Array in this precision). */
const f = (v: Vec) => v as Float32Array
const OPS32: Ops = {
  add: (x, y) => residualForward(f(x), f(y)),
  linear: (x, w, M, N, K) => linear(f(x), w, M, N, K),
  linearBack: (dy, w, M, N, K) => linearBackwardInput(f(dy), w, M, N, K),
  rmsnorm: (x, w, d) => rmsnormForward(f(x), w, d),
  rmsnormBack: (dy, x, w, rstd, d) => rmsnormBackward(f(dy), f(x), w, f(rstd), d),
  rope: (x, pos, d) => ropeForward(f(x), pos, d),
  ropeBack: (dy, pos, d) => ropeBackward(f(dy), pos, d),
  attention: (q, k, v, layout, d) => attentionForward(f(q), f(k), f(v), layout, d),
  attentionBack: (dout, q, k, v, out, lse, layout, d) =>
    attentionBackward(f(dout), f(q), f(k), f(v), f(out), f(lse), layout, d),
  swiglu: (g, u, d) => swigluForward(f(g), f(u), d),
  swigluBack: (dh, g, u, d) => swigluBackward(f(dh), f(g), f(u), d),
  ce: (logits, targets, d) => crossEntropyForward(f(logits), targets, d),
  ceMean: (loss, targets, ranges) =>
    crossEntropyMean(f(loss), targets, ranges).map(({ mean, count }) => ({ loss: mean, count })),
  gradScale: (targets, ranges, o) => crossEntropyGradScale(targets, ranges, o),
  ceBack: (gscale, logits, targets, lse, d) => crossEntropyBackward(f(gscale), f(logits), targets, f(lse), d),
}

/** f64: the same formulas as the layer references, without any f32 rounding (finite-difference tests only). */
const OPS64: Ops = {
  add: (x, y) => x.map((v, i) => v + y[i]),
  linear: (x, w, M, N, K) => {
    const y = new Float64Array(M * N)
    for (let i = 0; i < M; i++) {
      for (let j = 0; j < N; j++) {
        let acc = 0
        for (let t = 0; t < K; t++) acc += x[i * K + t] * w[j * K + t]
        y[i * N + j] = acc
      }
    }
    return y
  },
  linearBack: (dy, w, M, N, K) => {
    const dx = new Float64Array(M * K)
    for (let i = 0; i < M; i++) {
      for (let j = 0; j < N; j++) for (let t = 0; t < K; t++) dx[i * K + t] += dy[i * N + j] * w[j * K + t]
    }
    return dx
  },
  rmsnorm: (x, w, { N, D, eps }) => {
    const y = new Float64Array(N * D), rstd = new Float64Array(N)
    for (let n = 0; n < N; n++) {
      let ss = 0
      for (let d = 0; d < D; d++) ss += x[n * D + d] ** 2
      rstd[n] = 1 / Math.sqrt(ss / D + eps)
      for (let d = 0; d < D; d++) y[n * D + d] = x[n * D + d] * rstd[n] * w[d]
    }
    return { y, rstd }
  },
  // dx = r · (w ⊙ dy − x · r² · Σ_d(x ⊙ w ⊙ dy) / D)
  rmsnormBack: (dy, x, w, rstd, { N, D }) => {
    const dx = new Float64Array(N * D)
    for (let n = 0; n < N; n++) {
      const r = rstd[n]
      let s = 0
      for (let d = 0; d < D; d++) s += x[n * D + d] * w[d] * dy[n * D + d]
      for (let d = 0; d < D; d++) dx[n * D + d] = r * (w[d] * dy[n * D + d] - x[n * D + d] * r * r * s / D)
    }
    return dx
  },
  rope: (x, pos, d) => rotate64(x, pos, d, 1),
  ropeBack: (dy, pos, d) => rotate64(dy, pos, d, -1),
  attention: (q, k, v, layout, d) => attention64(q, k, v, layout, d, null).fw,
  attentionBack: (dout, q, k, v, _out, _lse, layout, d) => attention64(q, k, v, layout, d, dout).bw!,
  swiglu: (g, u, { act }) => g.map((gv, i) => activate(gv, act) * u[i]),
  swigluBack: (dh, g, u, { act }) => ({
    dg: dh.map((d, i) => d * u[i] * activateGrad(g[i], act)),
    du: dh.map((d, i) => d * activate(g[i], act)),
  }),
  ce: (logits, targets, { N, V }) => {
    const loss = new Float64Array(N), lse = new Float64Array(N)
    for (let n = 0; n < N; n++) {
      let m = -Infinity, s = 0
      for (let v = 0; v < V; v++) m = Math.max(m, logits[n * V + v])
      for (let v = 0; v < V; v++) s += Math.exp(logits[n * V + v] - m)
      lse[n] = m + Math.log(s)
      if (targets[n] >= 0) loss[n] = lse[n] - logits[n * V + targets[n]]
    }
    return { loss, lse }
  },
  ceMean: (loss, targets, ranges) =>
    ranges.map(({ start, end }) => {
      let sum = 0, count = 0
      for (let n = start; n < end; n++) {
        if (targets[n] < 0) continue
        sum += loss[n]
        count++
      }
      return { loss: count > 0 ? sum / count : 0, count }
    }),
  gradScale: (targets, ranges, { factors }) => {
    const g = new Float64Array(targets.length)
    ranges.forEach(({ start, end }, s) => {
      let count = 0
      for (let n = start; n < end; n++) if (targets[n] >= 0) count++
      for (let n = start; n < end; n++) g[n] = targets[n] >= 0 ? factors[s] / count : 0
    })
    return g
  },
  ceBack: (gscale, logits, targets, lse, { N, V }) => {
    const dl = new Float64Array(N * V)
    for (let n = 0; n < N; n++) {
      if (targets[n] < 0) continue
      for (let v = 0; v < V; v++) {
        dl[n * V + v] = (Math.exp(logits[n * V + v] - lse[n]) - (v === targets[n] ? 1 : 0)) * gscale[n]
      }
    }
    return dl
  },
}

/** rope.ts's rotation by sign · a_i, a_i = pos · inv_freq_i, in f64. */
function rotate64(x: Vec, pos: Int32Array, { N, heads, Dh, theta }: RopeDims, sign: 1 | -1): Vec {
  const half = Dh / 2, inv = ropeInvFreq(Dh, theta), out = new Float64Array(x.length)
  for (let n = 0; n < N; n++) {
    for (let i = 0; i < half; i++) {
      const c = Math.cos(pos[n] * inv[i]), s = sign * Math.sin(pos[n] * inv[i])
      for (let h = 0; h < heads; h++) {
        const o = (n * heads + h) * Dh
        out[o + i] = x[o + i] * c - x[o + i + half] * s
        out[o + i + half] = x[o + i + half] * c + x[o + i] * s
      }
    }
  }
  return out
}

/**
 * attention.ts in f64: forward (out, lse) and, given dout, the backward with P recomputed in place
 * (dS = P ⊙ (dP − Δ), Δ_i = dout_i · out_i, dq = scale · dS k, dk += scale · dSᵀ q, dv += Pᵀ dout).
 */
function attention64(q: Vec, k: Vec, v: Vec, layout: RowLayout, { H, KV, Dh }: AttnDims, dout: Vec | null) {
  const { rows, seqLen: T } = layout
  const group = H / KV, scale = 1 / Math.sqrt(Dh)
  const out = new Float64Array(rows * T * H * Dh), lse = new Float64Array(rows * H * T)
  const dq = new Float64Array(out.length), dk = new Float64Array(k.length), dv = new Float64Array(v.length)
  for (let r = 0; r < rows; r++) {
    const start = rowStart(layout, r), end = start + layout.lengths[r]
    for (let h = 0; h < H; h++) {
      const g = Math.floor(h / group)
      for (let i = start; i < end; i++) {
        const qo = ((r * T + i) * H + h) * Dh
        const ko = (j: number) => ((r * T + j) * KV + g) * Dh
        const s: number[] = []
        for (let j = start; j <= i; j++) {
          let dot = 0
          for (let d = 0; d < Dh; d++) dot += q[qo + d] * k[ko(j) + d]
          s.push(dot * scale)
        }
        const m = Math.max(...s)
        const l = m + Math.log(s.reduce((a, sj) => a + Math.exp(sj - m), 0))
        lse[(r * H + h) * T + i] = l
        for (let j = start; j <= i; j++) {
          for (let d = 0; d < Dh; d++) out[qo + d] += Math.exp(s[j - start] - l) * v[ko(j) + d]
        }
        if (!dout) continue
        let delta = 0
        for (let d = 0; d < Dh; d++) delta += dout[qo + d] * out[qo + d]
        for (let j = start; j <= i; j++) {
          const p = Math.exp(s[j - start] - l)
          let dp = 0
          for (let d = 0; d < Dh; d++) dp += dout[qo + d] * v[ko(j) + d]
          const ds = p * (dp - delta) * scale
          for (let d = 0; d < Dh; d++) {
            dv[ko(j) + d] += p * dout[qo + d]
            dq[qo + d] += ds * k[ko(j) + d]
            dk[ko(j) + d] += ds * q[qo + d]
          }
        }
      }
    }
  }
  return { fw: { out, lse }, bw: dout ? { dq, dk, dv } : null }
}
