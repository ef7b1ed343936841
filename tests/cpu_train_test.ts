/**
 * `--device cpu` training (src/train/cpu_trainer.ts): the CPU trainer ends at the device trainer's weights and
 * optimizer state, resumes exactly from its own checkpoints, and the CLI trains and saves end to end.
 * Tiny data on the embedded model (D = 128, f32 base): a LoRA and a MixLoRA (top-2) adapter, 4 short token
 * records each, 1 epoch, micro 2, batch 2, dropout 0, no jitter → 2 packed micro-steps of both adapters, a
 * checkpoint after each optimizer step.
 *
 * Metric (CPU vs device), per tensor: max|cpu − gpu| / max|gpu| ≤ 1e-4 (the reference and the kernels differ in
 * f32 summation order only). It holds the final weights and momentum when both adapters use SGD (plain, and with
 * momentum): an SGD update is linear in the gradient, so round-off stays round-off. AdamW's update
 * m̂ / (√v̂ + ε) is ≈ ±lr for every entry with |g| ≫ ε = 1e-8, whatever its size, and lr·g / (|g| + ε) in between,
 * so an entry whose gradient is round-off after cancellation moves by up to a full step with a different size on
 * each backend (measured on this config: a MixLoRA expert B entry with g = −9.2e-9 on the CPU, −6.7e-9 on the
 * device takes steps of 4.8e-3 and 4.0e-3; after two steps the weights differ by 3.9e-2 of max|B| for the
 * MixLoRA, 4.4e-4 of max|A| for the LoRA), and the next step's gradients inherit that. With AdamW the test
 * therefore holds checkpoint-1's state to the metric (exp_avg = 0.1·g, exp_avg_sq = 0.001·g² of the first
 * micro-step, same starting weights on both); src/reference/optimizer.ts = shaders/optimizer.wgsl is checked in
 * tests/optimizer_test.ts.
 */
import assert from "node:assert/strict"
import { prepareTraining, runCpuTraining, runTraining } from "../src/cli/train_run.ts"
import { GpuContext } from "../src/gpu/context.ts"
import type { AdapterWeights } from "../src/model/adapter.ts"
import { loadAdapter } from "../src/model/adapter_io.ts"
import { latestCheckpoint, loadCheckpoint } from "../src/model/checkpoint_io.ts"
import { loadHostBase, uploadBase } from "../src/model/base_weights.ts"
import { ensureDefaultModel } from "../src/model/default_model.ts"
import { readLlamaConfig } from "../src/model/hf_config.ts"
import { CpuTrainer, CpuTrainJob } from "../src/train/cpu_trainer.ts"
import { initialWeights } from "../src/train/job.ts"

const baseDir = await ensureDefaultModel()
const modelConfig = await readLlamaConfig(baseDir)
const hostBase = await loadHostBase(baseDir, modelConfig, { load8bit: false })

/** Short token records (lengths 6..11, so batches pad) with ids drawn from `offset`. */
function records(offset: number): string {
  return [6, 9, 11, 7].map((n, r) =>
    JSON.stringify({ input_ids: Array.from({ length: n }, (_, t) => 3 + ((offset + 37 * r + 11 * t) % 500)) })
  ).join("\n") + "\n"
}

