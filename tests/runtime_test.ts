/**
 * The runtime (actors/runtime.ts) and its batching actor (actors/batcher.ts): the batch window and token budget
 * under TestClock; concurrent score + generate calls from many fibers over several adapters are packed into fewer
 * device batches and each caller gets what a direct `evaluate` / `generate` call gives it alone; register /
 * unregister (ref-counted), typed one-line errors; training through the Scheduler changes the scores.
 * Runs on the embedded default model (f32 base).
 */
import assert from "node:assert/strict"
import { Cause, Deferred, Effect, Exit, Fiber, Layer, Ref, Scope } from "effect"
import { TestClock } from "effect/testing"
import { ActorStopped } from "../actors/actor.ts"
import { makeBatcher } from "../actors/batcher.ts"
import {
  AdapterConflict,
  createRuntime,
  MixloraRuntime,
  RequestError,
  type RuntimeOptions,
  UnknownAdapter,
} from "../actors/runtime.ts"
import { ConfigError } from "../src/errors.ts"
import { evaluate } from "../src/eval/evaluate.ts"
import { generate } from "../src/generate/generate.ts"
import { GpuContext } from "../src/gpu/context.ts"
import { loadTokenizer } from "../src/io/tokenizer.ts"
import type { AdapterSpec, AdapterWeights } from "../src/model/adapter.ts"
import { uploadAdapter } from "../src/model/adapter_device.ts"
import { initAdapter } from "../src/model/adapter_init.ts"
import { loadAdapter, saveAdapter } from "../src/model/adapter_io.ts"
import { uploadBase } from "../src/model/base_weights.ts"
import { ensureDefaultModel } from "../src/model/default_model.ts"
import { readLlamaConfig } from "../src/model/hf_config.ts"
import { LlamaModel } from "../src/model/llama.ts"
import { Rng } from "../src/util/rng.ts"

const baseDir = await ensureDefaultModel()
const config = await readLlamaConfig(baseDir)
const tokenizer = await loadTokenizer(baseDir)

// ---- the batcher alone, on virtual time -------------------------------------------------------------------------

/** Deno.test + scoped Effect with TestClock (as @effect/vitest's it.effect). */
const effectTest = (name: string, body: () => Effect.Effect<unknown, unknown, Scope.Scope>) =>
  Deno.test(
    name,
    () => Effect.runPromise(Effect.suspend(body).pipe(Effect.scoped, Effect.asVoid, Effect.provide(TestClock.layer()))),
  )

/** A batcher whose "device" records each batch and answers item x with x·10 (x < 0: that item fails). */
const recordingBatcher = (opts: { windowMs: number; tokenBudget: number; maxItems: number }) =>
  Effect.gen(function* () {
    const log = yield* Ref.make<number[][]>([])
    const done: number[] = []
    const batcher = yield* makeBatcher<number, number, string>({
      name: "test",
      ...opts,
      cost: (x) => Math.abs(x),
      run: (batch) =>
        Effect.as(
          Ref.update(log, (l) => [...l, [...batch]]),
          batch.map((x) => x < 0 ? Exit.fail(`bad ${x}`) : Exit.succeed(x * 10)),
        ),
      onDone: (x) => void done.push(x),
    })
    return { batcher, log, done }
  })

effectTest(
  "batcher: requests inside one window form one batch, served when the window closes",
  () =>
    Effect.gen(function* () {
      const { batcher, log, done } = yield* recordingBatcher({ windowMs: 5, tokenBudget: 100, maxItems: 10 })
      const fibers = []
      for (const x of [1, 2, -3]) fibers.push(yield* Effect.forkChild(batcher.submit(x), { startImmediately: true }))
      yield* TestClock.adjust("4 millis")
      assert.deepEqual(yield* Ref.get(log), [], "nothing served before the window closes")
      assert.equal((yield* batcher.stats).depth, 0, "all three taken into the open batch")
      yield* TestClock.adjust("1 millis")
      assert.equal(yield* Fiber.join(fibers[0]), 10)
      assert.equal(yield* Fiber.join(fibers[1]), 20)
      assert.deepEqual(yield* Effect.flip(Fiber.join(fibers[2])), "bad -3", "a failed item fails only its caller")
      assert.deepEqual(yield* Ref.get(log), [[1, 2, -3]])
      assert.deepEqual(done.sort(), [-3, 1, 2])
      const s = yield* batcher.stats
      assert.deepEqual({ batches: s.batches, items: s.items, cost: s.cost }, { batches: 1, items: 3, cost: 6 })
    }),
)

