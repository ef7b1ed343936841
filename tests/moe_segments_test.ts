/**
 * Segmented MixLoRA stages (src/model/moe_layers.ts over src/kernels/moe.ts): three MixLoRA adapters in one packed
 * batch — two with the same kernel variant (mixlora top-2, one group, hence one dispatch per stage) and one
 * switch / dynamic adapter (another variant, its own group) — with odd row counts, a base-only row between them,
 * padding on the left or the right, expert dropout and router jitter on. Every output row (mix, y, dg0, du0, dx),
 * every saved tensor (P, w, expertOf, sel, lists, counts, t), the statistics, the aux loss and every parameter
 * gradient of each adapter must equal, bit for bit, the same stages run on a batch holding only that adapter:
 * a segment runs the same code with the same summation order as a lone adapter. The number of dispatches must be
 * one per stage, layer and group. A second test packs 18 adapters of one variant (more than the 16 segments of one
 * dispatch; mixlora top-1 and switch routing alternate, both one slot): two dispatches per stage, same bits.
 */
import assert from "node:assert/strict"
import { GpuContext, Step } from "../src/gpu/context.ts"
import { BufferPool } from "../src/gpu/pool.ts"
import type { AdapterSpec, AdapterWeights, FfnProjection, MoeSpec } from "../src/model/adapter.ts"
import { releaseAdapter, uploadAdapter } from "../src/model/adapter_device.ts"
import type { AdapterRows } from "../src/model/adapter_layers.ts"
import {
  moeAux,
  moeDownForward,
  moeExpertsBackward,
  moeExpertsForward,
  moeInputBackward,
  MoeState,
} from "../src/model/moe_layers.ts"
import type { LlamaConfig } from "../src/model/types.ts"
import { moeSlots } from "../src/reference/mixlora.ts"
import { tinyLlamaConfig } from "../src/reference/random_model.ts"
import { Rng } from "../src/util/rng.ts"

const ctx = await GpuContext.create()
const FFN: FfnProjection[] = ["gate_proj", "up_proj", "down_proj"]
const T = 5
/** batch rows (sequences): A 3, base-only 1, B 1, C 3 */
const LAYOUT = { A: [0, 3], B: [4, 1], C: [5, 3] } as const
const USAGE = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST

const moe = (m: Partial<MoeSpec>): MoeSpec => ({
  routing: "mixlora",
  numExperts: 4,
  topK: 2,
  topP: 0,
  expertCapacity: 0,
  actFn: "silu",
  routerAuxLossCoef: 0.01,
  routerInitRange: 0.02,
  jitterNoise: 0.05,
  ...m,
})

const spec = (name: string, m: MoeSpec, r = 4, dropout = 0.2): AdapterSpec => ({
  name,
  kind: "mixlora",
  r,
  alpha: 2 * r + 1,
  useRslora: false,
  dropout,
  targets: FFN,
  moe: m,
})

/** Random weights with B ≠ 0 (every path carries signal) and a router sharp enough to spread the tokens. */
function weights(s: AdapterSpec, config: LlamaConfig, seed: number): AdapterWeights {
  const rng = Rng.fromSeed(seed)
  const D = config.hiddenSize, F = config.intermediateSize, R = s.r, E = s.moe!.numExperts
  const normal = (n: number, std: number) => Float32Array.from({ length: n }, () => rng.normal(0, std))
  return {
    spec: s,
    layers: Array.from({ length: config.numLayers }, () => ({
      lora: {},
      router: normal(E * D, 0.5),
      experts: Array.from({ length: E }, () =>
        Object.fromEntries(FFN.map((p) => {
          const [i, o] = p === "down_proj" ? [F, D] : [D, F]
          return [p, { a: normal(R * i, 0.2), b: normal(o * R, 0.2) }]
        }))),
    })),
  }
}

interface Member {
  readonly key: string
  readonly rows: AdapterRows
  /** ∂loss/∂aux */
  readonly factor: number
}

/** Per-layer batch-shaped inputs, (rows · T, width), and the real lengths of the rows. */
interface Inputs {
  readonly T: number
  readonly lengths: number[]
  readonly x: Float32Array[]
  readonly g: Float32Array[]
  readonly u: Float32Array[]
  readonly y: Float32Array[]
  readonly dy: Float32Array[]
  readonly dmix: Float32Array[]
  readonly dx: Float32Array[]
}

/** One adapter's results, in its own coordinates (rows from 0, pair indices from its first token). */
type Results = Map<string, Uint32Array>

/**
 * Runs the MixLoRA forward, aux loss and backward of `members` on the batch `inp`, counting dispatches by pipeline;
 * returns each member's results and the counts.
 */