/** The tiny two-adapter config (dropout 0, no jitter): written into `dir`, returns its path. */
async function tinyConfig(
  dir: string,
  opts: { saveStep?: number; optim?: "sgd" | "adamw"; loraLr?: number; random?: boolean } = {},
): Promise<string> {
  // SGD: LoRA plain, MixLoRA with momentum (both kernels); AdamW: both
  const sgd = (opts.optim ?? "sgd") === "sgd"
  await Deno.writeTextFile(`${dir}/lora.jsonl`, records(0))
  await Deno.writeTextFile(`${dir}/moe.jsonl`, records(200))
  // random: LoRA dropout on both and router jitter on the MixLoRA (each job draws from its own seed)
  const dropout = opts.random ? 0.2 : 0
  const common = { batch_size: 2, micro_batch_size: 2, num_epochs: 1, r: 4, lora_alpha: 8, lora_dropout: dropout }
  const config = {
    cutoff_len: 32,
    save_step: opts.saveStep ?? 1,
    train_lora_candidate_num: 2,
    train_lora_simultaneously_num: 2,
    train_strategy: "none",
    lora: [
      {
        ...common,
        name: "lora",
        ...(sgd ? { optim: "sgd", lr: opts.loraLr ?? 0.5 } : { optim: "adamw", lr: opts.loraLr ?? 1e-2 }),
        target_modules: ["q_proj", "v_proj", "o_proj", "down_proj"],
        data: "lora.jsonl",
      },
      {
        ...common,
        name: "moe",
        ...(sgd ? { optim: "sgd", lr: 0.5, momentum: 0.9 } : { optim: "adamw", lr: 1e-2 }),
        target_modules: ["q_proj", "gate_proj", "up_proj", "down_proj"],
        routing_strategy: "mixlora",
        num_experts: 3,
        top_k: 2,
        jitter_noise: opts.random ? 0.05 : 0,
        expand_side: "left",
        data: "moe.jsonl",
      },
    ],
  }
  await Deno.writeTextFile(`${dir}/train.json`, JSON.stringify(config))
  return `${dir}/train.json`
}

const flags = (dir: string, config: string, extra: { loadAdapter?: boolean } = {}) => ({
  baseDir,
  config,
  dir,
  seed: 11,
  loadAdapter: extra.loadAdapter ?? false,
  overwrite: false,
  logFile: "",
})

/** Every tensor of an adapter, named. */
function tensors(w: AdapterWeights): Map<string, Float32Array> {
  const out = new Map<string, Float32Array>()
  w.layers.forEach((l, i) => {
    for (const [p, pair] of Object.entries(l.lora)) {
      out.set(`${i}.${p}.a`, pair!.a)
      out.set(`${i}.${p}.b`, pair!.b)
    }
    if (l.router) out.set(`${i}.router`, l.router)
    l.experts?.forEach((e, k) => {
      for (const [p, pair] of Object.entries(e)) {
        out.set(`${i}.e${k}.${p}.a`, pair!.a)
        out.set(`${i}.e${k}.${p}.b`, pair!.b)
      }
    })
  })
  return out
}

const maxAbs = (a: Float32Array) => a.reduce((m, x) => Math.max(m, Math.abs(x)), 0)

/** max over `pairs` of max|a − b| / max|b| (tensors that are 0 on the reference side must be 0 exactly). */
function worstRelative(pairs: Iterable<[string, Float32Array, Float32Array]>): { worst: number; at: string } {
  let worst = 0, at = ""
  for (const [name, a, b] of pairs) {
    assert.equal(a.length, b.length, `${name}: lengths differ`)
    let err = 0
    for (let i = 0; i < a.length; i++) err = Math.max(err, Math.abs(a[i] - b[i]))
    const scale = maxAbs(b)
    const rel = scale > 0 ? err / scale : err > 0 ? Infinity : 0
    if (rel > worst || at === "") [worst, at] = [rel, name]
  }
  return { worst, at }
}

/**
 * Trains the tiny config on both backends (same seed) and compares: summaries, counters and optimizer state of
 * `checkpoint`-N, and with `weights` the final weights, against the metric.
 */
