/**
 * Adapter initialisation (src/model/adapter_init.ts), the flat parameter layout and the device round trip
 * (src/model/adapter_device.ts).
 */
import assert from "node:assert/strict"
import { GpuContext } from "../src/gpu/context.ts"
import type { AdapterSpec, AdapterWeights } from "../src/model/adapter.ts"
import {
  downloadAdapter,
  downloadGrads,
  loraRefs,
  mixloraRefs,
  packAdapter,
  paramLayout,
  releaseAdapter,
  unpackAdapter,
  uploadAdapter,
  zeroGrads,
} from "../src/model/adapter_device.ts"
import { SLAB_FLOATS } from "../src/model/adapter_arena.ts"
import { initAdapter } from "../src/model/adapter_init.ts"
import { Rng } from "../src/util/rng.ts"

const MODEL = { hiddenSize: 128, intermediateSize: 352, numHeads: 4, numKvHeads: 2, headDim: 32, numLayers: 2 }

const LORA: AdapterSpec = {
  name: "plain",
  kind: "lora",
  r: 8,
  alpha: 16,
  useRslora: false,
  dropout: 0.05,
  targets: ["q_proj", "v_proj", "down_proj"],
}

const MIX: AdapterSpec = {
  name: "mix",
  kind: "mixlora",
  r: 4,
  alpha: 8,
  useRslora: false,
  dropout: 0.05,
  targets: ["q_proj", "gate_proj", "up_proj", "down_proj"],
  moe: {
    routing: "mixlora",
    numExperts: 8,
    topK: 2,
    topP: 0,
    expertCapacity: 0,
    actFn: "silu",
    routerAuxLossCoef: 0.001,
    routerInitRange: 0.02,
    jitterNoise: 0,
  },
}

Deno.test("initAdapter: A ~ U(±1/√in), B = 0, router ~ N(0, 0.02), deterministic, rng not advanced", () => {
  const rng = Rng.fromSeed(42)
  const before = rng.state()
  const w = initAdapter(MIX, MODEL, rng)
  assert.deepEqual(rng.state(), before)
  assert.deepEqual(initAdapter(MIX, MODEL, Rng.fromSeed(42)), w)
  assert.equal(w.layers.length, 2)
  const l0 = w.layers[0]
  assert.deepEqual(Object.keys(l0.lora), ["q_proj"])
  assert.equal(l0.experts!.length, 8)
  const check = (a: Float32Array, inDim: number) => {
    const bound = 1 / Math.sqrt(inDim)
    assert.ok(a.every((v) => Math.abs(v) <= bound))
    const max = a.reduce((m, v) => Math.max(m, Math.abs(v)), 0)
    assert.ok(max > 0.95 * bound, `max |A| ${max} vs bound ${bound}`)
    const mean = a.reduce((s, v) => s + v, 0) / a.length
    assert.ok(Math.abs(mean) < 0.1 * bound)
  }
  check(l0.lora.q_proj!.a, 128)
  assert.equal(l0.lora.q_proj!.b.length, 128 * 4)
  assert.ok(l0.lora.q_proj!.b.every((v) => v === 0))
  check(l0.experts![3].down_proj!.a, 352)
  assert.equal(l0.experts![3].gate_proj!.a.length, 4 * 128)
  assert.equal(l0.experts![3].gate_proj!.b.length, 352 * 4)
  assert.ok(l0.experts![3].up_proj!.b.every((v) => v === 0))
  assert.notDeepEqual(l0.experts![0].gate_proj!.a, l0.experts![1].gate_proj!.a)
  const g = l0.router!
  assert.equal(g.length, 8 * 128)
  const std = Math.sqrt(g.reduce((s, v) => s + v * v, 0) / g.length)
  assert.ok(Math.abs(std - 0.02) < 0.002, `router std ${std}`)
  const plain = initAdapter(LORA, MODEL, rng)
  assert.deepEqual(Object.keys(plain.layers[1].lora), ["q_proj", "v_proj", "down_proj"])
  assert.equal(plain.layers[1].lora.v_proj!.b.length, 64 * 8)
  assert.equal(plain.layers[1].router, undefined)
})

