import assert from "node:assert/strict"
import { type AdapterSpec, type AdapterWeights, FFN_PROJECTIONS, type RoutingStrategy } from "../src/model/adapter.ts"
import { initAdapter } from "../src/model/adapter_init.ts"
import { type BatchDescriptor, PROJECTIONS } from "../src/model/types.ts"
import { packBatch } from "../src/reference/batch.ts"
import { centralDifference, maxRelError } from "../src/reference/finite_diff.ts"
import { dropoutMask, jitterNoise } from "../src/reference/lora.ts"
import {
  moeLayerSeed,
  referenceTrainForward,
  referenceTrainStep,
  type RoutingRecord,
  type TrainStepOptions,
} from "../src/reference/llama_train.ts"
import { referenceLoss } from "../src/reference/llama.ts"
import { DROPPED } from "../src/reference/mixlora.ts"
import { randomLlama, tinyLlamaConfig } from "../src/reference/random_model.ts"
import { Rng } from "../src/util/rng.ts"

// Odd small shapes: D = 13, F = 11, H = 4 over KV = 2 with Dh = 4 (H·Dh = 16 ≠ D), two layers, V = 23.
const config = tinyLlamaConfig({
  hiddenSize: 13,
  intermediateSize: 11,
  numHeads: 4,
  numKvHeads: 2,
  headDim: 4,
  numLayers: 2,
  vocabSize: 23,
})
const weights = randomLlama(config, 21)
const seqs = (() => {
  const rng = Rng.fromSeed(22)
  return [6, 4, 2, 5].map((n) => Array.from({ length: n }, () => rng.nextInt(config.vocabSize)))
})()
// row 0: LoRA (slot 0), rows 1–2: MixLoRA (slot 1), row 3: base only
const SEGMENTS = [{ start: 0, end: 1, slot: 0 }, { start: 1, end: 3, slot: 1 }, { start: 3, end: 4, slot: -1 }]

function batchOf(
  rows: number[][],
  segments: BatchDescriptor["segments"],
  o: { padSide: "left" | "right"; seqLen?: number; padId?: number },
): BatchDescriptor {
  return { ...packBatch(rows, { padSide: o.padSide, seqLen: o.seqLen ?? 7, padId: o.padId }), segments }
}

const loraSpec: AdapterSpec = {
  name: "lora",
  kind: "lora",
  r: 2,
  alpha: 3,
  useRslora: false,
  dropout: 0.1,
  targets: ["q_proj", "v_proj", "down_proj"],
}

function mixSpec(routing: RoutingStrategy): AdapterSpec {
  return {
    name: `mix-${routing}`,
    kind: "mixlora",
    r: 2,
    alpha: 4,
    useRslora: true,
    dropout: 0.1,
    targets: ["q_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    moe: {
      routing,
      numExperts: 3,
      topK: routing === "switch" ? 1 : 2,
      topP: 0.5,
      // capacity 1 with 4 real tokens in a row over 3 experts: some token is always dropped
      expertCapacity: 1,
      actFn: "silu",
      // large enough that an error in the aux gradient shows in the total's gradient
      routerAuxLossCoef: 0.5,
      routerInitRange: 0.02,
      jitterNoise: 0.1,
    },
  }
}

/** initAdapter, then B and the router made non-trivial (B = 0 would make every A gradient 0). */
function adapterOf(spec: AdapterSpec, seed: number): AdapterWeights {
  const a = initAdapter(spec, config, Rng.fromSeed(seed))
  const rng = Rng.fromSeed(seed + 1000)
  for (const l of a.layers) {
    for (const p of Object.values(l.lora)) p!.b.forEach((_, i, b) => b[i] = rng.normal(0, 0.5))
    l.router?.forEach((_, i, g) => g[i] = rng.normal(0, 0.3))
    for (const ex of l.experts ?? []) {
      for (const p of Object.values(ex)) p!.b.forEach((_, i, b) => b[i] = rng.normal(0, 0.5))
    }
  }
  return a
}

interface Tensor {
  readonly name: string
  readonly layer: number
  readonly expert: number
  readonly data: Float32Array
}

