/**
 * The scheduler actor: packed = alone, fairness, token budget, removal while running, and 32 jobs through
 * the API with bounded device memory. Small synthetic data on the embedded model (int8 base).
 */
import assert from "node:assert/strict"
import { Effect, Fiber, Layer } from "effect"
import { Device } from "../actors/device.ts"
import { type JobRequest, Scheduler, type SchedulerOptions } from "../actors/scheduler.ts"
import { WeightCache } from "../actors/weight_cache.ts"
import { type AdapterConfig, parseTrainConfig } from "../src/config/train_config.ts"
import type { Example } from "../src/data/tokenize.ts"
import { SLAB_FLOATS } from "../src/model/adapter_arena.ts"
import { loadAdapter } from "../src/model/adapter_io.ts"
import { ensureDefaultModel } from "../src/model/default_model.ts"
import { readLlamaConfig } from "../src/model/hf_config.ts"
import { Rng } from "../src/util/rng.ts"

const baseDir = await ensureDefaultModel()
const modelConfig = await readLlamaConfig(baseDir)

function examples(n: number, len: [number, number], seed: number): Example[] {
  const rng = Rng.fromSeed(seed)
  return Array.from({ length: n }, () => {
    const ids = Array.from({ length: len[0] + rng.nextInt(len[1] - len[0] + 1) }, () => 4 + rng.nextInt(500))
    return { ids, labels: ids }
  })
}

/** Adapter configs through the real parser (so defaults and validation are the CLI's). */
async function adapters(dir: string, specs: Record<string, unknown>[]): Promise<AdapterConfig[]> {
  await Deno.writeTextFile(`${dir}/data.jsonl`, '{"text": "synthetic"}\n')
  const lora = specs.map((s, i) => ({
    name: `a${i}`,
    lr: 5e-3,
    batch_size: 4,
    micro_batch_size: 2,
    num_epochs: 1,
    r: 4,
    lora_alpha: 8,
    lora_dropout: 0,
    data: "data.jsonl",
    target_modules: ["q_proj", "v_proj"],
    ...s,
  }))
  const { config } = await parseTrainConfig({ cutoff_len: 64, lora }, `${dir}/train.json`)
  return [...config.adapters]
}

const KINDS: Record<string, unknown>[] = [
  { target_modules: ["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"] },
  {
    target_modules: ["q_proj", "gate_proj", "up_proj", "down_proj"],
    routing_strategy: "mixlora",
    num_experts: 3,
    top_k: 2,
  },
  {
    target_modules: ["v_proj", "gate_proj", "down_proj"],
    routing_strategy: "dynamic",
    num_experts: 3,
    top_p: 0.7,
    optim: "sgd",
    lr: 0.05,
    momentum: 0.9,
  },
]

function run<A, E>(
  opts: Omit<SchedulerOptions, "base" | "seed" | "padId">,
  body: Effect.Effect<A, E, Scheduler | Device>,
) {
  const layer = Scheduler.layer({ ...opts, base: { dir: baseDir, load8bit: true }, seed: 3, padId: 0 }).pipe(
    Layer.provideMerge(WeightCache.layer({ idleTimeToLive: 0 })),
    Layer.provideMerge(Layer.fresh(Device.layer("auto"))),
  )
  return Effect.runPromise(Effect.scoped(Effect.provide(body, layer)))
}

const submitAll = (reqs: JobRequest[]) =>
  Effect.gen(function* () {
    const s = yield* Scheduler
    return yield* Effect.forEach(reqs, (r) => s.submit(r), { concurrency: "unbounded" })
  })

/**
 * With LoRA dropout and router jitter on: masks are keyed by each token's sequence within its adapter's micro-batch
 * and its position in that sequence, so they do not depend on the packing. The adapters' micro-batches have
 * different lengths: packed, each is padded to the longest of the fused step; alone, to its own. Right padding:
 * with left padding the frozen attention sums a row's keys in an order that depends on T, so packed and alone
 * differ there by f32 rounding even without masks (the masks' left-padding keys are checked bit for bit in
 * tests/lora_test.ts and tests/moe_segments_test.ts).
 */
const RANDOM_KINDS: Record<string, unknown>[] = KINDS.map((k) => ({
  ...k,
  lora_dropout: 0.1,
  ...(k.routing_strategy ? { jitter_noise: 0.1 } : {}),
}))
const LENGTHS: [number, number][] = [[5, 14], [20, 40], [3, 8]]

