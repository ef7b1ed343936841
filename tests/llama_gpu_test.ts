/**
 * The LLaMA forward on the device vs `referenceForward`, f32 and int8 (int8 against the reference run on
 * the same dequantised weights). Metric: max|y − ref| / max|ref| over every real position's logits ≤ 1e-4.
 */
import assert from "node:assert/strict"
import { GpuContext } from "../src/gpu/context.ts"
import { uploadHostBase } from "../src/model/base_weights.ts"
import { LlamaModel } from "../src/model/llama.ts"
import { dequantizeRows, quantizeRows } from "../src/model/quantize.ts"
import type { BatchDescriptor, LlamaConfig, LlamaWeights } from "../src/model/types.ts"
import { PROJECTIONS } from "../src/model/types.ts"
import { packBatch, realTokenMask } from "../src/reference/batch.ts"
import { referenceForward } from "../src/reference/llama.ts"
import { randomLlama, tinyLlamaConfig } from "../src/reference/random_model.ts"
import { Rng } from "../src/util/rng.ts"

const ctx = await GpuContext.create()

/** The weights the int8 path computes with: projections quantised then dequantised. */
function dequantised(w: LlamaWeights): LlamaWeights {
  return {
    ...w,
    layers: w.layers.map((l) => ({
      ...l,
      proj: Object.fromEntries(PROJECTIONS.map((p) => {
        const [rows, cols] = l.proj[p].shape
        return [p, { shape: l.proj[p].shape, data: dequantizeRows(quantizeRows(l.proj[p].data, rows, cols)) }]
      })) as LlamaWeights["layers"][number]["proj"],
    })),
  }
}

function randomSeqs(n: number, lengths: number[], V: number, seed: number): number[][] {
  const rng = Rng.fromSeed(seed)
  return lengths.slice(0, n).map((len) => Array.from({ length: len }, () => rng.nextInt(V)))
}

function maxRelErr(got: Float32Array, ref: Float32Array, batch: BatchDescriptor, V: number): number {
  const mask = realTokenMask(batch)
  let err = 0, scale = 0
  for (let p = 0; p < mask.length; p++) {
    if (!mask[p]) continue
    for (let v = 0; v < V; v++) {
      err = Math.max(err, Math.abs(got[p * V + v] - ref[p * V + v]))
      scale = Math.max(scale, Math.abs(ref[p * V + v]))
    }
  }
  return err / scale
}

async function check(config: LlamaConfig, load8bit: boolean, padSide: "left" | "right", seed: number) {
  const host = randomLlama(config, seed)
  const base = await uploadHostBase(ctx, config, host, { load8bit })
  const model = new LlamaModel(ctx, base)
  const batch = packBatch(randomSeqs(3, [13, 7, 1], config.vocabSize, seed + 1), { padSide })
  const got = await model.logits(batch)
  const ref = referenceForward(config, load8bit ? dequantised(host) : host, batch)
  const err = maxRelErr(got, ref, batch, config.vocabSize)
  assert.ok(err <= 1e-4, `${load8bit ? "int8" : "f32"} ${padSide}: max rel err ${err}`)
  return { model, host, err }
}

// hidden 45 (not a multiple of 16), vocabulary 97 (not a multiple of 4), GQA 6/2 heads of 10
const ODD = tinyLlamaConfig({
  hiddenSize: 45,
  intermediateSize: 37,
  numHeads: 6,
  numKvHeads: 2,
  headDim: 10,
  vocabSize: 97,
  numLayers: 2,
})

for (const load8bit of [false, true]) {
  for (const padSide of ["left", "right"] as const) {
    Deno.test(`gpu forward = reference, odd GQA model, ${load8bit ? "int8" : "f32"}, ${padSide} padding`, async () => {
      await check(ODD, load8bit, padSide, 7)
    })
  }
}