/** Every tensor of an adapter (or of its gradients) in a fixed order, expert −1 for non-expert tensors. */
function tensors(a: AdapterWeights): Tensor[] {
  const out: Tensor[] = []
  a.layers.forEach((l, layer) => {
    for (const p of PROJECTIONS) {
      const pair = l.lora[p]
      if (pair) {
        out.push({ name: `${p}.A`, layer, expert: -1, data: pair.a }, {
          name: `${p}.B`,
          layer,
          expert: -1,
          data: pair.b,
        })
      }
    }
    if (l.router) out.push({ name: "router", layer, expert: -1, data: l.router })
    l.experts?.forEach((ex, e) => {
      for (const p of FFN_PROJECTIONS) {
        const pair = ex[p]
        if (pair) {
          out.push({ name: `e${e}.${p}.A`, layer, expert: e, data: pair.a })
          out.push({ name: `e${e}.${p}.B`, layer, expert: e, data: pair.b })
        }
      }
    })
  })
  return out
}

/** max over tensors of max|a − b| / max|b| (the gradient agreement measure). */
function gradError(a: AdapterWeights, b: AdapterWeights): number {
  const ta = tensors(a), tb = tensors(b)
  assert.equal(ta.length, tb.length)
  return Math.max(...ta.map((t, i) => maxRelError(t.data, tb[i].data)))
}

const MARGIN = 0.02
const sortedDesc = (P: ArrayLike<number>, i: number, E: number) =>
  Array.from({ length: E }, (_, e) => P[i * E + e]).sort((x, y) => y - x)

/**
 * Smallest distance of any real token's routing to a decision boundary of `routing`, so that a finite-difference
 * step cannot flip a selection. An ordering flips when two logits cross, so ordering gaps are measured as
 * ln(P_a / P_b) (a logit difference); the dynamic top-p cut is a threshold on probabilities, measured as
 * |prefix sum − top_p|. mixlora: the K-th vs (K+1)-th; switch: 1st vs 2nd; dynamic: every prefix sum and the
 * last picked vs the first unpicked.
 */
function routingMargin(records: RoutingRecord[], spec: AdapterSpec): number {
  const moe = spec.moe!, E = moe.numExperts
  const gap = (a: number, b: number) => Math.log(a / b)
  let margin = Infinity
  for (const rec of records) {
    for (let i = 0; i < rec.real.length; i++) {
      if (!rec.real[i]) continue
      const s = sortedDesc(rec.P, i, E)
      if (moe.routing === "mixlora") margin = Math.min(margin, gap(s[moe.topK - 1], s[moe.topK]))
      else if (moe.routing === "switch") margin = Math.min(margin, gap(s[0], s[1]))
      else {
        let cum = 0, picks = 0
        for (let k = 0; k < E - 1; k++) {
          if (cum <= moe.topP) picks++
          cum += s[k]
          margin = Math.min(margin, Math.abs(cum - moe.topP))
        }
        if (picks < E) margin = Math.min(margin, gap(s[picks - 1], s[picks]))
      }
    }
  }
  return margin
}

/** Picks per real token (dropped over capacity counts as a pick) and dropped tokens, over all records. */
function routingCounts(records: RoutingRecord[], E: number): { picks: Set<number>; dropped: number } {
  const picks = new Set<number>()
  let dropped = 0
  for (const rec of records) {
    for (let i = 0; i < rec.real.length; i++) {
      if (!rec.real[i]) continue
      const row = Array.from(rec.sel.subarray(i * E, (i + 1) * E))
      picks.add(row.filter((s) => s !== 0).length)
      dropped += row.filter((s) => s === DROPPED).length
    }
  }
  return { picks, dropped }
}

/**
 * The adapters of a test with routing `routing`, the router re-seeded until every token is at least MARGIN from
 * a routing decision boundary (and, for switch, some token is dropped; for dynamic, tokens take 1 and 2 experts).
 */
function chooseAdapters(routing: RoutingStrategy, batch: BatchDescriptor, opts: TrainStepOptions) {
  const spec = mixSpec(routing)
  for (let seed = 1; seed <= 200; seed++) {
    const adapters = [adapterOf(loraSpec, 100 + seed), adapterOf(spec, 200 + seed)]
    const fw = referenceTrainForward(config, weights, batch, adapters, { ...opts, precision: "f64" })
    const { picks, dropped } = routingCounts(fw.routing, 3)
    const covered = routing === "switch" ? dropped > 0 : routing === "dynamic" ? picks.has(1) && picks.has(2) : true
    const margin = routingMargin(fw.routing, spec)
    if (margin < MARGIN || !covered) continue
    // every expert reaches some token whose output has a gradient path (else its check is only "both are 0")
    const g = referenceTrainStep(config, weights, batch, adapters, { ...opts, precision: "f64" }).grads[1]
    if (tensors(g).every((t) => t.data.some((v) => v !== 0))) return { adapters, seed, margin }
  }
  throw new Error(`no router seed in 1..200 keeps ${routing} routing ${MARGIN} away from its boundaries`)
}

