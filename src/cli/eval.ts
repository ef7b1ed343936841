/**
 * `deno task eval`: loss, perplexity and multiple-choice accuracy of every adapter of an m-LoRA config on its
 * `test_data`, with the adapters saved by `deno task train` under `--dir`, all packed into shared forwards
 * (spec §7). Without `--report` the table also shows each adapter freshly initialised ("before" training);
 * with `--report FILE` the spec's JSON is written.
 *
 * `--inference` also generates from every trained adapter, all packed into one `generate` call
 * (src/eval/generations.ts): from the lines of stdin when stdin is not a terminal and has content (each line an
 * instruction with empty input, rendered with the adapter's prompt template), otherwise from the first
 * `--num_prompts` instruction / multiple-choice records of each adapter's test data. On a terminal the outputs are
 * streamed as requests finish (src/eval/generation_output.ts); otherwise printed as one block per adapter and prompt.
 * @module
 */
import "../no_async_hooks.ts"
import { Console, Effect, Layer } from "effect"
import { Command, Flag } from "effect/cli"
import { Device } from "../../actors/device.ts"
import { WeightCache } from "../../actors/weight_cache.ts"
import { ConfigError } from "../errors.ts"
import type { EvalResult } from "../eval/evaluate.ts"
import { formatGeneration, GenerationStream, type PromptLabel } from "../eval/generation_output.ts"
import { checkGenerationFlags, type GenerationSettings, promptLines } from "../eval/generations.ts"
import { type EvalSummary, type PreparedEvaluation, prepareEvaluation, reportJson, runEvaluation } from "../eval/run.ts"
import { ensureDefaultModel } from "../model/default_model.ts"
import { baseModelFlag, deviceFlag, load8bitFlag } from "./flags.ts"
import { formatMemory, Progress, reportUserErrors, table } from "./output.ts"
import { DenoCliServices, runMain } from "./platform.ts"

const DEFAULT_CONFIG = new URL("../../config/demo.json", import.meta.url).pathname

const fmt = (x: number, digits = 4) => Number.isFinite(x) ? x.toFixed(digits) : String(x)
const pct = (a: number | null) => a === null ? "–" : `${(a * 100).toFixed(1)}%`

/** Writes `text` to `file` through a temporary file renamed into place; failures name the file. */
async function writeReport(file: string, text: string): Promise<void> {
  const tmp = `${file}.tmp-${crypto.randomUUID().slice(0, 8)}`
  try {
    await Deno.writeTextFile(tmp, text)
    await Deno.rename(tmp, file)
  } catch (e) {
    await Deno.remove(tmp).catch(() => undefined)
    throw new ConfigError({ file, key: "", reason: `cannot write the report (${(e as Error).message})` })
  }
}

function resultTable(after: readonly EvalResult[], before: readonly EvalResult[] | null): string {
  if (!before) {
    return table(
      ["adapter", "tokens", "loss", "perplexity", "accuracy"],
      after.map((r) => [r.name, String(r.tokens), fmt(r.loss), fmt(r.perplexity, 2), pct(r.accuracy)]),
    )
  }
  return table(
    ["adapter", "tokens", "loss before", "loss after", "ppl before", "ppl after", "acc before", "acc after"],
    after.map((r, i) => {
      const b = before[i]
      return [
        r.name,
        String(r.tokens),
        fmt(b.loss),
        fmt(r.loss),
        fmt(b.perplexity, 2),
        fmt(r.perplexity, 2),
        pct(b.accuracy),
        pct(r.accuracy),
      ]
    }),
  )
}

/**
 * The prompt lines of stdin when it is not a terminal and has content (all of it is read), else null.
 * Blank lines are skipped.
 */
async function readStdinPrompts(): Promise<string[] | null> {
  if (Deno.stdin.isTerminal()) return null
  const lines = promptLines(await new Response(Deno.stdin.readable).text())
  return lines.length ? lines : null
}

/** Labels of every adapter's prompts, in the order of `p.adapters`. */
function promptLabels(p: PreparedEvaluation): PromptLabel[][] {
  return p.adapters.map((a) =>
    a.prompts.map((promptIds, index) => ({ adapter: a.name, index, count: a.prompts.length, promptIds }))
  )
}

/** Terminal output: blocks printed as requests finish, the last one streamed. */
function generationStream(p: PreparedEvaluation, s: GenerationSettings): GenerationStream {
  const enc = new TextEncoder()
  return new GenerationStream(promptLabels(p), {
    tokenizer: p.tokenizer,
    eosId: p.tokenizer.eosId,
    maxNewTokens: s.maxNewTokens,
    write: (text) => void Deno.stdout.writeSync(enc.encode(text)),
  })
}

/** Non-terminal output: one block per adapter and prompt, grouped by adapter. */
function generationBlocks(p: PreparedEvaluation, summary: EvalSummary): string {
  const labels = promptLabels(p)
  return summary.generations!.flatMap((gens, a) =>
    gens.map((g, k) => formatGeneration(labels[a][k], g.text, p.tokenizer))
  ).join("")
}

