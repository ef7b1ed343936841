import assert from "node:assert/strict"
import { GpuContext } from "../src/gpu/context.ts"
import { attentionBackward, attentionForward } from "../src/kernels/attention.ts"
import { lengthsU32, realTokenMask, type RowLayout } from "../src/reference/batch.ts"
import { attentionBackward as refBackward, attentionForward as refForward } from "../src/reference/attention.ts"
import { centralDifference, dot64, maxRelError } from "../src/reference/finite_diff.ts"
import { Rng } from "../src/util/rng.ts"

interface Case {
  q: Float32Array
  k: Float32Array
  v: Float32Array
  dout: Float32Array
}

/** Random q (scaled so softmax rows are peaked), k, v, and dout with `padDout` at pad queries. */
function makeCase(layout: RowLayout, dims: { H: number; KV: number; Dh: number }, seed: number, padDout: number): Case {
  const rng = Rng.fromSeed(seed)
  const N = layout.rows * layout.seqLen
  const { H, KV, Dh } = dims
  const q = Float32Array.from({ length: N * H * Dh }, () => rng.normal() * 2)
  const k = Float32Array.from({ length: N * KV * Dh }, () => rng.normal())
  const v = Float32Array.from({ length: N * KV * Dh }, () => rng.normal())
  const real = realTokenMask(layout)
  const dout = Float32Array.from(
    { length: N * H * Dh },
    (_, i) => real[Math.floor(i / (H * Dh))] ? rng.normal() : padDout,
  )
  return { q, k, v, dout }
}

Deno.test("reference attention backward matches central differences of the forward (max rel err ≤ 1e-3, eps 2^-10)", () => {
  for (const padSide of ["left", "right"] as const) {
    const layout = { rows: 3, seqLen: 7, lengths: [7, 4, 1], padSide }
    const dims = { H: 6, KV: 2, Dh: 10 }
    // dout = 0 at pad queries: their out is 0, so L = Σ dout ⊙ out is the same for any finite value there
    const c = makeCase(layout, dims, 11, 0)
    const { out, lse } = refForward(c.q, c.k, c.v, layout, dims)
    const ref = refBackward(c.dout, c.q, c.k, c.v, out, lse, layout, dims)
    const loss = () => dot64(c.dout, refForward(c.q, c.k, c.v, layout, dims).out)
    const errs = {
      dq: maxRelError(ref.dq, centralDifference(loss, c.q)),
      dk: maxRelError(ref.dk, centralDifference(loss, c.k)),
      dv: maxRelError(ref.dv, centralDifference(loss, c.v)),
    }
    console.log(`attention backward vs finite differences, ${padSide}: ${JSON.stringify(errs)}`)
    for (const e of Object.values(errs)) assert.ok(e <= 1e-3, JSON.stringify(errs))
  }
})

/** Uploads a case and its reference forward, runs the GPU backward `runs` times, returns each run's outputs. */
async function gpuBackward(
  ctx: GpuContext,
  layout: RowLayout,
  dims: { H: number; KV: number; Dh: number },
  c: Case,
  saved: { out: Float32Array; lse: Float32Array },
  runs = 1,
): Promise<{ dq: Float32Array; dk: Float32Array; dv: Float32Array }[]> {
  const { rows, seqLen: T } = layout
  const N = rows * T
  const { H, KV, Dh } = dims
  const up = (label: string, a: ArrayBufferView) => ctx.upload(label, a, "activations")
  const inputs = {
    dout: up("dout", c.dout),
    q: up("q", c.q),
    k: up("k", c.k),
    v: up("v", c.v),
    out: up("out", saved.out),
    lse: up("lse", saved.lse),
    lengths: up("lengths", lengthsU32(layout)),
    stats: up("stats", new Float32Array(2 * rows * H * T).fill(NaN)),
  }
  const results = []
  for (let run = 0; run < runs; run++) {
    // NaN (then a different garbage value) everywhere, so that an element the kernels skip shows up
    const fill = run === 0 ? NaN : 1e30
    const outs = {
      dq: up("dq", new Float32Array(N * H * Dh).fill(fill)),
      dk: up("dk", new Float32Array(N * KV * Dh).fill(fill)),
      dv: up("dv", new Float32Array(N * KV * Dh).fill(fill)),
    }
    const step = ctx.begin()
    attentionBackward(step, { ...outs, ...inputs }, { rows, T, H, KV, Dh, padSide: layout.padSide })
    const [a, b, d] = await ctx.read([outs.dq, outs.dk, outs.dv], step)
    for (const buf of Object.values(outs)) ctx.release(buf)
    results.push({
      dq: new Float32Array(a).subarray(0, N * H * Dh),
      dk: new Float32Array(b).subarray(0, N * KV * Dh),
      dv: new Float32Array(d).subarray(0, N * KV * Dh),
    })
  }
  for (const buf of Object.values(inputs)) ctx.release(buf)
  return results
}