async function run(config: LlamaConfig, padSide: "left" | "right", members: readonly Member[], inp: Inputs) {
  const D = config.hiddenSize, F = config.intermediateSize, L = config.numLayers, M = inp.lengths.length * inp.T
  const made: GPUBuffer[] = []
  const up = (a: Float32Array | Uint32Array) => {
    const b = ctx.upload("t", a, "activations")
    made.push(b)
    return b
  }
  const perLayer = (k: Exclude<keyof Inputs, "T" | "lengths">) => inp[k].map((a) => up(a))
  const lengths = up(Uint32Array.from(inp.lengths))
  // h starts as a copy of g: overwritten on the adapters' rows
  const [x, g, u, h, y, dy, dmix, dx] = (["x", "g", "u", "g", "y", "dy", "dmix", "dx"] as const).map(perLayer)
  const zeros = (n: number) => {
    const b = ctx.buffer({ label: "z", size: n * 4, usage: USAGE, category: "activations" })
    made.push(b)
    return b
  }
  const dg0 = x.map(() => zeros(M * F)), du0 = x.map(() => zeros(M * F))
  for (const m of members) ctx.write(m.rows.dev.grads, new Float32Array(m.rows.dev.layout.total), m.rows.dev.base * 4)
  const pool = new BufferPool(ctx)
  const state = new MoeState(pool, config, members.map((m) => m.rows))
  const batch = { seqLen: inp.T, padSide }
  const factors = new Map(members.map((m) => [m.rows, m.factor]))
  const counts = new Map<string, number>()
  const dispatch = Step.prototype.dispatch
  Step.prototype.dispatch = function (pipeline, bindings, groups) {
    counts.set(pipeline.label, (counts.get(pipeline.label) ?? 0) + 1)
    dispatch.call(this, pipeline, bindings, groups)
  }
  const step = ctx.begin()
  try {
    for (let l = 0; l < L; l++) {
      moeExpertsForward(step, config, state, l, batch, { x: x[l], g: g[l], u: u[l], h: h[l], lengths })
      moeDownForward(step, config, state, l, batch, y[l])
    }
    moeAux(step, config, state, factors)
    for (let l = L - 1; l >= 0; l--) {
      const io = { dy: dy[l], x: x[l], dmix: dmix[l], g0: g[l], u0: u[l], dg0: dg0[l], du0: du0[l], lengths }
      moeExpertsBackward(step, config, state, l, batch, io)
      moeInputBackward(step, config, state, l, batch, { dx: dx[l], lengths })
    }
  } finally {
    Step.prototype.dispatch = dispatch
  }
  // read back: batch-shaped outputs, each group's buffers, each member's gradient block
  const reads: (GPUBuffer | { buffer: GPUBuffer; offset: number; size: number })[] = []
  const at = (b: GPUBuffer | { buffer: GPUBuffer; offset: number; size: number }) => reads.push(b) - 1
  const batchIdx = { h: h.map(at), y: y.map(at), dg0: dg0.map(at), du0: du0.map(at), dx: dx.map(at) }
  const groupIdx = state.groups.map((gr) => ({
    saved: gr.saved.map((s) => Object.fromEntries(Object.entries(s).map(([k, b]) => [k, at(b as GPUBuffer)]))),
    stats: at(gr.stats),
    aux: at(gr.aux),
  }))
  const gradIdx = members.map((m) =>
    at({ buffer: m.rows.dev.grads, offset: m.rows.dev.base * 4, size: m.rows.dev.layout.total * 4 })
  )
  const out = (await ctx.read(reads, step)).map((b) => new Uint32Array(b))
  const results = new Map<string, Results>()
  for (const [k, m] of members.entries()) {
    const e = state.entries.find((en) => en.rows === m.rows)!
    const gr = e.group, gi = state.groups.indexOf(gr), s = moeSlots(m.rows.dev.spec.moe!)
    const E = gr.E, R = m.rows.dev.spec.r, N = m.rows.N, Nt = gr.members.reduce((n, r) => n + r.N, 0)
    const loc0 = gr.members.slice(0, e.index).reduce((n, r) => n + r.N, 0)
    const r: Results = new Map()
    const rowsOf = (a: Uint32Array, w: number) => a.slice(m.rows.row0 * w, (m.rows.row0 + N) * w)
    for (let l = 0; l < L; l++) {
      r.set(`mix ${l}`, rowsOf(out[batchIdx.h[l]], F))
      r.set(`y ${l}`, rowsOf(out[batchIdx.y[l]], D))
      r.set(`dg0 ${l}`, rowsOf(out[batchIdx.dg0[l]], F))
      r.set(`du0 ${l}`, rowsOf(out[batchIdx.du0[l]], F))
      r.set(`dx ${l}`, rowsOf(out[batchIdx.dx[l]], D))
      const sv = groupIdx[gi].saved[l]
      const tok = (name: string, w: number) => r.set(`${name} ${l}`, out[sv[name]].slice(loc0 * w, (loc0 + N) * w))
      tok("P", E)
      tok("w", s)
      tok("expertOf", s)
      tok("sel", E)
      const t = out[sv.t]
      for (const q of [0, 1, 2]) {
        r.set(`t${q} ${l}`, t.slice((q * Nt + loc0) * s * R, (q * Nt + loc0 + N) * s * R))
      }
      const cnt = out[sv.counts].slice(e.index * E, (e.index + 1) * E)
      r.set(`counts ${l}`, cnt)
      const list = out[sv.list]
      for (let x = 0; x < E; x++) {
        const from = loc0 * E + x * N
        r.set(`list ${l} ${x}`, list.slice(from, from + cnt[x]).map((p) => p - loc0 * s))
      }
    }
    const rowLen = 2 * E + 1
    r.set("stats", out[groupIdx[gi].stats].slice(e.index * L * rowLen, (e.index + 1) * L * rowLen))
    r.set("aux", out[groupIdx[gi].aux].slice(e.index * (1 + E), (e.index + 1) * (1 + E)))
    r.set("grads", out[gradIdx[k]])
    results.set(m.key, r)
  }
  state.release()
  pool.clear()
  for (const b of made) ctx.release(b)
  return { results, counts, groups: state.groups.length }
}

