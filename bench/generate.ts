/**
 * Generation benchmark on the embedded default model: 4 adapters (LoRA, MixLoRA top-2 / switch / dynamic) packed
 * into one generation batch vs the same 4 one after another, measured side by side in one run (alternating rounds,
 * median); new tokens per second, decode steps and queue round trips per decode step.
 * `deno run -A --preload src/no_async_hooks.ts bench/generate.ts` prints the table.
 * @module
 */
import { table } from "../src/cli/output.ts"
import type { GpuContext } from "../src/gpu/context.ts"
import { type GenerateRequest, type GenerateStats, generateWithStats } from "../src/generate/generate.ts"
import type { AdapterSpec } from "../src/model/adapter.ts"
import { type DeviceAdapter, releaseAdapter, uploadAdapter } from "../src/model/adapter_device.ts"
import { initAdapter } from "../src/model/adapter_init.ts"
import { releaseBase, uploadBase } from "../src/model/base_weights.ts"
import { ensureDefaultModel } from "../src/model/default_model.ts"
import { readLlamaConfig } from "../src/model/hf_config.ts"
import { LlamaModel } from "../src/model/llama.ts"
import type { LlamaConfig } from "../src/model/types.ts"
import { Rng } from "../src/util/rng.ts"

export interface GenerateBenchRow {
  readonly mode: "packed" | "one at a time"
  readonly adapters: number
  readonly requests: number
  /** new tokens per round (all requests) */
  readonly newTokens: number
  /** median wall seconds of one round (all generate calls of the mode) */
  readonly seconds: number
  readonly tokensPerSecond: number
  /** decode steps per round and their mean rows */
  readonly decodeSteps: number
  readonly rowsPerStep: number
  readonly msPerDecodeStep: number
  readonly msPerPrefill: number
  readonly roundTripsPerDecodeStep: number
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]

function specs(): AdapterSpec[] {
  const moe = (name: string, routing: "mixlora" | "switch" | "dynamic"): AdapterSpec => ({
    name,
    kind: "mixlora",
    r: 8,
    alpha: 16,
    useRslora: false,
    dropout: 0.05,
    targets: ["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"],
    moe: {
      routing,
      numExperts: 4,
      topK: routing === "mixlora" ? 2 : 1,
      topP: routing === "dynamic" ? 0.8 : 1,
      expertCapacity: routing === "switch" ? 64 : 0,
      actFn: "silu",
      routerAuxLossCoef: 0.001,
      routerInitRange: 0.02,
      jitterNoise: 0,
    },
  })
  return [
    {
      name: "lora",
      kind: "lora",
      r: 8,
      alpha: 16,
      useRslora: false,
      dropout: 0.05,
      targets: ["q_proj", "k_proj", "v_proj", "o_proj"],
    },
    moe("mixlora_top2", "mixlora"),
    moe("mixlora_switch", "switch"),
    moe("mixlora_dynamic", "dynamic"),
  ]
}

/** Adapters with random B (B = 0 at init would make them the base model). */
function uploadRandomAdapters(ctx: GpuContext, config: LlamaConfig): DeviceAdapter[] {
  return specs().map((spec, i) => {
    const w = initAdapter(spec, config, Rng.fromSeed(100 + i))
    const rng = Rng.fromSeed(200 + i)
    const fill = (a: Float32Array) => a.forEach((_, k) => (a[k] = rng.normal(0, 0.05)))
    for (const l of w.layers) {
      for (const p of Object.values(l.lora)) fill(p!.b)
      for (const e of l.experts ?? []) for (const p of Object.values(e)) fill(p!.b)
    }
    return uploadAdapter(ctx, w, config)
  })
}

/**
 * Times `rounds` rounds of: all requests in one `generate` call (packed) and one call per adapter (one at a
 * time), alternating. Each adapter gets `perAdapter` prompts of `promptLen` random tokens and generates
 * `maxNewTokens` greedy tokens (no EOS, so every round does the same work).
 */
