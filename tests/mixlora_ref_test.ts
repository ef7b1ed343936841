/**
 * The MixLoRA reference (src/reference/mixlora.ts) against itself:
 * - the staged efficient forward equals the naive per-expert form Σ_j w_j E_e(x) (algebra check);
 * - finite differences of every adapter-parameter gradient (router, A and B of gate/up/down of every expert) and
 *   of dx, for all three routing strategies, with and without dropout masks and router jitter, with the
 *   load-balancing loss on. Loss L = Σ c ⊙ y + aux(this layer). Central differences in f64, step 1e-5.
 *   Error measure per tensor: max_k |fd_k − an_k| / max_k |an_k| ≤ 1e-3.
 *   Top-k ties at the step are avoided by construction: the router's scale is chosen (first seed that works)
 *   so that every real token has a margin ≥ 1e-3 at each selection boundary, and every FD evaluation asserts
 *   the selection did not change.
 * - aux loss of several layers and the selection rules (capacity, top-p, pads) on hand-made cases.
 */
import assert from "node:assert/strict"
import type { FfnProjection, MoeSpec } from "../src/model/adapter.ts"
import { dropoutMask, expertStream, jitterNoise, type Vec } from "../src/reference/lora.ts"
import {
  DROPPED,
  type FfnBase,
  mixloraBackward,
  mixloraForward,
  mixloraForwardNaive,
  type MixloraLayer,
  type MixloraOptions,
  mixloraRoute,
  moeAuxLoss,
} from "../src/reference/mixlora.ts"
import { Rng } from "../src/util/rng.ts"

const FFN: FfnProjection[] = ["gate_proj", "up_proj", "down_proj"]

function normal(rng: Rng, n: number, std: number): Float64Array {
  return Float64Array.from({ length: n }, () => rng.normal(0, std))
}

interface Fixture {
  x: Float64Array
  base: FfnBase
  layer: MixloraLayer
  o: MixloraOptions
  c: Float64Array
}

/** Selection margin of token i: the smallest distance of a decision quantity to its threshold. */
function margin(P: ArrayLike<number>, E: number, i: number, moe: MixloraOptions["moe"]): number {
  const p = Array.from({ length: E }, (_, e) => P[i * E + e]).sort((a, b) => b - a)
  if (moe.routing === "mixlora") return p[moe.topK - 1] - (p[moe.topK] ?? -1)
  if (moe.routing === "switch") return p[0] - p[1]
  let cum = 0, m = Infinity
  for (const v of p) {
    m = Math.min(m, Math.abs(cum - moe.topP))
    cum += v
  }
  return Math.min(m, p.slice(0, -1).reduce((a, v, k) => Math.min(a, v - p[k + 1]), Infinity))
}

function fixture(
  moe: MixloraOptions["moe"],
  opts: { dropout: number; jitter: number; targets?: FfnProjection[]; seed: number },
): Fixture {
  const [D, F, R, T, rows] = [6, 5, 2, 4, 2]
  const N = T * rows
  const E = moe.numExperts
  const targets = opts.targets ?? FFN
  const real = new Uint8Array(N).fill(1)
  real[0] = 0 // left padding of one token in row 0
  const maskRows = { T, padSide: "left" as const, lengths: [T - 1, T] }
  for (let attempt = 0; attempt < 200; attempt++) {
    const rng = Rng.fromSeed(opts.seed * 1000 + attempt)
    const x = normal(rng, N * D, 1)
    const base = { w1: normal(rng, F * D, 0.4), w2: normal(rng, D * F, 0.4), w3: normal(rng, F * D, 0.4) }
    const dims = (p: FfnProjection) => p === "down_proj" ? [F, D] : [D, F]
    const layer: MixloraLayer = {
      router: normal(rng, E * D, 0.6),
      experts: Array.from({ length: E }, () =>
        Object.fromEntries(targets.map((p) => {
          const [i, o] = dims(p)
          return [p, { a: normal(rng, R * i, 0.5), b: normal(rng, o * R, 0.5) }]
        }))),
    }
    const masks = opts.dropout > 0
      ? Array.from({ length: E }, (_, e) =>
        Object.fromEntries(FFN.map((p) => [
          p,
          Float64Array.from(
            dropoutMask({ p: opts.dropout, seed: 99, stream: expertStream(e, p), rows: maskRows, cols: dims(p)[0] })!,
          ),
        ])))
      : null
    const noise = opts.jitter > 0
      ? Float64Array.from(jitterNoise({ j: opts.jitter, seed: 5, rows: maskRows, D }))
      : null
    const o: MixloraOptions = { moe, N, D, F, R, T, scale: 0.75, real, noise, masks, precision: "f64" }
    const { P } = mixloraRoute(x, layer.router, o)
    let ok = true
    for (let i = 0; i < N; i++) if (real[i] && margin(P, E, i, moe) < 1e-3) ok = false
    if (ok) return { x, base, layer, o, c: normal(rng, N * D, 1) }
  }
  throw new Error("no fixture with selection margins found")
}

