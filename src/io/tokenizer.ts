/**
 * The tokenizer of a base model: HF `tokenizer.json` (+ optional `tokenizer_config.json`) run by the pure-JS
 * `@huggingface/tokenizers` package (BPE incl. LLaMA-2 byte fallback, ByteLevel BPE of LLaMA-3, Unigram, WordPiece).
 *
 * Special tokens follow HF `AutoTokenizer`: `bos_token` / `eos_token` / `pad_token` / `unk_token` from
 * `tokenizer_config.json` (a string or an `{content}` object), with the ids in `config.json`
 * (`bos_token_id`, `eos_token_id`, `pad_token_id`) as fallback. Like m-LoRA, a model without a pad token pads
 * with unk, then eos, then 0 (pad positions are masked, so the choice never changes a result).
 * BOS/EOS are added by this wrapper, never by the tokenizer's post-processor, so callers decide per record
 * (spec §6: `{"text"}` gets both, a prompt gets BOS only).
 * @module
 */
import { Tokenizer as HfTokenizer } from "@huggingface/tokenizers"
import { ConfigError } from "../errors.ts"

/** Options of `Tokenizer.encode`; each defaults to the model's own choice (`add_bos_token` / `add_eos_token`). */
export interface EncodeOptions {
  readonly addBos?: boolean
  readonly addEos?: boolean
}

/** Options of `Tokenizer.decode`. */
export interface DecodeOptions {
  /** Drop special tokens (`<s>`, `</s>`, pad, ...) from the text. Default false. */
  readonly skipSpecial?: boolean
}

/** A loaded tokenizer. Ids are token ids of the model's embedding table. */
export interface Tokenizer {
  /** Largest token id + 1 (the model's `vocab_size` may be larger, never smaller). */
  readonly vocabSize: number
  readonly bosId: number | null
  readonly eosId: number | null
  readonly unkId: number | null
  /** Never null: pad token, else unk, else eos, else 0. */
  readonly padId: number
  /** Default of `EncodeOptions.addBos`: `add_bos_token`, else what the post-processor would add. */
  readonly addBosDefault: boolean
  /** Default of `EncodeOptions.addEos`: `add_eos_token`, else what the post-processor would add. */
  readonly addEosDefault: boolean
  /** Token ids of `text`, with BOS/EOS as asked (skipped when the model has none). */
  encode(text: string, opts?: EncodeOptions): number[]
  /** Text of `ids`; ids without a token (beyond the tokenizer's vocab) are skipped, like HF. */
  decode(ids: readonly number[], opts?: DecodeOptions): string
  /** Id of an exact vocabulary entry (e.g. `"<s>"`, `"▁the"`), or null. */
  tokenToId(token: string): number | null
  /** Vocabulary entry of an id, or null. */
  idToToken(id: number): string | null
}

/** Special-token ids from `config.json`, used where `tokenizer_config.json` names none. */
export interface FallbackIds {
  readonly bosTokenId?: number | null
  readonly eosTokenId?: number | null
  readonly padTokenId?: number | null
}

/** Options of `loadTokenizer`. */
export interface LoadTokenizerOptions {
  /** Fallback ids; when omitted they are read from `<dir>/config.json` if it exists. */
  readonly fallbackIds?: FallbackIds
}

type Json = Record<string, unknown>

/** Reads and parses a JSON object file; null when `optional` and missing. Errors name the file. */
async function readJsonObject(file: string, opts: { optional: boolean }): Promise<Json | null> {
  let text: string
  try {
    text = await Deno.readTextFile(file)
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      if (opts.optional) return null
      throw new ConfigError({ file, key: "", reason: "file not found (the model's tokenizer is needed for text data)" })
    }
    throw new ConfigError({ file, key: "", reason: `cannot read: ${(e as Error).message}` })
  }
  let value: unknown
  try {
    value = JSON.parse(text)
  } catch (e) {
    throw new ConfigError({ file, key: "", reason: `invalid JSON: ${(e as Error).message}` })
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw new ConfigError({ file, key: "", reason: "expected a JSON object" })
  }
  return value as Json
}

