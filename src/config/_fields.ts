/**
 * Typed readers of one JSON object's keys for config parsing: each read records the key as used (so the
 * rest can be reported as unknown), accepts alias spellings, and throws a `ConfigError` whose key is
 * `<prefix><spelling the user wrote>`, e.g. `lora[1](copy).micro_batch_size`.
 * @module
 */
import { ConfigError } from "../errors.ts"

/** True for a plain JSON object (not null, not an array). */
export function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v)
}

/** Options of the numeric readers; bounds are inclusive unless `exclusiveMin` / `exclusiveMax`. */
export interface NumberRule {
  readonly min?: number
  readonly max?: number
  readonly exclusiveMin?: boolean
  readonly exclusiveMax?: boolean
}

/** Reads the keys of `obj`; `prefix` is prepended to key names in errors and in `unused()`. */
export class FieldReader {
  readonly #used = new Set<string>()

  constructor(readonly obj: Record<string, unknown>, readonly file: string, readonly prefix: string) {}

  /** A `ConfigError` for `key` (the spelling as written) of this object. */
  fail(key: string, reason: string): ConfigError {
    return new ConfigError({ file: this.file, key: `${this.prefix}${key}`, reason })
  }

  /** True when any spelling of the key is present (null counts as absent). Does not mark it used. */
  has(key: string, aliases: readonly string[] = []): boolean {
    return [key, ...aliases].some((k) => this.obj[k] !== undefined && this.obj[k] !== null)
  }

  /** The present spelling and its value, or undefined; two spellings at once is an error. */
  raw(key: string, aliases: readonly string[] = []): { key: string; value: unknown } | undefined {
    const present = [key, ...aliases].filter((k) => this.obj[k] !== undefined && this.obj[k] !== null)
    for (const k of [key, ...aliases]) if (k in this.obj) this.#used.add(k)
    if (present.length > 1) throw this.fail(present[1], `given twice (as ${present.join(" and ")}); keep one`)
    return present.length === 0 ? undefined : { key: present[0], value: this.obj[present[0]] }
  }

  /** A required value; missing → error naming the canonical key. */
  required(key: string, aliases: readonly string[] = []): { key: string; value: unknown } {
    const got = this.raw(key, aliases)
    if (got === undefined) throw this.fail(key, "missing (required)")
    return got
  }

  #number(got: { key: string; value: unknown }, rule: NumberRule, integer: boolean): number {
    const v = got.value
    const what = integer ? "an integer" : "a number"
    if (typeof v !== "number" || !Number.isFinite(v) || (integer && !Number.isSafeInteger(v))) {
      throw this.fail(got.key, `must be ${what}, got ${JSON.stringify(v)}`)
    }
    const { min, max } = rule
    const below = min !== undefined && (rule.exclusiveMin ? v <= min : v < min)
    const above = max !== undefined && (rule.exclusiveMax ? v >= max : v > max)
    if (below || above) {
      const lo = min === undefined ? "(-inf" : `${rule.exclusiveMin ? "(" : "["}${min}`
      const hi = max === undefined ? "inf)" : `${max}${rule.exclusiveMax ? ")" : "]"}`
      throw this.fail(got.key, `must be ${what} in ${lo}, ${hi}, got ${v}`)
    }
    return v
  }

  /** A number obeying `rule`; `fallback` when absent (undefined fallback: required). */
  number(key: string, opts: NumberRule & { fallback?: number; aliases?: readonly string[] } = {}): number {
    const got = opts.fallback === undefined ? this.required(key, opts.aliases) : this.raw(key, opts.aliases)
    return got === undefined ? opts.fallback! : this.#number(got, opts, false)
  }

  /** An integer obeying `rule`; `fallback` when absent (undefined fallback: required). */
  integer(key: string, opts: NumberRule & { fallback?: number; aliases?: readonly string[] } = {}): number {
    const got = opts.fallback === undefined ? this.required(key, opts.aliases) : this.raw(key, opts.aliases)
    return got === undefined ? opts.fallback! : this.#number(got, opts, true)
  }

  /** An optional number: null when absent. */
  optionalNumber(key: string, opts: NumberRule & { integer?: boolean } = {}): number | null {
    const got = this.raw(key)
    return got === undefined ? null : this.#number(got, opts, opts.integer ?? false)
  }

  /** true / false; `fallback` when absent. */
  boolean(key: string, fallback: boolean): boolean {
    const got = this.raw(key)
    if (got === undefined) return fallback
    if (typeof got.value !== "boolean") {
      throw this.fail(got.key, `must be true or false, got ${JSON.stringify(got.value)}`)
    }
    return got.value
  }

  /** A non-empty string; `fallback` when absent (undefined fallback: required). */
  string(key: string, opts: { fallback?: string; aliases?: readonly string[] } = {}): string {
    const got = opts.fallback === undefined ? this.required(key, opts.aliases) : this.raw(key, opts.aliases)
    if (got === undefined) return opts.fallback!
    if (typeof got.value !== "string" || got.value.length === 0) {
      throw this.fail(got.key, `must be a non-empty string, got ${JSON.stringify(got.value)}`)
    }
    return got.value
  }

  /** A non-empty string, or null when absent. */
  optionalString(key: string): string | null {
    return this.has(key) ? this.string(key) : (this.raw(key), null)
  }

  /** One of `choices` after mapping through `aliasValues` (e.g. {"mixtral": "mixlora"}); `fallback` when absent. */
  choice<T extends string>(
    key: string,
    choices: readonly T[],
    opts: { fallback?: T; aliases?: readonly string[]; aliasValues?: Readonly<Record<string, T>> } = {},
  ): T {
    const got = opts.fallback === undefined ? this.required(key, opts.aliases) : this.raw(key, opts.aliases)
    if (got === undefined) return opts.fallback!
    const v = got.value
    const mapped = typeof v === "string" ? (choices.includes(v as T) ? v as T : opts.aliasValues?.[v]) : undefined
    if (mapped === undefined) {
      const accepted = [...choices, ...Object.keys(opts.aliasValues ?? {})].map((c) => `"${c}"`).join(", ")
      throw this.fail(got.key, `must be one of ${accepted}, got ${JSON.stringify(v)}`)
    }
    return mapped
  }

  /** Keys never read, with the prefix; keys starting with "_" are comments and never reported. */
  unused(): string[] {
    return Object.keys(this.obj).filter((k) => !this.#used.has(k) && !k.startsWith("_")).map((k) =>
      `${this.prefix}${k}`
    )
  }
}