function relErr(fd: ArrayLike<number>, an: ArrayLike<number>): number {
  let num = 0, den = 0
  for (let k = 0; k < an.length; k++) {
    num = Math.max(num, Math.abs(fd[k] - an[k]))
    den = Math.max(den, Math.abs(an[k]))
  }
  return den === 0 ? num : num / den
}

const COEF = 0.3

/** L = Σ c ⊙ y + aux; asserts the selection equals `sel0` when given. */
function loss(f: Fixture, sel0?: Uint32Array): number {
  const { y, saved } = mixloraForward(f.x, f.base, f.layer, f.o)
  if (sel0) assert.deepEqual(saved.sel, sel0, "selection changed under the FD step")
  let L = 0
  for (let k = 0; k < y.length; k++) L += f.c[k] * y[k]
  return L + moeAuxLoss([saved.stats], { coef: COEF, E: f.o.moe.numExperts }).aux
}

function fdCheck(f: Fixture, what: string): void {
  const { saved } = mixloraForward(f.x, f.base, f.layer, f.o)
  const { grad } = moeAuxLoss([saved.stats], { coef: COEF, E: f.o.moe.numExperts })
  const g = mixloraBackward(f.c, f.x, f.base, f.layer, saved, f.o, grad)
  const h = 1e-5
  const fd = (v: Vec): Float64Array =>
    Float64Array.from(v, (_, k) => {
      const keep = v[k]
      v[k] = keep + h
      const lp = loss(f, saved.sel)
      v[k] = keep - h
      const lm = loss(f, saved.sel)
      v[k] = keep
      return (lp - lm) / (2 * h)
    })
  const checks: [string, Vec, Vec][] = [["router", f.layer.router, g.router], ["dx", f.x, g.dx]]
  f.layer.experts.forEach((ex, e) => {
    for (const p of FFN) {
      const pair = ex[p]
      if (!pair) continue
      checks.push([`expert ${e} ${p} A`, pair.a, g.experts[e][p]!.a], [
        `expert ${e} ${p} B`,
        pair.b,
        g.experts[e][p]!.b,
      ])
    }
  })
  for (const [name, param, an] of checks) {
    const e = relErr(fd(param), an)
    assert.ok(e <= 1e-3, `${what}: ${name} rel err ${e}`)
    if (Deno.env.get("SHOW_ERR")) console.log(`${what} ${name} ${e.toExponential(2)}`)
  }
}

const MOES: Record<string, MixloraOptions["moe"]> = {
  mixlora: { routing: "mixlora", numExperts: 4, topK: 2, topP: 0, expertCapacity: 0, actFn: "silu" },
  switch: { routing: "switch", numExperts: 3, topK: 1, topP: 0, expertCapacity: 1, actFn: "silu" },
  dynamic: { routing: "dynamic", numExperts: 4, topK: 0, topP: 0.55, expertCapacity: 0, actFn: "gelu" },
}

for (const [name, moe] of Object.entries(MOES)) {
  for (const [dropout, jitter] of [[0, 0], [0.3, 0.1]]) {
    Deno.test(`mixlora reference ${name}, dropout ${dropout}, jitter ${jitter}: staged = naive, FD gradients`, () => {
      const f = fixture(moe, { dropout, jitter, seed: name.length * 10 + (dropout > 0 ? 1 : 0) })
      const { y } = mixloraForward(f.x, f.base, f.layer, f.o)
      assert.ok(relErr(mixloraForwardNaive(f.x, f.base, f.layer, f.o), y) < 1e-12, "staged ≠ naive")
      const { sel } = mixloraRoute(f.x, f.layer.router, f.o)
      if (name === "switch") assert.ok(sel.includes(DROPPED), "capacity 1 drops a token")
      fdCheck(f, `${name} p=${dropout} j=${jitter}`)
    })
  }
}

