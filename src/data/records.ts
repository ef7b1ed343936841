/**
 * Data files and prompt templates (spec §6).
 *
 * A data file is a `.json` array of records or `.jsonl` (one record per non-empty line; a `.json` file whose
 * text does not start with `[` is read as JSON lines too, as HF `datasets` does). Each record is one of
 * (checked in this order, extra keys ignored):
 * - `{"input_ids": [..], "labels"?: [..]}` — token ids used exactly (no BOS/EOS added); labels, if given, are
 *   aligned with input_ids (HF convention: −100 = not predicted, else the token itself).
 * - `{"question", "choices": [..], "answer"}` — multiple choice, rendered as
 *   `"<question>\nA. <choice 0>\nB. <choice 1>\n...\nAnswer:"` followed by `" <letter>"`. `answer` is a 0-based
 *   index, a letter ("B", checked first) or the text of one choice. 2..26 choices.
 * - `{"instruction", "input"?, "output"}` — rendered with the adapter's prompt template; an absent or empty
 *   input selects `prompt_no_input`.
 * - `{"text"}` — plain text, tokenized with BOS and EOS.
 *
 * A prompt template is m-LoRA / alpaca-lora JSON: `prompt_input` (placeholders `{instruction}`, `{input}`),
 * `prompt_no_input` (`{instruction}`), `response_split`, optional `description`. Placeholders follow Python
 * `str.format`: `{{` and `}}` are literal braces, values are inserted once (never re-expanded).
 * @module
 */
import { ConfigError } from "../errors.ts"
import { readJsonFile } from "../io/read_json.ts"

/** One training / evaluation record, tagged by kind. */
export type DataRecord =
  | { readonly kind: "instruction"; readonly instruction: string; readonly input: string; readonly output: string }
  | { readonly kind: "text"; readonly text: string }
  | { readonly kind: "tokens"; readonly inputIds: readonly number[]; readonly labels: readonly number[] | null }
  | {
    readonly kind: "choice"
    readonly question: string
    readonly choices: readonly string[]
    /** 0-based index of the right choice */
    readonly answer: number
  }

/** A prompt template (alpaca-lora format). */
export interface PromptTemplate {
  /** used when the record has a non-empty input; `{instruction}`, `{input}` */
  readonly promptInput: string
  /** used otherwise; `{instruction}` */
  readonly promptNoInput: string
  /** marks where the response starts in generated text */
  readonly responseSplit: string
}

/** The Alpaca template (alpaca-lora `templates/alpaca.json`), the default of every adapter. */
export const ALPACA_TEMPLATE: PromptTemplate = {
  promptInput: "Below is an instruction that describes a task, paired with an input that provides further context. " +
    "Write a response that appropriately completes the request.\n\n" +
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n",
  promptNoInput: "Below is an instruction that describes a task. Write a response that appropriately completes " +
    "the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n",
  responseSplit: "### Response:",
}

/** Choice letters: A..Z. */
export const CHOICE_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

type Values = Readonly<Record<string, string>>

type Part = string | { readonly name: string }

/** Splits a format string into literal and placeholder parts, or says what is wrong with its braces. */
function formatParts(format: string, allowed: readonly string[]): { parts: Part[] } | { error: string } {
  const parts: Part[] = []
  let lit = ""
  for (let i = 0; i < format.length; i++) {
    const c = format[i]
    if ((c === "{" || c === "}") && format[i + 1] === c) {
      lit += c
      i++
    } else if (c === "{") {
      const end = format.indexOf("}", i)
      const name = end < 0 ? format.slice(i + 1) : format.slice(i + 1, end)
      if (end < 0 || !allowed.includes(name)) {
        const names = allowed.map((a) => `{${a}}`).join(", ")
        return { error: `unknown placeholder {${name}} (allowed: ${names}; write {{ and }} for literal braces)` }
      }
      parts.push(lit, { name })
      lit = ""
      i = end
    } else if (c === "}") {
      return { error: "single '}' (write }} for a literal brace)" }
    } else {
      lit += c
    }
  }
  parts.push(lit)
  return { parts }
}

/** Python-style `format.format(**values)`; the format was validated by `parsePromptTemplate` (or is built in). */
function formatString(format: string, values: Values): string {
  const split = formatParts(format, Object.keys(values))
  if ("error" in split) throw new RangeError(`prompt template: ${split.error}`)
  return split.parts.map((p) => typeof p === "string" ? p : values[p.name]).join("")
}

/** Validates a parsed template JSON; `file` names it in errors. */
export function parsePromptTemplate(json: unknown, file: string): PromptTemplate {
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    throw new ConfigError({ file, key: "", reason: "prompt template is not a JSON object" })
  }
  const obj = json as Record<string, unknown>
  const field = (key: string, allowed: readonly string[]): string => {
    const v = obj[key]
    if (typeof v !== "string") throw new ConfigError({ file, key, reason: "missing or not a string" })
    const split = formatParts(v, allowed)
    if ("error" in split) throw new ConfigError({ file, key, reason: split.error })
    return v
  }
  return {
    promptInput: field("prompt_input", ["instruction", "input"]),
    promptNoInput: field("prompt_no_input", ["instruction"]),
    responseSplit: typeof obj.response_split === "string" ? obj.response_split : ALPACA_TEMPLATE.responseSplit,
  }
}

/** The template of an adapter: `path` null → Alpaca. */
export async function loadPromptTemplate(path: string | null): Promise<PromptTemplate> {
  return path === null ? ALPACA_TEMPLATE : parsePromptTemplate(await readJsonFile(path, "prompt template"), path)
}

