/**
 * The MixLoRA kernels (src/kernels/moe.ts) against the reference (src/reference/mixlora.ts), forward and
 * backward, for every routing strategy, with and without expert dropout and router jitter:
 * - odd shapes: D = 45, F = 37, R = 3 / 5, E = 3 / 4, K = 2, N = 19 tokens (one sequence with 3 pad tokens);
 * - the staged launchers on rows [19, 38) of a 3-sequence shared batch (base matmuls over all rows), and the
 *   composed `mixloraFfnForward` / `mixloraFfnBackward` on buffers holding only the adapter's tokens;
 * - parameters in the flat layout of src/model/adapter_device.ts (with an attention LoRA in the layout too);
 * - the aux loss over both runs' statistics (two "layers") and its gradient in both backward passes.
 * Error measure per tensor: max |gpu − ref| / max |ref| ≤ 1e-4; selections, expert lists and counts exact;
 * two runs bitwise identical. Selection margins ≥ 1e-4 by construction (first seed that gives them), so that
 * f32 rounding cannot flip a routing decision between the device and the reference.
 */
import assert from "node:assert/strict"
import { GpuContext } from "../src/gpu/context.ts"
import { type DeviceMatrix, linear, linearBackwardInput, releaseMatrix, uploadMatrix } from "../src/kernels/matmul.ts"
import {
  createMixloraSaved,
  createMixloraScratch,
  type MixloraDims,
  mixloraDownForward,
  mixloraExpertsBackward,
  mixloraExpertsForward,
  mixloraFfnBackward,
  mixloraFfnForward,
  mixloraInputBackward,
  moeAuxLoss,
  releaseMoeBuffers,
} from "../src/kernels/moe.ts"
import type { AdapterSpec, AdapterWeights, FfnProjection, MoeSpec } from "../src/model/adapter.ts"
import { downloadGrads, mixloraRefs, releaseAdapter, uploadAdapter } from "../src/model/adapter_device.ts"
import { dequantizeRows, quantizeRows } from "../src/model/quantize.ts"
import { dropoutMask, expertStream, jitterNoise } from "../src/reference/lora.ts"
import * as ref from "../src/reference/mixlora.ts"
import { Rng } from "../src/util/rng.ts"

const ctx = await GpuContext.create()
const USAGE = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST
const FFN: FfnProjection[] = ["gate_proj", "up_proj", "down_proj"]
const [D, F, T, ROWS, ROW] = [45, 37, 19, 3, 1]
const LENGTHS = [19, 16, 12]
const MODEL = { hiddenSize: D, intermediateSize: F, numHeads: 3, numKvHeads: 1, headDim: 15, numLayers: 1 }

function normal(rng: Rng, n: number, std: number): Float32Array {
  return Float32Array.from({ length: n }, () => rng.normal(0, std))
}

function relErr(got: ArrayLike<number>, want: ArrayLike<number>): number {
  assert.equal(got.length, want.length)
  let num = 0, den = 0
  for (let k = 0; k < want.length; k++) {
    num = Math.max(num, Math.abs(got[k] - want[k]))
    den = Math.max(den, Math.abs(want[k]))
  }
  return den === 0 ? num : num / den
}

interface Case {
  name: string
  moe: MoeSpec
  R: number
  padSide: "left" | "right"
  int8?: boolean
}

const moeSpec = (m: Partial<MoeSpec>): MoeSpec => ({
  routing: "mixlora",
  numExperts: 4,
  topK: 2,
  topP: 0,
  expertCapacity: 0,
  actFn: "silu",
  routerAuxLossCoef: 0.01,
  routerInitRange: 0.02,
  jitterNoise: 0,
  ...m,
})

const CASES: Case[] = [
  { name: "mixlora top-2", moe: moeSpec({}), R: 3, padSide: "left", int8: true },
  {
    name: "switch cap 4",
    moe: moeSpec({ routing: "switch", numExperts: 3, topK: 1, expertCapacity: 4, actFn: "gelu_pytorch_tanh" }),
    R: 5,
    padSide: "right",
  },
  { name: "dynamic top-p", moe: moeSpec({ routing: "dynamic", topP: 0.6, actFn: "gelu" }), R: 5, padSide: "left" },
]