const FD_OPTS: TrainStepOptions = { dropout: { seed: 7 }, jitter: { seed: 8 }, factors: [0.5, 2, 0.75] }

for (const routing of ["mixlora", "switch", "dynamic"] as const) {
  Deno.test(`referenceTrainStep (${routing}): every adapter gradient matches central differences of the total`, () => {
    const batch = batchOf(seqs, SEGMENTS, { padSide: "left" })
    const { adapters, margin } = chooseAdapters(routing, batch, FD_OPTS)
    const g32 = referenceTrainStep(config, weights, batch, adapters, FD_OPTS)
    const g64 = referenceTrainStep(config, weights, batch, adapters, { ...FD_OPTS, precision: "f64" })
    assert.ok(Math.abs(g32.total - g64.total) < 1e-5 * g64.total, `f32 ${g32.total} vs f64 ${g64.total}`)

    // dropout and jitter are really on: without them the objective differs
    const plain = referenceTrainForward(config, weights, batch, adapters, {
      factors: FD_OPTS.factors,
      precision: "f64",
    })
    assert.ok(Math.abs(plain.total - g64.total) > 1e-4, "dropout / jitter changed nothing")

    // the aux loss recomputed from the routing records: coef · E · Σ_e (C_e / T) · (ΣP_e / T)
    const E = 3, coef = mixSpec(routing).moe!.routerAuxLossCoef
    const C = new Float64Array(E), SP = new Float64Array(E)
    let T = 0
    for (const rec of g64.routing) {
      for (let i = 0; i < rec.real.length; i++) {
        if (!rec.real[i]) continue
        T++
        for (let e = 0; e < E; e++) {
          if (rec.sel[i * E + e] !== 0) C[e]++
          SP[e] += rec.P[i * E + e]
        }
      }
    }
    assert.equal(T, 2 * (4 + 2), "real tokens of the MixLoRA rows over both layers")
    const aux = coef * E * C.reduce((s, c, e) => s + c * SP[e], 0) / (T * T)
    assert.ok(Math.abs(g64.aux[1] - aux) < 1e-12, `aux ${g64.aux[1]} vs ${aux}`)
    assert.deepEqual([g64.aux[0], g64.aux[2]], [0, 0])

    // central differences of the f64 total; every evaluation must keep the routing of the base point
    const selAt = (records: RoutingRecord[]) => records.map((r) => Array.from(r.sel).join(",")).join("|")
    const baseSel = selAt(g64.routing)
    let flips = 0
    const total = () => {
      const fw = referenceTrainForward(config, weights, batch, adapters, { ...FD_OPTS, precision: "f64" })
      if (selAt(fw.routing) !== baseSel) flips++
      return fw.total
    }
    const worst = { f32: 0, f64: 0 }
    let checked = 0, unrouted = 0
    adapters.forEach((adapter, slot) => {
      const params = tensors(adapter), a32 = tensors(g32.grads[slot]), a64 = tensors(g64.grads[slot])
      params.forEach((p, i) => {
        const fd = centralDifference(total, p.data, { eps: 2 ** -12 })
        const scale = Math.max(...Array.from(fd, Math.abs))
        if (scale === 0) {
          // only an expert that no token with a gradient path reached (e.g. only a row's last token, which
          // predicts nothing, on the last layer) has exactly no influence; then its gradient is exactly zero
          unrouted++
          assert.ok(p.expert >= 0, `${slot} L${p.layer} ${p.name}: no influence on the total`)
          assert.ok(a32[i].data.every((g) => g === 0) && a64[i].data.every((g) => g === 0), `${p.name}`)
          return
        }
        const e32 = maxRelError(a32[i].data, fd), e64 = maxRelError(a64[i].data, fd)
        worst.f32 = Math.max(worst.f32, e32)
        worst.f64 = Math.max(worst.f64, e64)
        checked++
        assert.ok(e32 <= 1e-3, `${slot} L${p.layer} ${p.name}: f32 rel error ${e32}`)
        assert.ok(e64 <= 1e-4, `${slot} L${p.layer} ${p.name}: f64 rel error ${e64}`)
      })
    })
    assert.equal(flips, 0, "a finite-difference step changed the routing")
    console.log(
      `${routing}: margin ${
        margin.toFixed(3)
      }, ${checked} tensors checked (${unrouted} expert tensors without influence), ` +
        `max rel error f32 ${worst.f32.toExponential(2)}, f64 ${worst.f64.toExponential(2)}`,
    )
  })
}