Deno.test("gpu forward: padded rows give the logits of the same rows run alone", async () => {
  const host = randomLlama(ODD, 11)
  const model = new LlamaModel(ctx, await uploadHostBase(ctx, ODD, host, { load8bit: true }))
  const seqs = randomSeqs(3, [13, 7, 4], ODD.vocabSize, 12)
  for (const padSide of ["left", "right"] as const) {
    const packed = packBatch(seqs, { padSide })
    const all = await model.logits(packed)
    for (const [r, seq] of seqs.entries()) {
      const alone = await model.logits(packBatch([seq], { padSide }))
      const off = padSide === "left" ? packed.seqLen - seq.length : 0
      const V = ODD.vocabSize
      for (let t = 0; t < seq.length; t++) {
        for (let v = 0; v < V; v++) {
          const a = all[((r * packed.seqLen) + off + t) * V + v], b = alone[t * V + v]
          assert.ok(Math.abs(a - b) <= 1e-5 * Math.max(1, Math.abs(b)), `row ${r} t ${t} ${padSide}: ${a} vs ${b}`)
        }
      }
    }
  }
})

Deno.test("gpu forward: one queue round trip per forward; per-segment loss matches the reference", async () => {
  const host = randomLlama(ODD, 21)
  const model = new LlamaModel(ctx, await uploadHostBase(ctx, ODD, host, { load8bit: false }))
  const seqs = randomSeqs(3, [13, 7, 5], ODD.vocabSize, 22)
  const batch = {
    ...packBatch(seqs, { padSide: "right" }),
    segments: [{ start: 0, end: 1, slot: 0 }, { start: 1, end: 3, slot: 1 }],
  }
  await model.loss(batch) // warm the pipelines
  const before = ctx.roundTrips
  const [a, b] = await model.loss(batch)
  assert.equal(ctx.roundTrips - before, 1)
  const logits = referenceForward(ODD, host, batch)
  const V = ODD.vocabSize, T = batch.seqLen
  const ce = (rows: number[]) => {
    let sum = 0, n = 0
    for (const r of rows) {
      for (let t = 0; t + 1 < seqs[r].length; t++) {
        const o = (r * T + t) * V
        let m = -Infinity
        for (let v = 0; v < V; v++) m = Math.max(m, logits[o + v])
        let z = 0
        for (let v = 0; v < V; v++) z += Math.exp(logits[o + v] - m)
        sum += m + Math.log(z) - logits[o + seqs[r][t + 1]]
        n++
      }
    }
    return { loss: sum / n, count: n }
  }
  const ra = ce([0]), rb = ce([1, 2])
  assert.equal(a.count, ra.count)
  assert.equal(b.count, rb.count)
  assert.ok(Math.abs(a.loss - ra.loss) <= 1e-4 * ra.loss, `${a.loss} vs ${ra.loss}`)
  assert.ok(Math.abs(b.loss - rb.loss) <= 1e-4 * rb.loss, `${b.loss} vs ${rb.loss}`)
})

Deno.test("gpu forward = reference on the embedded default model, f32 and int8", async () => {
  const { ensureDefaultModel } = await import("../src/model/default_model.ts")
  const { readLlamaConfig } = await import("../src/model/hf_config.ts")
  const { loadLlamaWeights } = await import("../src/model/checkpoint.ts")
  const { uploadBase } = await import("../src/model/base_weights.ts")
  const dir = await ensureDefaultModel()
  const config = await readLlamaConfig(dir)
  const host = await loadLlamaWeights(dir, config)
  const batch = packBatch(randomSeqs(2, [20, 9], config.vocabSize, 5), { padSide: "left" })
  for (const load8bit of [false, true]) {
    const model = new LlamaModel(ctx, await uploadBase(ctx, dir, config, { load8bit }))
    const got = await model.logits(batch)
    const ref = referenceForward(config, load8bit ? dequantised(host) : host, batch)
    const err = maxRelErr(got, ref, batch, config.vocabSize)
    assert.ok(err <= 1e-4, `default model ${load8bit ? "int8" : "f32"}: max rel err ${err}`)
  }
})
