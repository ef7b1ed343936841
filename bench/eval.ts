/**
 * Evaluation benchmark (src/eval/evaluate.ts) on the embedded default model, f32 base: the demo config's three
 * adapters, freshly initialised as `deno task train --seed 42` starts them, on their test data — packed into shared
 * forwards (one `evaluate` call) vs one adapter at a time (one call each), measured side by side in one run
 * (alternating rounds after a warm-up round, best round of each mode). Evaluation tokens/s counts the real (non-pad) tokens forwarded, choice rows included.
 * `deno run -A --preload src/no_async_hooks.ts bench/eval.ts` prints the table.
 * @module
 */
import { table } from "../src/cli/output.ts"
import { loadTrainConfig } from "../src/config/train_config.ts"
import { loadPromptTemplate, loadRecords } from "../src/data/records.ts"
import { tokenizeRecords } from "../src/data/tokenize.ts"
import { type EvalStats, type EvalTask, evaluate } from "../src/eval/evaluate.ts"
import { freshAdapter } from "../src/eval/run.ts"
import type { GpuContext } from "../src/gpu/context.ts"
import { loadTokenizer } from "../src/io/tokenizer.ts"
import { releaseBase, uploadBase } from "../src/model/base_weights.ts"
import { ensureDefaultModel } from "../src/model/default_model.ts"
import { readLlamaConfig } from "../src/model/hf_config.ts"
import { LlamaModel } from "../src/model/llama.ts"

const DEMO = new URL("../config/demo.json", import.meta.url).pathname

export interface EvalBenchRow {
  readonly mode: "packed" | "one at a time"
  readonly adapters: number
  /** per round: packed forwards, rows, real tokens, padded positions, queue round trips */
  readonly batches: number
  readonly rows: number
  readonly realTokens: number
  readonly paddedTokens: number
  readonly roundTrips: number
  /** wall seconds of the mode's fastest round (all evaluate calls of the mode) */
  readonly seconds: number
  readonly tokensPerSecond: number
}

/**
 * Times `rounds` (default 2) rounds of each mode, alternating, after a warm-up round of both modes over the first
 * 20 records (pipelines created; the shader cache on disk does the rest); the fastest round counts (the least
 * disturbed by other work on the machine). `records` keeps the first that many test records per adapter (default:
 * all 60 of the demo data).
 */
export async function benchEval(
  ctx: GpuContext,
  opts: { records?: number; rounds?: number } = {},
): Promise<EvalBenchRow[]> {
  const rounds = opts.rounds ?? 2
  const dir = await ensureDefaultModel()
  const config = await readLlamaConfig(dir)
  const tokenizer = await loadTokenizer(dir)
  const { config: demo } = await loadTrainConfig(DEMO)
  const tasks: EvalTask[] = await Promise.all(demo.adapters.map(async (a) => ({
    name: a.name,
    weights: freshAdapter(a, config, 42),
    examples: tokenizeRecords((await loadRecords(a.testData!)).slice(0, opts.records), tokenizer, {
      cutoffLen: demo.cutoffLen,
      trainOnInputs: a.trainOnInputs,
      template: await loadPromptTemplate(a.prompt),
      file: a.testData!,
    }),
    batchSize: a.testBatchSize,
    padSide: a.expandSide,
  })))
  const base = await uploadBase(ctx, dir, config, { load8bit: false })
  const model = new LlamaModel(ctx, base)
  const modesOf = (ts: EvalTask[]) => ({ packed: [ts], "one at a time": ts.map((t) => [t]) })
  const modes = modesOf(tasks)
  type Mode = keyof typeof modes
  const names = Object.keys(modes) as Mode[]
  const runMode = async (mode: Mode, of = modes) => {
    const t0 = performance.now()
    const all: EvalStats[] = []
    for (const ts of of[mode]) all.push((await evaluate(model, ts, { padId: tokenizer.padId })).stats)
    const sum = (k: keyof EvalStats) => all.reduce((s, x) => s + x[k], 0)
    return {
      seconds: (performance.now() - t0) / 1000,
      batches: sum("batches"),
      rows: sum("rows"),
      realTokens: sum("realTokens"),
      paddedTokens: sum("paddedTokens"),
      roundTrips: sum("roundTrips"),
    }
  }
  try {
    const warm = modesOf(tasks.map((t) => ({ ...t, examples: t.examples.slice(0, 20) })))
    for (const mode of names) await runMode(mode, warm)
    const got: Record<Mode, Awaited<ReturnType<typeof runMode>>[]> = { packed: [], "one at a time": [] }
    for (let r = 0; r < rounds; r++) for (const mode of names) got[mode].push(await runMode(mode))
    return names.map((mode) => {
      const s = got[mode][0]
      const seconds = Math.min(...got[mode].map((x) => x.seconds))
      return { mode, adapters: tasks.length, ...s, seconds, tokensPerSecond: s.realTokens / seconds }
    })
  } finally {
    model.pool.clear()
    releaseBase(ctx, base)
  }
}

/** The benchmark's table, plus the packed / one-at-a-time speed-up. */
export function formatEvalBench(rows: readonly EvalBenchRow[]): string {
  const t = table(
    ["mode", "adapters", "forwards", "rows", "tokens", "with padding", "seconds", "tokens/s", "round trips"],
    rows.map((r) => [
      r.mode,
      String(r.adapters),
      String(r.batches),
      String(r.rows),
      String(r.realTokens),
      String(r.paddedTokens),
      r.seconds.toFixed(2),
      r.tokensPerSecond.toFixed(0),
      String(r.roundTrips),
    ]),
  )
  const p = rows.find((r) => r.mode === "packed"), s = rows.find((r) => r.mode === "one at a time")
  return p && s ? `${t}\npacked / one at a time tokens/s = ${(p.tokensPerSecond / s.tokensPerSecond).toFixed(2)}×` : t
}

if (import.meta.main) {
  const { GpuContext } = await import("../src/gpu/context.ts")
  const ctx = await GpuContext.create()
  console.log(`\n## evaluation, embedded default model (f32 base), demo config's 3 fresh adapters (${ctx.description})`)
  console.log(formatEvalBench(await benchEval(ctx)))
  ctx.destroy()
}