Deno.test("referenceTrainStep: segments are independent (losses and gradients as if each ran alone)", () => {
  for (const routing of ["mixlora", "switch", "dynamic"] as const) {
    // with dropout and jitter: masks are keyed by the token's sequence within its segment and its position in
    // that sequence, so they follow a segment to another start row, another padded T and the other pad side
    const random = { dropout: { seed: 3 }, jitter: { seed: 4 } }
    const packed = batchOf(seqs, SEGMENTS, { padSide: "right" })
    const { adapters } = chooseAdapters(routing, packed, random)
    const full = referenceTrainStep(config, weights, packed, adapters, { ...random, factors: [0.5, 2, 0.75] })
    // each segment alone in its own batch, from row 0 (the padding test below moves them to other T and sides)
    const lora = referenceTrainStep(
      config,
      weights,
      batchOf([seqs[0]], [{ start: 0, end: 1, slot: 0 }], {
        padSide: "right",
      }),
      adapters,
      { ...random, factors: [0.5] },
    )
    const mix = referenceTrainStep(
      config,
      weights,
      batchOf(seqs.slice(1, 3), [{ start: 0, end: 2, slot: 1 }], {
        padSide: "right",
      }),
      adapters,
      { ...random, factors: [2] },
    )
    const base = referenceTrainForward(
      config,
      weights,
      batchOf([seqs[3]], [{ start: 0, end: 1, slot: -1 }], {
        padSide: "right",
      }),
      adapters,
    )
    assert.deepEqual(full.losses, [lora.losses[0], mix.losses[0], base.losses[0]], routing)
    assert.deepEqual(full.aux, [0, mix.aux[0], 0], routing)
    const errs = [gradError(full.grads[0], lora.grads[0]), gradError(full.grads[1], mix.grads[1])]
    // in one layout: the other adapter's rows turned base-only change nothing
    const opts = random
    const both = referenceTrainStep(config, weights, packed, adapters, opts)
    const noMix = referenceTrainStep(config, weights, { ...packed, segments: [SEGMENTS[0]] }, adapters, opts)
    const noLora = referenceTrainStep(config, weights, { ...packed, segments: SEGMENTS.slice(1) }, adapters, opts)
    errs.push(gradError(both.grads[0], noMix.grads[0]), gradError(both.grads[1], noLora.grads[1]))
    const noDrop = referenceTrainStep(config, weights, packed, adapters, {})
    assert.ok(gradError(both.grads[0], noDrop.grads[0]) > 1e-3, "dropout had no effect on the LoRA gradients")
    assert.ok(gradError(both.grads[1], noDrop.grads[1]) > 1e-3, "dropout / jitter had no effect on MixLoRA")
    assert.ok(Math.max(...errs) <= 1e-6, `${routing}: ${errs}`)
    console.log(`${routing}: max rel gradient difference packed vs alone ${Math.max(...errs).toExponential(2)}`)
    // the absent adapter gets exactly zero gradients
    assert.ok(tensors(noMix.grads[1]).every((t) => t.data.every((g) => g === 0)))
  }
})

Deno.test("referenceTrainStep: left and right padding (any T, any pad id) give the same losses and gradients", () => {
  const ref = batchOf(seqs, SEGMENTS, { padSide: "left" })
  // dropout and jitter on: their masks follow each token's position in its sequence, not its padded column
  const random = { dropout: { seed: 5 }, jitter: { seed: 6 } }
  let worst = 0
  for (const routing of ["mixlora", "switch", "dynamic"] as const) {
    const { adapters } = chooseAdapters(routing, ref, random)
    const a = referenceTrainStep(config, weights, ref, adapters, random)
    for (const [padSide, seqLen, padId] of [["right", 7, 0], ["right", 9, 22], ["left", 8, 5]] as const) {
      const batch = batchOf(seqs, SEGMENTS, { padSide, seqLen, padId })
      const b = referenceTrainStep(config, weights, batch, adapters, random)
      assert.deepEqual(b.losses, a.losses, `${routing} ${padSide} T=${seqLen}`)
      assert.deepEqual(b.aux, a.aux, `${routing} ${padSide} T=${seqLen}`)
      const err = Math.max(gradError(b.grads[0], a.grads[0]), gradError(b.grads[1], a.grads[1]))
      assert.ok(err <= 1e-6, `${routing} ${padSide} T=${seqLen}: gradient rel error ${err}`)
      worst = Math.max(worst, err)
    }
  }
  console.log(`max rel gradient difference across paddings ${worst.toExponential(2)}`)
})

