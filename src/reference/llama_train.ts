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
import { nextTokenTargets, realTokenMask, tokenPositions } from "./batch.ts"
import { embeddingForward } from "./embedding.ts"
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
import { activationOf } from "./swiglu.ts"
import { type Ops, OPS32, OPS64 } from "./train_ops.ts"

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
