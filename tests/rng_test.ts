import assert from "node:assert/strict"
import { Rng } from "../src/util/rng.ts"

Deno.test("xoshiro128** matches the reference C implementation", () => {
  // Reference: xoshiro128starstar.c (Blackman & Vigna) with s = {1, 2, 3, 4}.
  const rng = Rng.fromState([1, 2, 3, 4])
  const got = Array.from({ length: 8 }, () => rng.nextU32())
  assert.deepEqual(got, [11520, 0, 5927040, 70819200, 2031721883, 1637235492, 1287239034, 3734860849])
})

Deno.test("seeding expands the seed with splitmix64; values are pinned", () => {
  // splitmix64 from x = 42: 13679457532755275413, 2949826092126892291 (reference C), split into low/high u32.
  assert.deepEqual(Rng.fromSeed(42).state(), [803958421, 3184996902, 2993090819, 686809907])
  const rng = Rng.fromSeed(7)
  assert.deepEqual(rng.state(), [1496452567, 1674306020, 4097599004, 72105175])
  assert.deepEqual([rng.nextU32(), rng.nextU32(), rng.nextU32()], [1801096769, 1554325924, 2992800842])
  const n = Rng.fromSeed(7)
  const normals = [n.normal(), n.normal(), n.normal()]
  const pinned = [-0.6741568888242471, 0.7916497967007895, 0.06208722961183502]
  normals.forEach((v, i) => assert.ok(Math.abs(v - pinned[i]) < 1e-12, `normal ${i}: ${v}`))
  assert.deepEqual(Rng.fromSeed(7).fork("dropout").state(), [1846874211, 3974355982, 4035335605, 102175117])
})

Deno.test("state() / fromState() resume the same stream", () => {
  const a = Rng.fromSeed(123)
  for (let i = 0; i < 17; i++) a.normal()
  const b = Rng.fromState(JSON.parse(JSON.stringify(a.state())))
  for (let i = 0; i < 50; i++) assert.equal(b.nextFloat(), a.nextFloat())
  assert.throws(() => Rng.fromState([0, 0, 0, 0]), RangeError)
  assert.throws(() => Rng.fromState([1, 2, 3]), RangeError)
  assert.throws(() => Rng.fromState([1, 2, 3, 2 ** 32]), RangeError)
  assert.throws(() => Rng.fromSeed(-1), RangeError)
  assert.throws(() => Rng.fromSeed(1.5), RangeError)
})

Deno.test("fork: label-specific, does not advance the parent", () => {
  const parent = Rng.fromSeed(5)
  const before = parent.state()
  const x = parent.fork("lora_init")
  const y = parent.fork("lora_init")
  const z = parent.fork("dropout")
  assert.deepEqual(parent.state(), before)
  assert.deepEqual(x.state(), y.state())
  assert.notDeepEqual(x.state(), z.state())
  assert.notDeepEqual(x.state(), parent.state())
  parent.nextU32()
  assert.notDeepEqual(parent.fork("lora_init").state(), x.state())
})

Deno.test("distributions: ranges and moments", () => {
  const rng = Rng.fromSeed(99)
  const N = 40_000
  let sum = 0, sumSq = 0
  for (let i = 0; i < N; i++) {
    const v = rng.normal(1, 2)
    sum += v
    sumSq += v * v
  }
  const mean = sum / N
  const std = Math.sqrt(sumSq / N - mean * mean)
  // Standard errors: mean 2/√N = 0.01, std 2/√(2N) = 0.007; allow 4σ.
  assert.ok(Math.abs(mean - 1) < 0.04, `mean ${mean}`)
  assert.ok(Math.abs(std - 2) < 0.03, `std ${std}`)
  const counts = new Array(7).fill(0)
  for (let i = 0; i < 7000; i++) {
    const u = rng.uniform(-3, 4)
    assert.ok(u >= -3 && u < 4)
    counts[rng.nextInt(7)]++
  }
  // Each bucket expects 1000 ± 29 (binomial σ); allow 5σ.
  for (const c of counts) assert.ok(Math.abs(c - 1000) < 150, `bucket count ${c}`)
})
