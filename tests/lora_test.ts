/**
 * LoRA: the reference (src/reference/lora.ts) by finite differences, the random streams, and the WGSL kernels
 * (src/kernels/lora.ts) against the reference.
 *
 * FD: L = Σ c ⊙ Δy in f64, central differences with step 1e-5; per tensor max_k |fd − an| / max_k |an| ≤ 1e-3.
 * GPU: odd shapes (IN = 45, OUT = 37, R = 3 and 5) on token rows [7, 28) (batch rows 1..3, T = 7) of a 35-row
 * batch, both pad sides, A and B at unaligned offsets of one flat buffer; per tensor max |gpu − ref| / max |ref|
 * ≤ 1e-4; y, dx and the gradients are accumulated onto random initial values and rows outside the range must
 * stay untouched; two runs are bitwise identical. Masks are keyed by sequence and position (maskRowKey), so one
 * adapter's sequences give bit-identical results at another row0, a larger padded T and the other pad side.
 */
import assert from "node:assert/strict"
import { GpuContext } from "../src/gpu/context.ts"
import {
  LORA_MAX_SEGMENTS,
  loraBackward,
  loraForward,
  loraSegmentsBackward,
  loraSegmentsForward,
} from "../src/kernels/lora.ts"
import {
  dropoutMask,
  jitterNoise,
  loraBackward as refBackward,
  loraForward as refForward,
  maskHash,
  maskRowKey,
  type MaskRows,
  pcgHash,
  type Vec,
} from "../src/reference/lora.ts"
import { Rng } from "../src/util/rng.ts"

function normal(seed: number, n: number, std = 1): Float64Array {
  const rng = Rng.fromSeed(seed)
  return Float64Array.from({ length: n }, () => rng.normal(0, std))
}

function relErr(got: ArrayLike<number>, ref: ArrayLike<number>): number {
  assert.equal(got.length, ref.length)
  let num = 0, den = 0
  for (let k = 0; k < ref.length; k++) {
    num = Math.max(num, Math.abs(got[k] - ref[k]))
    den = Math.max(den, Math.abs(ref[k]))
  }
  return den === 0 ? num : num / den
}

Deno.test("random streams: PCG hash values, dropout keep rate, jitter range, determinism", () => {
  // fixed values guard against accidental changes (the WGSL kernels implement the same function)
  assert.equal(pcgHash(0), 129708002)
  assert.equal(maskHash(1, 2, 3, 4), maskHash(1, 2, 3, 4))
  assert.notEqual(maskHash(1, 2, 3, 4), maskHash(1, 2, 4, 3))
  const rows: MaskRows = { T: 20, padSide: "right", lengths: Array(10).fill(20) }
  const m = dropoutMask({ p: 0.25, seed: 11, stream: 3, rows, cols: 100 })!
  const kept = m.filter((v) => v !== 0)
  assert.ok(Math.abs(kept.length / m.length - 0.75) < 0.01, `keep rate ${kept.length / m.length}`)
  assert.ok(kept.every((v) => v === Math.fround(1 / 0.75)))
  assert.equal(dropoutMask({ p: 0, seed: 11, stream: 3, rows, cols: 2 }), null)
  const other = dropoutMask({ p: 0.25, seed: 11, stream: 4, rows, cols: 100 })!
  assert.ok(other.some((v, k) => v !== m[k]), "streams differ")
  const n = jitterNoise({ j: 0.1, seed: 3, rows: { T: 50, padSide: "left", lengths: [50] }, D: 40 })
  assert.ok(n.every((v) => v >= 0.9 - 1e-7 && v < 1.1 + 1e-7))
  assert.ok(Math.abs(n.reduce((a, v) => a + v, 0) / n.length - 1) < 0.01)
})

Deno.test("mask row keys: sequence index · 65536 + position in the sequence, for either pad side and any T", () => {
  // two sequences of lengths 5 and 8: right padding to T = 8, left padding to T = 8, right padding to T = 11
  const right = { T: 8, padSide: "right", lengths: [5, 8] } as const
  const left = { T: 8, padSide: "left", lengths: [5, 8] } as const
  const wide = { T: 11, padSide: "right", lengths: [5, 8] } as const
  const place = (rows: MaskRows, r: number, p: number) =>
    r * rows.T + (rows.padSide === "left" ? rows.T - rows.lengths[r] + p : p)
  for (const [r, len] of [[0, 5], [1, 8]]) {
    for (let p = 0; p < len; p++) {
      for (const rows of [right, left, wide]) assert.equal(maskRowKey(place(rows, r, p), rows), r * 65536 + p)
    }
  }
  // left pads wrap around below their row's first real token (deterministic; never used)
  assert.equal(maskRowKey(0, left), 2 ** 32 - 3)
  assert.equal(maskRowKey(7, right), 7)
  assert.throws(() => dropoutMask({ p: 0.5, seed: 1, stream: 0, rows: { ...right, T: 65537 }, cols: 1 }), RangeError)
})

