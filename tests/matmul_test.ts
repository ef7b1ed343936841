/**
 * Every matmul variant, f32 and int8, forward and input-gradient, against src/reference/linear.ts.
 *
 * Error measure: rel = max_i |y_i − ref_i| / max_i |ref_i|, required ≤ 1e-4. The int8 reference is the f32
 * reference on `dequantizeRows` weights (the kernels compute Σ q·x, then · scale). Shapes are odd on purpose
 * (K = 45 and N = 97 are not multiples of 4 or 16; M = 37 is not a multiple of any tile height).
 */
import assert from "node:assert/strict"
import { GpuValidationError } from "../src/errors.ts"
import { GpuContext } from "../src/gpu/context.ts"
import {
  BACKWARD_VARIANTS,
  chooseBackwardVariant,
  chooseVariant,
  type DeviceMatrix,
  linear,
  linearBackwardInput,
  MATMUL_VARIANTS,
  matrixBytes,
  type MatrixDtype,
  releaseMatmulScratch,
  releaseMatrix,
  TILES,
  uploadMatrix,
} from "../src/kernels/matmul.ts"
import { dequantizeRows, quantizeRows } from "../src/model/quantize.ts"
import * as ref from "../src/reference/linear.ts"

// One device for the whole file: a pipeline compiles once per device, and lavapipe's cold compiles of the
// unrolled tiles take ~4–5 s each (~23 s for every kernel of the family; ~1.3 s from Mesa's warm disk cache).
const ctx = await GpuContext.create()
const TOL = 1e-4
const USAGE = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST

/** Deterministic uniform values in [-1, 1) (xorshift32). */
function rand(n: number, seed: number): Float32Array {
  let s = seed >>> 0 || 1
  const a = new Float32Array(n)
  for (let i = 0; i < n; i++) {
    s ^= s << 13
    s ^= s >>> 17
    s ^= s << 5
    a[i] = (s >>> 0) / 2 ** 31 - 1
  }
  return a
}

function relErr(y: Float32Array, r: Float32Array): number {
  assert.equal(y.length, r.length)
  let num = 0
  let den = 0
  for (let i = 0; i < r.length; i++) {
    num = Math.max(num, Math.abs(y[i] - r[i]))
    den = Math.max(den, Math.abs(r[i]))
  }
  return num / den
}

/** Every buffer / texture this file allocates is tracked so that each test frees what it made. */
const made: (GPUBuffer | DeviceMatrix)[] = []
const snapshot = () => made.length
function cleanup(mark: number): void {
  for (const r of made.splice(mark)) {
    if (r instanceof GPUBuffer) ctx.release(r)
    else releaseMatrix(ctx, r)
  }
  releaseMatmulScratch(ctx)
}
function upload(label: string, data: Float32Array): GPUBuffer {
  const b = ctx.upload(label, data, "activations")
  made.push(b)
  return b
}
function zeros(label: string, floats: number): GPUBuffer {
  const b = ctx.buffer({ label, size: floats * 4, usage: USAGE, category: "activations" })
  made.push(b)
  return b
}
function track(m: DeviceMatrix): DeviceMatrix {
  made.push(m)
  return m
}

interface Case {
  w: DeviceMatrix
  /** the f32 weights the kernels must reproduce (dequantised for int8) */
  wRef: Float32Array
  N: number
  K: number
}

/** f32 and int8 device matrices of (N, K) with their reference weights. */
function matrices(N: number, K: number, maxBlockRows?: number): Record<MatrixDtype, Case> {
  const w = rand(N * K, N * 7919 + K)
  const q = quantizeRows(w, N, K)
  return {
    f32: {
      w: track(
        uploadMatrix(ctx, { shape: [N, K], data: w }, { label: `w${N}x${K}`, category: "base_f32", maxBlockRows }),
      ),
      wRef: w,
      N,
      K,
    },
    int8: {
      w: track(uploadMatrix(ctx, q, { label: `q${N}x${K}`, category: "base_int8", maxBlockRows })),
      wRef: dequantizeRows(q),
      N,
      K,
    },
  }
}

const MS = [1, 3, 37]
// K = 100: vec4 packing with a row pitch Kp = 128 that is not a whole number of 256-float pack groups
const KN: [number, number][] = [[45, 97], [128, 256], [130, 1000], [45, 1000], [130, 97], [100, 36]]