export async function benchGenerate(
  ctx: GpuContext,
  opts: { perAdapter?: number; promptLen?: number; maxNewTokens?: number; rounds?: number; load8bit?: boolean } = {},
): Promise<GenerateBenchRow[]> {
  const perAdapter = opts.perAdapter ?? 2, promptLen = opts.promptLen ?? 16
  const maxNewTokens = opts.maxNewTokens ?? 32, rounds = opts.rounds ?? 3
  const dir = await ensureDefaultModel()
  const config = await readLlamaConfig(dir)
  const base = await uploadBase(ctx, dir, config, { load8bit: opts.load8bit ?? false })
  const model = new LlamaModel(ctx, base)
  const devs = uploadRandomAdapters(ctx, config)
  const rng = Rng.fromSeed(5)
  const perDev: GenerateRequest[][] = devs.map((adapter) =>
    Array.from({ length: perAdapter }, (_, j) => ({
      adapter,
      // prompt lengths differ a little, as real prompts do
      promptIds: Array.from({ length: promptLen - 2 * j }, () => 3 + rng.nextInt(config.vocabSize - 3)),
      maxNewTokens,
      temperature: 0,
      topK: 0,
      topP: 1,
      seed: 0,
    }))
  )
  const modes = {
    packed: [perDev.flat()],
    "one at a time": perDev,
  } as const
  type Mode = keyof typeof modes
  const runMode = async (mode: Mode) => {
    const t0 = performance.now()
    const all: GenerateStats[] = []
    for (const reqs of modes[mode]) all.push((await generateWithStats(model, reqs, { eosId: null })).stats)
    const sum = (k: keyof GenerateStats) => all.reduce((s, x) => s + x[k], 0)
    return {
      seconds: (performance.now() - t0) / 1000,
      newTokens: sum("newTokens"),
      decodeSteps: sum("decodeSteps"),
      decodeRows: sum("decodeRows"),
      batches: sum("batches"),
      roundTrips: sum("roundTrips"),
      decodeSeconds: sum("decodeSeconds"),
      prefillSeconds: sum("prefillSeconds"),
    }
  }
  try {
    for (const mode of Object.keys(modes) as Mode[]) await runMode(mode) // compile + warm
    const got: Record<Mode, Awaited<ReturnType<typeof runMode>>[]> = { packed: [], "one at a time": [] }
    for (let r = 0; r < rounds; r++) {
      for (const mode of Object.keys(modes) as Mode[]) got[mode].push(await runMode(mode))
    }
    return (Object.keys(modes) as Mode[]).map((mode) => {
      const runs = got[mode]
      const s = runs[0]
      const seconds = median(runs.map((x) => x.seconds))
      return {
        mode,
        adapters: devs.length,
        requests: devs.length * perAdapter,
        newTokens: s.newTokens,
        seconds,
        tokensPerSecond: s.newTokens / seconds,
        decodeSteps: s.decodeSteps,
        rowsPerStep: s.decodeRows / s.decodeSteps,
        msPerDecodeStep: median(runs.map((x) => 1000 * x.decodeSeconds / x.decodeSteps)),
        msPerPrefill: median(runs.map((x) => 1000 * x.prefillSeconds / x.batches)),
        roundTripsPerDecodeStep: (s.roundTrips - s.batches) / s.decodeSteps,
      }
    })
  } finally {
    for (const d of devs) releaseAdapter(ctx, d)
    model.pool.clear()
    releaseBase(ctx, base)
  }
}

/** The benchmark's table, plus the packed / one-at-a-time speed-up. */
export function formatGenerateBench(rows: readonly GenerateBenchRow[]): string {
  const t = table(
    [
      "mode",
      "requests",
      "new tokens",
      "seconds",
      "tokens/s",
      "decode steps",
      "rows / step",
      "ms / step",
      "ms / prefill",
      "round trips / step",
    ],
    rows.map((r) => [
      r.mode,
      `${r.requests} (${r.adapters} adapters)`,
      String(r.newTokens),
      r.seconds.toFixed(2),
      r.tokensPerSecond.toFixed(1),
      String(r.decodeSteps),
      r.rowsPerStep.toFixed(1),
      r.msPerDecodeStep.toFixed(1),
      r.msPerPrefill.toFixed(1),
      r.roundTripsPerDecodeStep.toFixed(2),
    ]),
  )
  const p = rows.find((r) => r.mode === "packed"), s = rows.find((r) => r.mode === "one at a time")
  return p && s ? `${t}\npacked / one at a time tokens/s = ${(p.tokensPerSecond / s.tokensPerSecond).toFixed(2)}×` : t
}

if (import.meta.main) {
  const { GpuContext } = await import("../src/gpu/context.ts")
  const ctx = await GpuContext.create()
  console.log(
    `\n## generation, embedded default model (f32 base), 4 adapters packed vs one at a time (${ctx.description})`,
  )
  console.log("LoRA r=8 (q,k,v,o), MixLoRA top-2 / switch / dynamic of 4 experts (q,v + gate/up/down); greedy, no EOS")
  console.log(formatGenerateBench(await benchGenerate(ctx)))
  ctx.destroy()
}