for (const p of [0, 0.3]) {
  Deno.test(`LoRA reference, dropout ${p}: finite-difference gradients of A, B and x`, () => {
    const [N, inDim, outDim, R] = [7, 9, 5, 3]
    const dims = { N, inDim, outDim, R, scale: 1.7, precision: "f64" as const }
    const x = normal(1, N * inDim), a = normal(2, R * inDim), b = normal(3, outDim * R), c = normal(4, N * outDim)
    const mk = dropoutMask({ p, seed: 9, stream: 0, rows: { T: N, padSide: "right", lengths: [N] }, cols: inDim })
    const mask = mk ? Float64Array.from(mk) : null
    const L = () => Array.from(refForward(x, a, b, mask, dims).dy).reduce((s, v, k) => s + v * c[k], 0)
    const { t } = refForward(x, a, b, mask, dims)
    const g = refBackward(c, x, a, b, t, mask, dims)
    const h = 1e-5
    const fd = (v: Float64Array) =>
      Float64Array.from(v, (_, k) => {
        const keep = v[k]
        v[k] = keep + h
        const lp = L()
        v[k] = keep - h
        const lm = L()
        v[k] = keep
        return (lp - lm) / (2 * h)
      })
    for (const [name, v, an] of [["A", a, g.da], ["B", b, g.db], ["x", x, g.dx]] as [string, Float64Array, Vec][]) {
      const e = relErr(fd(v), an)
      assert.ok(e <= 1e-3, `${name}: rel err ${e}`)
      if (Deno.env.get("SHOW_ERR")) console.log(`FD p=${p} ${name} ${e.toExponential(2)}`)
    }
    if (p > 0) assert.ok(g.dx.some((v, k) => v === 0 && mask![k] === 0), "dropped inputs get no gradient")
  })
}

const ctx = await GpuContext.create()
const USAGE = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST

