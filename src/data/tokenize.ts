/**
 * Records → token examples (spec §3 loss, §6 record kinds).
 *
 * Labels follow the HF convention: `labels` is aligned with `ids`, −100 marks a token that is not predicted,
 * any other value equals the token itself; the loss shifts by one (logits at position t predict labels[t+1],
 * see `padBatch` targets). So `labels[0]` is never used.
 *
 * - instruction: ids = BOS + tokens(prompt + output) + EOS (as alpaca-lora, which tokenizes the whole text);
 *   the prompt part is the longest common prefix with BOS + tokens(prompt), masked when `trainOnInputs` is false.
 * - text: BOS + tokens(text) + EOS, all predicted.
 * - tokens: input_ids / labels exactly as given (labels default to the ids).
 * - choice: BOS + tokens(choice prompt + " " + answer letter) + EOS; the prompt part (common prefix of the
 *   choices' tokenizations) is masked when `trainOnInputs` is false. `choices` keeps, per choice, the tokens
 *   after the prompt part, so an evaluator can score every continuation (the letters of some tokenizers take
 *   two tokens, e.g. "▁", "D").
 * Sequences longer than `cutoffLen` keep their first `cutoffLen` tokens (m-LoRA); a multiple-choice record
 * that would lose its answer that way is a `ConfigError`.
 * @module
 */
import { ConfigError } from "../errors.ts"
import type { Tokenizer } from "../io/tokenizer.ts"
import { CHOICE_LETTERS, type DataRecord, type PromptTemplate, renderChoicePrompt, renderPrompt } from "./records.ts"

/** The label of a token that is not predicted. */
export const IGNORE_INDEX = -100

/** Multiple-choice facts of an example. */
export interface ChoiceInfo {
  /** tokens [0, promptLength) of `ids` are the shared prompt (incl. BOS) */
  readonly promptLength: number
  /** per choice, the token ids that follow the prompt (usually one: "▁A") */
  readonly continuations: readonly (readonly number[])[]
  /** 0-based index of the right choice; `ids` continue with continuations[answer] */
  readonly answer: number
}

/** One tokenized record. */
export interface Example {
  /** token ids, 1 ≤ length ≤ cutoffLen */
  readonly ids: readonly number[]
  /** aligned with ids: the token, or −100 (not predicted) */
  readonly labels: readonly number[]
  /** set for multiple-choice records */
  readonly choices?: ChoiceInfo
}

/** Options of `tokenizeRecords`. */
export interface TokenizeOptions {
  /** keep at most this many tokens per example (`cutoff_len`) */
  readonly cutoffLen: number
  /** `train_on_inputs`: false masks prompt tokens */
  readonly trainOnInputs: boolean
  /** template of instruction records */
  readonly template: PromptTemplate
  /** data file, for error messages */
  readonly file: string
}

const commonPrefix = (a: readonly number[], b: readonly number[]): number => {
  let n = 0
  while (n < a.length && n < b.length && a[n] === b[n]) n++
  return n
}

/** Labels = ids with the first `masked` tokens set to −100. */
const maskedLabels = (ids: readonly number[], masked: number): number[] =>
  ids.map((id, i) => (i < masked ? IGNORE_INDEX : id))

/** Tokenizes one record (`index` for errors). `tokenizer` may be null only for token-id records. */
export function tokenizeRecord(
  rec: DataRecord,
  tokenizer: Tokenizer | null,
  opts: TokenizeOptions,
  index: number,
): Example {
  const fail = (reason: string) => new ConfigError({ file: opts.file, key: `record[${index}]`, reason })
  if (rec.kind === "tokens") {
    const ids = rec.inputIds.slice(0, opts.cutoffLen)
    return { ids, labels: (rec.labels ?? rec.inputIds).slice(0, opts.cutoffLen) }
  }
  if (tokenizer === null) throw fail(`a ${rec.kind} record needs the base model's tokenizer (tokenizer.json)`)
  const encode = (text: string, eos: boolean) => tokenizer.encode(text, { addBos: true, addEos: eos })
  const cut = (ex: { ids: number[]; labels: number[] }): Example => {
    if (ex.ids.length === 0) throw fail("record has no tokens (empty text and no BOS/EOS)")
    return { ids: ex.ids.slice(0, opts.cutoffLen), labels: ex.labels.slice(0, opts.cutoffLen) }
  }
  switch (rec.kind) {
    case "text": {
      const ids = encode(rec.text, true)
      return cut({ ids, labels: ids.slice() })
    }
    case "instruction": {
      const prompt = renderPrompt(opts.template, rec)
      const ids = encode(prompt + rec.output, true)
      const promptLength = commonPrefix(encode(prompt, false), ids)
      return cut({ ids, labels: maskedLabels(ids, opts.trainOnInputs ? 0 : promptLength) })
    }
    case "choice": {
      const prompt = renderChoicePrompt(rec)
      const promptIds = encode(prompt, false)
      const full = rec.choices.map((_, i) => encode(`${prompt} ${CHOICE_LETTERS[i]}`, false))
      const promptLength = Math.min(...full.map((ids) => commonPrefix(promptIds, ids)))
      const continuations = full.map((ids) => ids.slice(promptLength))
      const needed = Math.max(...full.map((ids) => ids.length))
      if (needed > opts.cutoffLen) {
        throw fail(`multiple-choice record needs ${needed} tokens, more than cutoff_len ${opts.cutoffLen}`)
      }
      const eos = tokenizer.eosId === null ? [] : [tokenizer.eosId]
      const ids = [...full[rec.answer], ...eos]
      const { ids: cutIds, labels } = cut({ ids, labels: maskedLabels(ids, opts.trainOnInputs ? 0 : promptLength) })
      return { ids: cutIds, labels, choices: { promptLength, continuations, answer: rec.answer } }
    }
  }
}

/**
 * Tokenizes all records of one data file.
 *
 * @example
 * ```ts
 * const template = await loadPromptTemplate(adapter.prompt)
 * const examples = tokenizeRecords(await loadRecords(adapter.data), tokenizer, {
 *   cutoffLen: config.cutoffLen, trainOnInputs: adapter.trainOnInputs, template, file: adapter.data,
 * })
 * ```
 */
export function tokenizeRecords(
  records: readonly DataRecord[],
  tokenizer: Tokenizer | null,
  opts: TokenizeOptions,
): Example[] {
  return records.map((rec, i) => tokenizeRecord(rec, tokenizer, opts, i))
}

/** Prompt ids for generation (`--inference`): BOS + tokens(prompt) of an instruction or choice record, else null. */
export function promptIds(rec: DataRecord, tokenizer: Tokenizer, template: PromptTemplate): number[] | null {
  if (rec.kind === "instruction") return tokenizer.encode(renderPrompt(template, rec), { addBos: true, addEos: false })
  if (rec.kind === "choice") return tokenizer.encode(renderChoicePrompt(rec), { addBos: true, addEos: false })
  return null
}
