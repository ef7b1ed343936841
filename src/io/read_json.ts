/**
 * Reading a JSON file whose problems are user errors (model config, adapter config, checkpoint index).
 * @module
 */
import { ConfigError } from "../errors.ts"

/**
 * Reads and parses `path`. A missing or unreadable file, bad UTF-8 or invalid JSON becomes a `ConfigError`
 * naming the file (key ""); `what` names the file's role in the message, e.g. "model config".
 */
export async function readJsonFile(path: string, what = "JSON file"): Promise<unknown> {
  let bytes: Uint8Array
  try {
    bytes = await Deno.readFile(path)
  } catch (e) {
    const reason = e instanceof Deno.errors.NotFound ? "not found" : e instanceof Error ? e.message : String(e)
    throw new ConfigError({ file: path, key: "", reason: `cannot read ${what}: ${reason}` })
  }
  let text: string
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes)
  } catch {
    throw new ConfigError({ file: path, key: "", reason: `${what} is not valid UTF-8` })
  }
  try {
    return JSON.parse(text)
  } catch (e) {
    throw new ConfigError({ file: path, key: "", reason: `${what} is not valid JSON (${(e as Error).message})` })
  }
}