async function checkAgainstReference(
  ctx: GpuContext,
  layout: RowLayout,
  dims: { H: number; KV: number; Dh: number },
  seed: number,
): Promise<void> {
  // NaN dout at pad queries: the kernels must never read it
  const c = makeCase(layout, dims, seed, NaN)
  const saved = refForward(c.q, c.k, c.v, layout, dims)
  const ref = refBackward(c.dout, c.q, c.k, c.v, saved.out, saved.lse, layout, dims)
  const [got] = await gpuBackward(ctx, layout, dims, c, saved)
  const errs = {
    dq: maxRelError(got.dq, ref.dq),
    dk: maxRelError(got.dk, ref.dk),
    dv: maxRelError(got.dv, ref.dv),
  }
  console.log(
    `attention backward ${layout.padSide} T=${layout.seqLen} H=${dims.H} KV=${dims.KV} Dh=${dims.Dh}: ${
      Object.entries(errs).map(([k, e]) => `${k} ${e.toExponential(2)}`).join(", ")
    }`,
  )
  for (const e of Object.values(errs)) assert.ok(e <= 1e-4, JSON.stringify(errs))
  // pad queries get dq = 0, pad keys dk = dv = 0, exactly
  const real = realTokenMask(layout)
  for (let n = 0; n < real.length; n++) {
    if (real[n]) continue
    const { H, KV, Dh } = dims
    assert.ok(got.dq.subarray(n * H * Dh, (n + 1) * H * Dh).every((x) => x === 0), `dq at pad position ${n}`)
    assert.ok(got.dk.subarray(n * KV * Dh, (n + 1) * KV * Dh).every((x) => x === 0), `dk at pad position ${n}`)
    assert.ok(got.dv.subarray(n * KV * Dh, (n + 1) * KV * Dh).every((x) => x === 0), `dv at pad position ${n}`)
  }
}

Deno.test("attention backward dq, dk, dv match the reference within 1e-4 relative: rows [13, 7, 1], H=6 KV=2, Dh 7/10/16/18", async () => {
  const ctx = await GpuContext.create()
  try {
    for (const padSide of ["left", "right"] as const) {
      // 7, 10 and 18 take the masked (Dh % 4 ≠ 0) path, 16 the vec4 one
      for (const Dh of [7, 10, 16, 18]) {
        await checkAgainstReference(ctx, { rows: 3, seqLen: 13, lengths: [13, 7, 1], padSide }, { H: 6, KV: 2, Dh }, Dh)
      }
    }
  } finally {
    ctx.destroy()
  }
})

Deno.test("attention backward at T=97, Dh=128 and 130, H=4 KV=1 (4 heads summed per kv head) within 1e-4 relative", async () => {
  const ctx = await GpuContext.create()
  try {
    for (const [Dh, padSide] of [[128, "left"], [130, "right"]] as const) {
      await checkAgainstReference(ctx, { rows: 2, seqLen: 97, lengths: [97, 42], padSide }, { H: 4, KV: 1, Dh }, 5)
    }
  } finally {
    ctx.destroy()
  }
})

