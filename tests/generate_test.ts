/**
 * Generation with the device KV cache (src/generate/): token-for-token equality with greedy decoding by full
 * recomputation on the references (base, LoRA, MixLoRA), packed = alone for four adapters, EOS, sampling
 * reproducibility; and the new kernels against their references (decode attention + cache writes on odd shapes,
 * rope at explicit positions, the sampler).
 */
import assert from "node:assert/strict"
import { GpuContext } from "../src/gpu/context.ts"
import { attentionDecode } from "../src/kernels/attention_decode.ts"
import { kvCacheWrite } from "../src/kernels/kv_cache.ts"
import { ropeAtPositions } from "../src/kernels/rope_positions.ts"
import { sampleTokens } from "../src/kernels/sample_tokens.ts"
import { generate, type GenerateRequest, generateWithStats } from "../src/generate/generate.ts"
import { cacheIndex, referenceKvWrite } from "../src/generate/kv_cache.ts"
import { sampleTokenReference, type SamplingParams, samplingWords } from "../src/generate/sampling.ts"
import type { AdapterSpec, AdapterWeights } from "../src/model/adapter.ts"
import { type DeviceAdapter, uploadAdapter } from "../src/model/adapter_device.ts"
import { uploadHostBase } from "../src/model/base_weights.ts"
import { LlamaModel } from "../src/model/llama.ts"
import { type LlamaWeights, PROJECTIONS } from "../src/model/types.ts"
import { dequantizeRows, quantizeRows } from "../src/model/quantize.ts"
import { attentionForward as refAttention } from "../src/reference/attention.ts"
import { packBatch } from "../src/reference/batch.ts"
import { referenceForward } from "../src/reference/llama.ts"
import { referenceTrainForward } from "../src/reference/llama_train.ts"
import { randomLlama, tinyLlamaConfig } from "../src/reference/random_model.ts"
import { ropeForward as refRope } from "../src/reference/rope.ts"
import { Rng } from "../src/util/rng.ts"
import { randomAdapter as randomAdapterOf } from "./_fixtures.ts"

const ctx = await GpuContext.create()
const CONFIG = tinyLlamaConfig({
  hiddenSize: 45,
  intermediateSize: 37,
  numHeads: 6,
  numKvHeads: 2,
  headDim: 10,
  vocabSize: 61,
  numLayers: 2,
})
const HOST = randomLlama(CONFIG, 7)
const MODEL = new LlamaModel(ctx, await uploadHostBase(ctx, CONFIG, HOST, { load8bit: false }))

const loraSpec: AdapterSpec = {
  name: "lora",
  kind: "lora",
  r: 4,
  alpha: 8,
  useRslora: false,
  dropout: 0.1,
  targets: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}