effectTest(
  "batcher: the token budget and maxItems close a batch early; the overflow opens the next",
  () =>
    Effect.gen(function* () {
      const { batcher, log } = yield* recordingBatcher({ windowMs: 50, tokenBudget: 10, maxItems: 3 })
      const fibers = []
      for (const x of [4, 5, 3, 1, 1, 1, 1]) {
        fibers.push(yield* Effect.forkChild(batcher.submit(x), { startImmediately: true }))
      }
      // no time passes: 4+5 = 9, then 3 would exceed 10 → served at once; then [3, 1, 1] hits maxItems
      yield* Effect.yieldNow
      for (let i = 0; i < 5; i++) yield* Fiber.join(fibers[i])
      assert.deepEqual(yield* Ref.get(log), [[4, 5], [3, 1, 1]])
      yield* TestClock.adjust("49 millis")
      assert.equal((yield* Ref.get(log)).length, 2, "the last two wait for their own window to close")
      yield* TestClock.adjust("1 millis")
      for (const f of fibers.slice(5)) yield* Fiber.join(f)
      assert.deepEqual(yield* Ref.get(log), [[4, 5], [3, 1, 1], [1, 1]])
    }),
)

Deno.test("batcher: closing the scope fails queued callers with ActorStopped and releases their items", async () => {
  const done: number[] = []
  const exits = await Effect.runPromise(Effect.gen(function* () {
    const scope = yield* Scope.make()
    const started = yield* Deferred.make<void>()
    const batcher = yield* makeBatcher<number, number, never>({
      name: "stopping",
      windowMs: 0,
      tokenBudget: 1,
      maxItems: 1,
      cost: () => 1,
      // the first batch never finishes: it is in flight when the scope closes
      run: () => Effect.andThen(Deferred.succeed(started, undefined), Effect.never),
      onDone: (x) => void done.push(x),
    }).pipe(Scope.provide(scope))
    const fibers = []
    for (const x of [1, 2, 3]) fibers.push(yield* Effect.forkChild(batcher.submit(x), { startImmediately: true }))
    yield* Deferred.await(started)
    yield* Scope.close(scope, Exit.void)
    return yield* Effect.forEach(fibers, (f) => Effect.exit(Fiber.join(f)))
  }))
  for (const exit of exits) assert.ok(Exit.isFailure(exit) && Cause.squash(exit.cause) instanceof ActorStopped)
  assert.deepEqual(done.sort(), [1, 2, 3], "every item released exactly once")
})

// ---- the runtime on the device ----------------------------------------------------------------------------------

const SPECS: AdapterSpec[] = [
  {
    name: "lora",
    kind: "lora",
    r: 4,
    alpha: 8,
    useRslora: false,
    dropout: 0,
    targets: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
  },
  ...(["mixlora", "dynamic"] as const).map((routing): AdapterSpec => ({
    name: `moe_${routing}`,
    kind: "mixlora",
    r: 4,
    alpha: 8,
    useRslora: false,
    dropout: 0,
    targets: ["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"],
    moe: {
      routing,
      numExperts: 3,
      topK: routing === "mixlora" ? 2 : 3,
      topP: routing === "dynamic" ? 0.7 : 1,
      expertCapacity: 0,
      actFn: "silu",
      routerAuxLossCoef: 0.001,
      routerInitRange: 0.5,
      jitterNoise: 0,
    },
  })),
]