Deno.test("mask keys: a segment's dropout masks and jitter are the same at another row0, a larger T, either pad side", () => {
  // direct: the masks of two sequences (lengths 4 and 2) at T = 5 right-padded and T = 8 left-padded
  const lens = [4, 2]
  const layouts = [{ T: 5, padSide: "right" }, { T: 8, padSide: "left" }, { T: 4, padSide: "left" }] as const
  const at = (o: (typeof layouts)[number], r: number, p: number) =>
    r * o.T + (o.padSide === "left" ? o.T - lens[r] + p : p)
  const cols = 6
  const masks = layouts.map((o) => dropoutMask({ p: 0.5, seed: 9, stream: 3, rows: { ...o, lengths: lens }, cols })!)
  const noise = layouts.map((o) => jitterNoise({ j: 0.2, seed: 9, rows: { ...o, lengths: lens }, D: cols }))
  lens.forEach((n, r) => {
    for (let p = 0; p < n; p++) {
      const rowOf = (v: Float32Array, k: number) =>
        Array.from(v.subarray(at(layouts[k], r, p) * cols, (at(layouts[k], r, p) + 1) * cols))
      for (const k of [1, 2]) {
        assert.deepEqual(rowOf(masks[k], k), rowOf(masks[0], 0), `mask of sequence ${r} position ${p}`)
        assert.deepEqual(rowOf(noise[k], k), rowOf(noise[0], 0), `jitter of sequence ${r} position ${p}`)
      }
    }
  })
  // through the training step: the MixLoRA segment's router probabilities (jittered) at batch rows 1–2 of the
  // packed batch (T = 7, right padding) equal those of the segment alone at rows 0–1 (T = 10, left padding)
  const random = { dropout: { seed: 11 }, jitter: { seed: 12 } }
  const packed = batchOf(seqs, SEGMENTS, { padSide: "right" })
  const alone = batchOf(seqs.slice(1, 3), [{ start: 0, end: 2, slot: 1 }], { padSide: "left", seqLen: 10 })
  const { adapters } = chooseAdapters("mixlora", packed, random)
  // per layer, the real tokens' P (E = 3), in token order
  const realP = (rec: RoutingRecord[]) =>
    rec.map((x) => Array.from(x.real).flatMap((on, i) => on ? Array.from(x.P.subarray(i * 3, (i + 1) * 3)) : []))
  const a = realP(referenceTrainForward(config, weights, packed, adapters, random).routing)
  const b = realP(referenceTrainForward(config, weights, alone, adapters, random).routing)
  const plain = realP(referenceTrainForward(config, weights, alone, adapters, {}).routing)
  assert.equal(a.length, b.length)
  let diff = 0, jitter = 0
  a.forEach((layer, l) =>
    layer.forEach((v, k) => {
      diff = Math.max(diff, Math.abs(v - b[l][k]))
      jitter = Math.max(jitter, Math.abs(plain[l][k] - b[l][k]))
    })
  )
  assert.ok(diff <= 1e-6, `router probabilities packed vs alone differ by ${diff}`)
  assert.ok(jitter > 1e-3, `jitter changed the router probabilities by only ${jitter}`)
})

Deno.test("moeLayerSeed: one seed per (step seed, layer), distinct across layers and seeds", () => {
  const seeds = new Set<number>()
  for (const s of [0, 1, 7, 0xffffffff]) for (let l = 0; l < 32; l++) seeds.add(moeLayerSeed(s, l))
  assert.equal(seeds.size, 4 * 32)
  assert.equal(moeLayerSeed(7, 3), moeLayerSeed(7, 3))
})

Deno.test("referenceTrainForward: base-only rows and fresh adapters (B = 0) reproduce referenceLoss exactly", () => {
  const batch = batchOf(seqs, [{ start: 0, end: 4, slot: -1 }], { padSide: "left" })
  const expected = referenceLoss(config, weights, batch)
  const fresh = [initAdapter(loraSpec, config, Rng.fromSeed(1))]
  const base = referenceTrainForward(config, weights, batch, fresh)
  assert.deepEqual(base.losses, [expected])
  // a fresh LoRA adapter is the identity on the base model, forward and (f32, no dropout) loss alike
  const withLora = referenceTrainForward(
    config,
    weights,
    { ...batch, segments: [{ start: 0, end: 4, slot: 0 }] },
    fresh,
  )
  assert.deepEqual(withLora.losses, [expected])
  assert.equal(withLora.total, expected.loss)
})