/** Random adapter weights (B ≠ 0 so every path carries signal) whose routing has margins on every real token. */
function fixture(c: Case, training: boolean) {
  const spec: AdapterSpec = {
    name: c.name,
    kind: "mixlora",
    r: c.R,
    alpha: 2 * c.R,
    useRslora: false,
    dropout: training ? 0.2 : 0,
    targets: ["q_proj", ...FFN],
    moe: c.moe,
  }
  const E = c.moe.numExperts
  const N = T
  const real = new Uint8Array(N)
  const len = LENGTHS[ROW]
  for (let t = 0; t < T; t++) real[t] = (c.padSide === "left" ? t >= T - len : t < len) ? 1 : 0
  for (let attempt = 0; attempt < 100; attempt++) {
    const rng = Rng.fromSeed(attempt * 31 + c.R)
    const xAll = normal(rng, ROWS * T * D, 1)
    const w = { w1: normal(rng, F * D, 0.15), w2: normal(rng, D * F, 0.15), w3: normal(rng, F * D, 0.15) }
    const experts = Array.from({ length: E }, () =>
      Object.fromEntries(FFN.map((p) => {
        const [i, o] = p === "down_proj" ? [F, D] : [D, F]
        return [p, { a: normal(rng, c.R * i, 0.15), b: normal(rng, o * c.R, 0.15) }]
      })))
    const router = normal(rng, E * D, 0.3)
    const weights: AdapterWeights = {
      spec,
      layers: [{ lora: { q_proj: { a: normal(rng, c.R * D, 1), b: normal(rng, D * c.R, 1) } }, router, experts }],
    }
    const dyAll = normal(rng, ROWS * T * D, 1)
    const seed = 77 + attempt
    // margins are checked on the jittered router (the same jitter at both row offsets the test uses: masks are
    // keyed by the token's sequence in the adapter's rows and its position in it, not by its batch row)
    const o = options(c, spec, real, seed, training)
    const x = xAll.subarray(ROW * T * D, (ROW + 1) * T * D)
    const { P } = ref.mixloraRoute(x, router, o)
    const ok = real.every((r, i) => !r || margin(P, E, i, c.moe) >= 1e-4)
    if (ok) return { spec, weights, xAll, dyAll, w, real, seed }
  }
  throw new Error("no fixture with selection margins")
}

function margin(P: ArrayLike<number>, E: number, i: number, moe: MoeSpec): number {
  const p = Array.from({ length: E }, (_, e) => P[i * E + e]).sort((a, b) => b - a)
  const gaps = p.slice(0, -1).map((v, k) => v - p[k + 1])
  if (moe.routing !== "dynamic") return Math.min(...gaps)
  let cum = 0, m = Infinity
  for (const v of p) {
    m = Math.min(m, Math.abs(cum - moe.topP))
    cum += v
  }
  return Math.min(m, ...gaps)
}

/** Reference options of the adapter's one sequence (batch row ROW of the staged run, row 0 of the composed one). */
function options(c: Case, spec: AdapterSpec, real: Uint8Array, seed: number, training: boolean) {
  const E = c.moe.numExperts
  const N = T
  const rows = { T, padSide: c.padSide, lengths: [LENGTHS[ROW]] }
  const o: ref.MixloraOptions = {
    moe: c.moe,
    N,
    D,
    F,
    R: c.R,
    T,
    scale: spec.alpha / spec.r,
    real,
    noise: training ? jitterNoise({ j: 0.05, seed, rows, D }) : null,
    masks: training
      ? Array.from({ length: E }, (_, e) =>
        Object.fromEntries(FFN.map((p) => [
          p,
          dropoutMask({ p: 0.2, seed, stream: expertStream(e, p), rows, cols: p === "down_proj" ? F : D }),
        ])))
      : null,
  }
  return o
}

for (const c of CASES) {
  for (const training of [false, true]) {
    Deno.test(`MixLoRA kernels vs reference: ${c.name}, ${training ? "dropout + jitter" : "no masks"}`, async () => {
      await check(c, training)
    })
  }
}