/** Random inputs of a batch of `lengths.length` rows of T tokens (real lengths `lengths`). */
function inputs(config: LlamaConfig, seed: number, T: number, lengths: number[]): Inputs {
  const rng = Rng.fromSeed(seed)
  const D = config.hiddenSize, F = config.intermediateSize, M = lengths.length * T
  const n = (w: number, std = 1) =>
    Array.from({ length: config.numLayers }, () => Float32Array.from({ length: M * w }, () => rng.normal(0, std)))
  return { T, lengths, x: n(D), g: n(F), u: n(F), y: n(D), dy: n(D), dmix: n(F), dx: n(D) }
}

const STAGES = [
  "moe_route.wgsl",
  "moe_lists.wgsl",
  "moe_bwd_router.wgsl",
  "fwd_experts",
  "_mix_",
  "expand_down",
  "bwd_experts",
  "bwd_grads",
  "bwd_dx",
]

/** Asserts `per` dispatches of each of the 9 stages per layer and `aux` of moe_aux, nothing else. */
function assertDispatches(counts: ReadonlyMap<string, number>, L: number, per: number, aux: number): void {
  for (const k of STAGES) {
    const n = [...counts].filter(([label]) => label.includes(k)).reduce((a, [, v]) => a + v, 0)
    assert.equal(n, L * per, `${k} dispatches`)
  }
  assert.equal(counts.get("moe_aux.wgsl"), aux)
  assert.equal([...counts.values()].reduce((a, b) => a + b, 0), 9 * L * per + aux)
}

/**
 * Runs each member alone on a batch of only its own rows (row0 = 0: masks and jitter are keyed by the token's
 * sequence within the adapter's rows and its position in it, not by its batch row) and asserts that its results
 * equal the packed run's, bit for bit.
 */
async function assertAlone(
  config: LlamaConfig,
  padSide: "left" | "right",
  members: readonly Member[],
  inp: Inputs,
  packed: ReadonlyMap<string, Results>,
): Promise<number> {
  let dispatches = 0
  for (const m of members) {
    const T = inp.T, r0 = m.rows.row0 / T, rows = m.rows.N / T
    const M = inp.lengths.length * T
    // the adapter's token rows of each per-layer (M, width) input
    const own = (a: Float32Array[]) =>
      a.map((v) => v.slice(m.rows.row0 * v.length / M, (m.rows.row0 + m.rows.N) * v.length / M))
    const sub: Inputs = {
      T,
      lengths: inp.lengths.slice(r0, r0 + rows),
      x: own(inp.x),
      g: own(inp.g),
      u: own(inp.u),
      y: own(inp.y),
      dy: own(inp.dy),
      dmix: own(inp.dmix),
      dx: own(inp.dx),
    }
    const r = await run(config, padSide, [{ ...m, rows: { ...m.rows, row0: 0 } }], sub)
    dispatches += [...r.counts.values()].reduce((a, b) => a + b, 0)
    const want = r.results.get(m.key)!, got = packed.get(m.key)!
    assert.deepEqual([...got.keys()], [...want.keys()])
    for (const [name, w] of want) {
      const gv = got.get(name)!
      assert.equal(gv.length, w.length, `${m.key} ${name} length`)
      const bad = w.findIndex((v, i) => v !== gv[i])
      const msg = `${m.key} ${name}[${bad}]: packed bits ${gv[bad]?.toString(16)} ≠ alone ${w[bad]?.toString(16)}`
      assert.equal(bad, -1, msg)
    }
    // the comparison carries signal: gradients and the MoE output rows are not all zero
    const f = (n: string) => new Float32Array(want.get(n)!.buffer)
    assert.ok(f("grads").some((v) => v !== 0) && f("mix 0").some((v) => v !== 0), `${m.key} has signal`)
    const auxOn = m.rows.dev.spec.moe!.routerAuxLossCoef > 0
    assert.equal(f("aux").some((v) => v !== 0), auxOn, `${m.key} aux`)
  }
  return dispatches
}

