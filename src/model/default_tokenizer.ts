/**
 * The embedded default model's tokenizer, built deterministically: a LLaMA-2-style (SentencePiece converted)
 * BPE `tokenizer.json` with byte fallback, so any UTF-8 text round-trips, and merges trained here on a small
 * fixed corpus dominated by the Alpaca prompt template, so demo prompts stay short.
 *
 * Vocabulary (V = 512):
 *   0 `<pad>`, 1 `<s>`, 2 `</s>`, 3 `<unk>`            special tokens
 *   4..259    `<0x00>`..`<0xFF>`                        byte fallback (newline is `<0x0A>`, as in LLaMA)
 *   260..354  `▁` and the 94 printable ASCII characters `!`..`~`
 *   355..511  157 merges, in training order
 * Text is normalised as in LLaMA-2: prepend `▁`, replace every space by `▁`; decoding reverses it.
 * @module
 */

/** Special tokens; ids are their positions. */
export const SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"] as const
/** Total vocabulary size V. */
export const DEFAULT_VOCAB_SIZE = 512
const SPACE = "\u2581" // "▁", SentencePiece's visible space

const ALPACA_WITH_INPUT = "Below is an instruction that describes a task, paired with an input that provides further " +
  "context. Write a response that appropriately completes the request.\n\n" +
  "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
const ALPACA_NO_INPUT = "Below is an instruction that describes a task. Write a response that appropriately " +
  "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"

/** Common English words and words of the demo tasks, each counted once. */
const GENERAL_TEXT = [
  "The quick brown fox jumps over the lazy dog. Question: What is the answer? Answer: The answer is yes.",
  "Answer: no. Answer: true. Answer: false. Choose the correct option. Options: A, B, C, D.",
  "the of and to in is you that it he was for on are as with his they at be this have from or one had by",
  "word but not what all were we when your can said there use an each which she do how their if will up",
  "other about out many then them these so some her would make like him into time has look two more write",
  "go see number no way could people my than first water been call who its now find long down day did get",
  "come made may part sum add plus minus times equals count letters words sentence reverse sort list text",
  "name color small large big good new old red blue green yellow black white cat dog bird fish tree house",
  "Translate Summarize Classify Capitalize lowercase uppercase positive negative question answer input output",
].join(" ")

/** Training corpus: the templates outweigh general text like they do in instruction data. */
const CORPUS: readonly (readonly [text: string, weight: number])[] = [
  [ALPACA_WITH_INPUT, 16],
  [ALPACA_NO_INPUT, 16],
  ["Answer:", 16],
  [GENERAL_TEXT, 1],
]

/**
 * Pre-splits normalised text into the units BPE may merge within: `▁`-prefixed letter runs, `▁`-prefixed
 * punctuation runs, a lone `▁`, single digits (digits are never merged, as in LLaMA), other characters.
 * Merges learned this way never span two units, so the encoder, which applies them to the whole text, finds
 * the same pieces.
 */