Deno.test("LoRA kernels vs reference: odd shapes, row range, dropout on/off, accumulation, determinism", async () => {
  const made: GPUBuffer[] = []
  const up = (data: ArrayLike<number>) => {
    const b = ctx.upload("t", Float32Array.from(data), "activations")
    made.push(b)
    return b
  }
  const zeros = (n: number) => {
    const b = ctx.buffer({ label: "z", size: n * 4, usage: USAGE, category: "activations" })
    made.push(b)
    return b
  }
  try {
    // batch rows 1..3 of a 5-row batch padded to T = 7: token rows [7, 28)
    const [T, LENGTHS, inDim, outDim] = [7, [7, 3, 7, 5, 2], 45, 37]
    const [rows, row0, N] = [LENGTHS.length * T, T, 3 * T]
    const lengths = ctx.upload("lengths", Uint32Array.from(LENGTHS), "activations")
    made.push(lengths)
    for (const R of [3, 5]) {
      for (const [p, padSide] of [[0, "right"], [0.25, "right"], [0.25, "left"]] as const) {
        const f32 = (v: Float64Array) => Float32Array.from(v)
        const x = f32(normal(10 + R, rows * inDim)), y0 = f32(normal(11, rows * outDim))
        const dy = f32(normal(12, rows * outDim)), dx0 = f32(normal(13, rows * inDim))
        const a = f32(normal(14, R * inDim, 0.2)), b = f32(normal(15, outDim * R, 0.2))
        const [aOff, bOff] = [70, 70 + R * inDim + 3]
        const flat = new Float32Array(bOff + outDim * R + 5)
        flat.set(a, aOff)
        flat.set(b, bOff)
        const g0 = f32(normal(16, flat.length))
        const scale = 16 / R
        const dropout = { p, seed: 1234, stream: 4 }
        const dims = { row0, N, inDim, outDim, R, scale, dropout }
        const layout = { T, padSide, lengths }
        // reference on the adapter's rows
        const xs = x.subarray(row0 * inDim, (row0 + N) * inDim), dys = dy.subarray(row0 * outDim, (row0 + N) * outDim)
        const mask = dropoutMask({ ...dropout, rows: { T, padSide, lengths: LENGTHS.slice(1, 4) }, cols: inDim })
        const rd = { N, inDim, outDim, R, scale }
        const ref = refForward(xs, a, b, mask, rd)
        const rg = refBackward(dys, xs, a, b, ref.t, mask, rd)
        const run = async () => {
          const params = up(flat), grads = up(g0)
          const [xb, yb, dyb, dxb, t, dt] = [up(x), up(y0), up(dy), up(dx0), zeros(N * R), zeros(N * R)]
          const step = ctx.begin()
          const refs = { a: { buffer: params, offset: aOff }, b: { buffer: params, offset: bOff } }
          loraForward(step, { y: yb, x: xb, t, layout, ...refs }, dims)
          loraBackward(step, {
            layout,
            dy: dyb,
            x: xb,
            dx: dxb,
            ...refs,
            da: { buffer: grads, offset: aOff },
            db: { buffer: grads, offset: bOff },
            t,
            dt,
          }, dims)
          return (await ctx.read([yb, t, dxb, grads], step)).map((u) => new Float32Array(u))
        }
        const [y, t, dx, g] = await run()
        const what = `R=${R} p=${p} ${padSide}`
        const rowsOf = (v: Float32Array, w: number) => v.subarray(row0 * w, (row0 + N) * w)
        const minus = (u: Float32Array, v: Float32Array) => u.map((q, k) => q - v[k])
        const checks: [string, ArrayLike<number>, Vec][] = [
          ["t", t.subarray(0, N * R), ref.t],
          ["y", minus(rowsOf(y.subarray(0, rows * outDim), outDim), rowsOf(y0, outDim)), ref.dy],
          ["dx", minus(rowsOf(dx.subarray(0, rows * inDim), inDim), rowsOf(dx0, inDim)), rg.dx],
          ["dA", minus(g.subarray(aOff, aOff + R * inDim), g0.subarray(aOff, aOff + R * inDim)), rg.da],
          ["dB", minus(g.subarray(bOff, bOff + outDim * R), g0.subarray(bOff, bOff + outDim * R)), rg.db],
        ]
        for (const [name, got, want] of checks) {
          const e = relErr(got, want)
          assert.ok(e <= 1e-4, `${what} ${name}: rel err ${e}`)
          if (Deno.env.get("SHOW_ERR")) console.log(`${what} ${name} ${e.toExponential(2)}`)
        }
        // untouched: rows outside the range, gradient padding around A and B
        assert.deepEqual(y.subarray(0, row0 * outDim), y0.subarray(0, row0 * outDim))
        assert.deepEqual(y.subarray((row0 + N) * outDim, rows * outDim), y0.subarray((row0 + N) * outDim))
        assert.deepEqual(dx.subarray(0, row0 * inDim), dx0.subarray(0, row0 * inDim))
        assert.deepEqual(g.subarray(0, aOff), g0.subarray(0, aOff))
        assert.deepEqual(g.subarray(aOff + R * inDim, bOff), g0.subarray(aOff + R * inDim, bOff))
        assert.deepEqual(g.subarray(bOff + outDim * R, flat.length), g0.subarray(bOff + outDim * R))
        const again = await run()
        for (const [k, v] of [y, t, dx, g].entries()) assert.deepEqual(again[k], v, `${what}: run-to-run bits`)
      }
    }
  } finally {
    for (const b of made) ctx.release(b)
    ctx.forgetBindGroups()
  }
})