const CASES = [
  {
    name: "aligned sizes (vec4 kernels), right padding, third adapter dynamic",
    config: tinyLlamaConfig({ hiddenSize: 48, intermediateSize: 40, numLayers: 2 }),
    padSide: "right" as const,
    third: spec("C", moe({ routing: "dynamic", topP: 0.6, actFn: "gelu" }), 4),
  },
  {
    name: "odd sizes (scalar kernels), left padding, third adapter switch with capacity",
    config: tinyLlamaConfig({ hiddenSize: 45, intermediateSize: 37, numLayers: 2 }),
    padSide: "left" as const,
    third: spec("C", moe({ routing: "switch", topK: 1, numExperts: 3, expertCapacity: 2 }), 3),
  },
]

for (const c of CASES) {
  Deno.test(`segmented MixLoRA = each adapter alone, bit for bit: ${c.name}`, async () => {
    const { config } = c
    const specs = {
      A: spec("A", moe({})),
      // same kernel variant as A: its own scale, dropout, no jitter, no aux loss
      B: spec("B", moe({ jitterNoise: 0, routerAuxLossCoef: 0 }), 4, 0.1),
      C: c.third,
    }
    const devs = Object.fromEntries(
      (["A", "B", "C"] as const).map((k, i) => [k, uploadAdapter(ctx, weights(specs[k], config, 100 + i), config)]),
    ) as Record<"A" | "B" | "C", ReturnType<typeof uploadAdapter>>
    try {
      assert.ok(devs.A.params === devs.B.params && devs.A.params === devs.C.params, "one slab")
      // real lengths 1 .. T, at least one padded row per adapter
      const inp = inputs(config, 7, T, [5, 3, 2, 4, 3, 1, 5, 4])
      // segment order A, C, B (rows A, base, B, C): group members need not be adjacent in the batch.
      // Alone = a batch of only this adapter's rows (from row 0).
      const members = (["A", "C", "B"] as const).map((k): Member => ({
        key: k,
        rows: { row0: LAYOUT[k][0] * T, N: LAYOUT[k][1] * T, dev: devs[k], dropoutSeed: { A: 11, B: 12, C: 13 }[k] },
        factor: { A: 1, B: 0.5, C: 2 }[k],
      }))
      const packed = await run(config, c.padSide, members, inp)
      const L = config.numLayers
      // one dispatch per stage, layer and group (5 forward + 4 backward stages), + one aux dispatch per group
      assert.equal(packed.groups, 2)
      assertDispatches(packed.counts, L, 2, 2)
      const alone = await assertAlone(config, c.padSide, members, inp, packed.results)
      assert.equal(alone, 3 * (9 * L + 1), "per-adapter dispatches of the same work")
    } finally {
      for (const d of Object.values(devs)) releaseAdapter(ctx, d)
    }
  })
}

Deno.test("18 adapters of one variant: two dispatches per stage (16 segments each at most), same bits", async () => {
  const config = tinyLlamaConfig({ hiddenSize: 16, intermediateSize: 12, numLayers: 1 })
  const A = 18, T2 = 2
  // one slot each: the same kernel variant, routing chosen per segment (switch capacity 1 drops tokens)
  const specs = [
    spec("top1", moe({ numExperts: 3, topK: 1, routerAuxLossCoef: 0.02 }), 2, 0.1),
    spec("switch", moe({ routing: "switch", numExperts: 3, topK: 1, expertCapacity: 1, jitterNoise: 0 }), 2, 0.3),
  ]
  const devs = Array.from({ length: A }, (_, k) => uploadAdapter(ctx, weights(specs[k % 2], config, 300 + k), config))
  try {
    // one row per adapter, right padding, lengths 1 or 2
    const inp = inputs(config, 9, T2, Array.from({ length: A }, (_, k) => 1 + (k % 2)))
    const members = devs.map((dev, k): Member => ({
      key: `m${k}`,
      rows: { row0: k * T2, N: T2, dev, dropoutSeed: 40 + k },
      factor: 1,
    }))
    const packed = await run(config, "right", members, inp)
    assert.equal(packed.groups, 1)
    assertDispatches(packed.counts, config.numLayers, 2, 2)
    await assertAlone(config, "right", members, inp, packed.results)
  } finally {
    for (const d of devs) releaseAdapter(ctx, d)
  }
})