Deno.test("scheduler: three different adapters trained packed end with the weights of each trained alone", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "mixlora-sched-" })
  try {
    const cfgs = await adapters(tmp, RANDOM_KINDS)
    assert.ok(cfgs.every((c) => c.loraDropout === 0.1), "dropout on")
    assert.deepEqual(cfgs.map((c) => c.mixlora?.jitterNoise ?? 0), [0, 0.1, 0.1], "jitter on")
    const reqs = cfgs.map((adapter, i) => ({ adapter, examples: examples(6, LENGTHS[i], 50 + i) }))
    const packed = await run(
      { dir: `${tmp}/packed`, candidates: 3, simultaneous: 3, strategy: "none" },
      submitAll(reqs),
    )
    assert.deepEqual(packed.map((r) => r.status), ["done", "done", "done"])
    for (const [i, req] of reqs.entries()) {
      await run({ dir: `${tmp}/alone${i}`, candidates: 1, simultaneous: 1, strategy: "none" }, submitAll([req]))
      const a = await loadAdapter(`${tmp}/packed`, req.adapter.name, modelConfig)
      const b = await loadAdapter(`${tmp}/alone${i}`, req.adapter.name, modelConfig)
      let err = 0, scale = 0
      const cmp = (x: Float32Array, y: Float32Array) =>
        x.forEach((v, k) => {
          err = Math.max(err, Math.abs(v - y[k]))
          scale = Math.max(scale, Math.abs(y[k]))
        })
      a.layers.forEach((l, li) => {
        const m = b.layers[li]
        for (const [p, pair] of Object.entries(l.lora)) {
          cmp(pair!.a, m.lora[p as keyof typeof m.lora]!.a)
          cmp(pair!.b, m.lora[p as keyof typeof m.lora]!.b)
        }
        if (l.router) cmp(l.router, m.router!)
        l.experts?.forEach((e, x) => {
          for (const [p, pair] of Object.entries(e)) {
            cmp(pair!.a, m.experts![x][p as keyof typeof e]!.a)
            cmp(pair!.b, m.experts![x][p as keyof typeof e]!.b)
          }
        })
      })
      assert.ok(err <= 1e-5 * scale, `${req.adapter.name}: packed vs alone max abs diff ${err} (scale ${scale})`)
      // every kernel computes a row the same way at any row0 and T, and the masks follow the sequences: same bits
      assert.equal(err, 0, `${req.adapter.name}: packed vs alone not bit-identical (max abs diff ${err})`)
    }
  } finally {
    await Deno.remove(tmp, { recursive: true })
  }
})

Deno.test("trainer: a long-sequence adapter and short ones all advance in lockstep (no starvation)", async () => {
  const { GpuContext } = await import("../src/gpu/context.ts")
  const { uploadBase } = await import("../src/model/base_weights.ts")
  const { LlamaModel } = await import("../src/model/llama.ts")
  const { TrainJob } = await import("../src/train/job.ts")
  const { Trainer } = await import("../src/train/trainer.ts")
  const tmp = await Deno.makeTempDir({ prefix: "mixlora-fair-" })
  const ctx = await GpuContext.create()
  try {
    const base = await uploadBase(ctx, baseDir, modelConfig, { load8bit: true })
    const cfgs = await adapters(tmp, [{}, {}, {}, {}, {}])
    const jobs = await Promise.all(
      cfgs.map((a, i) =>
        TrainJob.create(ctx, modelConfig, a, i === 0 ? examples(8, [60, 64], 7) : examples(8, [6, 10], 70 + i), {
          seed: 1,
          dir: `${tmp}/out`,
          baseModel: baseDir,
          resume: false,
        })
      ),
    )
    for (const strategy of ["optim", "none"] as const) {
      const trainer = new Trainer(new LlamaModel(ctx, base), jobs.map((j) => j), {
        saveStep: 0,
        simultaneous: 2,
        strategy,
        padId: 0,
        maxBatchTokens: 2 * 2 * 64,
      })
      const start = jobs.map((j) => j.microSteps)
      for (let k = 0; k < 5; k++) {
        await trainer.step()
        const done = jobs.map((j, i) => j.microSteps - start[i])
        // 2 of 5 jobs per fused step: after each step nobody is more than one micro-step ahead of anyone
        assert.ok(Math.max(...done) - Math.min(...done) <= 1, `${strategy} step ${k}: micro-steps ${done}`)
      }
      assert.ok(jobs[0].microSteps - start[0] >= 1, `${strategy}: the long adapter advanced`)
      await trainer.flush()
      trainer.model.pool.clear()
    }
    for (const j of jobs) j.release()
  } finally {
    ctx.destroy()
    await Deno.remove(tmp, { recursive: true })
  }
})

