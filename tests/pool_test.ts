import assert from "node:assert/strict"
import { GpuContext } from "../src/gpu/context.ts"
import { BufferPool, sizeClass } from "../src/gpu/pool.ts"

Deno.test("sizeClass rounds up to 2^k · {1, 1.25, 1.5, 1.75}, at least 256, wasting under 25 %", () => {
  const cases: [number, number][] = [
    [1, 256],
    [256, 256],
    [257, 320],
    [320, 320],
    [321, 384],
    [449, 512],
    [512, 512],
    [513, 640],
    [1000, 1024],
    [4096, 4096],
    [4097, 5120],
    [6 * 1024 + 1, 7 * 1024],
    [7 * 1024 + 1, 8 * 1024],
    [3 * 2 ** 20, 3 * 2 ** 20],
    [3 * 2 ** 20 + 4, 3.5 * 2 ** 20],
  ]
  for (const [bytes, want] of cases) assert.equal(sizeClass(bytes), want, `sizeClass(${bytes})`)
  for (let bytes = 257; bytes < 1 << 22; bytes = Math.ceil(bytes * 1.013) + 4) {
    const c = sizeClass(bytes)
    const k = Math.floor(Math.log2(c))
    const mantissa = c / 2 ** k
    assert.ok([1, 1.25, 1.5, 1.75].includes(mantissa), `class ${c} of ${bytes} is 2^${k}·${mantissa}`)
    assert.ok(c >= bytes && c - bytes < bytes / 4, `class ${c} of ${bytes} wastes ${c - bytes}`)
    // the least such class: the one below it is too small
    const below = mantissa === 1 ? 1.75 * 2 ** (k - 1) : (mantissa - 0.25) * 2 ** k
    assert.ok(below < bytes, `class ${c} of ${bytes} is not the least (${below} fits)`)
  }
})

Deno.test("pool: a class over a device limit that the request is under falls back to the size rounded to 256", () => {
  // only sizeFor is called: a stand-in with the two limits it reads (binding 1000 KiB, buffer 3000 KiB)
  const limits = { maxStorageBufferBindingSize: 1000 * 1024, maxBufferSize: 3000 * 1024 }
  const pool = new BufferPool({ limits } as unknown as GpuContext)
  assert.equal(pool.sizeFor(700 * 1024), 768 * 1024) // class 768 KiB ≤ 1000 KiB
  assert.equal(pool.sizeFor(900 * 1024 + 1), 900 * 1024 + 256) // class 1024 KiB > 1000 KiB ≥ request
  assert.equal(pool.sizeFor(1000 * 1024), 1000 * 1024)
  assert.equal(pool.sizeFor(1100 * 1024), 1280 * 1024) // over the binding limit already: bound in parts
  assert.equal(pool.sizeFor(2900 * 1024), 2900 * 1024) // class 3072 KiB > maxBufferSize ≥ request
  assert.equal(pool.sizeFor(3100 * 1024), 3584 * 1024) // over maxBufferSize: the buffer call reports it
})

Deno.test("pool: acquire sizes to the class; release → acquire of any size of that class reuses it", async () => {
  const ctx = await GpuContext.create()
  try {
    const pool = new BufferPool(ctx)
    const start = ctx.memory().activations
    const a = pool.acquire("a", 4097 * 4)
    assert.equal(a.size, sizeClass(4097 * 4))
    assert.equal(ctx.memory().activations - start, a.size)
    pool.release(a)
    // a different request of the same class (5120·4 = 20480 is the class of 16388) gets the same buffer
    const b = pool.acquire("b", 5000 * 4)
    assert.equal(b, a)
    // a buffer in use is not handed out again: a second request of its class gets a new buffer
    const c = pool.acquire("c", 5000 * 4)
    assert.notEqual(c, a)
    const d = pool.acquire("d", 100)
    assert.equal(d.size, 256)
    // releasing twice does not put a buffer on the free list twice
    pool.release(c)
    pool.release(c)
    assert.equal(pool.acquire("e", 4500 * 4), c)
    assert.notEqual(pool.acquire("f", 4500 * 4), c)
    assert.deepEqual(pool.stats(), {
      buffers: 4,
      bytes: 3 * 20480 + 256,
      freeBuffers: 0,
      peakInUseBytes: 3 * 20480 + 256,
    })
    pool.release(b)
    assert.deepEqual(pool.stats(), {
      buffers: 4,
      bytes: 3 * 20480 + 256,
      freeBuffers: 1,
      peakInUseBytes: 3 * 20480 + 256,
    })
    pool.clear()
    assert.equal(ctx.memory().activations, start)
    assert.deepEqual(pool.stats(), { buffers: 0, bytes: 0, freeBuffers: 0, peakInUseBytes: 0 })
  } finally {
    ctx.destroy()
  }
})