Deno.test("linear: every variant, f32 and int8, odd shapes, = and +=, matches the reference", async () => {
  const mark = snapshot()
  try {
    const cases = KN.map(([K, N]) => matrices(N, K))
    for (const dtype of ["f32", "int8"] as const) {
      for (const variant of MATMUL_VARIANTS) {
        // one step and one read per (dtype, variant): every shape, written and accumulated
        const step = ctx.begin()
        const checks: { y: GPUBuffer; expect: Float32Array; what: string }[] = []
        for (const c of cases) {
          const { w, wRef, N, K } = c[dtype]
          for (const M of MS) {
            const x = rand(M * K, M * 31 + K)
            const r = ref.linear(x, wRef, M, N, K)
            const xb = upload("x", x)
            const y = zeros("y", M * N)
            linear(step, { x: xb, w, y }, { M, variant })
            checks.push({ y, expect: r, what: `M=${M} K=${K} N=${N} =` })
            const y0 = rand(M * N, 99 + M)
            const ya = upload("ya", y0)
            linear(step, { x: xb, w, y: ya }, { M, variant, accumulate: true })
            checks.push({ y: ya, expect: r.map((v, i) => v + y0[i]), what: `M=${M} K=${K} N=${N} +=` })
          }
        }
        const out = await ctx.read(checks.map((c) => c.y), step)
        checks.forEach((c, i) => {
          const got = new Float32Array(out[i], 0, c.expect.length)
          const e = relErr(got, c.expect)
          assert.ok(e <= TOL, `${dtype} ${variant} ${c.what}: rel err ${e}`)
        })
      }
    }
  } finally {
    cleanup(mark)
  }
})

Deno.test("linearBackwardInput: every variant, f32 and int8, odd shapes, = and +=, matches the reference", async () => {
  const mark = snapshot()
  try {
    const cases = KN.map(([K, N]) => matrices(N, K))
    const step = ctx.begin()
    const checks: { dx: GPUBuffer; expect: Float32Array; what: string }[] = []
    for (const dtype of ["f32", "int8"] as const) {
      for (const variant of BACKWARD_VARIANTS) {
        for (const c of cases) {
          const { w, wRef, N, K } = c[dtype]
          for (const M of MS) {
            const dy = rand(M * N, M * 17 + N)
            const r = ref.linearBackwardInput(dy, wRef, M, N, K)
            const dyb = upload("dy", dy)
            const dx = zeros("dx", M * K)
            linearBackwardInput(step, { dy: dyb, w, dx }, { M, variant })
            checks.push({ dx, expect: r, what: `${dtype} ${variant} M=${M} K=${K} N=${N} =` })
            const dx0 = rand(M * K, 5 + M)
            const dxa = upload("dxa", dx0)
            linearBackwardInput(step, { dy: dyb, w, dx: dxa }, { M, variant, accumulate: true })
            checks.push({
              dx: dxa,
              expect: r.map((v, i) => v + dx0[i]),
              what: `${dtype} ${variant} M=${M} K=${K} N=${N} +=`,
            })
          }
        }
      }
    }
    const out = await ctx.read(checks.map((c) => c.dx), step)
    checks.forEach((c, i) => {
      const e = relErr(new Float32Array(out[i], 0, c.expect.length), c.expect)
      assert.ok(e <= TOL, `${c.what}: rel err ${e}`)
    })
  } finally {
    cleanup(mark)
  }
})

Deno.test("row-block split: 97 rows in blocks of 32 (forward and backward, every variant), f32 and int8", async () => {
  const mark = snapshot()
  try {
    const [M, K, N] = [37, 130, 97]
    const c = matrices(N, K, 40)
    const x = rand(M * K, 1)
    const dy = rand(M * N, 2)
    const xb = upload("x", x)
    const dyb = upload("dy", dy)
    const step = ctx.begin()
    const checks: { out: GPUBuffer; expect: Float32Array; what: string }[] = []
    for (const dtype of ["f32", "int8"] as const) {
      const { w, wRef } = c[dtype]
      // maxBlockRows 40 rounds down to 32 rows: blocks start on multiples of 16
      assert.deepEqual(w.blocks.map((b) => [b.row0, b.rows]), [[0, 32], [32, 32], [64, 32], [96, 1]])
      const r = ref.linear(x, wRef, M, N, K)
      for (const variant of MATMUL_VARIANTS) {
        const y = zeros("y", M * N)
        linear(step, { x: xb, w, y }, { M, variant })
        checks.push({ out: y, expect: r, what: `${dtype} ${variant} forward` })
      }
      const rb = ref.linearBackwardInput(dy, wRef, M, N, K)
      for (const variant of BACKWARD_VARIANTS) {
        const dx = zeros("dx", M * K)
        linearBackwardInput(step, { dy: dyb, w, dx }, { M, variant })
        checks.push({ out: dx, expect: rb, what: `${dtype} ${variant}` })
        const dx0 = rand(M * K, 3)
        const dxa = upload("dxa", dx0)
        linearBackwardInput(step, { dy: dyb, w, dx: dxa }, { M, variant, accumulate: true })
        checks.push({ out: dxa, expect: rb.map((v, i) => v + dx0[i]), what: `${dtype} ${variant} +=` })
      }
    }
    const out = await ctx.read(checks.map((k) => k.out), step)
    checks.forEach((k, i) => {
      const e = relErr(new Float32Array(out[i], 0, k.expect.length), k.expect)
      assert.ok(e <= TOL, `${k.what}: rel err ${e}`)
    })
  } finally {
    cleanup(mark)
  }
})