/** `bos_token` etc. as a string: HF writes either `"<s>"` or `{"content": "<s>", ...}`; null/absent → null. */
function tokenString(config: Json, key: string, file: string): string | null {
  const v = config[key]
  if (v === undefined || v === null) return null
  if (typeof v === "string") return v
  if (typeof v === "object" && typeof (v as Json).content === "string") return (v as Json).content as string
  throw new ConfigError({ file, key, reason: "expected a string or an object with a string `content`" })
}

/** A non-negative integer id from config.json; a list (LLaMA-3 `eos_token_id`) gives its first entry. */
function idFromConfig(config: Json, key: string, file: string): number | null {
  let v = config[key]
  if (Array.isArray(v)) v = v[0]
  if (v === undefined || v === null) return null
  if (typeof v !== "number" || !Number.isInteger(v) || v < 0) {
    throw new ConfigError({ file, key, reason: "expected a non-negative integer token id" })
  }
  return v
}

/**
 * Loads `<dir>/tokenizer.json` and, when present, `<dir>/tokenizer_config.json`.
 * Throws `ConfigError` naming the file (and key) when a file is missing, not JSON, or not a valid tokenizer.
 *
 * @example
 * ```ts
 * import { ensureDefaultModel } from "../model/default_model.ts"
 * const tok = await loadTokenizer(await ensureDefaultModel())
 * const ids = tok.encode("Hello world", { addBos: true, addEos: true })
 * tok.decode(ids, { skipSpecial: true }) // "Hello world"
 * ```
 */
export async function loadTokenizer(dir: string, opts: LoadTokenizerOptions = {}): Promise<Tokenizer> {
  const tokenizerFile = `${dir}/tokenizer.json`
  const configFile = `${dir}/tokenizer_config.json`
  const tokenizerJson = (await readJsonObject(tokenizerFile, { optional: false }))!
  const tokenizerConfig = await readJsonObject(configFile, { optional: true })
  let fallbackIds = opts.fallbackIds
  if (fallbackIds === undefined) {
    const modelFile = `${dir}/config.json`
    const model = await readJsonObject(modelFile, { optional: true })
    fallbackIds = model === null ? {} : {
      bosTokenId: idFromConfig(model, "bos_token_id", modelFile),
      eosTokenId: idFromConfig(model, "eos_token_id", modelFile),
      padTokenId: idFromConfig(model, "pad_token_id", modelFile),
    }
  }
  const fallbackFile = `${dir}/config.json`
  return tokenizerFromJson(tokenizerJson, tokenizerConfig ?? {}, {
    tokenizerFile,
    configFile,
    fallbackIds,
    fallbackFile,
  })
}

/**
 * Builds a tokenizer from parsed `tokenizer.json` / `tokenizer_config.json` objects. The file names
 * (`fallbackFile`: where `fallbackIds` came from, default "config.json") are only used in error messages.
 */
