/**
 * Generation for `deno task eval --inference` (spec §7): every evaluated adapter continues its prompts, all
 * adapters packed into the same `generate` call (src/generate/generate.ts), so each prefill and decode step runs the
 * frozen base once for the rows of every adapter.
 *
 * Prompts (per adapter, in this order of precedence):
 * - lines given on stdin (the CLI reads them): each non-blank line is the instruction of an instruction record with
 *   empty input, rendered with the adapter's prompt template (`prompt_no_input`), BOS + tokens, no EOS;
 * - otherwise the first `numPrompts` records of the adapter's `test_data` that are instruction or multiple-choice
 *   records, rendered as in training (`promptIds` of src/data/tokenize.ts: the prompt part, without the output or
 *   the answer letter).
 *
 * Request k of adapter `name` samples with seed `jobSeed(seed, name) ^ (k + 1)·0x85ebca6b` (mod 2³²), so an
 * output depends only on `--seed`, the adapter's name and the prompt's index, never on the other adapters; at
 * temperature 0 (greedy) no seed is used. A request stops after `maxNewTokens` new tokens or after EOS (kept in
 * `outputIds`, dropped from `text`).
 * @module
 */
import type { DataRecord, PromptTemplate } from "../data/records.ts"
import { promptIds } from "../data/tokenize.ts"
import { ConfigError } from "../errors.ts"
import { type GenerateRequest, type GenerateStats, generateWithStats } from "../generate/generate.ts"
import type { SamplingParams } from "../generate/sampling.ts"
import type { Tokenizer } from "../io/tokenizer.ts"
import type { AdapterWeights } from "../model/adapter.ts"
import { type DeviceAdapter, releaseAdapter, uploadAdapter } from "../model/adapter_device.ts"
import type { LlamaModel } from "../model/llama.ts"
import { jobSeed } from "../train/job.ts"

/** Generation flags of `deno task eval --inference`. */
export interface GenerationSettings extends SamplingParams {
  /** new tokens per prompt at most (`--max_new_tokens`) */
  readonly maxNewTokens: number
  /** `--seed`: the base of every request's sampling seed (see the module doc) */
  readonly seed: number
  /** rows per packed generation batch (default: generate's own, 32) */
  readonly maxBatchRows?: number
}

/** Where the prompts come from. */
export interface PromptSource {
  /** prompt lines from stdin (instructions with empty input); null: the test data */
  readonly lines: readonly string[] | null
  /** test-data records per adapter (`--num_prompts`) */
  readonly numPrompts: number
}

/** One finished generation: the report's `{"prompt_ids", "output_ids", "text"}` (spec §7). */
export interface Generation {
  readonly promptIds: readonly number[]
  /** the new tokens only (EOS included when it stopped the request) */
  readonly outputIds: readonly number[]
  /** `outputIds` decoded, special tokens skipped */
  readonly text: string
}

/** One adapter to generate with: its weights and its prompts' token ids. */
export interface GenerationTask {
  readonly name: string
  readonly weights: AdapterWeights
  readonly prompts: readonly (readonly number[])[]
}

/** Which prompt a streamed token belongs to. */
export interface GenerationRef {
  /** index into the tasks */
  readonly task: number
  /** index into that task's prompts */
  readonly prompt: number
}

/** Seconds and work of one `runGenerations` call. */
export interface GenerationStats extends GenerateStats {
  readonly requests: number
  /** wall seconds, adapter upload included */
  readonly seconds: number
}

/** Throws a ConfigError naming the flag unless the generation flags are usable. */
export function checkGenerationFlags(s: GenerationSettings & { readonly numPrompts: number }): void {
  const bad = (flag: string, reason: string) => new ConfigError({ file: flag, key: "", reason })
  if (!Number.isSafeInteger(s.maxNewTokens) || s.maxNewTokens < 0) {
    throw bad("--max_new_tokens", `${s.maxNewTokens} must be an integer ≥ 0`)
  }
  if (!(Number.isFinite(s.temperature) && s.temperature >= 0)) {
    throw bad("--temperature", `${s.temperature} must be ≥ 0 (0: greedy)`)
  }
  if (!(s.topP >= 0 && s.topP <= 1)) throw bad("--top_p", `${s.topP} must be in [0, 1]`)
  if (!Number.isSafeInteger(s.topK) || s.topK < 0) throw bad("--top_k", `${s.topK} must be an integer ≥ 0 (0: off)`)
  if (!Number.isSafeInteger(s.numPrompts) || s.numPrompts < 1) {
    throw bad("--num_prompts", `${s.numPrompts} must be an integer ≥ 1`)
  }
  if (!Number.isSafeInteger(s.seed) || s.seed < 0) throw bad("--seed", `${s.seed} must be an integer ≥ 0`)
}