Deno.test("scheduler: a micro-batch over the token budget fails with a clear message; others finish", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "mixlora-budget-" })
  try {
    const cfgs = await adapters(tmp, [{}, {}])
    const results = await run(
      { dir: `${tmp}/out`, candidates: 2, simultaneous: 2, strategy: "none", maxBatchTokens: 64 },
      submitAll([
        { adapter: cfgs[0], examples: examples(4, [40, 50], 1) },
        { adapter: cfgs[1], examples: examples(4, [8, 12], 2) },
      ]),
    )
    assert.equal(results[0].status, "failed")
    assert.match(results[0].failure, /micro-batch of 2 rows × \d+ tokens is over the batch budget of 64 tokens/)
    assert.equal(results[1].status, "done")
  } finally {
    await Deno.remove(tmp, { recursive: true })
  }
})

Deno.test("scheduler: 32 adapters submitted at once all finish with at most `candidates` on the device", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "mixlora-load-" })
  try {
    const cfgs = await adapters(tmp, Array.from({ length: 32 }, (_, i) => KINDS[i % 2]))
    let peakAdapters = 0, peakReserved = 0
    const results = await run(
      { dir: `${tmp}/out`, candidates: 4, simultaneous: 4, strategy: "optim" },
      Effect.gen(function* () {
        const s = yield* Scheduler
        const dev = yield* Device
        const fiber = yield* Effect.forkChild(
          submitAll(cfgs.map((adapter, i) => ({ adapter, examples: examples(4, [6, 12], 300 + i) }))),
        )
        while (fiber.pollUnsafe() === undefined) {
          const mem = yield* dev.memory
          peakAdapters = Math.max(peakAdapters, mem.adapterBytesInUse)
          peakReserved = Math.max(peakReserved, mem.bytes.adapters)
          const m = yield* s.metrics
          assert.ok(m.running <= 4, `running ${m.running}`)
          yield* Effect.sleep("10 millis")
        }
        return yield* Fiber.join(fiber)
      }),
    )
    assert.equal(results.length, 32)
    assert.ok(results.every((r) => r.status === "done"), results.map((r) => `${r.name}:${r.status}`).join(" "))
    // the largest adapter here is a MixLoRA (~3 experts): bound the device bytes by 4 of them
    const oneMoe = 4 * modelConfig.numLayers * 4 * (3 * 4 * (2 * 128 + 2 * 352) + 3 * 128 + 2 * 4 * 256)
    assert.ok(peakAdapters <= 4 * oneMoe, `peak adapter bytes ${peakAdapters} > ${4 * oneMoe}`)
    // and they all fit in one slab of the arena (parameters + gradients): freed blocks are reused
    assert.ok(peakReserved <= 2 * SLAB_FLOATS * 4, `peak reserved adapter bytes ${peakReserved}`)
  } finally {
    await Deno.remove(tmp, { recursive: true })
  }
})

Deno.test("scheduler: a job removed while others run reports removed; the others finish", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "mixlora-remove-" })
  try {
    const cfgs = await adapters(tmp, [{ num_epochs: 20 }, {}])
    const [a, b] = await run(
      { dir: `${tmp}/out`, candidates: 2, simultaneous: 2, strategy: "none" },
      Effect.gen(function* () {
        const s = yield* Scheduler
        const fa = yield* Effect.forkChild(s.submit({ adapter: cfgs[0], examples: examples(8, [6, 10], 1) }))
        const fb = yield* Effect.forkChild(s.submit({ adapter: cfgs[1], examples: examples(4, [6, 10], 2) }))
        yield* Effect.sleep("300 millis")
        assert.equal(yield* s.remove("a0"), true)
        assert.equal(yield* s.remove("nope"), false)
        return [yield* Fiber.join(fa), yield* Fiber.join(fb)]
      }),
    )
    assert.equal(a.status, "removed")
    assert.equal(b.status, "done")
  } finally {
    await Deno.remove(tmp, { recursive: true })
  }
})
