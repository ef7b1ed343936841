import assert from "node:assert/strict"
import { GpuValidationError } from "../src/errors.ts"
import { GpuContext } from "../src/gpu/context.ts"
import {
  adamwScalars,
  initialOptimizerState,
  type OptimizerHyper,
  optimizerHyper,
  type OptimizerState,
  optimizerStep,
} from "../src/reference/optimizer.ts"
import { AdapterOptimizer, sgdUpdate } from "../src/train/optimizer.ts"
import { learningRateAt, lrLambda, type Schedule } from "../src/train/schedule.ts"
import { Rng } from "../src/util/rng.ts"

const fr = Math.fround

function randomArray(rng: Rng, n: number, std = 1): Float32Array {
  return Float32Array.from({ length: n }, () => rng.normal(0, std))
}

/** max over i of |a − b| / max(|b|, floor): relative error, with an absolute floor for values near 0. */
function maxRelErr(a: Float32Array, b: Float32Array, floor: number): number {
  assert.equal(a.length, b.length)
  let worst = 0
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]) / Math.max(Math.abs(b[i]), floor))
  return worst
}

/** Runs `steps` updates on the device and on the CPU reference with the same gradients; returns both. */
async function runBoth(
  ctx: GpuContext,
  hyper: OptimizerHyper,
  opts: { count: number; steps: number; seed: number; schedule: Schedule },
) {
  const rng = Rng.fromSeed(opts.seed)
  const p0 = randomArray(rng, opts.count, 0.05)
  const params = ctx.upload("params", p0, "adapters")
  const grads = ctx.upload("grads", new Float32Array(opts.count), "activations")
  const opt = AdapterOptimizer.create(ctx, { label: "t", count: opts.count, hyper })
  const ref = p0.slice()
  let state: OptimizerState = initialOptimizerState(hyper, opts.count)
  for (let k = 0; k < opts.steps; k++) {
    const g = randomArray(rng, opts.count, 0.01)
    const lr = learningRateAt(opts.schedule, opt.step)
    ctx.write(grads, g)
    const step = ctx.begin()
    opt.encode(step, { params, grads }, lr)
    step.submit()
    state = optimizerStep(hyper, state, ref, g, lr)
  }
  const [pb, gb] = await ctx.read([{ buffer: params, offset: 0, size: opts.count * 4 }, {
    buffer: grads,
    offset: 0,
    size: opts.count * 4,
  }])
  const devState = await opt.readState()
  opt.release()
  ctx.release(params)
  ctx.release(grads)
  return { got: new Float32Array(pb), gradsAfter: new Float32Array(gb), ref, refState: state, devState }
}

const cosine: Schedule = { type: "cosine", lr: 3e-3, warmupSteps: 2, totalSteps: 10 }

Deno.test("AdamW kernel matches the f32 reference after 10 steps (count 1001, wd 0.01, cosine + warmup)", async () => {
  const ctx = await GpuContext.create()
  try {
    const hyper = optimizerHyper({ kind: "adamw" })
    assert.equal(hyper.weightDecay, 0.01)
    const r = await runBoth(ctx, hyper, { count: 1001, steps: 10, seed: 11, schedule: cosine })
    const pErr = maxRelErr(r.got, r.ref, 1e-6)
    const mErr = maxRelErr(r.devState.m!, r.refState.m!, 1e-9)
    const vErr = maxRelErr(r.devState.v!, r.refState.v!, 1e-12)
    console.log(
      `adamw 1001×10: rel err p ${pErr.toExponential(2)} m ${mErr.toExponential(2)} v ${vErr.toExponential(2)}`,
    )
    assert.ok(pErr <= 1e-6 && mErr <= 1e-6 && vErr <= 1e-6)
    assert.equal(r.devState.step, 10)
    assert.ok(r.gradsAfter.every((x) => x === 0), "gradients are zeroed by the kernel")
  } finally {
    ctx.destroy()
  }
})

