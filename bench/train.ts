/**
 * Training benchmark on the embedded default model: K adapters (LoRA and MixLoRA alternating) trained
 * packed into shared passes vs the same K jobs one after another, measured side by side in one run:
 * tokens/s, peak device memory, queue round trips per optimizer step.
 * @module
 */
import { parseTrainConfig } from "../src/config/train_config.ts"
import type { Example } from "../src/data/tokenize.ts"
import type { GpuContext } from "../src/gpu/context.ts"
import type { DeviceBase } from "../src/model/base_weights.ts"
import { LlamaModel } from "../src/model/llama.ts"
import type { LlamaConfig } from "../src/model/types.ts"
import { TrainJob } from "../src/train/job.ts"
import { Trainer } from "../src/train/trainer.ts"
import { Rng } from "../src/util/rng.ts"

export interface TrainBenchRow {
  readonly K: number
  readonly mode: "packed" | "sequential"
  readonly seconds: number
  readonly tokens: number
  readonly tokensPerSecond: number
  readonly optimizerSteps: number
  readonly roundTripsPerOptimizerStep: number
  /** peak bytes on the device while training (base + adapters + optimizer + activations) */
  readonly peakDeviceBytes: number
}

/** Random token sequences of 24–40 tokens, all predicted. */
function syntheticExamples(n: number, vocab: number, seed: number): Example[] {
  const rng = Rng.fromSeed(seed)
  return Array.from({ length: n }, () => {
    const ids = Array.from({ length: 24 + rng.nextInt(17) }, () => 4 + rng.nextInt(vocab - 4))
    return { ids, labels: ids }
  })
}

async function jobsFor(ctx: GpuContext, model: LlamaConfig, K: number, dir: string): Promise<TrainJob[]> {
  await Deno.mkdir(dir, { recursive: true })
  await Deno.writeTextFile(`${dir}/data.jsonl`, '{"text": "unused: examples are synthetic"}\n')
  const adapters = Array.from({ length: K }, (_, i) => ({
    name: `bench${i}`,
    lr: 1e-3,
    batch_size: 8,
    micro_batch_size: 4,
    num_epochs: 1,
    r: 8,
    lora_alpha: 16,
    lora_dropout: 0.05,
    data: "data.jsonl",
    ...(i % 2 === 0 ? { target_modules: ["q_proj", "k_proj", "v_proj", "o_proj"] } : {
      target_modules: ["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"],
      routing_strategy: "mixlora",
      num_experts: 4,
      top_k: 2,
    }),
  }))
  const { config } = await parseTrainConfig(
    { cutoff_len: 64, save_step: 1_000_000, lora: adapters },
    `${dir}/bench.json`,
  )
  return Promise.all(
    config.adapters.map((a, i) =>
      TrainJob.create(ctx, model, a, syntheticExamples(24, model.vocabSize, 100 + i), {
        seed: 1,
        dir: `${dir}/out`,
        baseModel: "default",
        resume: false,
      })
    ),
  )
}

const total = (ctx: GpuContext) => Object.values(ctx.memory()).reduce((a, b) => a + b, 0)

async function runJobs(ctx: GpuContext, base: DeviceBase, jobs: TrainJob[], simultaneous: number) {
  const model = new LlamaModel(ctx, base)
  let peak = total(ctx)
  const trainer = new Trainer(model, jobs, {
    saveStep: 0,
    simultaneous,
    strategy: "none",
    padId: 0,
    onProgress: () => void (peak = Math.max(peak, total(ctx))),
  })
  // the jobs' final adapters are written by `finish`; keep that out of the timing by training only
  while (jobs.some((j) => !j.iter.done)) {
    await trainer.step()
    peak = Math.max(peak, total(ctx))
  }
  await trainer.flush()
  model.pool.clear()
  return peak
}

/** Packed vs sequential for each K. */
export async function benchTrain(ctx: GpuContext, base: DeviceBase, Ks: readonly number[] = [1, 2, 4, 8]) {
  const dir = await Deno.makeTempDir({ prefix: "mixlora-bench-" })
  const rows: TrainBenchRow[] = []
  try {
    // warm every pipeline once so that compile time is not measured
    const warm = await jobsFor(ctx, base.config, 2, `${dir}/warm`)
    await runJobs(ctx, base, warm, 2)
    for (const j of warm) j.release()
    for (const K of Ks) {
      for (const mode of ["packed", "sequential"] as const) {
        const jobs = await jobsFor(ctx, base.config, K, `${dir}/${mode}${K}`)
        const trips0 = ctx.roundTrips
        const t0 = performance.now()
        let peak = 0
        if (mode === "packed") peak = await runJobs(ctx, base, jobs, K)
        else for (const j of jobs) peak = Math.max(peak, await runJobs(ctx, base, [j], 1))
        const seconds = (performance.now() - t0) / 1000
        const tokens = jobs.reduce((n, j) => n + j.tokens, 0)
        const steps = jobs.reduce((n, j) => n + j.step, 0)
        rows.push({
          K,
          mode,
          seconds,
          tokens,
          tokensPerSecond: tokens / seconds,
          optimizerSteps: steps,
          roundTripsPerOptimizerStep: (ctx.roundTrips - trips0) / steps,
          peakDeviceBytes: peak,
        })
        for (const j of jobs) j.release()
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true })
  }
  return rows
}