async function compareBackends(
  optim: "sgd" | "adamw",
  opts: { weights: boolean; checkpoint: number; random?: boolean },
) {
  const tmp = await Deno.makeTempDir({ prefix: "mixlora-cpu-train-" })
  const ctx = await GpuContext.create()
  try {
    const config = await tinyConfig(tmp, { optim, random: opts.random })
    const t0 = performance.now()
    const cpu = await runCpuTraining(hostBase, await prepareTraining(flags(`${tmp}/cpu`, config)))
    const cpuSeconds = (performance.now() - t0) / 1000
    const gpu = await runTraining(
      ctx,
      await uploadBase(ctx, baseDir, modelConfig, { load8bit: false }),
      await prepareTraining(flags(`${tmp}/gpu`, config)),
    )
    console.log(`${optim}: cpu trainer ${cpu.microSteps} micro-steps in ${cpuSeconds.toFixed(2)} s`)
    assert.equal(cpu.backend, "cpu")
    assert.equal(cpu.microSteps, 2)
    assert.equal(gpu.microSteps, 2)
    for (const [i, row] of cpu.rows.entries()) {
      const g = gpu.rows[i]
      assert.equal(row.status, "done")
      assert.deepEqual([row.name, row.steps, row.tokens, row.status], [g.name, g.steps, g.tokens, g.status])
      assert.ok(Math.abs(row.lastLoss - g.lastLoss) <= 1e-4 * Math.abs(g.lastLoss), `${row.name} loss`)
    }
    const parsed = await prepareTraining(flags(`${tmp}/fresh`, config))
    for (const a of parsed.train.adapters) {
      const c = await loadAdapter(`${tmp}/cpu`, a.name, modelConfig)
      const g = await loadAdapter(`${tmp}/gpu`, a.name, modelConfig)
      const tc = tensors(c), tg = tensors(g), init = tensors(initialWeights(a, modelConfig, 11))
      assert.deepEqual([...tc.keys()], [...tg.keys()])
      // training moved the weights on both backends (else the comparison says little)
      const moved = (t: Map<string, Float32Array>) => worstRelative([...init].map(([n, x]) => [n, t.get(n)!, x])).worst
      assert.ok(moved(tc) > 1e-2 && moved(tg) > 1e-2, `${a.name}: the weights barely moved`)
      const w = worstRelative([...tc].map(([n, x]) => [n, x, tg.get(n)!]))
      console.log(`${optim} ${a.name}: weights max|cpu − gpu| / max|gpu| = ${w.worst.toExponential(2)} (${w.at})`)
      if (opts.weights) assert.ok(w.worst <= 1e-4, `${a.name}: ${w.at} differs by ${w.worst} relative`)
      // the same checkpoints, counters, and optimizer state within the metric
      assert.equal((await latestCheckpoint(`${tmp}/cpu`, a.name))?.step, 2)
      assert.equal((await latestCheckpoint(`${tmp}/gpu`, a.name))?.step, 2)
      const at = (dir: string) => loadCheckpoint(`${dir}/${a.name}/checkpoint-${opts.checkpoint}`, modelConfig)
      const cc = await at(`${tmp}/cpu`), gc = await at(`${tmp}/gpu`)
      assert.deepEqual(cc.counters, gc.counters)
      assert.deepEqual([cc.optimizer.kind, cc.optimizer.step], [gc.optimizer.kind, gc.optimizer.step])
      const states: [string, Float32Array, Float32Array][] = []
      for (const k of ["m", "v", "momentum"] as const) {
        assert.equal(cc.optimizer[k] === undefined, gc.optimizer[k] === undefined, `${a.name}: state ${k}`)
        if (cc.optimizer[k]) states.push([k, cc.optimizer[k]!, gc.optimizer[k]!])
      }
      if (states.length === 0) continue // plain SGD keeps no state
      const o = worstRelative(states)
      console.log(
        `${optim} ${a.name}: checkpoint-${opts.checkpoint} optimizer state max|cpu − gpu| / max|gpu| = ` +
          `${o.worst.toExponential(2)} (${o.at})`,
      )
      assert.ok(o.worst <= 1e-4, `${a.name}: optimizer ${o.at} differs by ${o.worst} relative`)
    }
  } finally {
    ctx.destroy()
    await Deno.remove(tmp, { recursive: true })
  }
}

Deno.test("cpu train: SGD, same seed → the device trainer's final weights and momentum within 1e-4", async () => {
  await compareBackends("sgd", { weights: true, checkpoint: 2 })
})

Deno.test("cpu train: SGD with dropout and router jitter (a seed per job) → the device trainer's weights", async () => {
  await compareBackends("sgd", { weights: true, checkpoint: 2, random: true })
})

Deno.test("cpu train: AdamW, same seed → the device trainer's checkpoint-1 exp_avg, exp_avg_sq within 1e-4", async () => {
  await compareBackends("adamw", { weights: false, checkpoint: 1 })
})