/** The prompt of an instruction record (everything before the output). */
export function renderPrompt(template: PromptTemplate, rec: { instruction: string; input: string }): string {
  return rec.input === ""
    ? formatString(template.promptNoInput, { instruction: rec.instruction })
    : formatString(template.promptInput, { instruction: rec.instruction, input: rec.input })
}

/** The prompt of a multiple-choice record: "question\nA. c0\nB. c1\n...\nAnswer:" (the answer is " <letter>"). */
export function renderChoicePrompt(rec: { question: string; choices: readonly string[] }): string {
  return [rec.question, ...rec.choices.map((c, i) => `${CHOICE_LETTERS[i]}. ${c}`), "Answer:"].join("\n")
}

const isIntArray = (v: unknown): v is number[] => Array.isArray(v) && v.every((x) => Number.isSafeInteger(x))

/** Validates one parsed record; `where` is e.g. "record[12]" (the ConfigError key). */
export function parseRecord(json: unknown, file: string, where: string): DataRecord {
  const fail = (key: string, reason: string) => new ConfigError({ file, key: key ? `${where}.${key}` : where, reason })
  if (typeof json !== "object" || json === null || Array.isArray(json)) throw fail("", "record is not a JSON object")
  const o = json as Record<string, unknown>
  const str = (key: string, opts: { optional?: boolean } = {}): string => {
    const v = o[key]
    if ((v === undefined || v === null) && opts.optional) return ""
    if (typeof v !== "string") throw fail(key, `must be a string, got ${JSON.stringify(v) ?? "nothing"}`)
    return v
  }
  if ("input_ids" in o) {
    const ids = o.input_ids
    if (!isIntArray(ids) || ids.length === 0 || ids.some((x) => x < 0)) {
      throw fail("input_ids", "must be a non-empty list of non-negative integer token ids")
    }
    const labels = o.labels ?? null
    if (labels !== null) {
      if (!isIntArray(labels) || labels.some((x) => x < 0 && x !== -100)) {
        throw fail("labels", "must be a list of token ids or -100")
      }
      if (labels.length !== ids.length) {
        throw fail("labels", `has ${labels.length} entries for ${ids.length} input_ids`)
      }
    }
    return { kind: "tokens", inputIds: ids, labels }
  }
  if ("question" in o || "choices" in o) {
    const question = str("question")
    const choices = o.choices
    if (
      !Array.isArray(choices) || choices.length < 2 || choices.length > 26 ||
      !choices.every((c) => typeof c === "string")
    ) {
      throw fail("choices", "must be a list of 2 to 26 strings")
    }
    const a = o.answer
    let answer = -1
    if (Number.isSafeInteger(a)) answer = a as number
    else if (typeof a === "string") {
      const letter = a.length === 1 ? CHOICE_LETTERS.indexOf(a) : -1
      answer = letter >= 0 && letter < choices.length ? letter : choices.indexOf(a)
    }
    if (answer < 0 || answer >= choices.length) {
      throw fail("answer", `must be a choice index, letter or choice text, got ${JSON.stringify(a) ?? "nothing"}`)
    }
    return { kind: "choice", question, choices, answer }
  }
  if ("instruction" in o) {
    return {
      kind: "instruction",
      instruction: str("instruction"),
      input: str("input", { optional: true }),
      output: str("output"),
    }
  }
  if ("text" in o) return { kind: "text", text: str("text") }
  throw fail(
    "",
    `unknown record kind with keys ${JSON.stringify(Object.keys(o))} (need instruction/output, text, ` +
      `input_ids or question/choices/answer)`,
  )
}

/** Parses the text of a data file (see the module doc for the formats). */
export function parseRecords(text: string, file: string): DataRecord[] {
  const trimmed = text.trimStart()
  const records: DataRecord[] = []
  if (file.endsWith(".json") && trimmed.startsWith("[")) {
    let items: unknown
    try {
      items = JSON.parse(text)
    } catch (e) {
      throw new ConfigError({ file, key: "", reason: `not valid JSON (${(e as Error).message})` })
    }
    ;(items as unknown[]).forEach((item, i) => records.push(parseRecord(item, file, `record[${i}]`)))
  } else {
    text.split("\n").forEach((line, lineIndex) => {
      if (line.trim() === "") return
      const where = `record[${records.length}] (line ${lineIndex + 1})`
      let item: unknown
      try {
        item = JSON.parse(line)
      } catch (e) {
        throw new ConfigError({ file, key: where, reason: `not valid JSON (${(e as Error).message})` })
      }
      records.push(parseRecord(item, file, where))
    })
  }
  if (records.length === 0) throw new ConfigError({ file, key: "", reason: "no records" })
  return records
}

/** Reads a data file (`.json` array or `.jsonl`); any problem is a `ConfigError` naming the file and record. */
export async function loadRecords(file: string): Promise<DataRecord[]> {
  let bytes: Uint8Array
  try {
    bytes = await Deno.readFile(file)
  } catch (e) {
    const reason = e instanceof Deno.errors.NotFound ? "not found" : (e as Error).message
    throw new ConfigError({ file, key: "", reason: `cannot read data file: ${reason}` })
  }
  let text: string
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes)
  } catch {
    throw new ConfigError({ file, key: "", reason: "data file is not valid UTF-8" })
  }
  return parseRecords(text, file)
}
