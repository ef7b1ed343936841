/**
 * Internal file helpers shared by `adapter_io.ts` (adapter files) and `checkpoint_io.ts` (checkpoints): the two
 * adapter file names, typed reads of JSON keys, crash-safe writes (temporary name, sync, rename) and the adapter
 * pair commit. Not part of the public API.
 * @module
 */
import { join } from "node:path"
import { ConfigError, SafetensorsError } from "../errors.ts"
import { type TensorToWrite, writeSafetensors } from "../io/safetensors.ts"

export const ADAPTER_CONFIG_FILE = "adapter_config.json"
export const ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"

/** Typed reads of one JSON object's keys; errors name the file and the key. */
export function fieldsOf(file: string, obj: Record<string, unknown>) {
  const fail = (key: string, reason: string) => new ConfigError({ file, key, reason })
  const present = (key: string) => obj[key] !== undefined && obj[key] !== null
  const num = (
    key: string,
    rule: { min?: number; max?: number; minOpen?: boolean; maxOpen?: boolean; integer?: boolean; fallback?: number },
  ): number => {
    if (!present(key)) {
      if (rule.fallback === undefined) throw fail(key, "missing (required)")
      return rule.fallback
    }
    const v = obj[key]
    const what = rule.integer ? "an integer" : "a number"
    if (typeof v !== "number" || !Number.isFinite(v) || (rule.integer && !Number.isSafeInteger(v))) {
      throw fail(key, `must be ${what}, got ${JSON.stringify(v)}`)
    }
    const lo = rule.min !== undefined && (rule.minOpen ? v <= rule.min : v < rule.min)
    const hi = rule.max !== undefined && (rule.maxOpen ? v >= rule.max : v > rule.max)
    if (lo || hi) {
      const range = `${rule.minOpen ? "(" : "["}${rule.min ?? "-inf"}, ${rule.max ?? "inf"}${rule.maxOpen ? ")" : "]"}`
      throw fail(key, `must be ${what} in ${range}, got ${v}`)
    }
    return v
  }
  const bool = (key: string, fallback: boolean): boolean => {
    if (!present(key)) return fallback
    if (typeof obj[key] !== "boolean") throw fail(key, `must be true or false, got ${JSON.stringify(obj[key])}`)
    return obj[key] as boolean
  }
  const str = (key: string): string | undefined => {
    if (!present(key)) return undefined
    if (typeof obj[key] !== "string") throw fail(key, `must be a string, got ${JSON.stringify(obj[key])}`)
    return obj[key] as string
  }
  return { fail, present, num, bool, str }
}

/** 12 random hex digits for temporary file names. */
export function randomSuffix(): string {
  return Array.from(crypto.getRandomValues(new Uint8Array(6)), (b) => b.toString(16).padStart(2, "0")).join("")
}

/** The message of a caught value. */
export function errText(e: unknown): string {
  return e instanceof Error ? e.message : String(e)
}

/** Writes text to `path` (a new file), synced to disk. */
export async function writeTextSynced(path: string, text: string): Promise<void> {
  try {
    const file = await Deno.open(path, { write: true, createNew: true })
    try {
      const bytes = new TextEncoder().encode(text)
      let done = 0
      while (done < bytes.length) done += await file.write(bytes.subarray(done))
      await file.syncData()
    } finally {
      file.close()
    }
  } catch (e) {
    throw new ConfigError({ file: path, key: "", reason: `write failed (${errText(e)})` })
  }
}

/** Best-effort fsync of a directory, so that renames inside it survive a crash. */
export async function syncDir(path: string): Promise<void> {
  try {
    const dir = await Deno.open(path, { read: true })
    try {
      await dir.syncData()
    } finally {
      dir.close()
    }
  } catch { /* not supported on every platform; the renames are still atomic */ }
}

/** Rejects adapter names that are not a single directory name (ConfigError at `where`). */
export function checkName(name: string, where: string): void {
  if (!name || name === "." || name === ".." || /[/\\]/.test(name)) {
    throw new ConfigError({
      file: where,
      key: "name",
      reason: `adapter name ${JSON.stringify(name)} is not a directory name`,
    })
  }
}

/**
 * Stages `adapter_config.json` and `adapter_model.safetensors` completely under temporary names in `dir`, then
 * renames them into place: config first (after keeping a copy of the previous one), weights last. If anything
 * fails, the staged files are removed and a config already renamed is put back, so the previous pair is intact.
 */
export async function writeAdapterPair(dir: string, tensors: TensorToWrite[], configText: string): Promise<void> {
  const suffix = randomSuffix()
  const config = { tmp: join(dir, `.${ADAPTER_CONFIG_FILE}.new-${suffix}`), final: join(dir, ADAPTER_CONFIG_FILE) }
  const weights = { tmp: join(dir, `.${ADAPTER_WEIGHTS_FILE}.new-${suffix}`), final: join(dir, ADAPTER_WEIGHTS_FILE) }
  const backup = join(dir, `.${ADAPTER_CONFIG_FILE}.old-${suffix}`)
  let hasBackup = false
  let configCommitted = false
  try {
    await writeTextSynced(config.tmp, configText)
    await writeSafetensors(weights.tmp, tensors, { format: "pt" })
    try {
      await Deno.copyFile(config.final, backup)
      hasBackup = true
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e
    }
    await Deno.rename(config.tmp, config.final)
    configCommitted = true
    await Deno.rename(weights.tmp, weights.final)
    await syncDir(dir)
  } catch (e) {
    if (configCommitted) {
      if (hasBackup) await Deno.rename(backup, config.final).catch(() => undefined)
      else await Deno.remove(config.final).catch(() => undefined)
    }
    for (const tmp of [config.tmp, weights.tmp]) await Deno.remove(tmp).catch(() => undefined)
    if (e instanceof ConfigError || e instanceof SafetensorsError) throw e
    throw new ConfigError({ file: dir, key: "", reason: `saving the adapter failed (${errText(e)})` })
  } finally {
    await Deno.remove(backup).catch(() => undefined)
  }
}
