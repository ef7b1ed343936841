import assert from "node:assert/strict"
import { Effect, Exit, Layer } from "effect"
import { Device } from "../actors/device.ts"
import { DeviceLost, ShaderCompileError } from "../src/errors.ts"
import { GpuContext } from "../src/gpu/context.ts"

const run = <A, E>(eff: Effect.Effect<A, E, Device>, choice: "auto" | "cpu" = "auto") =>
  Effect.runPromise(Effect.scoped(Effect.provide(eff, Layer.fresh(Device.layer(choice)))))

const DOUBLE = `@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@compute @workgroup_size(64) fn main(@builtin(global_invocation_id) g: vec3<u32>) { if (g.x < 3u) { x[g.x] = 2.0 * x[g.x]; } }`

Deno.test("device actor runs a kernel, reports memory by category and the adapter it got", async () => {
  const out = await run(Effect.gen(function* () {
    const dev = yield* Device
    const values = yield* dev.run(async (b) => {
      if (b.kind !== "gpu") throw new Error("expected a GPU backend")
      const buf = b.ctx.upload("x", new Float32Array([1, 2, 3]), "activations")
      const step = b.ctx.begin()
      step.dispatch(b.ctx.pipeline({ shader: "double", code: DOUBLE }), [buf], [1])
      const [bytes] = await b.ctx.read([{ buffer: buf, offset: 0, size: 12 }], step)
      return Array.from(new Float32Array(bytes))
    })
    return { values, memory: yield* dev.memory, description: dev.description }
  }))
  assert.deepEqual(out.values, [2, 4, 6])
  assert.equal(out.memory.bytes.activations, 16)
  assert.equal(out.memory.total, 16)
  assert.match(out.description, /\S/)
})

Deno.test("a WGSL compile error is a typed failure quoting the line; the device keeps working", async () => {
  const out = await run(Effect.gen(function* () {
    const dev = yield* Device
    const exit = yield* Effect.exit(dev.run(async (b) => {
      if (b.kind !== "gpu") throw new Error("expected a GPU backend")
      b.ctx.pipeline({ shader: "broken.wgsl", code: "@compute @workgroup_size(1) fn main() {\n  let x: u32 = 1.5;\n}" })
      await b.ctx.checkErrors()
    }))
    const after = yield* dev.run((b) => b.kind)
    return { exit, after }
  }))
  assert.ok(Exit.isFailure(out.exit))
  const err = Exit.isFailure(out.exit) ? out.exit.cause.reasons[0] : undefined
  assert.ok(err && err._tag === "Fail" && err.error instanceof ShaderCompileError, String(err))
  if (err && err._tag === "Fail" && err.error instanceof ShaderCompileError) {
    assert.equal(err.error.lineNumber, 2)
    assert.match(err.error.message, /broken\.wgsl:2: .*\n\s+let x: u32 = 1\.5;/)
  }
  assert.equal(out.after, "gpu")
})

Deno.test("a lost device is restarted with a new generation and fresh memory", async () => {
  const out = await run(Effect.gen(function* () {
    const dev = yield* Device
    yield* dev.run((b) => b.kind === "gpu" && b.ctx.upload("w", new Float32Array(64), "base_f32"))
    const before = yield* dev.memory
    const lost = yield* Effect.exit(dev.run((b) => {
      if (b.kind === "gpu") b.ctx.device.destroy()
      throw new DeviceLost({ reason: "simulated" })
    }))
    const generation = yield* dev.generation
    const after = yield* dev.memory
    return { before, lost, generation, after }
  }))
  assert.equal(out.before.bytes.base_f32, 256)
  assert.ok(Exit.isFailure(out.lost))
  assert.equal(out.generation, 1)
  assert.equal(out.after.total, 0)
})

Deno.test("--device cpu runs jobs on the reference backend", async () => {
  const kind = await run(
    Effect.gen(function* () {
      const dev = yield* Device
      return yield* dev.run((b) => b.kind)
    }),
    "cpu",
  )
  assert.equal(kind, "cpu")
})

