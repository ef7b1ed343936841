/**
 * Typed errors of the whole runtime. User errors (bad files, bad config) carry the file and the
 * key or tensor so that the CLI can print one line: `error: <file>: <where>: <message>`.
 * @module
 */
import { Schema } from "effect"

/** A malformed or unreadable safetensors file. `tensor` is empty when the header itself is bad. */
export class SafetensorsError extends Schema.TaggedError<SafetensorsError>()("SafetensorsError", {
  file: Schema.String,
  tensor: Schema.String,
  reason: Schema.String,
}) {
  override get message(): string {
    return `${this.file}: ${this.tensor ? `tensor "${this.tensor}": ` : ""}${this.reason}`
  }
}

/** A config file (model config.json, training config, adapter_config.json) with a missing or bad key. */
export class ConfigError extends Schema.TaggedError<ConfigError>()("ConfigError", {
  file: Schema.String,
  key: Schema.String,
  reason: Schema.String,
}) {
  override get message(): string {
    return `${this.file}: ${this.key ? `key "${this.key}": ` : ""}${this.reason}`
  }
}
