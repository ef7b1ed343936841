/** Per-row int8 quantisation (spec §4): golden values from numpy float32, ties to even, zero rows, clamp. */
import assert from "node:assert/strict"
import { dequantizeRows, quantizeRows, roundHalfEven } from "../src/model/quantize.ts"

/**
 * Golden rows computed with numpy (float32 arithmetic and round-half-even, as torch does):
 *   scale = np.abs(W).max(1) / np.float32(127); scale[scale == 0] = 1
 *   q = np.clip(np.round(W / scale[:, None]), -127, 127)
 * The first three rows were searched for so that the f32 quotient is exactly k + 0.5 while the exact quotient
 * is not: rounding the f64 quotient would give 71, 53 and 3 instead of 70, 54 and 2.
 */
const GOLDEN_W = [
  [1.716234564781189, 0.9527129530906677, -0.9527129530906677, 0.0],
  [0.06635614484548569, 0.02795317769050598, -0.02795317769050598, 0.0],
  [0.2573237121105194, 0.005065427627414465, -0.005065427627414465, 0.0],
  [0.35151007771492004, 0.9034701585769653, 0.0940122976899147, -0.7434992790222168],
  [-0.9217253923416138, -0.4577258229255676, 0.22019512951374054, -1.0096181631088257],
]
const GOLDEN_SCALE = [
  0.013513658195734024,
  0.0005224893102422357,
  0.0020261709578335285,
  0.007113938219845295,
  0.007949749007821083,
]
const GOLDEN_Q = [[127, 70, -70, 0], [127, 54, -54, 0], [127, 2, -2, 0], [49, 127, 13, -105], [-116, -58, 28, -127]]

Deno.test("quantize: matches numpy/torch float32 golden values bit for bit", () => {
  const m = quantizeRows(new Float32Array(GOLDEN_W.flat()), 5, 4)
  assert.equal(m.rows, 5)
  assert.equal(m.cols, 4)
  assert.deepEqual(Array.from(m.scale), GOLDEN_SCALE)
  assert.deepEqual(Array.from(m.q), GOLDEN_Q.flat())
})

Deno.test("quantize: round half to even, not Math.round", () => {
  assert.deepEqual([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 2.4999, 2.5001].map(roundHalfEven), [0, 2, 2, 0, -2, -2, 2, 3])
  // max 127 → scale exactly 1, so W / scale = W: every half-way case is exercised directly.
  const w = new Float32Array([127, 2.5, 3.5, -2.5, -3.5, 0.5, -0.5, 126.5, -126.5, 1.25])
  const m = quantizeRows(w, 1, w.length)
  assert.equal(m.scale[0], 1)
  assert.deepEqual(Array.from(m.q), [127, 2, 4, -2, -4, 0, 0, 126, -126, 1])
  // max 254 → scale 2: 5 / 2 = 2.5 → 2, 3 / 2 = 1.5 → 2, -7 / 2 = -3.5 → -4
  assert.deepEqual(Array.from(quantizeRows(new Float32Array([254, 5, 3, -7]), 1, 4).q), [127, 2, 2, -4])
})

Deno.test("quantize: all-zero rows (and underflowing scales) get scale 1 and q = 0", () => {
  const m = quantizeRows(new Float32Array([0, 0, 0, 1, -2, 4, 0, -0, 1e-45]), 3, 3)
  assert.deepEqual(Array.from(m.scale), [1, Math.fround(4 / 127), 1]) // 1e-45 / 127 underflows f32 to 0
  assert.deepEqual(Array.from(m.q), [0, 0, 0, 32, -64, 127, 0, 0, 0])
  assert.deepEqual(dequantizeRows(m).subarray(0, 3), new Float32Array(3))
})

Deno.test("quantize: random rows match the formula, stay in [-127, 127], the row max maps to ±127", () => {
  let seed = 7
  const rand = () => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 2 ** 32)
  const rows = 300
  const cols = 33
  const w = new Float32Array(rows * cols)
  for (let i = 0; i < w.length; i++) w[i] = (rand() - 0.5) * 10 ** (rand() * 8 - 4)
  const m = quantizeRows(w, rows, cols)
  const deq = dequantizeRows(m)
  let overshoot = 0 // rows where max|W| / scale computes to more than 127 before rounding (the clamp's domain)
  for (let n = 0; n < rows; n++) {
    const row = w.subarray(n * cols, (n + 1) * cols)
    let maxAbs = 0
    let argMax = 0
    row.forEach((v, k) => {
      if (Math.abs(v) > maxAbs) [maxAbs, argMax] = [Math.abs(v), k]
    })
    const s = new Float32Array([maxAbs / 127])[0]
    assert.equal(m.scale[n], s)
    if (Math.fround(maxAbs / s) > 127) overshoot++
    for (let k = 0; k < cols; k++) {
      // Independent tie-to-even: 2 · Math.round(y / 2) at exact halves.
      const y = Math.fround(row[k] / s)
      const r = Math.abs(y % 1) === 0.5 ? 2 * Math.round(y / 2) : Math.round(y)
      const q = m.q[n * cols + k]
      assert.equal(q, Math.max(-127, Math.min(127, r)) || 0)
      assert.ok(q >= -127 && q <= 127)
      assert.equal(deq[n * cols + k], Math.fround(q * s))
      assert.ok(Math.abs(deq[n * cols + k] - row[k]) <= s / 2 * (1 + 1e-6))
    }
    assert.equal(Math.abs(m.q[n * cols + argMax]), 127)
  }
  assert.ok(overshoot > 0, "no row exercised the clamp")
})

Deno.test("quantize: refuses size mismatches and non-finite weights", () => {
  assert.throws(() => quantizeRows(new Float32Array(5), 2, 3), RangeError)
  assert.throws(() => quantizeRows(new Float32Array([1, NaN]), 1, 2), /row 0, column 1/)
  assert.throws(() => quantizeRows(new Float32Array([Infinity, 1]), 2, 1), /row 0, column 0/)
})