/** The non-blank lines of a text (stdin), `\r\n` or `\n` separated. */
export function promptLines(text: string): string[] {
  return text.split(/\r?\n/).filter((l) => l.trim() !== "")
}

/** The prompt ids of one adapter (see the module doc for the two sources). */
export function generationPrompts(
  records: readonly DataRecord[],
  tokenizer: Tokenizer,
  template: PromptTemplate,
  source: PromptSource,
): number[][] {
  if (source.lines !== null) {
    return source.lines.map((instruction) =>
      promptIds({ kind: "instruction", instruction, input: "", output: "" }, tokenizer, template)!
    )
  }
  const out: number[][] = []
  for (const rec of records) {
    if (out.length >= source.numPrompts) break
    const ids = promptIds(rec, tokenizer, template)
    if (ids) out.push(ids)
  }
  return out
}

/** Sampling seed of prompt k of adapter `name` (module doc). */
export function generationSeed(seed: number, name: string, k: number): number {
  return (jobSeed(seed, name) ^ Math.imul(k + 1, 0x85ebca6b)) >>> 0
}

/**
 * Generates for every prompt of every task in one packed `generate` call; generations per task, in prompt order.
 * `onToken` sees every new token as it is read back.
 *
 * @example
 * ```ts
 * const { generations } = await runGenerations(model, tokenizer, [{ name, weights, prompts }], {
 *   maxNewTokens: 32, temperature: 0, topP: 1, topK: 0, seed: 42,
 * })
 * generations[0][0].text // the decoded new tokens of the first prompt
 * ```
 */
export async function runGenerations(
  model: LlamaModel,
  tokenizer: Tokenizer,
  tasks: readonly GenerationTask[],
  settings: GenerationSettings,
  opts: { onToken?: (ref: GenerationRef, id: number) => void } = {},
): Promise<{ generations: Generation[][]; stats: GenerationStats }> {
  const t0 = performance.now()
  const devs: DeviceAdapter[] = []
  try {
    for (const t of tasks) devs.push(uploadAdapter(model.ctx, t.weights, model.base.config))
    const refs: GenerationRef[] = tasks.flatMap((t, task) => t.prompts.map((_, prompt) => ({ task, prompt })))
    const requests: GenerateRequest[] = refs.map(({ task, prompt }) => ({
      adapter: devs[task],
      promptIds: tasks[task].prompts[prompt],
      maxNewTokens: settings.maxNewTokens,
      temperature: settings.temperature,
      topK: settings.topK,
      topP: settings.topP,
      seed: generationSeed(settings.seed, tasks[task].name, prompt),
    }))
    const { results, stats } = await generateWithStats(model, requests, {
      eosId: tokenizer.eosId,
      maxBatchRows: settings.maxBatchRows,
      onToken: opts.onToken && ((i, id) => opts.onToken!(refs[i], id)),
    })
    const generations = tasks.map((t) => t.prompts.map(() => null as Generation | null))
    results.forEach((r, i) => {
      const { task, prompt } = refs[i]
      generations[task][prompt] = {
        promptIds: tasks[task].prompts[prompt],
        outputIds: r.outputIds,
        text: tokenizer.decode(r.outputIds, { skipSpecial: true }),
      }
    })
    return {
      generations: generations.map((g) => g.map((x) => x!)),
      stats: { ...stats, requests: requests.length, seconds: (performance.now() - t0) / 1000 },
    }
  } finally {
    for (const d of devs) releaseAdapter(model.ctx, d)
  }
}

/** The report entries of one adapter's generations (spec §7 keys, in its order). */
export function generationsJson(
  gens: readonly Generation[],
): { prompt_ids: number[]; output_ids: number[]; text: string }[] {
  return gens.map((g) => ({ prompt_ids: [...g.promptIds], output_ids: [...g.outputIds], text: g.text }))
}