const evalCommand = Command.make(
  "eval",
  {
    baseModel: baseModelFlag,
    config: Flag.String("config").pipe(
      Flag.withDescription("m-LoRA config naming the adapters and their test_data (default: config/demo.json)"),
      Flag.withDefault(DEFAULT_CONFIG),
    ),
    load8bit: load8bitFlag,
    dir: Flag.String("dir").pipe(
      Flag.withDescription("Where deno task train saved the adapters"),
      Flag.withDefault("runs"),
    ),
    device: deviceFlag,
    seed: Flag.Int("seed").pipe(
      Flag.withDescription(
        "Seed of the fresh adapters in the 'before' columns (deno task train --seed) and of sampling (--temperature > 0)",
      ),
      Flag.withDefault(42),
    ),
    report: Flag.String("report").pipe(
      Flag.withDescription("Write the metrics as JSON to this file (spec §7)"),
      Flag.withDefault(""),
    ),
    inference: Flag.Boolean("inference").pipe(
      Flag.withDescription(
        "Also generate with every adapter: from the lines of stdin when piped, else from the test data's first prompts",
      ),
      Flag.withDefault(false),
    ),
    maxNewTokens: Flag.Int("max_new_tokens").pipe(
      Flag.withDescription("New tokens per prompt at most (EOS stops earlier)"),
      Flag.withDefault(32),
    ),
    temperature: Flag.Finite("temperature").pipe(
      Flag.withDescription("Sampling temperature (0: greedy)"),
      Flag.withDefault(0),
    ),
    topP: Flag.Finite("top_p").pipe(Flag.withDescription("Nucleus sampling mass"), Flag.withDefault(1)),
    topK: Flag.Int("top_k").pipe(
      Flag.withDescription("Sample among the k likeliest tokens (0: all)"),
      Flag.withDefault(0),
    ),
    numPrompts: Flag.Int("num_prompts").pipe(
      Flag.withDescription("Test-data prompts per adapter for --inference when stdin gives none"),
      Flag.withDefault(4),
    ),
  },
  (flags) =>
    Effect.gen(function* () {
      const settings: GenerationSettings = {
        maxNewTokens: flags.maxNewTokens,
        temperature: flags.temperature,
        topP: flags.topP,
        topK: flags.topK,
        seed: flags.seed,
      }
      if (flags.inference) {
        yield* Effect.try({
          try: () => checkGenerationFlags({ ...settings, numPrompts: flags.numPrompts }),
          catch: (e) => e as ConfigError,
        })
      }
      if (flags.device === "cpu") {
        return yield* new ConfigError({
          file: "--device",
          key: "cpu",
          reason: "evaluation runs on a WebGPU device (a software adapter works); use --device auto",
        })
      }
      const baseDir = flags.baseModel || (yield* Effect.promise(() => ensureDefaultModel()))
      const lines = flags.inference ? yield* Effect.promise(readStdinPrompts) : null
      const prepared = yield* Effect.tryPromise({
        try: () =>
          prepareEvaluation({
            baseDir,
            config: flags.config,
            dir: flags.dir,
            seed: flags.seed,
            before: !flags.report,
            inference: flags.inference ? { lines, numPrompts: flags.numPrompts } : null,
          }),
        catch: (e) => e as ConfigError,
      })
      if (lines) yield* Console.error(`prompts: ${lines.length} from stdin, for each adapter`)
      const stream = flags.inference && Deno.stdout.isTerminal() ? generationStream(prepared, settings) : null
      for (const w of prepared.warnings) yield* Console.error(`warning: ${w}`)
      const layer = WeightCache.layer().pipe(Layer.provideMerge(Device.layer(flags.device)))
      const summary = yield* Effect.scoped(
        Effect.gen(function* () {
          const dev = yield* Device
          yield* Console.error(`device: ${dev.description}`)
          const loaded = yield* (yield* WeightCache).use({ dir: baseDir, load8bit: flags.load8bit })
          if (loaded.kind !== "gpu") return yield* Effect.die("evaluation needs the GPU backend")
          let bar: Progress | undefined
          const out = yield* dev.run((b) =>
            b.kind === "gpu"
              ? runEvaluation(b.ctx, loaded.base, prepared, {
                onBatch: (done, total) => {
                  bar ??= new Progress("evaluating", total)
                  if (done === total) bar.done(`${total} batches`)
                  else bar.update(done, `${done}/${total} batches`)
                },
                generate: flags.inference ? { ...settings, onToken: stream?.token.bind(stream) } : undefined,
              })
              : null
          )
          yield* Console.error(formatMemory(yield* dev.memory))
          return out
        }).pipe(Effect.provide(layer)),
      )
      if (!summary) return
      if (stream) stream.end()
      else if (summary.generations) yield* Console.log(generationBlocks(prepared, summary))
      if (flags.report) {
        yield* Effect.tryPromise({
          try: () => writeReport(flags.report, reportJson(summary.after, summary.generations)),
          catch: (e) => e as ConfigError,
        })
      }
      yield* Console.log(resultTable(summary.after, summary.before))
      const s = summary.stats
      yield* Console.log(
        `${s.batches} packed batches, ${s.rows} rows, ${s.realTokens} tokens (${s.paddedTokens} with padding) in ` +
          `${s.seconds.toFixed(1)} s: ${
            (s.realTokens / s.seconds).toFixed(0)
          } tokens/s, ${s.roundTrips} queue round trips`,
      )
      const g = summary.generateStats
      if (g) {
        yield* Console.log(
          `generation: ${g.requests} prompts, ${g.newTokens} new tokens in ${g.seconds.toFixed(1)} s: ${
            (g.newTokens / g.seconds).toFixed(1)
          } tokens/s (${g.batches} packed batches, ${g.decodeSteps} decode steps, ${g.roundTrips} queue round trips)`,
        )
      }
      if (flags.report) yield* Console.log(`report: ${flags.report}`)
    }).pipe(reportUserErrors),
).pipe(Command.withDescription("Evaluate the adapters of an m-LoRA config on their test data, packed"))

if (import.meta.main) {
  evalCommand.pipe(Command.run({ version: "0.1.0" }), Effect.provide(DenoCliServices), runMain)
}
