import assert from "node:assert/strict"
import { Effect, Exit, Layer } from "effect"
import { Device } from "../actors/device.ts"
import { DeviceLost, ShaderCompileError } from "../src/errors.ts"

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