Deno.test("mixlora reference: only gate_proj targeted, gelu_tanh: FD gradients", () => {
  const moe = { ...MOES.mixlora, actFn: "gelu_pytorch_tanh" as MoeSpec["actFn"] }
  fdCheck(fixture(moe, { dropout: 0, jitter: 0, targets: ["gate_proj"], seed: 7 }), "gate only")
})

Deno.test("mixlora reference: selection rules (switch capacity per sequence, top-p prefix, pads)", () => {
  // E = 2 experts; the router sends every token with x0 > 0 to expert 0
  const [D, F, R, T] = [2, 1, 1, 4]
  const N = 2 * T
  const x = new Float64Array(N * D)
  const logit0 = [3, 3, 3, -3, 3, 3, 3, 3]
  logit0.forEach((v, i) => x[i * D] = v)
  const layer: MixloraLayer = { router: Float64Array.from([1, 0, -1, 0]), experts: [{}, {}] }
  const real = Uint8Array.from([1, 1, 1, 1, 0, 1, 1, 1])
  const o = (moe: Partial<MixloraOptions["moe"]>): MixloraOptions => ({
    moe: { ...MOES.switch, numExperts: 2, ...moe },
    N,
    D,
    F,
    R,
    T,
    scale: 1,
    real,
    precision: "f64",
  })
  const sw = mixloraRoute(x, layer.router, o({ expertCapacity: 2 }))
  // row 0: tokens 0, 1 → expert 0 kept, token 2 → dropped (3rd), token 3 → expert 1; row 1: pad 4, then 5, 6 kept, 7 dropped
  assert.deepEqual(Array.from(sw.expertOf), [0, 0, -1, 1, -1, 0, 0, -1])
  assert.equal(sw.sel[2 * 2], DROPPED)
  assert.equal(sw.w[2], 0)
  assert.deepEqual(Array.from(sw.stats.count), [6, 1]) // dropped tokens count as selected; the pad does not
  assert.equal(sw.stats.tokens, 7)
  // dynamic: P(e0) = σ(6) ≈ 0.9975 for x0 = 3: top_p 0.5 keeps one expert, top_p 0.999 keeps both
  const d1 = mixloraRoute(x, layer.router, o({ routing: "dynamic", topP: 0.5 }))
  assert.deepEqual(Array.from(d1.expertOf.subarray(0, 2)), [0, -1])
  const d2 = mixloraRoute(x, layer.router, o({ routing: "dynamic", topP: 0.999 }))
  assert.deepEqual(Array.from(d2.expertOf.subarray(0, 2)), [0, 1])
  assert.ok(Math.abs(d2.w[0] + d2.w[1] - 1) < 1e-12 && d2.w[0] > 0.99, "dynamic weights are P, not renormalised")
  assert.deepEqual(Array.from(d2.expertOf.subarray(8, 10)), [-1, -1], "pad token routed")
})

Deno.test("moeAuxLoss: several layers concatenated, T = Σ tokens, gradient = coef·E·C_e/T²", () => {
  const a = { tokens: 3, count: Float64Array.from([2, 1]), sumP: Float64Array.from([1.8, 1.2]) }
  const b = { tokens: 1, count: Float64Array.from([1, 0]), sumP: Float64Array.from([0.9, 0.1]) }
  const { aux, grad } = moeAuxLoss([a, b], { coef: 0.01, E: 2 })
  // f = [3/4, 1/4], Pbar = [2.7/4, 1.3/4]: aux = 0.01·2·(0.75·0.675 + 0.25·0.325)
  assert.ok(Math.abs(aux - 0.01 * 2 * (0.75 * 0.675 + 0.25 * 0.325)) < 1e-15)
  assert.ok(Math.abs(grad[0] - 0.01 * 2 * 3 / 16) < 1e-15 && Math.abs(grad[1] - 0.01 * 2 / 16) < 1e-15)
  assert.deepEqual(
    moeAuxLoss([{ tokens: 0, count: new Float64Array(2), sumP: new Float64Array(2) }], {
      coef: 1,
      E: 2,
    }).aux,
    0,
  )
})