export function tokenizerFromJson(
  tokenizerJson: Json,
  tokenizerConfig: Json,
  opts: { tokenizerFile: string; configFile: string; fallbackIds?: FallbackIds; fallbackFile?: string },
): Tokenizer {
  const { tokenizerFile, configFile } = opts
  const fallbackFile = opts.fallbackFile ?? "config.json"
  if (typeof tokenizerJson.model !== "object" || tokenizerJson.model === null) {
    throw new ConfigError({ file: tokenizerFile, key: "model", reason: "missing tokenizer model" })
  }
  const specialNames = ["bos_token", "eos_token", "pad_token", "unk_token"] as const
  const names = Object.fromEntries(specialNames.map((k) => [k, tokenString(tokenizerConfig, k, configFile)]))
  // The package reads these keys as plain strings; HF files may hold {content} objects. Missing components
  // are null in HF Rust, while the package requires the keys to exist.
  const libConfig: Json = { ...tokenizerConfig }
  for (const k of specialNames) if (names[k] !== null) libConfig[k] = names[k]
  const libJson: Json = {
    normalizer: null,
    pre_tokenizer: null,
    post_processor: null,
    decoder: null,
    ...tokenizerJson,
    added_tokens: tokenizerJson.added_tokens ?? [],
  }
  let lib: HfTokenizer
  try {
    lib = new HfTokenizer(libJson, libConfig)
  } catch (e) {
    throw new ConfigError({ file: tokenizerFile, key: "", reason: `not a usable tokenizer: ${(e as Error).message}` })
  }

  const idOf = (key: (typeof specialNames)[number]): number | null => {
    const name = names[key]
    if (name === null) return null
    const id = lib.token_to_id(name)
    if (id === undefined) {
      throw new ConfigError({ file: configFile, key, reason: `token "${name}" is not in ${tokenizerFile}` })
    }
    return id
  }
  let vocabSize = 0
  for (const id of lib.get_vocab(true).values()) vocabSize = Math.max(vocabSize, id + 1)
  const checkId = (id: number | null | undefined, key: string): number | null => {
    if (id === undefined || id === null) return null
    if (id >= vocabSize) {
      throw new ConfigError({
        file: fallbackFile,
        key,
        reason: `token id ${id} is outside the tokenizer's vocabulary (${vocabSize})`,
      })
    }
    return id
  }
  const fb = opts.fallbackIds ?? {}
  const bosId = idOf("bos_token") ?? checkId(fb.bosTokenId, "bos_token_id")
  const eosId = idOf("eos_token") ?? checkId(fb.eosTokenId, "eos_token_id")
  const unkId = idOf("unk_token")
  const padId = idOf("pad_token") ?? checkId(fb.padTokenId, "pad_token_id") ?? unkId ?? eosId ?? 0

  // Defaults as HF: `add_bos_token` / `add_eos_token` where given (LLaMA tokenizers), otherwise whatever the
  // post-processor adds with add_special_tokens=True (e.g. LLaMA-3's TemplateProcessing adds only BOS).
  const plain = lib.encode("a", { add_special_tokens: false }).ids
  const full = lib.encode("a", { add_special_tokens: true }).ids
  const addsExtra = full.length > plain.length
  const addBosDefault = typeof tokenizerConfig.add_bos_token === "boolean"
    ? tokenizerConfig.add_bos_token
    : addsExtra && bosId !== null && full[0] === bosId && plain[0] !== bosId
  const addEosDefault = typeof tokenizerConfig.add_eos_token === "boolean"
    ? tokenizerConfig.add_eos_token
    : addsExtra && eosId !== null && full.at(-1) === eosId && plain.at(-1) !== eosId

  return {
    vocabSize,
    bosId,
    eosId,
    unkId,
    padId,
    addBosDefault,
    addEosDefault,
    encode(text: string, encodeOpts: EncodeOptions = {}): number[] {
      const ids = lib.encode(text, { add_special_tokens: false }).ids
      if ((encodeOpts.addBos ?? addBosDefault) && bosId !== null) ids.unshift(bosId)
      if ((encodeOpts.addEos ?? addEosDefault) && eosId !== null) ids.push(eosId)
      return ids
    },
    decode(ids: readonly number[], decodeOpts: DecodeOptions = {}): string {
      const known = ids.filter((id) => lib.id_to_token(id) !== undefined)
      // The package refuses an empty list; HF returns "".
      if (known.length === 0) return ""
      return lib.decode(known, { skip_special_tokens: decodeOpts.skipSpecial ?? false })
    },
    tokenToId: (token: string) => lib.token_to_id(token) ?? null,
    idToToken: (id: number) => lib.id_to_token(id) ?? null,
  }
}