Deno.test("uniform and bind-group caches start over past their limit, only between steps; results stay right", async () => {
  const ctx = await GpuContext.create()
  try {
    ctx.cacheLimit = 8
    const ADD = `@group(0) @binding(0) var<uniform> u: vec4<u32>;
@group(0) @binding(1) var<storage, read_write> x: array<u32>;
@compute @workgroup_size(1) fn main() { x[0] = x[0] + u.x; }`
    const pipeline = ctx.pipeline({ shader: "add_uniform", code: ADD })
    const buf = ctx.upload("x", new Uint32Array([0]), "activations")
    let want = 0
    // 30 steps, 3 distinct uniforms each: the cache passes its limit mid-run and is dropped before a later step;
    // a step recorded across many distinct uniforms keeps all of them (nothing is dropped while it is open)
    for (let s = 0; s < 30; s++) {
      const step = ctx.begin()
      for (let k = 1; k <= 3; k++) {
        step.dispatch(pipeline, [ctx.uniform([s * 3 + k, 0, 0, 0]), buf], [1])
        want += s * 3 + k
      }
      if (s % 10 === 9) {
        const [b] = await ctx.read([buf], step)
        assert.equal(new Uint32Array(b)[0], want)
      } else step.submit()
    }
    const big = ctx.begin()
    for (let k = 0; k < 20; k++) {
      big.dispatch(pipeline, [ctx.uniform([1000 + k, 0, 0, 0]), buf], [1])
      want += 1000 + k
    }
    const [b] = await ctx.read([buf], big)
    assert.equal(new Uint32Array(b)[0], want)
    assert.ok(ctx.cacheTrims >= 5, `trims ${ctx.cacheTrims}`)
  } finally {
    ctx.destroy()
  }
})

Deno.test("step uniforms: the k-th of a step reuses one buffer step after step, values stay right, two open steps", async () => {
  const ctx = await GpuContext.create()
  try {
    const ADD = `@group(0) @binding(0) var<uniform> u: vec4<u32>;
@group(0) @binding(1) var<storage, read_write> x: array<u32>;
@compute @workgroup_size(1) fn main() { x[0] = x[0] + u.x; }`
    const pipeline = ctx.pipeline({ shader: "add_step_uniform", code: ADD })
    const buf = ctx.upload("x", new Uint32Array([0]), "activations")
    let want = 0
    const seen: GPUBuffer[][] = []
    // 6 steps of 3 uniforms whose values change every step (like per-step seeds), submitted without waiting
    for (let s = 0; s < 6; s++) {
      const step = ctx.begin()
      const got: GPUBuffer[] = []
      for (let k = 0; k < 3; k++) {
        const u = ctx.stepUniform(step, new Uint32Array([100 * s + k + 1, 0, 0, 0]))
        got.push(u)
        step.dispatch(pipeline, [u, buf], [1])
        want += 100 * s + k + 1
      }
      seen.push(got)
      step.submit()
    }
    const [b] = await ctx.read([buf])
    assert.equal(new Uint32Array(b)[0], want, "every step saw its own values")
    for (const got of seen) assert.deepEqual(got, seen[0], "slot k is the same buffer in every step")
    // two steps recorded at once: the second falls back to the content cache, both keep their values
    const a1 = ctx.begin(), a2 = ctx.begin()
    a1.dispatch(pipeline, [ctx.stepUniform(a1, new Uint32Array([7, 0, 0, 0])), buf], [1])
    a2.dispatch(pipeline, [ctx.stepUniform(a2, new Uint32Array([11, 0, 0, 0])), buf], [1])
    a1.dispatch(pipeline, [ctx.stepUniform(a1, new Uint32Array([13, 0, 0, 0])), buf], [1])
    a2.submit()
    a1.submit()
    const [c] = await ctx.read([buf])
    assert.equal(new Uint32Array(c)[0], want + 7 + 11 + 13)
  } finally {
    ctx.destroy()
  }
})