Deno.test("attention backward over 11 rows (T=21, mixed lengths; several rows share a SIMD group), Dh 8 and 9, within 1e-4", async () => {
  const ctx = await GpuContext.create()
  try {
    const lengths = [21, 3, 17, 1, 21, 9, 12, 20, 5, 21, 14]
    for (const [Dh, padSide] of [[8, "right"], [9, "left"], [8, "left"]] as const) {
      await checkAgainstReference(ctx, { rows: 11, seqLen: 21, lengths, padSide }, { H: 4, KV: 2, Dh }, 40 + Dh)
    }
  } finally {
    ctx.destroy()
  }
})

Deno.test("attention backward is deterministic: two runs give bit-identical dq, dk, dv", async () => {
  const ctx = await GpuContext.create()
  try {
    const layout = { rows: 3, seqLen: 41, lengths: [41, 30, 9], padSide: "left" as const }
    const dims = { H: 6, KV: 2, Dh: 18 }
    const c = makeCase(layout, dims, 23, 0)
    const saved = refForward(c.q, c.k, c.v, layout, dims)
    const [a, b] = await gpuBackward(ctx, layout, dims, c, saved, 2)
    for (const key of ["dq", "dk", "dv"] as const) {
      assert.deepEqual(new Uint32Array(a[key].slice().buffer), new Uint32Array(b[key].slice().buffer), key)
    }
  } finally {
    ctx.destroy()
  }
})

Deno.test("attention backward timing at T=128, Dh=32, H=4 (KV 4 and 1), one row (logged; outputs checked)", async () => {
  const ctx = await GpuContext.create()
  try {
    for (const KV of [4, 1]) {
      const [T, H, Dh] = [128, 4, 32]
      const layout = { rows: 1, seqLen: T, lengths: [T], padSide: "right" as const }
      const c = makeCase(layout, { H, KV, Dh }, 3, 0)
      const up = (label: string, a: ArrayBufferView) => ctx.upload(label, a, "activations")
      const b = {
        dq: up("dq", new Float32Array(T * H * Dh)),
        dk: up("dk", new Float32Array(T * KV * Dh)),
        dv: up("dv", new Float32Array(T * KV * Dh)),
        dout: up("dout", c.dout),
        q: up("q", c.q),
        k: up("k", c.k),
        v: up("v", c.v),
        out: up("out", new Float32Array(T * H * Dh)),
        lse: up("lse", new Float32Array(H * T)),
        lengths: up("lengths", lengthsU32(layout)),
        stats: up("stats", new Float32Array(2 * H * T)),
      }
      const dims = { rows: 1, T, H, KV, Dh, padSide: layout.padSide }
      // time R runs in one submission against 1 run: the difference cancels the ~11.5 ms round trip
      const time = async (runs: number, backward: boolean) => {
        const step = ctx.begin()
        for (let i = 0; i < runs; i++) {
          if (backward) attentionBackward(step, b, dims)
          else attentionForward(step, { out: b.out, lse: b.lse, q: b.q, k: b.k, v: b.v, lengths: b.lengths }, dims)
        }
        const t0 = performance.now()
        await ctx.read([{ buffer: b.dq, offset: 0, size: 4 }], step)
        return performance.now() - t0
      }
      await time(1, false)
      await time(1, true) // compile and warm up
      const R = 10
      const fwd = ((await time(R + 1, false)) - (await time(1, false))) / R
      const bwd = ((await time(R + 1, true)) - (await time(1, true))) / R
      console.log(
        `attention T=${T} Dh=${Dh} H=${H} KV=${KV} on ${ctx.description}: forward ${fwd.toFixed(2)} ms, backward ${
          bwd.toFixed(2)
        } ms`,
      )
      // the timed outputs are right: the last backward read the forward's out and lse; compare with the reference
      const saved = refForward(c.q, c.k, c.v, layout, { H, KV, Dh })
      const ref = refBackward(c.dout, c.q, c.k, c.v, saved.out, saved.lse, layout, { H, KV, Dh })
      const [dq, dk, dv] = (await ctx.read([b.dq, b.dk, b.dv])).map((x) => new Float32Array(x))
      assert.ok(maxRelError(dq, ref.dq) <= 1e-4 && maxRelError(dk, ref.dk) <= 1e-4 && maxRelError(dv, ref.dv) <= 1e-4)
      for (const buf of Object.values(b)) ctx.release(buf)
    }
  } finally {
    ctx.destroy()
  }
})