Deno.test("SGD kernels (momentum 0.9 with L2 0.01, and plain) match the f32 reference after 10 steps", async () => {
  const ctx = await GpuContext.create()
  try {
    const linear: Schedule = { type: "linear", lr: 0.05, warmupSteps: 3, totalSteps: 12 }
    for (
      const [hyper, count] of [
        [optimizerHyper({ kind: "sgd", momentum: 0.9, weightDecay: 0.01 }), 1001],
        [optimizerHyper({ kind: "sgd" }), 7],
      ] as const
    ) {
      const r = await runBoth(ctx, hyper, { count, steps: 10, seed: 5, schedule: linear })
      const pErr = maxRelErr(r.got, r.ref, 1e-6)
      const bErr = hyper.momentum ? maxRelErr(r.devState.momentum!, r.refState.momentum!, 1e-9) : 0
      console.log(
        `sgd μ=${hyper.momentum} ${count}×10: rel err p ${pErr.toExponential(2)} buf ${bErr.toExponential(2)}`,
      )
      assert.ok(pErr <= 1e-6 && bErr <= 1e-6)
      assert.equal(r.devState.momentum === undefined, hyper.momentum === 0)
      assert.ok(r.gradsAfter.every((x) => x === 0))
    }
  } finally {
    ctx.destroy()
  }
})

Deno.test("acceptance: one SGD step from loaded weights ends at w − lr·grad exactly (also with momentum)", async () => {
  const ctx = await GpuContext.create()
  try {
    const rng = Rng.fromSeed(1)
    const n = 1001
    const w = randomArray(rng, n, 0.1)
    const g = randomArray(rng, n, 0.01)
    const lr = 1e-3
    const expected = w.map((x, i) => fr(x - fr(fr(lr) * g[i])))
    for (const momentum of [0, 0.9]) {
      const params = ctx.upload("w", w, "adapters")
      const grads = ctx.upload("g", g, "activations")
      const opt = AdapterOptimizer.create(ctx, {
        label: "sgd",
        count: n,
        hyper: optimizerHyper({ kind: "sgd", momentum }),
      })
      const step = ctx.begin()
      opt.encode(step, { params, grads }, lr)
      const got = new Float32Array((await ctx.read([{ buffer: params, offset: 0, size: n * 4 }], step))[0])
      assert.deepEqual(got, expected, `momentum ${momentum}`)
      opt.release()
      ctx.release(params)
      ctx.release(grads)
    }
  } finally {
    ctx.destroy()
  }
})

Deno.test("state save/restore (m, v, step) continues bit-identically to an uninterrupted run", async () => {
  const ctx = await GpuContext.create()
  try {
    for (const hyper of [optimizerHyper({ kind: "adamw" }), optimizerHyper({ kind: "sgd", momentum: 0.9 })]) {
      const n = 333
      const rng = Rng.fromSeed(9)
      const p0 = randomArray(rng, n, 0.05)
      const gs = Array.from({ length: 8 }, () => randomArray(rng, n, 0.01))
      const run = async (opt: AdapterOptimizer, params: GPUBuffer, grads: GPUBuffer, from: number, to: number) => {
        for (let k = from; k < to; k++) {
          ctx.write(grads, gs[k])
          const step = ctx.begin()
          opt.encode(step, { params, grads }, learningRateAt(cosine, opt.step))
          step.submit()
        }
        return new Float32Array((await ctx.read([{ buffer: params, offset: 0, size: n * 4 }]))[0])
      }
      const make = (p: Float32Array) => ({
        params: ctx.upload("p", p, "adapters"),
        grads: ctx.upload("g", new Float32Array(n), "activations"),
        opt: AdapterOptimizer.create(ctx, { label: "x", count: n, hyper }),
      })
      const a = make(p0)
      const straight = await run(a.opt, a.params, a.grads, 0, 8)
      const b = make(p0)
      const half = await run(b.opt, b.params, b.grads, 0, 4)
      const saved = await b.opt.readState()
      assert.equal(saved.step, 4)
      const c = make(half)
      c.opt.restoreState(saved)
      assert.equal(c.opt.step, 4)
      const resumed = await run(c.opt, c.params, c.grads, 4, 8)
      assert.deepEqual(resumed, straight, hyper.kind)
      assert.throws(
        () => c.opt.restoreState({ ...saved, kind: hyper.kind === "adamw" ? "sgd" : "adamw" }),
        GpuValidationError,
      )
      for (const x of [a, b, c]) {
        x.opt.release()
        ctx.release(x.params)
        ctx.release(x.grads)
      }
    }
  } finally {
    ctx.destroy()
  }
})

