/**
 * How `deno task eval --inference` shows its generations on stdout. One block per prompt:
 *
 * ```
 * ── lora_copy · prompt 1/4 ──
 * ### Repeat 51116
 * ### Response:
 * → 51116
 * ```
 * (prompt text as rendered by the template, trailing newlines dropped; continuation lines of the output indented by
 * two spaces). On a terminal, `GenerationStream` prints each block as soon as its request finishes — requests of all
 * adapters are packed into shared batches, so they finish in no fixed order and every block names its adapter — and
 * when a single request is left it streams that one's text token by token. Otherwise the CLI prints the blocks
 * afterwards, grouped by adapter (`formatGeneration` for each).
 * @module
 */
import type { Tokenizer } from "../io/tokenizer.ts"
import type { GenerationRef } from "./generations.ts"

/** What a block shows about its prompt. */
export interface PromptLabel {
  readonly adapter: string
  /** 0-based prompt index, and the adapter's prompt count */
  readonly index: number
  readonly count: number
  readonly promptIds: readonly number[]
}

const indent = (text: string) => text.replaceAll("\n", "\n  ")

/** The block's header and prompt lines, ending with "→ " (the output follows). */
function blockHead(label: PromptLabel, tokenizer: Tokenizer): string {
  const prompt = tokenizer.decode(label.promptIds, { skipSpecial: true }).replace(/\n+$/, "")
  return `── ${label.adapter} · prompt ${label.index + 1}/${label.count} ──\n${prompt}\n→ `
}

/** One whole block (newline-terminated) for a prompt and its decoded output `text`. */
export function formatGeneration(label: PromptLabel, text: string, tokenizer: Tokenizer): string {
  return `${blockHead(label, tokenizer)}${indent(text)}\n`
}

/**
 * Prints blocks while generation runs (terminal mode; see the module doc). Feed it every token (`token`), then call
 * `end` once: it prints what never produced a token (max_new_tokens 0).
 */
export class GenerationStream {
  private readonly out: number[][][]
  private readonly done: boolean[][]
  private remaining: number
  /** the request streamed live, with the text written so far */
  private live: { ref: GenerationRef; written: string } | null = null

  constructor(
    private readonly labels: readonly (readonly PromptLabel[])[],
    private readonly opts: {
      readonly tokenizer: Tokenizer
      readonly eosId: number | null
      readonly maxNewTokens: number
      readonly write: (text: string) => void
    },
  ) {
    this.out = labels.map((ls) => ls.map(() => []))
    this.done = labels.map((ls) => ls.map(() => false))
    this.remaining = labels.reduce((n, ls) => n + ls.length, 0)
  }

  private text(ref: GenerationRef): string {
    return this.opts.tokenizer.decode(this.out[ref.task][ref.prompt], { skipSpecial: true })
  }

  /** Writes the live request's new text, holding back a trailing incomplete character (U+FFFD). */
  private streamLive(final: boolean): void {
    const live = this.live!
    const text = this.text(live.ref)
    if (!text.startsWith(live.written)) {
      // decoding changed earlier text (a multi-byte character completed differently): rewrite it whole
      if (final) this.opts.write(`\n→ ${indent(text)}`)
      return
    }
    if (!final && text.endsWith("\uFFFD")) return
    this.opts.write(indent(text.slice(live.written.length)))
    live.written = text
  }

  /** A new token of request `ref`. */
  token(ref: GenerationRef, id: number): void {
    const out = this.out[ref.task][ref.prompt]
    out.push(id)
    const finished = id === this.opts.eosId || out.length >= this.opts.maxNewTokens
    if (!this.live && this.remaining === 1) {
      // the only unfinished request (so `ref`): its head now, its text so far and from now on as it grows
      this.live = { ref, written: "" }
      this.opts.write(blockHead(this.labels[ref.task][ref.prompt], this.opts.tokenizer))
    }
    const isLive = this.live?.ref.task === ref.task && this.live.ref.prompt === ref.prompt
    if (isLive) this.streamLive(finished)
    if (!finished) return
    this.done[ref.task][ref.prompt] = true
    this.remaining--
    if (isLive) this.opts.write("\n")
    else this.opts.write(formatGeneration(this.labels[ref.task][ref.prompt], this.text(ref), this.opts.tokenizer))
  }

  /** Prints the blocks of requests that produced no token. */
  end(): void {
    this.done.forEach((d, task) =>
      d.forEach((finished, prompt) => {
        if (finished) return
        this.opts.write(formatGeneration(this.labels[task][prompt], this.text({ task, prompt }), this.opts.tokenizer))
      })
    )
  }
}