Deno.test("paramLayout: MoE-PEFT names, disjoint tensors, 64-aligned layers, expert strides", () => {
  const lay = paramLayout(MIX, MODEL)
  const names = lay.entries.map((e) => e.name)
  assert.ok(names.includes("mixlora.layers.1.mlp.moe_gate.weight"))
  assert.ok(names.includes("mixlora.layers.0.mlp.up_proj.experts.7.lora_B.weight"))
  assert.ok(names.includes("mixlora.layers.1.self_attn.q_proj.lora_A.weight"))
  assert.equal(new Set(names).size, names.length)
  assert.equal(lay.entries.length, 2 * (1 + 3 * 8 * 2 + 2))
  const sorted = [...lay.entries].sort((a, b) => a.offset - b.offset)
  for (let k = 1; k < sorted.length; k++) assert.ok(sorted[k].offset >= sorted[k - 1].offset + sorted[k - 1].length)
  assert.ok(lay.total >= sorted.at(-1)!.offset + sorted.at(-1)!.length && lay.total % 64 === 0)
  for (const l of lay.layers) assert.equal(l.offset % 64, 0)
  const byName = new Map(lay.entries.map((e) => [e.name, e]))
  const l1 = lay.layers[1]
  for (let e = 0; e < 8; e++) {
    const a = byName.get(`mixlora.layers.1.mlp.down_proj.experts.${e}.lora_A.weight`)!
    const b = byName.get(`mixlora.layers.1.mlp.down_proj.experts.${e}.lora_B.weight`)!
    assert.deepEqual(a.shape, [4, 352])
    assert.deepEqual(b.shape, [128, 4])
    assert.equal(a.offset, l1.experts!.down_proj!.a + e * 4 * 352)
    assert.equal(b.offset, l1.experts!.down_proj!.b + e * 128 * 4)
  }
  const plain = paramLayout(LORA, MODEL)
  assert.deepEqual(plain.entries.slice(0, 2).map((e) => e.name), [
    "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
    "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight",
  ])
  assert.ok(plain.entries.some((e) => e.name === "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"))
})

Deno.test("pack / unpack round trip; a missing or mis-sized tensor is refused", () => {
  const w = initAdapter(MIX, MODEL, Rng.fromSeed(1))
  const lay = paramLayout(MIX, MODEL)
  assert.deepEqual(unpackAdapter(MIX, lay, packAdapter(w, lay)), w)
  const broken: AdapterWeights = {
    spec: MIX,
    layers: [w.layers[0], { ...w.layers[1], router: new Float32Array(3) }],
  }
  assert.throws(() => packAdapter(broken, lay), /moe_gate.weight has 3 values/)
  assert.throws(() => packAdapter({ spec: MIX, layers: [w.layers[0], { lora: {} }] }, lay), /router/)
})

Deno.test("uploadAdapter / downloadAdapter / grads: round trip, category 'adapters', zeroGrads, refs", async () => {
  const ctx = await GpuContext.create()
  try {
    const before = ctx.memory().adapters
    const w = initAdapter(MIX, MODEL, Rng.fromSeed(2))
    // make B non-zero so the round trip covers every tensor
    w.layers.forEach((l) => l.experts!.forEach((ex) => ex.up_proj!.b.fill(0.5)))
    const dev = uploadAdapter(ctx, w, MODEL)
    // the first adapter opens a slab of the arena: parameters and gradients, SLAB_FLOATS each
    assert.equal(ctx.memory().adapters - before, 2 * SLAB_FLOATS * 4)
    assert.deepEqual(await downloadAdapter(ctx, dev), w)
    const g = await downloadGrads(ctx, dev)
    assert.ok(g.layers.every((l) => l.router!.every((v) => v === 0)))
    // a second adapter shares the slab, right after the first one's block
    const dev2 = uploadAdapter(ctx, w, MODEL)
    assert.equal(dev2.params, dev.params)
    assert.equal(dev2.base, dev.layout.total)
    assert.equal(ctx.memory().adapters - before, 2 * SLAB_FLOATS * 4)
    const n = dev.layout.total
    ctx.write(dev.grads, new Float32Array(2 * n).fill(3), dev.base * 4)
    const step = ctx.begin()
    zeroGrads(step, dev2)
    const [bytes] = await ctx.read([{ buffer: dev.grads, offset: 0, size: 2 * n * 4 }], step)
    const gr = new Float32Array(bytes)
    assert.ok(gr.subarray(0, n).every((v) => v === 3), "zeroGrads of one adapter touched its neighbour")
    assert.ok(gr.subarray(n).every((v) => v === 0))
    assert.deepEqual(await downloadAdapter(ctx, dev2), w)
    releaseAdapter(ctx, dev2)
    const refs = mixloraRefs(dev, 1)
    assert.equal(refs.router, dev.base + dev.layout.layers[1].router!)
    assert.equal(refs.params, dev.params)
    assert.equal(loraRefs(dev, 0, "q_proj")!.db.buffer, dev.grads)
    assert.equal(loraRefs(dev, 0, "k_proj"), null)
    releaseAdapter(ctx, dev)
    assert.equal(ctx.memory().adapters, before)
  } finally {
    ctx.destroy()
  }
})