const moeSpec = (name: string, routing: "mixlora" | "switch" | "dynamic", capacity = 64): AdapterSpec => ({
  name,
  kind: "mixlora",
  r: 3,
  alpha: 6,
  useRslora: false,
  dropout: 0.1,
  targets: ["q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
  moe: {
    routing,
    numExperts: 3,
    topK: routing === "mixlora" ? 2 : routing === "switch" ? 1 : 3,
    topP: routing === "dynamic" ? 0.6 : 1,
    expertCapacity: routing === "switch" ? capacity : 0,
    actFn: "silu",
    routerAuxLossCoef: 0.01,
    routerInitRange: 0.5,
    jitterNoise: 0.05,
  },
})

/** Non-trivial weights: B is 0 at init, so give it values too. */
const randomAdapter = (spec: AdapterSpec, seed: number) => randomAdapterOf(spec, CONFIG, seed, 0.3)

const ADAPTERS = {
  lora: randomAdapter(loraSpec, 10),
  top2: randomAdapter(moeSpec("top2", "mixlora"), 20),
  switch: randomAdapter(moeSpec("switch", "switch"), 30),
  switchTight: randomAdapter(moeSpec("switch_cap2", "switch", 2), 30),
  dynamic: randomAdapter(moeSpec("dynamic", "dynamic"), 40),
}
const DEVS = Object.fromEntries(
  Object.entries(ADAPTERS).map(([k, w]) => [k, uploadAdapter(ctx, w, CONFIG)]),
) as Record<keyof typeof ADAPTERS, DeviceAdapter>

/** The weights an int8 base computes with: each projection quantised per row and back (spec §4). */
const dequantised = (w: LlamaWeights): LlamaWeights => ({
  ...w,
  layers: w.layers.map((l) => ({
    ...l,
    proj: Object.fromEntries(PROJECTIONS.map((p) => {
      const [rows, cols] = l.proj[p].shape
      return [p, { shape: l.proj[p].shape, data: dequantizeRows(quantizeRows(l.proj[p].data, rows, cols)) }]
    })) as LlamaWeights["layers"][number]["proj"],
  })),
})

const prompt = (seed: number, n: number) => {
  const rng = Rng.fromSeed(seed)
  return Array.from({ length: n }, () => 3 + rng.nextInt(CONFIG.vocabSize - 3))
}
const greedy = { temperature: 0, topK: 0, topP: 1, seed: 0 }

/** index of the largest value, first on ties */
function argmax(x: ArrayLike<number>, from = 0, len = x.length - from): number {
  let a = 0
  for (let i = 1; i < len; i++) if (x[from + i] > x[from + a]) a = i
  return a
}

/**
 * The next token by full recomputation of `seq`. Base model: argmax of referenceForward's last logits. With an
 * adapter (referenceTrainForward reports losses, not logits): V copies of seq, row c predicting token c at its last
 * position, one segment per row; loss_c = lse − logit_c, so argmin_c loss_c = argmax_c logit_c.
 */
function referenceNext(weights: LlamaWeights, adapter: AdapterWeights | null, seq: readonly number[]): number {
  const V = CONFIG.vocabSize, T = seq.length
  if (!adapter) {
    const logits = referenceForward(CONFIG, weights, packBatch([seq], { padSide: "right" }))
    return argmax(logits, (T - 1) * V, V)
  }
  const rows = Array.from({ length: V }, () => seq)
  const batch = {
    ...packBatch(rows, { padSide: "right" }),
    segments: rows.map((_, c) => ({ start: c, end: c + 1, slot: 0 })),
  }
  const targets = new Int32Array(V * T).fill(-1)
  for (let c = 0; c < V; c++) targets[c * T + T - 1] = c
  const { losses } = referenceTrainForward(CONFIG, weights, batch, [adapter], { targets })
  let best = 0
  for (let c = 1; c < V; c++) if (losses[c].loss < losses[best].loss) best = c
  return best
}

function referenceGreedy(
  weights: LlamaWeights,
  adapter: AdapterWeights | null,
  promptIds: readonly number[],
  maxNew: number,
): number[] {
  const seq = [...promptIds], out: number[] = []
  for (let i = 0; i < maxNew; i++) {
    const next = referenceNext(weights, adapter, seq)
    out.push(next)
    seq.push(next)
  }
  return out
}

// ---- acceptance: generation ----------------------------------------------------------------------

for (const load8bit of [false, true]) {
  Deno.test(`greedy with the KV cache = greedy by full recomputation: base, LoRA, MixLoRA (top-2, switch, dynamic), packed, ${load8bit ? "int8" : "f32"} base`, async () => {
    const model = load8bit ? new LlamaModel(ctx, await uploadHostBase(ctx, CONFIG, HOST, { load8bit })) : MODEL
    const weights = load8bit ? dequantised(HOST) : HOST
    const cases: { adapter: keyof typeof ADAPTERS | null; len: number }[] = [
      { adapter: null, len: 5 },
      { adapter: null, len: 9 },
      { adapter: "lora", len: 7 },
      { adapter: "lora", len: 2 },
      { adapter: "top2", len: 6 },
      { adapter: "switch", len: 4 },
      { adapter: "dynamic", len: 8 },
    ]
    const maxNew = 6
    const requests: GenerateRequest[] = cases.map((c, i) => ({
      adapter: c.adapter ? DEVS[c.adapter] : null,
      promptIds: prompt(100 + i, c.len),
      maxNewTokens: maxNew,
      ...greedy,
    }))
    const { results, stats } = await generateWithStats(model, requests, { eosId: null })
    cases.forEach((c, i) => {
      const ref = referenceGreedy(weights, c.adapter ? ADAPTERS[c.adapter] : null, requests[i].promptIds, maxNew)
      assert.deepEqual(results[i].outputIds, ref, `request ${i} (${c.adapter ?? "base"})`)
    })
    // one prefill and maxNew − 1 decode steps, one round trip each
    assert.equal(stats.batches, 1)
    assert.equal(stats.decodeSteps, maxNew - 1)
    assert.equal(stats.roundTrips, 1 + stats.decodeSteps)
    // the adapters change the outputs (else the comparison above would not test them)
    const base = await generate(model, requests.map((r) => ({ ...r, adapter: null })), { eosId: null })
    for (let i = 2; i < cases.length; i++) assert.notDeepEqual(base[i].outputIds, results[i].outputIds, `request ${i}`)
  })
}

Deno.test("packed generation for 4 adapters (LoRA, MixLoRA top-2 / switch cap 2 / dynamic) = each adapter alone", async () => {
  const kinds = ["lora", "top2", "switchTight", "dynamic"] as const
  const requests: GenerateRequest[] = kinds.flatMap((k, a) =>
    [0, 1].map((j): GenerateRequest => ({
      adapter: DEVS[k],
      promptIds: prompt(200 + 2 * a + j, j ? 3 + a : 9 - a),
      maxNewTokens: 5 + j + a,
      ...(j ? { temperature: 0.9, topK: 12, topP: 0.9, seed: 77 + a } : greedy),
    }))
  )
  const packed = await generateWithStats(MODEL, requests, { eosId: null })
  assert.equal(packed.stats.batches, 1)
  // the four adapters continue the same kind of prompt differently (else equality would test little)
  const firsts = kinds.map((_, a) => packed.results[2 * a].outputIds.join(","))
  assert.equal(new Set(firsts).size, kinds.length, firsts.join(" | "))
  for (const [a, k] of kinds.entries()) {
    const alone = await generate(MODEL, requests.slice(2 * a, 2 * a + 2), { eosId: null })
    assert.deepEqual(alone.map((r) => r.outputIds), [0, 1].map((j) => packed.results[2 * a + j].outputIds), k)
    // one request at a time too
    const single = await generate(MODEL, [requests[2 * a + 1]], { eosId: null })
    assert.deepEqual(single[0].outputIds, packed.results[2 * a + 1].outputIds, `${k} single`)
  }
  // cut into batches of 3 rows (round-robin over the adapters): the same tokens
  const chunked = await generateWithStats(MODEL, requests, { eosId: null, maxBatchRows: 3 })
  assert.equal(chunked.stats.batches, 3)
  assert.deepEqual(chunked.results, packed.results)
  // rows finish at different steps (maxNewTokens 5 .. 9): later steps compute fewer rows
  assert.ok(packed.stats.decodeRows < packed.stats.decodeSteps * requests.length, JSON.stringify(packed.stats))
})

Deno.test("EOS stops a row early (EOS kept as its last token) while the others go on", async () => {
  const requests: GenerateRequest[] = [0, 1, 2].map((i) => ({
    adapter: i === 1 ? DEVS.top2 : null,
    promptIds: prompt(300 + i, 4 + i),
    maxNewTokens: 8,
    ...greedy,
  }))
  const free = await generate(MODEL, requests, { eosId: null })
  // EOS = row 0's third token, provided it is new at that point
  // EOS = the first token of row 0 (after its first) that did not occur before it, so row 0 stops at step j
  const out0 = free[0].outputIds
  const j = out0.findIndex((id, i) => i > 0 && !out0.slice(0, i).includes(id))
  assert.ok(j > 0 && j < 7, `row 0 repeats one token: ${out0}`)
  const eos = out0[j]
  const seen: [number, number][] = []
  const { results, stats } = await generateWithStats(MODEL, requests, {
    eosId: eos,
    onToken: (i, id) => seen.push([i, id]),
  })
  const cut = (ids: number[]) => ids.includes(eos) ? ids.slice(0, ids.indexOf(eos) + 1) : ids
  results.forEach((r, i) => assert.deepEqual(r.outputIds, cut(free[i].outputIds), `row ${i}`))
  assert.equal(results[0].outputIds.length, j + 1)
  assert.ok(results.some((r) => r.outputIds.length === 8), "another row runs to maxNewTokens")
  // onToken saw every token, per row in order
  results.forEach((r, i) => assert.deepEqual(seen.filter(([j]) => j === i).map(([, id]) => id), r.outputIds))
  assert.equal(stats.newTokens, results.reduce((s, r) => s + r.outputIds.length, 0))
  // decode steps compute live rows only
  assert.equal(stats.decodeRows, results.reduce((s, r) => s + r.outputIds.length - 1, 0))
})

Deno.test("sampling: a fixed seed reproduces, another seed differs, temperature → 0 and top_k = 1 are greedy", async () => {
  const base = (over: Partial<GenerateRequest>): GenerateRequest => ({
    adapter: DEVS.lora,
    promptIds: prompt(400, 5),
    maxNewTokens: 10,
    temperature: 1.2,
    topK: 0,
    topP: 1,
    seed: 5,
    ...over,
  })
  const variants = [base({}), base({ topK: 8, topP: 0.8 }), base({ seed: 6 }), base({ topK: 8, topP: 0.8, seed: 6 })]
  const a = await generate(MODEL, variants, { eosId: null })
  const b = await generate(MODEL, [...variants].reverse(), { eosId: null })
  assert.deepEqual(a.map((r) => r.outputIds), b.reverse().map((r) => r.outputIds))
  assert.notDeepEqual(a[0].outputIds, a[2].outputIds)
  assert.notDeepEqual(a[1].outputIds, a[3].outputIds)
  const g = await generate(MODEL, [base({ ...greedy })], { eosId: null })
  const cold = await generate(MODEL, [base({ temperature: 1e-4 }), base({ topK: 1 })], { eosId: null })
  assert.deepEqual(cold.map((r) => r.outputIds), [g[0].outputIds, g[0].outputIds])
  assert.notDeepEqual(a[0].outputIds, g[0].outputIds)
})

Deno.test("requests with maxNewTokens 0, a bad prompt or bad settings", async () => {
  const r = await generate(MODEL, [{ adapter: null, promptIds: [4, 5], maxNewTokens: 0, ...greedy }], { eosId: 2 })
  assert.deepEqual(r, [{ outputIds: [] }])
  const bad = (over: Partial<GenerateRequest>) =>
    generate(MODEL, [{ adapter: null, promptIds: [4, 5], maxNewTokens: 2, ...greedy, ...over }], { eosId: null })
  await assert.rejects(bad({ promptIds: [] }), /empty prompt/)
  await assert.rejects(bad({ promptIds: [4, 61] }), /not in \[0, 61\)/)
  await assert.rejects(bad({ topP: 1.5 }), /top_p/)
  await assert.rejects(bad({ temperature: -1 }), /temperature/)
})

// ---- kernels ---------------------------------------------------------------------------------------

function relErr(y: Float32Array, ref: Float32Array): number {
  let num = 0, den = 0
  for (let i = 0; i < ref.length; i++) {
    num = Math.max(num, Math.abs(y[i] - ref[i]))
    den = Math.max(den, Math.abs(ref[i]))
  }
  return num / den
}

Deno.test("cache writes + decode attention = reference attention of each row's last query (Dh=10, H=6, KV=2)", async () => {
  const H = 6, KV = 2, Dh = 10
  // slot 3 is never used; the one-token row has an empty prefill
  const lengths = [1, 7, 13, 4], slots = [2, 0, 4, 1]
  const rows = lengths.length, T = 13, slotCount = 5, maxLen = 15
  const rng = Rng.fromSeed(11)
  const randn = (n: number) => Float32Array.from({ length: n }, () => rng.normal())
  const q = randn(rows * T * H * Dh), k = randn(rows * T * KV * Dh), v = randn(rows * T * KV * Dh)
  const ref = refAttention(q, k, v, { rows, seqLen: T, lengths, padSide: "left" }, { H, KV, Dh }).out
  /** positions [t0, t1) of every row of x (rows, T, width), as (rows, t1 − t0, width) */
  const slice = (x: Float32Array, width: number, t0: number, t1: number) => {
    const o = new Float32Array(rows * (t1 - t0) * width)
    for (let r = 0; r < rows; r++) o.set(x.subarray((r * T + t0) * width, (r * T + t1) * width), r * (t1 - t0) * width)
    return o
  }
  // "prefill": tokens [T − len, T − 1) as a left-padded batch of T − 1 positions (lengths len − 1); then the last
  // token appended like a decode step at position len − 1, and its query attends over the cache
  const pre = {
    T: T - 1,
    k: slice(k, KV * Dh, 0, T - 1),
    v: slice(v, KV * Dh, 0, T - 1),
    lengths: lengths.map((n) => n - 1),
  }
  const last = { k: slice(k, KV * Dh, T - 1, T), v: slice(v, KV * Dh, T - 1, T), q: slice(q, H * Dh, T - 1, T) }
  const pos = lengths.map((n) => n - 1)
  const up = (label: string, a: ArrayBufferView) => ctx.upload(label, a, "activations")
  const dims = { slots: slotCount, KV, maxLen, Dh }
  const cacheSize = slotCount * KV * maxLen * Dh
  const kc = up("kc", new Float32Array(cacheSize).fill(NaN)), vc = up("vc", new Float32Array(cacheSize).fill(NaN))
  const bSlots = up("slots", Uint32Array.from(slots)), bPos = up("pos", Uint32Array.from(pos))
  const kv = { KV, Dh, maxLen, slotCount, padSide: "left" as const }
  const step = ctx.begin()
  kvCacheWrite(step, {
    kc,
    vc,
    k: up("k", pre.k),
    v: up("v", pre.v),
    slots: bSlots,
    pos0: up("zeros", new Uint32Array(rows)),
    lengths: up("lengths", Uint32Array.from(pre.lengths)),
  }, { rows, T: pre.T, ...kv })
  const ones = up("ones", new Uint32Array(rows).fill(1))
  kvCacheWrite(step, { kc, vc, k: up("kl", last.k), v: up("vl", last.v), slots: bSlots, pos0: bPos, lengths: ones }, {
    rows,
    T: 1,
    ...kv,
  })
  const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC
  const out = ctx.buffer({ label: "out", size: rows * H * Dh * 4, usage, category: "activations" })
  const scores = ctx.buffer({ label: "scores", size: rows * H * maxLen * 4, usage, category: "activations" })
  attentionDecode(step, { out, scores, q: up("q", last.q), kc, vc, slots: bSlots, pos: bPos }, {
    rows,
    H,
    KV,
    Dh,
    maxLen,
    slotCount,
    Lk: Math.max(...lengths),
  })
  const [gotOut, gotK, gotV] = await ctx.read([out, kc, vc], step)
  // the caches hold exactly what the host mirror writes (untouched entries stay NaN on both sides)
  for (const [name, x, got] of [["k", k, gotK], ["v", v, gotV]] as const) {
    const host = new Float32Array(cacheSize).fill(NaN)
    const xs = name === "k" ? pre.k : pre.v
    referenceKvWrite(host, xs, { slots, pos0: [0, 0, 0, 0], lengths: pre.lengths }, {
      ...dims,
      T: pre.T,
      padSide: "left",
    })
    referenceKvWrite(host, slice(x, KV * Dh, T - 1, T), { slots, pos0: pos, lengths: [1, 1, 1, 1] }, {
      ...dims,
      T: 1,
      padSide: "left",
    })
    assert.deepEqual(new Float32Array(got).subarray(0, cacheSize), host, `${name} cache`)
    assert.ok(Number.isNaN(host[cacheIndex(dims, 3, 1, 0, 0)]) && !Number.isNaN(host[cacheIndex(dims, 4, 1, 12, 9)]))
  }
  const want = slice(ref, H * Dh, T - 1, T)
  const err = relErr(new Float32Array(gotOut).subarray(0, want.length), want)
  assert.ok(err <= 1e-5, `decode attention max rel err ${err}`)
})

Deno.test("rope at explicit positions = reference rope at those positions (H=6, KV=2, Dh=10, positions up to 500)", async () => {
  const H = 6, KV = 2, Dh = 10, N = 5
  const positions = [0, 1, 17, 255, 500]
  const rng = Rng.fromSeed(12)
  const q = Float32Array.from({ length: N * H * Dh }, () => rng.normal())
  const k = Float32Array.from({ length: N * KV * Dh }, () => rng.normal())
  const qb = ctx.upload("q", q, "activations"), kb = ctx.upload("k", k, "activations")
  const step = ctx.begin()
  ropeAtPositions(step, { q: qb, k: kb, positions: ctx.upload("p", Uint32Array.from(positions), "activations") }, {
    N,
    H,
    KV,
    Dh,
    theta: 10000,
  })
  const [gq, gk] = await ctx.read([qb, kb], step)
  const pos = Int32Array.from(positions)
  assert.ok(
    relErr(new Float32Array(gq).subarray(0, q.length), refRope(q, pos, { N, heads: H, Dh, theta: 1e4 })) <= 1e-5,
  )
  assert.ok(
    relErr(new Float32Array(gk).subarray(0, k.length), refRope(k, pos, { N, heads: KV, Dh, theta: 1e4 })) <= 1e-5,
  )
})

Deno.test("sampler kernel = host reference: greedy (ties to the first index), temperature, top-k, top-p", async () => {
  const settings: SamplingParams[] = [
    { temperature: 0, topK: 0, topP: 1 },
    { temperature: 1, topK: 0, topP: 1 },
    { temperature: 0.7, topK: 5, topP: 1 },
    { temperature: 1.3, topK: 0, topP: 0.9 },
    { temperature: 0.8, topK: 20, topP: 0.5 },
    { temperature: 1, topK: 1, topP: 1 },
    { temperature: 1, topK: 0, topP: 0 },
    { temperature: 2, topK: 500, topP: 0.99 },
  ]
  const rng = Rng.fromSeed(13)
  for (const V of [97, 300]) {
    const rows = settings.length * 4
    const logits = Float32Array.from({ length: rows * V }, () => rng.normal(0, 2))
    // a tie for the maximum in row 0: the first index wins
    logits[5] = logits[9] = 50
    const us = Array.from({ length: rows }, () => rng.nextFloat())
    const words = new Uint32Array(rows * 4)
    for (let r = 0; r < rows; r++) words.set(samplingWords(settings[r % settings.length], us[r]), 4 * r)
    const ids = ctx.buffer({
      label: "ids",
      size: rows * 4,
      usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC,
      category: "activations",
    })
    const step = ctx.begin()
    sampleTokens(step, {
      ids,
      logits: ctx.upload("logits", logits, "activations"),
      params: ctx.upload("params", words, "activations"),
    }, { rows, V })
    const got = new Int32Array((await ctx.read([ids], step))[0])
    const want = Array.from(
      { length: rows },
      (_, r) => sampleTokenReference(logits.subarray(r * V, (r + 1) * V), settings[r % settings.length], us[r]),
    )
    assert.deepEqual(Array.from(got), want, `V=${V}`)
    assert.equal(want[0], 5)
    // the sampled rows are not all the argmax (else sampling would be untested)
    assert.ok(want.some((id, r) => id !== argmax(logits, r * V, V)))
  }
})
