import assert from "node:assert/strict"
import { GpuContext } from "../src/gpu/context.ts"
import { ropeForward } from "../src/kernels/rope.ts"
import { lengthsU32, type RowLayout, tokenPositions } from "../src/reference/batch.ts"
import { ropeForward as refRope, ropeInvFreq } from "../src/reference/rope.ts"
import { Rng } from "../src/util/rng.ts"

/** max|y − ref| / max|ref| (bound 1e-4). */
function relErr(y: Float32Array, ref: Float32Array): number {
  let num = 0
  let den = 0
  for (let i = 0; i < ref.length; i++) {
    num = Math.max(num, Math.abs(y[i] - ref[i]))
    den = Math.max(den, Math.abs(ref[i]))
  }
  return num / den
}

async function check(
  ctx: GpuContext,
  layout: RowLayout,
  dims: { H: number; KV: number; Dh: number; theta: number },
  seed: number,
): Promise<{ q: number; k: number }> {
  const rng = Rng.fromSeed(seed)
  const { H, KV, Dh, theta } = dims
  const N = layout.rows * layout.seqLen
  const q = Float32Array.from({ length: N * H * Dh }, () => rng.normal())
  const k = Float32Array.from({ length: N * KV * Dh }, () => rng.normal())
  const pos = tokenPositions(layout)
  const refQ = refRope(q, pos, { N, heads: H, Dh, theta })
  const refK = refRope(k, pos, { N, heads: KV, Dh, theta })
  const qb = ctx.upload("q", q, "activations")
  const kb = ctx.upload("k", k, "activations")
  const lengths = ctx.upload("lengths", lengthsU32(layout), "activations")
  const step = ctx.begin()
  ropeForward(step, { q: qb, k: kb, lengths }, {
    rows: layout.rows,
    T: layout.seqLen,
    H,
    KV,
    Dh,
    theta,
    padSide: layout.padSide,
  })
  const [gq, gk] = await ctx.read([qb, kb], step)
  for (const b of [qb, kb, lengths]) ctx.release(b)
  return {
    q: relErr(new Float32Array(gq).subarray(0, q.length), refQ),
    k: relErr(new Float32Array(gk).subarray(0, k.length), refK),
  }
}

Deno.test("rope on q and k matches the reference within 1e-4 relative: rows [13, 7, 1], H=6 KV=2, Dh 10 and 18", async () => {
  const ctx = await GpuContext.create()
  try {
    for (const padSide of ["left", "right"] as const) {
      for (const Dh of [10, 18, 16]) {
        const layout = { rows: 3, seqLen: 13, lengths: [13, 7, 1], padSide }
        const e = await check(ctx, layout, { H: 6, KV: 2, Dh, theta: 10000 }, Dh)
        console.log(`rope ${padSide} Dh=${Dh}: q rel err ${e.q.toExponential(2)}, k rel err ${e.k.toExponential(2)}`)
        assert.ok(e.q <= 1e-4 && e.k <= 1e-4, JSON.stringify(e))
      }
    }
  } finally {
    ctx.destroy()
  }
})

Deno.test("rope at positions up to 511 (Dh=128, theta 1e4 and 5e5) matches the reference within 1e-4 relative", async () => {
  const ctx = await GpuContext.create()
  try {
    for (const theta of [10000, 500000]) {
      const layout = { rows: 2, seqLen: 512, lengths: [512, 300], padSide: "left" as const }
      const e = await check(ctx, layout, { H: 2, KV: 1, Dh: 128, theta }, 7)
      console.log(
        `rope T=512 Dh=128 theta=${theta}: q rel err ${e.q.toExponential(2)}, k rel err ${e.k.toExponential(2)}`,
      )
      assert.ok(e.q <= 1e-4 && e.k <= 1e-4, JSON.stringify(e))
    }
  } finally {
    ctx.destroy()
  }
})

Deno.test("reference rope: position 0 is the identity, and q·k depends only on the relative position", () => {
  const Dh = 18
  const rng = Rng.fromSeed(9)
  const q = Float32Array.from({ length: Dh }, () => rng.normal())
  const k = Float32Array.from({ length: Dh }, () => rng.normal())
  const at = (x: Float32Array, p: number) => refRope(x, Int32Array.of(p), { N: 1, heads: 1, Dh, theta: 10000 })
  assert.deepEqual(at(q, 0), q)
  const dot = (a: Float32Array, b: Float32Array) => a.reduce((s, v, i) => s + v * b[i], 0)
  const d1 = dot(at(q, 7), at(k, 3))
  const d2 = dot(at(q, 104), at(k, 100))
  assert.ok(Math.abs(d1 - d2) < 1e-4 * Math.abs(d1) + 1e-5, `${d1} vs ${d2}`)
  // HF: inv_freq = 1 / 10000^(2i/Dh); i = 0 is exactly 1
  const inv = ropeInvFreq(Dh, 10000)
  assert.equal(inv[0], 1)
  assert.ok(Math.abs(inv[4] - 1 / Math.pow(10000, 8 / 18)) < 1e-7)
})