Deno.test("LoRA segmented calls: adapters packed in one dispatch per kernel equal each run alone, bit for bit", async () => {
  const made: GPUBuffer[] = []
  const up = (data: ArrayLike<number>) => {
    const b = ctx.upload("t", Float32Array.from(data), "activations")
    made.push(b)
    return b
  }
  const zeros = (n: number) => {
    const b = ctx.buffer({ label: "z", size: Math.max(1, n) * 4, usage: USAGE, category: "activations" })
    made.push(b)
    return b
  }
  // count dispatches per kernel family while the packed call is recorded
  const proto = Object.getPrototypeOf(ctx.begin()) as { dispatch: (...a: unknown[]) => void }
  const original = proto.dispatch
  let dispatches = 0
  proto.dispatch = function (this: unknown, ...a: unknown[]) {
    dispatches++
    return original.apply(this, a)
  }
  try {
    // odd sizes (vec1 kernels) and 4-aligned ones (vec4), R = 3 / 8; 20 segments → two dispatches per kernel
    // whole sequences of T = 3 tokens per segment, one unused batch row before each segment and after the last
    const T = 3
    for (
      const [inDim, outDim, R, S, padSide] of [[45, 37, 3, 3, "right"], [48, 36, 8, 3, "left"], [
        45,
        37,
        3,
        20,
        "left",
      ]] as const
    ) {
      const seg = Array.from(
        { length: S },
        (_, s) => ({ N: T * (1 + ((s * 5) % 4)), p: s % 3 === 1 ? 0 : 0.1 * (1 + s % 3) }),
      )
      const row0s = seg.map((_, s) => T + seg.slice(0, s).reduce((n, q) => n + q.N + T, 0))
      const rows = row0s[S - 1] + seg[S - 1].N + T
      const LENGTHS = Array.from({ length: rows / T }, (_, r) => 1 + ((r * 7) % T))
      const lengths = ctx.upload("lengths", Uint32Array.from(LENGTHS), "activations")
      made.push(lengths)
      const layout = { T, padSide, lengths }
      const size = R * inDim + outDim * R
      // each adapter's A, B at its own offset of one shared buffer (like the arena's slab), aligned as the arena does
      const offs = seg.map((_, s) => s * Math.ceil((size + 5) / 64) * 64)
      const flat = Float32Array.from(normal(30 + R, offs[S - 1] + size + 64, 0.2))
      const g0 = Float32Array.from(normal(31, flat.length))
      const x = Float32Array.from(normal(32, rows * inDim)), dy = Float32Array.from(normal(33, rows * outDim))
      const y0 = Float32Array.from(normal(34, rows * outDim)), dx0 = Float32Array.from(normal(35, rows * inDim))
      const segments = (params: GPUBuffer, grads: GPUBuffer, which: number[]) =>
        which.map((s) => ({
          row0: row0s[s],
          N: seg[s].N,
          a: { buffer: params, offset: offs[s] },
          b: { buffer: params, offset: offs[s] + R * inDim },
          da: { buffer: grads, offset: offs[s] },
          db: { buffer: grads, offset: offs[s] + R * inDim },
          scale: 2 + s,
          dropout: { p: seg[s].p, seed: 77 + s, stream: 9 },
        }))
      const dims = { inDim, outDim, R }
      const run = async (groups: number[][]) => {
        const params = up(flat), grads = up(g0)
        const [xb, yb, dyb, dxb] = [up(x), up(y0), up(dy), up(dx0)]
        const step = ctx.begin()
        const ts: GPUBuffer[] = []
        for (const which of groups) {
          const n = which.reduce((k, s) => k + seg[s].N, 0)
          const t = zeros(n * R), dt = zeros(n * R)
          const segs = segments(params, grads, which)
          loraSegmentsForward(step, { y: yb, x: xb, t, layout }, segs, dims)
          loraSegmentsBackward(step, { dy: dyb, x: xb, dx: dxb, t, dt, layout }, segs, dims)
          ts.push(t)
        }
        const out = await ctx.read([yb, dxb, grads, ...ts], step)
        return out.map((u) => new Float32Array(u))
      }
      const all = Array.from({ length: S }, (_, s) => s)
      dispatches = 0
      const packed = await run([all])
      assert.equal(dispatches, 3 * Math.ceil(S / LORA_MAX_SEGMENTS), `S=${S}: forward + 2 backward per 16 segments`)
      const alone = await run(all.map((s) => [s]))
      const what = `IN=${inDim} OUT=${outDim} R=${R} S=${S}`
      assert.deepEqual(packed[0], alone[0], `${what}: y`)
      assert.deepEqual(packed[1], alone[1], `${what}: dx`)
      assert.deepEqual(packed[2], alone[2], `${what}: dA, dB`)
      // t rows of segment s follow those of the segments before it
      let t0 = 0
      for (const s of all) {
        const n = seg[s].N * R
        assert.deepEqual(packed[3].subarray(t0, t0 + n), alone[3 + s].subarray(0, n), `${what}: t of segment ${s}`)
        t0 += n
      }
      // and alone = the reference (the first segment; the single-adapter test above covers the rest)
      const s = 0, { N } = seg[s]
      const xs = x.subarray(row0s[s] * inDim, (row0s[s] + N) * inDim)
      const mrows = { T, padSide, lengths: LENGTHS.slice(row0s[s] / T, (row0s[s] + N) / T) }
      const mask = dropoutMask({ p: seg[s].p, seed: 77, stream: 9, rows: mrows, cols: inDim })
      const a = flat.subarray(offs[s], offs[s] + R * inDim), b = flat.subarray(offs[s] + R * inDim, offs[s] + size)
      const ref = refForward(xs, a, b, mask, { N, inDim, outDim, R, scale: 2 })
      const got = packed[0].subarray(row0s[s] * outDim, (row0s[s] + N) * outDim).map((v, k) =>
        v - y0[row0s[s] * outDim + k]
      )
      assert.ok(relErr(got, ref.dy) <= 1e-4, `${what}: y vs reference ${relErr(got, ref.dy)}`)
    }
  } finally {
    proto.dispatch = original
    for (const b of made) ctx.release(b)
    ctx.forgetBindGroups()
  }
})