Deno.test("cpu train: stopped after checkpoint-1 and resumed with --load_adapter ends at the uninterrupted weights", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "mixlora-cpu-resume-" })
  try {
    const config = await tinyConfig(tmp)
    await runCpuTraining(hostBase, await prepareTraining(flags(`${tmp}/a`, config)))
    // interrupted: one micro-step (= one optimizer step and checkpoint-1 of both jobs), then dropped
    const part = await prepareTraining(flags(`${tmp}/b`, config))
    const jobs = await Promise.all(
      part.train.adapters.map((a) =>
        CpuTrainJob.create(part.model, a, part.examples.get(a.name)!, {
          seed: 11,
          dir: `${tmp}/b`,
          baseModel: baseDir,
          resume: false,
        })
      ),
    )
    const trainer = new CpuTrainer(part.model, hostBase, jobs, {
      saveStep: 1,
      simultaneous: 2,
      strategy: "none",
      padId: part.padId,
    })
    await trainer.step()
    assert.deepEqual(jobs.map((j) => j.lastCheckpoint), [1, 1])
    const resumed = await runCpuTraining(
      hostBase,
      await prepareTraining(flags(`${tmp}/b`, config, { loadAdapter: true })),
    )
    assert.equal(resumed.microSteps, 1)
    for (const a of part.train.adapters) {
      const x = await loadAdapter(`${tmp}/a`, a.name, modelConfig)
      const y = await loadAdapter(`${tmp}/b`, a.name, modelConfig)
      assert.deepEqual(y.layers, x.layers, `${a.name}: resumed weights differ from the uninterrupted run`)
    }
  } finally {
    await Deno.remove(tmp, { recursive: true })
  }
})

Deno.test("cpu train: a NaN loss stops that adapter, keeps its last good checkpoint; the other finishes", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "mixlora-cpu-nan-" })
  try {
    // AdamW at lr 1e30 moves every weight by ≈ 1e30 in the first update: the second micro-step's loss is not finite
    const config = await tinyConfig(tmp, { optim: "adamw", loraLr: 1e30 })
    const p = await prepareTraining(flags(tmp, config))
    const summary = await runCpuTraining(hostBase, { ...p, flags: { ...p.flags, logFile: `${tmp}/log.txt` } })
    const events = (await Deno.readTextFile(`${tmp}/log.txt`)).split("\n")
    const lora = summary.rows.find((r) => r.name === "lora")!
    const moe = summary.rows.find((r) => r.name === "moe")!
    assert.match(lora.status, /^failed: loss is (NaN|Infinity|-Infinity) at micro-step 2$/)
    assert.ok(events.some((l) => / lora: stopped, loss is .* its last good checkpoint \(step 1\) is kept$/.test(l)))
    assert.equal(moe.status, "done")
    const saved = [...Deno.readDirSync(`${tmp}/lora`)].map((e) => e.name).sort()
    assert.deepEqual(saved, ["checkpoint-1"]) // no final adapter, no checkpoint of the broken step
    await loadAdapter(tmp, "moe", modelConfig) // the healthy adapter was saved
  } finally {
    await Deno.remove(tmp, { recursive: true })
  }
})

const TRAIN = new URL("../src/cli/train.ts", import.meta.url).pathname
const PRELOAD = new URL("../src/no_async_hooks.ts", import.meta.url).pathname

Deno.test("cpu train cli: deno task train --device cpu trains the tiny config and saves both adapters", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "mixlora-cpu-cli-" })
  try {
    const config = await tinyConfig(tmp, { saveStep: 100 })
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "--preload", PRELOAD, TRAIN, "--device", "cpu", "--config", config, "--dir", `${tmp}/out`],
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).output()
    const stdout = new TextDecoder().decode(out.stdout), stderr = new TextDecoder().decode(out.stderr)
    assert.equal(out.code, 0, stderr)
    assert.match(stderr, /device: CPU reference kernels/)
    assert.match(stdout, /2 packed micro-steps in [0-9.]+ s, on the CPU reference kernels/)
    for (const name of ["lora", "moe"]) {
      assert.match(stdout, new RegExp(`${name}\\s.*\\sdone`))
      const w = await loadAdapter(`${tmp}/out`, name, modelConfig)
      assert.ok(w.layers.every((l) => Object.values(l.lora).every((p) => p!.b.some((x) => x !== 0))))
      assert.equal(await latestCheckpoint(`${tmp}/out`, name), null) // 2 steps < save_step: no checkpoints
    }
  } finally {
    await Deno.remove(tmp, { recursive: true })
  }
})