Deno.test("int8 rows dequantised on the device (identity input) equal dequantizeRows exactly, every variant", async () => {
  const mark = snapshot()
  try {
    const [K, N] = [45, 97]
    const q = quantizeRows(rand(N * K, 11), N, K)
    const deq = dequantizeRows(q)
    const w = track(uploadMatrix(ctx, q, { label: "q", category: "base_int8", maxBlockRows: 50 }))
    // x = I (K, K): y[k, n] = Σ_j I[k, j] · q[n, j] · scale[n] = q[n, k] · scale[n], no rounding but the product
    const eye = new Float32Array(K * K)
    for (let k = 0; k < K; k++) eye[k * K + k] = 1
    const xb = upload("eye", eye)
    const step = ctx.begin()
    const ys = MATMUL_VARIANTS.map((variant) => {
      const y = zeros("y", K * N)
      linear(step, { x: xb, w, y }, { M: K, variant })
      return y
    })
    const out = await ctx.read(ys, step)
    MATMUL_VARIANTS.forEach((variant, i) => {
      const y = new Float32Array(out[i], 0, K * N)
      for (let n = 0; n < N; n++) {
        for (let k = 0; k < K; k++) {
          if (y[k * N + n] !== deq[n * K + k]) {
            assert.fail(`${variant}: W[${n}, ${k}] = ${y[k * N + n]}, host ${deq[n * K + k]}`)
          }
        }
      }
    })
  } finally {
    cleanup(mark)
  }
})

Deno.test("variant selection, memory accounting, release and guards", async () => {
  const mark = snapshot()
  try {
    for (const dtype of ["f32", "int8"] as const) {
      const tm = TILES.tile[dtype].tm
      if (ctx.isSoftware) {
        assert.equal(chooseVariant(ctx, { M: 1, dtype }), "tile_m1")
        assert.equal(chooseVariant(ctx, { M: tm - 1, dtype }), "tile_m4")
        assert.equal(chooseVariant(ctx, { M: tm, dtype }), "tile")
        assert.equal(chooseVariant(ctx, { M: ctx.limits.maxTextureDimension2D + 1, dtype }), "smem")
        assert.equal(chooseBackwardVariant(ctx, { M: 3 }), "bwd_tile")
        assert.equal(chooseBackwardVariant(ctx, { M: ctx.limits.maxTextureDimension2D + 1 }), "bwd_simple")
      } else {
        assert.equal(chooseBackwardVariant(ctx, { M: 256 }), "bwd_simple")
        assert.equal(chooseVariant(ctx, { M: 1, dtype }), "naive")
        assert.equal(chooseVariant(ctx, { M: 256, dtype }), "smem")
      }
    }
    const [K, N] = [45, 97]
    const base = ctx.memory()
    const c = matrices(N, K, 40)
    // f32 rows pad to ceil(45/4) = 12 texels, int8 to ceil(45/16) = 3; blocks of 32, 32, 32, 1 rows are textures
    // of 33, 33, 33, 3 rows (sides are never powers of two) with scale buffers of 128, 128, 128, 16 bytes
    assert.equal(matrixBytes(c.f32.w), 12 * 16 * (3 * 33 + 3) + 3 * 128 + 16)
    assert.equal(matrixBytes(c.int8.w), 3 * 16 * (3 * 33 + 3) + 3 * 128 + 16)
    assert.equal(ctx.memory().base_f32 - base.base_f32, matrixBytes(c.f32.w))
    assert.equal(ctx.memory().base_int8 - base.base_int8, matrixBytes(c.int8.w))
    const x = upload("x", rand(3 * K, 1))
    const y = zeros("y", 3 * N)
    const small = zeros("small", 4)
    const step = ctx.begin()
    assert.throws(() => linear(step, { x, w: c.f32.w, y: small }, { M: 3 }), GpuValidationError)
    assert.throws(() => linear(step, { x: small, w: c.f32.w, y }, { M: 3 }), GpuValidationError)
    assert.throws(() => linear(step, { x, w: c.f32.w, y: x }, { M: 1 }), GpuValidationError)
    assert.throws(() => linear(step, { x, w: c.f32.w, y }, { M: 0 }), GpuValidationError)
    assert.throws(() => linearBackwardInput(step, { dy: y, w: c.int8.w, dx: small }, { M: 3 }), GpuValidationError)
    assert.throws(
      () => uploadMatrix(ctx, { shape: [2, 3], data: new Float32Array(5) }, { label: "bad", category: "base_f32" }),
      GpuValidationError,
    )
    assert.throws(
      () =>
        uploadMatrix(ctx, { shape: [2, 3], data: new Float32Array(6) }, {
          label: "bad",
          category: "base_f32",
          maxBlockRows: 8,
        }),
      GpuValidationError,
    )
    linear(step, { x, w: c.int8.w, y }, { M: 3 })
    await ctx.read([y], step)
    releaseMatrix(ctx, c.f32.w)
    releaseMatrix(ctx, c.int8.w)
    assert.equal(ctx.memory().base_f32, base.base_f32)
    assert.equal(ctx.memory().base_int8, base.base_int8)
    const before = ctx.memory().activations
    releaseMatmulScratch(ctx)
    assert.ok(ctx.memory().activations < before, "staging textures freed")
  } finally {
    cleanup(mark)
  }
})