Deno.test("pool: a loop over varying padded lengths holds a bounded number of buffers and bytes", async () => {
  const ctx = await GpuContext.create()
  try {
    const pool = new BufferPool(ctx)
    const start = ctx.memory().activations
    // a training step's scratch at padded length T: 4 rows of T tokens, D = 64, F = 176, V = 512; floats per
    // token of each request (two of D, two of 1, three of F: several buffers of one class in one step)
    const rows = 4, perToken = [64, 64, 1, 176, 176, 176, 512, 1]
    const requests = (T: number) => [...perToken.map((p) => rows * T * p * 4), rows * 4]
    const step = (T: number) => {
      const bufs = requests(T).map((bytes, i) => pool.acquire(`s${i}`, bytes))
      for (const b of bufs) pool.release(b)
    }
    // every padded length 17..64 (48 distinct shapes) in a shuffled order, three epochs
    const lengths = Array.from({ length: 48 }, (_, i) => 17 + (i * 29) % 48)
    for (let epoch = 0; epoch < 3; epoch++) for (const T of lengths) step(T)
    const held = pool.stats()
    assert.equal(held.freeBuffers, held.buffers)
    // the most in use at once is the step at T = 64, in classes
    assert.equal(held.peakInUseBytes, requests(64).reduce((s, b) => s + sizeClass(b), 0))
    assert.equal(ctx.memory().activations - start, held.bytes)

    // buffers: a class holds as many buffers as one step uses at most, so the pool holds at most
    // Σ over request slots of the distinct classes that slot saw (lengths 17..64 span < 2 doublings: ≤ 9)
    const classSets = requests(64).map((_, i) => new Set(lengths.map((T) => sizeClass(requests(T)[i]))))
    assert.ok(classSets.every((c) => c.size <= 9), `classes per slot ${classSets.map((c) => c.size)}`)
    const bufferBound = classSets.reduce((s, c) => s + c.size, 0)
    assert.ok(held.buffers <= bufferBound, `${held.buffers} buffers held, bound ${bufferBound}`)

    // bytes, whatever the number of shapes: the classes ≤ X = 2^(k+1) add up to at most
    // (1.25 + 1.5 + 1.75 + 2)·2^k · (1 + 1/2 + 1/4 + …) = 6.5·X, and a slot's largest class is
    // < 1.25 × its largest request, so the pool holds < 8.125 × the bytes of the largest step
    const largestStep = requests(64).reduce((s, b) => s + Math.max(256, b), 0)
    // what exact-size reuse (sizes rounded to 256) holds: per size, the most buffers of that size one step uses
    const exactCounts = new Map<number, number>()
    for (const T of lengths) {
      const inStep = new Map<number, number>()
      for (const b of requests(T)) {
        const size = Math.max(256, Math.ceil(b / 256) * 256)
        inStep.set(size, (inStep.get(size) ?? 0) + 1)
      }
      for (const [size, n] of inStep) exactCounts.set(size, Math.max(n, exactCounts.get(size) ?? 0))
    }
    const exactPool = [...exactCounts].reduce((s, [size, n]) => s + size * n, 0)
    console.log(
      `48 shapes × 3 epochs: pool holds ${held.buffers} buffers, ${held.bytes} B; the step at T = 64 needs ` +
        `${largestStep} B; exact-size reuse would hold ${exactPool} B`,
    )
    assert.ok(held.bytes < 8.125 * largestStep, `pool holds ${held.bytes} B, largest step ${largestStep} B`)
    assert.ok(held.bytes < exactPool / 4, `pool holds ${held.bytes} B, exact-size reuse ${exactPool} B`)

    // a fourth epoch allocates nothing
    for (const T of lengths) step(T)
    assert.deepEqual(pool.stats(), held)
    pool.clear()
    assert.equal(ctx.memory().activations, start)
  } finally {
    ctx.destroy()
  }
})

Deno.test("pool: a buffer re-acquired at another size in one command buffer is used in order", async () => {
  const ctx = await GpuContext.create()
  try {
    const pool = new BufferPool(ctx)
    const first = ctx.upload("first", Float32Array.from({ length: 1100 }, (_, i) => i), "activations")
    const second = ctx.upload("second", Float32Array.from({ length: 1200 }, (_, i) => -i), "activations")
    const out1 = ctx.upload("out1", new Float32Array(1100), "activations")
    const out2 = ctx.upload("out2", new Float32Array(1200), "activations")
    const step = ctx.begin()
    const a = pool.acquire("a", 1100 * 4)
    step.copy(first, 0, a, 0, 1100 * 4)
    step.copy(a, 0, out1, 0, 1100 * 4)
    pool.release(a)
    const b = pool.acquire("b", 1200 * 4)
    assert.equal(b, a, "1100·4 and 1200·4 bytes share the class 5120")
    step.copy(second, 0, b, 0, 1200 * 4)
    step.copy(b, 0, out2, 0, 1200 * 4)
    const [r1, r2] = await ctx.read([out1, out2], step)
    assert.deepEqual(Array.from(new Float32Array(r1)), Array.from({ length: 1100 }, (_, i) => i))
    assert.deepEqual(Array.from(new Float32Array(r2)), Array.from({ length: 1200 }, (_, i) => -i))
    pool.clear()
  } finally {
    ctx.destroy()
  }
})