Deno.test("LoRA dropout masks follow the sequences: alone at row 0 = packed at another row0, larger T, other pad side", async () => {
  const made: GPUBuffer[] = []
  const up = (data: Float32Array | Uint32Array) => {
    const b = ctx.upload("t", data, "activations")
    made.push(b)
    return b
  }
  try {
    const [inDim, outDim, R, LENS] = [45, 37, 3, [5, 2, 4]]
    const xs = LENS.map((n, r) => normal(60 + r, n * inDim)), dys = LENS.map((n, r) => normal(70 + r, n * outDim))
    const flat = Float32Array.from(normal(80, R * inDim + outDim * R, 0.2))
    /**
     * The adapter's sequences as batch rows first .. first + 2 of a batch of `batchRows` rows padded to T on
     * `padSide` (other rows and pads hold noise, pads get dy = 0 as in training); y, dx of its real tokens and dA, dB.
     */
    const run = async (T: number, padSide: "left" | "right", first: number, batchRows: number) => {
      const lens = Array.from(
        { length: batchRows },
        (_, r) => r >= first && r < first + 3 ? LENS[r - first] : 1 + r % T,
      )
      const x = Float32Array.from(normal(90 + T, batchRows * T * inDim))
      const dy = new Float32Array(batchRows * T * outDim)
      const at = (r: number, p: number) => (first + r) * T + (padSide === "left" ? T - LENS[r] + p : p)
      LENS.forEach((n, r) => {
        for (let p = 0; p < n; p++) {
          x.set(xs[r].subarray(p * inDim, (p + 1) * inDim), at(r, p) * inDim)
          dy.set(dys[r].subarray(p * outDim, (p + 1) * outDim), at(r, p) * outDim)
        }
      })
      const M = batchRows * T, N = 3 * T
      const params = up(flat), grads = up(new Float32Array(flat.length))
      const [xb, dyb, yb, dxb] = [up(x), up(dy), up(new Float32Array(M * outDim)), up(new Float32Array(M * inDim))]
      const [t, dt] = [up(new Float32Array(N * R)), up(new Float32Array(N * R))]
      const layout = { T, padSide, lengths: up(Uint32Array.from(lens)) }
      const seg = {
        row0: first * T,
        N,
        a: { buffer: params, offset: 0 },
        b: { buffer: params, offset: R * inDim },
        da: { buffer: grads, offset: 0 },
        db: { buffer: grads, offset: R * inDim },
        scale: 2,
        dropout: { p: 0.3, seed: 5, stream: 2 },
      }
      const step = ctx.begin()
      loraSegmentsForward(step, { y: yb, x: xb, t, layout }, [seg], { inDim, outDim, R })
      loraSegmentsBackward(step, { dy: dyb, x: xb, dx: dxb, t, dt, layout }, [seg], { inDim, outDim, R })
      const [y, dx, g] = (await ctx.read([yb, dxb, grads], step)).map((u) => new Float32Array(u))
      const real = (v: Float32Array, w: number) =>
        LENS.flatMap((n, r) =>
          Array.from({ length: n }, (_, p) => Array.from(v.subarray(at(r, p) * w, (at(r, p) + 1) * w)))
        )
      return { y: real(y, outDim), dx: real(dx, inDim), g: g.subarray(0, flat.length) }
    }
    const alone = await run(5, "right", 0, 3)
    for (const [T, side, first, rows] of [[7, "left", 2, 6], [9, "right", 1, 5]] as const) {
      const packed = await run(T, side, first, rows)
      assert.deepEqual(packed.y, alone.y, `T=${T} ${side}: y`)
      assert.deepEqual(packed.dx, alone.dx, `T=${T} ${side}: dx`)
      assert.deepEqual(packed.g, alone.g, `T=${T} ${side}: dA, dB`)
    }
    // the masks are live: dx = m ⊙ (dt A) is exactly 0 on dropped inputs (p = 0.3)
    const zeros = alone.dx.flat().filter((v) => v === 0).length / alone.dx.flat().length
    assert.ok(zeros > 0.2 && zeros < 0.4, `dropped share ${zeros}`)
  } finally {
    for (const b of made) ctx.release(b)
    ctx.forgetBindGroups()
  }
})