Deno.test("launcher guards: short buffers, aliased bindings, two updates in one command buffer", async () => {
  const ctx = await GpuContext.create()
  try {
    const p = ctx.upload("p", new Float32Array(8), "adapters")
    const g = ctx.upload("g", new Float32Array(8), "activations")
    const scalars = ctx.buffer({ label: "s", size: 48, usage: GPUBufferUsage.UNIFORM, category: "optimizer" })
    assert.throws(() => sgdUpdate(ctx.begin(), { scalars, params: p, grads: g }, { count: 9 }), GpuValidationError)
    assert.throws(() => sgdUpdate(ctx.begin(), { scalars, params: p, grads: p }, { count: 8 }), GpuValidationError)
    const opt = AdapterOptimizer.create(ctx, { label: "o", count: 8, hyper: optimizerHyper({ kind: "adamw" }) })
    const step = ctx.begin()
    opt.encode(step, { params: p, grads: g }, 1e-3)
    assert.throws(() => opt.encode(step, { params: p, grads: g }, 1e-3), GpuValidationError)
    assert.throws(() => optimizerHyper({ kind: "sgd", momentum: -1 }), RangeError)
    step.submit()
  } finally {
    ctx.destroy()
  }
})

Deno.test("reference AdamW equals the textbook f64 formula (m̂ / (√v̂ + ε)) within f32 rounding", () => {
  const rng = Rng.fromSeed(2)
  const n = 64
  const hyper = optimizerHyper({ kind: "adamw", weightDecay: 0.1 })
  const p = randomArray(rng, n, 0.1)
  const p64 = Float64Array.from(p)
  const m64 = new Float64Array(n)
  const v64 = new Float64Array(n)
  let state = initialOptimizerState(hyper, n)
  for (let t = 1; t <= 5; t++) {
    const g = randomArray(rng, n, 0.01)
    const lr = 1e-2 / t
    for (let i = 0; i < n; i++) {
      p64[i] *= 1 - lr * hyper.weightDecay
      m64[i] = 0.9 * m64[i] + 0.1 * g[i]
      v64[i] = 0.999 * v64[i] + 0.001 * g[i] * g[i]
      const mHat = m64[i] / (1 - 0.9 ** t)
      const vHat = v64[i] / (1 - 0.999 ** t)
      p64[i] -= lr * mHat / (Math.sqrt(vHat) + 1e-8)
    }
    state = optimizerStep(hyper, state, p, g.slice(), lr)
  }
  const err = maxRelErr(p, Float32Array.from(p64), 1e-3)
  console.log(`reference vs f64 textbook AdamW (5 steps): rel err ${err.toExponential(2)}`)
  assert.ok(err < 1e-5)
  // step 1 without decay moves every weight by lr·g/(|g| + ε) ≈ lr·sign(g)
  const s = adamwScalars(optimizerHyper({ kind: "adamw", weightDecay: 0 }), 0.5, 1)
  assert.equal(s.decay, 1)
  assert.equal(s.stepSize, fr(0.5 / (1 - 0.9)))
  assert.equal(s.bc2Sqrt, fr(Math.sqrt(1 - 0.999)))
})

Deno.test("schedules match HF formulas at hand-computed points", () => {
  const close = (a: number, b: number) => assert.ok(Math.abs(a - b) <= 1e-12, `${a} vs ${b}`)
  // W = 4, T = 20
  const base = { lr: 2e-4, warmupSteps: 4, totalSteps: 20 }
  for (const type of ["constant", "linear", "cosine"] as const) {
    const s = { ...base, type }
    close(lrLambda(s, 0), 0) // HF: the first update of a warmup has lr 0
    close(lrLambda(s, 1), 0.25)
    close(lrLambda(s, 3), 0.75)
    close(lrLambda(s, 4), 1)
  }
  const lin = { ...base, type: "linear" as const }
  close(lrLambda(lin, 10), 10 / 16) // (20 − 10) / (20 − 4)
  close(lrLambda(lin, 19), 1 / 16)
  close(lrLambda(lin, 20), 0)
  close(lrLambda(lin, 25), 0) // clamped at 0 past the end
  const cos = { ...base, type: "cosine" as const }
  close(lrLambda(cos, 12), 0.5) // progress 0.5 → ½(1 + cos(π/2))
  close(lrLambda(cos, 8), 0.5 * (1 + Math.cos(Math.PI * 0.25))) // progress 0.25 → 0.853553...
  close(lrLambda(cos, 8), 0.8535533905932737)
  close(lrLambda(cos, 20), 0)
  close(lrLambda({ ...base, type: "constant" }, 1000), 1)
  close(learningRateAt(lin, 10), 2e-4 * 0.625)
  // no warmup: the first update runs at the peak rate (max(1, W) guards W = 0)
  close(lrLambda({ type: "linear", lr: 1, warmupSteps: 0, totalSteps: 10 }, 0), 1)
  close(lrLambda({ type: "cosine", lr: 1, warmupSteps: 0, totalSteps: 0 }, 0), 1) // T − W = 0 → max(1, 0)
  assert.throws(() => lrLambda(lin, -1), RangeError)
})