async function check(c: Case, training: boolean): Promise<void> {
  const made: GPUBuffer[] = []
  const up = (data: ArrayLike<number>, u32 = false) => {
    const b = ctx.upload("t", u32 ? Uint32Array.from(data) : Float32Array.from(data), "activations")
    made.push(b)
    return b
  }
  const zeros = (n: number) => {
    const b = ctx.buffer({ label: "z", size: n * 4, usage: USAGE, category: "activations" })
    made.push(b)
    return b
  }
  const fx = fixture(c, training)
  const E = c.moe.numExperts, N = T, S = ref.moeSlots(c.moe), R = c.R
  // frozen FFN, f32 or int8 (the reference then uses the dequantised weights)
  const shapeOf = (k: "w1" | "w2" | "w3") => k === "w2" ? [D, F] : [F, D]
  const wRef = { ...fx.w }
  const upload = (k: "w1" | "w2" | "w3"): DeviceMatrix => {
    const [n, kk] = shapeOf(k)
    if (!c.int8) return uploadMatrix(ctx, { shape: [n, kk], data: fx.w[k] }, { label: k, category: "base_f32" })
    const q = quantizeRows(fx.w[k], n, kk)
    wRef[k] = dequantizeRows(q)
    return uploadMatrix(ctx, q, { label: k, category: "base_int8" })
  }
  const dm = { w1: upload("w1"), w2: upload("w2"), w3: upload("w3") }
  const base = { w1: wRef.w1, w2: wRef.w2, w3: wRef.w3 }
  const layer: ref.MixloraLayer = { router: fx.weights.layers[0].router!, experts: fx.weights.layers[0].experts! }
  const jitter = training ? { j: 0.05, seed: fx.seed } : null
  const dropout = training ? { p: 0.2, seed: fx.seed } : null
  const common = { T, padSide: c.padSide, D, F, R, moe: c.moe, scale: fx.spec.alpha / fx.spec.r, jitter, dropout }
  const devs = [uploadAdapter(ctx, fx.weights, MODEL), uploadAdapter(ctx, fx.weights, MODEL)]
  const x = fx.xAll.subarray(ROW * T * D, (ROW + 1) * T * D), dy = fx.dyAll.subarray(ROW * T * D, (ROW + 1) * T * D)
  const savedS = createMixloraSaved(ctx, { N, F, R, moe: c.moe })
  const savedC = createMixloraSaved(ctx, { N, F, R, moe: c.moe }, { base: true })
  const scratch = createMixloraScratch(ctx, { N, F, R, moe: c.moe }, { base: true })
  try {
    const run = async () => {
      const lengthsAll = up(LENGTHS, true), lengthsOne = up([LENGTHS[ROW]], true)
      const stats = zeros(2 * (2 * E + 1)), aux = zeros(1 + E)
      for (const dev of devs) ctx.write(dev.grads, new Float32Array(dev.layout.total), dev.base * 4)
      // staged, rows [ROW·T, (ROW+1)·T) of the shared batch, stats row 0
      const M = ROWS * T
      const xb = up(fx.xAll), dyb = up(fx.dyAll)
      const [g0, u0, mix, y, dmix, dg0, du0, dx] = [F, F, F, D, F, F, F, D].map((w) => zeros(M * w))
      const staged: MixloraDims = { ...common, row0: ROW * T, N, layer: 0 }
      const pS = mixloraRefs(devs[0], 0)
      // composed, the adapter's tokens only, stats row 1
      const xc = up(x), dyc = up(dy), yc = zeros(N * D), dxc = zeros(N * D)
      const pC = mixloraRefs(devs[1], 0)
      const composed = { ...common, N, layer: 1 }
      const step = ctx.begin()
      linear(step, { x: xb, w: dm.w1, y: g0 }, { M })
      linear(step, { x: xb, w: dm.w3, y: u0 }, { M })
      mixloraExpertsForward(step, {
        x: xb,
        g0,
        u0,
        mix,
        lengths: lengthsAll,
        stats,
        params: pS,
        saved: savedS,
        scratch,
      }, staged)
      linear(step, { x: mix, w: dm.w2, y }, { M })
      mixloraDownForward(step, { y, params: pS, saved: savedS }, staged)
      mixloraFfnForward(step, {
        x: xc,
        y: yc,
        ...dm,
        lengths: lengthsOne,
        stats,
        params: pC,
        saved: savedC,
        scratch,
      }, composed)
      moeAuxLoss(step, { stats, out: aux }, { layers: 2, E, coef: 0.3 })
      linearBackwardInput(step, { dy: dyb, w: dm.w2, dx: dmix }, { M })
      mixloraExpertsBackward(step, {
        dy: dyb,
        x: xb,
        dmix,
        g0,
        u0,
        dg0,
        du0,
        lengths: lengthsAll,
        aux,
        params: pS,
        saved: savedS,
        scratch,
      }, staged)
      linearBackwardInput(step, { dy: dg0, w: dm.w1, dx }, { M })
      linearBackwardInput(step, { dy: du0, w: dm.w3, dx }, { M, accumulate: true })
      mixloraInputBackward(step, { dx, lengths: lengthsAll, params: pS, saved: savedS, scratch }, staged)
      mixloraFfnBackward(step, {
        dy: dyc,
        x: xc,
        dx: dxc,
        ...dm,
        lengths: lengthsOne,
        aux,
        params: pC,
        saved: savedC,
        scratch,
      }, composed)
      const bufs = [y, yc, dx, dxc, stats, aux, savedS.P, savedS.w, savedS.expertOf, savedS.sel, savedS.list]
      const more = [savedS.counts, savedS.t, savedC.t, devs[0].grads, devs[1].grads, savedC.w]
      const out = await ctx.read([...bufs, ...more], step)
      return out
    }
    const out = await run()
    const f32 = (k: number, from: number, n: number) => new Float32Array(out[k], from * 4, n)
    const i32 = (k: number, n: number) => new Int32Array(out[k], 0, n)
    const u32 = (k: number, n: number) => new Uint32Array(out[k], 0, n)
    const what = `${c.name} ${training ? "train" : "eval"}`
    const near = (name: string, got: ArrayLike<number>, want: ArrayLike<number>) => {
      const e = relErr(got, want)
      assert.ok(e <= 1e-4, `${what} ${name}: rel err ${e}`)
      if (Deno.env.get("SHOW_ERR")) console.log(`${what} ${name} ${e.toExponential(2)}`)
    }
    for (const [path, row0] of [["staged", ROW * T], ["composed", 0]] as const) {
      const o = options(c, fx.spec, fx.real, fx.seed, training)
      const fwd = ref.mixloraForward(x, base, layer, o)
      // both runs (stats rows 0 and 1) route the same tokens with the same jitter
      const stats1 = ref.mixloraRoute(x, layer.router, o).stats
      const stats2 = stats1
      const auxRef = ref.moeAuxLoss([stats1, stats2], { coef: 0.3, E })
      const g = ref.mixloraBackward(dy, x, base, layer, fwd.saved, o, auxRef.grad)
      const p = `${path}:`
      if (path === "staged") {
        near(`${p} y`, f32(0, row0 * D, N * D), fwd.y)
        near(`${p} dx`, f32(2, row0 * D, N * D), g.dx)
        near(`${p} P`, f32(6, 0, N * E), fwd.saved.P)
        near(`${p} w`, f32(7, 0, N * S), fwd.saved.w)
        assert.deepEqual(Array.from(i32(8, N * S)), Array.from(fwd.saved.expertOf), `${what} expertOf`)
        assert.deepEqual(Array.from(u32(9, N * E)), Array.from(fwd.saved.sel), `${what} sel`)
        // per-expert lists: pairs i·S + j in token order; counts
        const counts = u32(11, E)
        const list = u32(10, E * N)
        for (let e = 0; e < E; e++) {
          const want: number[] = []
          for (let i = 0; i < N; i++) {
            for (let j = 0; j < S; j++) if (fwd.saved.expertOf[i * S + j] === e) want.push(i * S + j)
          }
          assert.deepEqual(Array.from(list.subarray(e * N, e * N + counts[e])), want, `${what} list ${e}`)
        }
        const st = f32(4, 0, 2 * (2 * E + 1))
        near("stats", st, [
          stats1.tokens,
          ...stats1.count,
          ...stats1.sumP,
          stats2.tokens,
          ...stats2.count,
          ...stats2.sumP,
        ])
        near("aux", f32(5, 0, 1 + E), [auxRef.aux, ...auxRef.grad])
      } else {
        near(`${p} y`, f32(1, 0, N * D), fwd.y)
        near(`${p} dx`, f32(3, 0, N * D), g.dx)
        near(`${p} w`, f32(16, 0, N * S), fwd.saved.w)
      }
      const t = f32(path === "staged" ? 12 : 13, 0, 3 * N * S * R)
      for (const [k, name] of ["t1", "t3", "t2"].entries()) {
        near(`${p} ${name}`, t.subarray(k * N * S * R, (k + 1) * N * S * R), fwd.saved[name as "t1" | "t3" | "t2"])
      }
      const dev = devs[path === "staged" ? 0 : 1]
      const gw = await downloadGrads(ctx, dev)
      const gl = gw.layers[0]
      near(`${p} dRouter`, gl.router!, g.router)
      for (let e = 0; e < E; e++) {
        for (const q of FFN) {
          near(`${p} d${q}[${e}].A`, gl.experts![e][q]!.a, g.experts[e][q]!.a)
          near(`${p} d${q}[${e}].B`, gl.experts![e][q]!.b, g.experts[e][q]!.b)
        }
      }
      assert.ok(gl.lora.q_proj!.a.every((v) => v === 0), "attention LoRA gradients untouched")
      if (c.moe.routing === "switch" && !training) {
        assert.ok(fwd.saved.sel.includes(ref.DROPPED) || c.moe.expertCapacity >= N, "capacity drops a token")
      }
    }
    const again = await run()
    again.forEach((b, k) =>
      assert.deepEqual(new Uint8Array(b), new Uint8Array(out[k]), `${what}: run-to-run bits ${k}`)
    )
  } finally {
    for (const b of made) ctx.release(b)
    for (const d of devs) releaseAdapter(ctx, d)
    for (const m of Object.values(dm)) releaseMatrix(ctx, m)
    releaseMoeBuffers(ctx, savedS)
    releaseMoeBuffers(ctx, savedC)
    releaseMoeBuffers(ctx, scratch)
  }
}
