import assert from "node:assert/strict"
import type { BatchDescriptor } from "../src/model/types.ts"
import { checkBatch, nextTokenTargets, packBatch, rowStart } from "../src/reference/batch.ts"
import { referenceForward, referenceLoss } from "../src/reference/llama.ts"
import { randomLlama, tinyLlamaConfig } from "../src/reference/random_model.ts"
import { Rng } from "../src/util/rng.ts"

// Odd shapes: D = 45, Dh = 10 (H·Dh = 60 ≠ D), H = 6 over KV = 2, F = 37, V = 97, two layers.
const config = tinyLlamaConfig({
  hiddenSize: 45,
  headDim: 10,
  numHeads: 6,
  numKvHeads: 2,
  intermediateSize: 37,
  vocabSize: 97,
  numLayers: 2,
})

function sequences(seed: number): number[][] {
  const rng = Rng.fromSeed(seed)
  return [13, 7, 1].map((len) => Array.from({ length: len }, () => rng.nextInt(config.vocabSize)))
}

/** logits (len, V) of the real tokens of row r */
function realLogits(logits: Float32Array, batch: BatchDescriptor, r: number): Float32Array {
  const V = config.vocabSize
  const s = r * batch.seqLen + rowStart(batch, r)
  return logits.slice(s * V, (s + batch.lengths[r]) * V)
}

Deno.test("referenceForward: padded rows (left and right, any pad id) give the unpadded rows' logits exactly", () => {
  for (const tie of [false, true]) {
    const cfg = { ...config, tieWordEmbeddings: tie, hiddenAct: tie ? "gelu_new" as const : "silu" as const }
    const weights = randomLlama(cfg, 11)
    const seqs = sequences(12)
    const alone = seqs.map((seq) => referenceForward(cfg, weights, packBatch([seq], { padSide: "left" })))
    for (const [padSide, padId] of [["left", 0], ["right", 96]] as const) {
      const batch = packBatch(seqs, { padSide, padId, seqLen: 15 })
      checkBatch(batch, { vocabSize: cfg.vocabSize })
      const logits = referenceForward(cfg, weights, batch)
      assert.ok(logits.every(Number.isFinite), "pad positions must stay finite too")
      seqs.forEach((_, r) => {
        // same per-token ops, same keys in the same order: bitwise equal, not just close
        assert.deepEqual(realLogits(logits, batch, r), alone[r], `tie=${tie} ${padSide} row ${r}`)
      })
    }
  }
})

Deno.test("referenceForward: a token's logits depend on earlier tokens only (causal) and on all of them", () => {
  const weights = randomLlama(config, 13)
  const [seq] = sequences(14)
  const V = config.vocabSize
  const a = referenceForward(config, weights, packBatch([seq], { padSide: "right" }))
  const changed = [...seq]
  changed[6] = (changed[6] + 1) % V
  const b = referenceForward(config, weights, packBatch([changed], { padSide: "right" }))
  assert.deepEqual(a.subarray(0, 6 * V), b.subarray(0, 6 * V))
  for (let t = 6; t < seq.length; t++) {
    assert.notDeepEqual(a.subarray(t * V, (t + 1) * V), b.subarray(t * V, (t + 1) * V), `position ${t}`)
  }
})

Deno.test("referenceLoss: the packed batch's mean equals the token-weighted mean of its rows alone", () => {
  const weights = randomLlama(config, 15)
  const seqs = sequences(16)
  const parts = seqs.map((seq) => referenceLoss(config, weights, packBatch([seq], { padSide: "right" })))
  const expected = parts.reduce((s, p) => s + p.loss * p.count, 0) / parts.reduce((s, p) => s + p.count, 0)
  for (const padSide of ["left", "right"] as const) {
    const batch = packBatch(seqs, { padSide })
    const { loss, count } = referenceLoss(config, weights, batch)
    assert.equal(count, 12 + 6 + 0)
    assert.equal(count, nextTokenTargets(batch).filter((t) => t >= 0).length)
    assert.ok(Math.abs(loss - expected) < 1e-6 * expected, `${padSide}: ${loss} vs ${expected}`)
    // an untrained model is near log V, not at 0 and not wildly above
    assert.ok(loss > 0.5 * Math.log(config.vocabSize) && loss < 4 * Math.log(config.vocabSize), `${loss}`)
  }
})

Deno.test("randomLlama is deterministic per seed and shaped by the config", () => {
  const a = randomLlama(config, 1)
  const b = randomLlama(config, 1)
  const c = randomLlama(config, 2)
  assert.deepEqual(a.layers[1].proj.down_proj.data, b.layers[1].proj.down_proj.data)
  assert.notDeepEqual(a.embed.data, c.embed.data)
  assert.deepEqual(a.layers[0].proj.q_proj.shape, [60, 45])
  assert.deepEqual(a.layers[0].proj.k_proj.shape, [20, 45])
  assert.deepEqual(a.layers[0].proj.down_proj.shape, [45, 37])
  const tied = randomLlama({ ...config, tieWordEmbeddings: true }, 1)
  assert.equal(tied.lmHead, tied.embed)
  assert.notEqual(a.lmHead, a.embed)
})