/** Saves the SPECS with initAdapter weights and B ~ N(0, 0.3) (B = 0 at init would make every adapter the base). */
async function saveRandomAdapters(dir: string): Promise<void> {
  for (const [i, spec] of SPECS.entries()) {
    const w = initAdapter(spec, config, Rng.fromSeed(100 + i))
    const rng = Rng.fromSeed(200 + i)
    const fill = (a: Float32Array) => a.forEach((_, k) => (a[k] = rng.normal(0, 0.3)))
    for (const l of w.layers) {
      for (const p of Object.values(l.lora)) fill(p!.b)
      for (const ex of l.experts ?? []) for (const p of Object.values(ex)) fill(p!.b)
    }
    await saveAdapter(dir, spec.name, w, { baseModel: baseDir })
  }
}

const relClose = (a: number, b: number, tol: number) => Math.abs(a - b) <= tol * Math.max(1, Math.abs(b))

const withRuntime = <A, E>(options: RuntimeOptions, body: Effect.Effect<A, E, MixloraRuntime>) =>
  Effect.runPromise(Effect.provide(body, Layer.fresh(MixloraRuntime.layer(options))))

Deno.test("runtime: concurrent score + generate from many fibers are packed, each caller gets its alone result", async () => {
  const dir = await Deno.makeTempDir()
  await saveRandomAdapters(dir)
  const names = ["base", ...SPECS.map((s) => s.name)]
  const texts = ["the cat sat on the mat", "hello world", "a", "one two three four five six"]
  const prompts = ["Once upon a time", "hi", "The answer is", "x y z"]
  type Call =
    | { kind: "score"; adapter: string; texts: string[] }
    | { kind: "generate"; adapter: string; prompt: string; temperature: number; seed: number }
  const calls: Call[] = names.flatMap((adapter, a): Call[] => [
    { kind: "score", adapter, texts: [texts[a], texts[(a + 1) % 4]] },
    { kind: "score", adapter, texts: [texts[(a + 2) % 4]] },
    { kind: "generate", adapter, prompt: prompts[a], temperature: 0, seed: 0 },
    { kind: "generate", adapter, prompt: prompts[(a + 1) % 4], temperature: 0.9, seed: 7 + a },
    { kind: "generate", adapter, prompt: prompts[(a + 2) % 4], temperature: 1.2, seed: 11 },
    { kind: "score", adapter, texts: [texts[0]] },
  ])
  const { results, metrics } = await withRuntime(
    { batch: { windowMs: 200, tokenBudget: 4096, maxRequests: 64 } },
    Effect.gen(function* () {
      const rt = yield* MixloraRuntime
      for (const s of SPECS) yield* rt.registerAdapter(s.name, { dir })
      const results = yield* Effect.all(
        calls.map((c) =>
          c.kind === "score"
            ? rt.score(c.adapter, c.texts)
            : rt.generate(c.adapter, c.prompt, { maxTokens: 6, temperature: c.temperature, seed: c.seed, topK: 20 })
        ),
        { concurrency: "unbounded" },
      )
      return { results, metrics: yield* rt.metrics }
    }),
  )
  assert.ok(metrics.batches < calls.length, `${metrics.batches} device batches for ${calls.length} requests`)
  assert.equal(metrics.batches, 1, "all 20 requests arrived within one 200 ms window and fit the budget")
  assert.equal(metrics.batchFill, calls.length)
  assert.equal(metrics.score.requests + metrics.generate.requests, calls.length)

  // the same requests, one at a time, straight through evaluate / generate on a device of our own
  const ctx = await GpuContext.create()
  const model = new LlamaModel(ctx, await uploadBase(ctx, baseDir, config, { load8bit: false }))
  const weights = new Map<string, AdapterWeights>()
  for (const s of SPECS) weights.set(s.name, await loadAdapter(dir, s.name, config))
  // "base" through evaluate needs some adapter: a fresh LoRA (B = 0) adds exactly nothing
  const identity = initAdapter({ ...SPECS[0], name: "identity" }, config, Rng.fromSeed(5))
  const generations = new Set<string>()
  for (const [i, c] of calls.entries()) {
    const got = results[i]
    if (c.kind === "score") {
      const scores = got as readonly { loss: number; tokens: number }[]
      for (const [k, text] of c.texts.entries()) {
        const ids = tokenizer.encode(text, { addBos: true, addEos: true })
        const { results: [alone] } = await evaluate(model, [{
          name: c.adapter,
          weights: weights.get(c.adapter) ?? identity,
          examples: [{ ids, labels: ids }],
          batchSize: 1,
        }], { padId: tokenizer.padId })
        assert.equal(scores[k].tokens, ids.length - 1)
        assert.ok(
          relClose(scores[k].loss, alone.loss, 1e-5),
          `${c.adapter} "${text}": ${scores[k].loss} vs ${alone.loss}`,
        )
      }
    } else {
      const w = weights.get(c.adapter)
      const dev = w ? uploadAdapter(ctx, w, config) : null
      const [alone] = await generate(model, [{
        adapter: dev,
        promptIds: tokenizer.encode(c.prompt, { addBos: true, addEos: false }),
        maxNewTokens: 6,
        temperature: c.temperature,
        topP: 1,
        topK: 20,
        seed: c.seed,
      }], { eosId: tokenizer.eosId })
      const out = got as { outputIds: number[]; text: string }
      assert.deepEqual(out.outputIds, alone.outputIds, `${c.adapter} "${c.prompt}"`)
      assert.equal(out.text, tokenizer.decode(alone.outputIds, { skipSpecial: true }))
      if (c.temperature === 0) generations.add(out.outputIds.join(","))
    }
  }
  ctx.destroy()
  await Deno.remove(dir, { recursive: true })
  // the adapters matter: the same text scores differently under each of them, and greedy continuations differ
  const perAdapter = calls.length / names.length
  const sameText = names.map((_, a) =>
    (results[a * perAdapter + perAdapter - 1] as readonly { loss: number }[])[0].loss
  )
  assert.equal(sameText.length, names.length)
  assert.equal(new Set(sameText).size, names.length, `losses ${sameText}`)
  assert.ok(generations.size >= 2, "the greedy continuations are not all the same")
})