function trainingUnits(text: string): string[] {
  const normalised = SPACE + text.replaceAll(" ", SPACE)
  return normalised.match(/▁?[A-Za-z]+|▁?[!-/:-@[-`{-~]+|▁|[\s\S]/gu) ?? []
}

/** Learns `count` merges over `chars` (greedy BPE: most frequent pair first, ties by the pair's string). */
function trainMerges(chars: ReadonlySet<string>, reserved: ReadonlySet<string>, count: number): [string, string][] {
  const words = new Map<string, number>()
  for (const [text, weight] of CORPUS) {
    for (const unit of trainingUnits(text)) words.set(unit, (words.get(unit) ?? 0) + weight)
  }
  // Only units made of base characters take part (newline and other bytes stay byte-fallback tokens).
  const seqs: { symbols: string[]; weight: number }[] = []
  for (const [unit, weight] of [...words].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
    const symbols = Array.from(unit)
    if (symbols.length > 1 && symbols.every((c) => chars.has(c)) && !/[0-9]/.test(unit)) seqs.push({ symbols, weight })
  }
  const merges: [string, string][] = []
  const made = new Set(reserved)
  while (merges.length < count) {
    const pairCounts = new Map<string, number>()
    for (const { symbols, weight } of seqs) {
      for (let i = 0; i + 1 < symbols.length; i++) {
        if (made.has(symbols[i] + symbols[i + 1])) continue
        const key = `${symbols[i]} ${symbols[i + 1]}`
        pairCounts.set(key, (pairCounts.get(key) ?? 0) + weight)
      }
    }
    let best: string | null = null
    let bestCount = 0
    for (const [key, n] of pairCounts) {
      if (n > bestCount || (n === bestCount && best !== null && key < best)) [best, bestCount] = [key, n]
    }
    if (best === null) throw new Error(`default tokenizer corpus ran out of pairs after ${merges.length} merges`)
    const [a, b] = best.split(" ") as [string, string]
    merges.push([a, b])
    made.add(a + b)
    for (const seq of seqs) {
      const out: string[] = []
      for (let i = 0; i < seq.symbols.length; i++) {
        if (i + 1 < seq.symbols.length && seq.symbols[i] === a && seq.symbols[i + 1] === b) {
          out.push(a + b)
          i++
        } else out.push(seq.symbols[i])
      }
      seq.symbols = out
    }
  }
  return merges
}

/** HF `added_tokens` entry of a special token. */
const addedToken = (content: string, id: number) => ({
  id,
  content,
  single_word: false,
  lstrip: false,
  rstrip: false,
  normalized: false,
  special: true,
})

/** The default `tokenizer.json` and `tokenizer_config.json` objects (deterministic; same on every call). */
export function buildDefaultTokenizer(): {
  tokenizerJson: Record<string, unknown>
  tokenizerConfig: Record<string, unknown>
} {
  const vocab: string[] = [...SPECIAL_TOKENS]
  for (let b = 0; b < 256; b++) vocab.push(`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`)
  const chars = [SPACE]
  for (let c = 0x21; c <= 0x7e; c++) chars.push(String.fromCharCode(c))
  vocab.push(...chars)
  const merges = trainMerges(new Set(chars), new Set(vocab), DEFAULT_VOCAB_SIZE - vocab.length)
  for (const [a, b] of merges) vocab.push(a + b)

  const tokenizerJson = {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: SPECIAL_TOKENS.map((t, i) => addedToken(t, i)),
    normalizer: {
      type: "Sequence",
      normalizers: [
        { type: "Prepend", prepend: SPACE },
        { type: "Replace", pattern: { String: " " }, content: SPACE },
      ],
    },
    pre_tokenizer: null,
    post_processor: {
      type: "TemplateProcessing",
      single: [{ SpecialToken: { id: "<s>", type_id: 0 } }, { Sequence: { id: "A", type_id: 0 } }],
      pair: [
        { SpecialToken: { id: "<s>", type_id: 0 } },
        { Sequence: { id: "A", type_id: 0 } },
        { SpecialToken: { id: "<s>", type_id: 1 } },
        { Sequence: { id: "B", type_id: 1 } },
      ],
      special_tokens: { "<s>": { id: "<s>", ids: [1], tokens: ["<s>"] } },
    },
    decoder: {
      type: "Sequence",
      decoders: [
        { type: "Replace", pattern: { String: SPACE }, content: " " },
        { type: "ByteFallback" },
        { type: "Fuse" },
        { type: "Strip", content: " ", start: 1, stop: 0 },
      ],
    },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: "<unk>",
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: true,
      ignore_merges: false,
      vocab: Object.fromEntries(vocab.map((t, i) => [t, i])),
      merges: merges.map(([a, b]) => `${a} ${b}`),
    },
  }
  const tokenizerConfig = {
    add_bos_token: true,
    add_eos_token: false,
    added_tokens_decoder: Object.fromEntries(SPECIAL_TOKENS.map((t, i) => {
      const { id: _id, ...rest } = addedToken(t, i)
      return [String(i), rest]
    })),
    bos_token: "<s>",
    eos_token: "</s>",
    pad_token: "<pad>",
    unk_token: "<unk>",
    clean_up_tokenization_spaces: false,
    legacy: true,
    model_max_length: 512,
    tokenizer_class: "PreTrainedTokenizerFast",
  }
  return { tokenizerJson, tokenizerConfig }
}