Deno.test("runtime: register / unregister, ref-counted; unknown adapters and bad input are one-line typed errors", async () => {
  const dir = await Deno.makeTempDir()
  await saveRandomAdapters(dir)
  const rt = await createRuntime({ batch: { windowMs: 30 } })
  try {
    const before = (await rt.memory()).adapterBytesInUse
    const info = await rt.registerAdapter("lora", { dir })
    assert.deepEqual(info, { name: "lora", kind: "lora", r: 4, targets: SPECS[0].targets, experts: 0 })
    const fresh = await rt.registerAdapter("fresh", {
      config: { r: 2, lora_alpha: 4, target_modules: ["gate_proj", "up_proj"], num_experts: 2, top_k: 1 },
    })
    assert.deepEqual(fresh, { name: "fresh", kind: "mixlora", r: 2, targets: ["gate_proj", "up_proj"], experts: 2 })
    assert.ok((await rt.memory()).adapterBytesInUse > before)
    assert.deepEqual((await rt.adapters()).map((a) => a.name), ["lora", "fresh"])

    // a fresh adapter (B = 0) is the base model: same greedy tokens, same scores
    const [g0, g1] = await Promise.all([
      rt.generate("fresh", "Once upon a time", { maxTokens: 5 }),
      rt.generate("base", "Once upon a time", { maxTokens: 5 }),
    ])
    assert.deepEqual(g0.outputIds, g1.outputIds)
    assert.equal(g0.promptTokens, tokenizer.encode("Once upon a time", { addBos: true }).length)
    const [[s0], [s1], [s2]] = await Promise.all([
      rt.score("fresh", ["hello world"]),
      rt.score("base", [tokenizer.encode("hello world", { addBos: true, addEos: true })]),
      rt.score("lora", ["hello world"]),
    ])
    assert.equal(s0.loss, s1.loss)
    assert.notEqual(s2.loss, s1.loss)

    const rejects = async (p: Promise<unknown>, cls: new (...a: never[]) => Error, pattern: RegExp) => {
      const e = await p.then(() => null, (e) => e)
      assert.ok(e instanceof cls, `expected ${cls.name}, got ${e}`)
      assert.match(e.message, pattern)
      assert.ok(!e.message.includes("\n"), "one line")
    }
    await rejects(rt.registerAdapter("lora", { dir }), AdapterConflict, /adapter "lora": already registered/)
    await rejects(rt.registerAdapter("base", { dir }), AdapterConflict, /reserved/)
    await rejects(rt.registerAdapter("nothere", { dir }), ConfigError, /nothere/)
    await rejects(
      rt.registerAdapter("bad", { config: { r: 4, lora_alpha: 8, target_modules: ["q_proj", "w9_proj"] } }),
      ConfigError,
      /target_modules.*unknown module "w9_proj"/,
    )
    await rejects(rt.registerAdapter("bad", { config: [] }), ConfigError, /must be a JSON object/)
    await rejects(rt.generate("nope", "hi"), UnknownAdapter, /unknown adapter "nope" \(registered: lora, fresh;/)
    await rejects(rt.score("nope", ["hi there"]), UnknownAdapter, /unknown adapter "nope"/)
    await rejects(rt.score("lora", [[1]]), RequestError, /text 0 has 1 token\(s\); scoring needs at least 2/)
    await rejects(rt.score("lora", [[1, 9999]]), RequestError, /token 9999 at 1 is not in \[0, 512\)/)
    await rejects(rt.generate("lora", [], { maxTokens: 2 }), RequestError, /empty prompt/)
    await rejects(rt.generate("lora", "hi", { temperature: -1 }), RequestError, /temperature -1/)
    await rejects(rt.generate("lora", "hi", { maxTokens: 600 }), RequestError, /max_position_embeddings 512/)

    // unregister while a request holds the adapter: the name goes at once, the buffers after the answer
    const order: string[] = []
    const pending = rt.generate("lora", "hello", { maxTokens: 3 }).then((r) => (order.push("generated"), r))
    await new Promise((r) => setTimeout(r, 0)) // the request is queued in the batcher's 30 ms window
    const gone = rt.unregisterAdapter("lora").then(() => order.push("unregistered"))
    await rejects(rt.generate("lora", "hi"), UnknownAdapter, /registered: fresh;/)
    assert.equal((await pending).outputIds.length, 3)
    await gone
    assert.deepEqual(order, ["generated", "unregistered"])
    await rt.unregisterAdapter("fresh")
    assert.equal((await rt.memory()).adapterBytesInUse, before, "every adapter block freed")
    await rejects(rt.unregisterAdapter("fresh"), UnknownAdapter, /registered: none/)
    assert.deepEqual(await rt.adapters(), [])
  } finally {
    await rt.close()
    await Deno.remove(dir, { recursive: true })
  }
})

Deno.test("runtime: train through the Scheduler, then the trained adapter scores its data better", async () => {
  const rt = await createRuntime({ seed: 3 })
  try {
    const text = "the quick brown fox jumps over the lazy dog"
    const cfg = {
      name: "fox",
      r: 4,
      lora_alpha: 8,
      target_modules: ["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"],
      num_experts: 2,
      lr: 1e-2,
      batch_size: 4,
      num_epochs: 3,
    }
    await rt.registerAdapter("fox_before", { config: { ...cfg, name: "fox_before" }, seed: 3 })
    const [before] = await rt.score("fox_before", [text])
    const result = await rt.train({ config: cfg, data: Array.from({ length: 8 }, () => ({ text })) })
    assert.equal(result.status, "done", result.failure)
    assert.equal(result.steps, 6, "8 examples / batch 4 × 3 epochs")
    assert.ok(result.tokens > 0)
    await rt.registerAdapter("fox", { dir: rt.trainDir })
    const [after] = await rt.score("fox", [text])
    assert.ok(after.loss < before.loss - 0.5, `loss ${before.loss} → ${after.loss}`)
    const m = await rt.metrics()
    assert.ok(m.train.microSteps >= 6 && m.train.tokensPerSecond > 0)
    await assert.rejects(
      rt.train({ config: { ...cfg, lr: -1 }, data: [{ text }] }),
      (e: Error) => e instanceof ConfigError && /lora\[0\]\(fox\)\.lr/.test(e.message),
    )
    await assert.rejects(
      rt.train({ config: cfg, data: [{ nope: 1 }] }),
      (e: Error) => e instanceof ConfigError && /data\[0\]/.test(e.message),
    )
  } finally {
    await rt.close()
  }
})
