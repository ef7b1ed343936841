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

/** No WebGPU adapter (or not the kind asked for with `--device`). */
export class NoAdapterError extends Schema.TaggedError<NoAdapterError>()("NoAdapterError", {
  reason: Schema.String,
}) {
  override get message(): string {
    return `no WebGPU adapter: ${this.reason}`
  }
}

/** A buffer or texture the device could not allocate (or that is over a device limit). */
export class DeviceOutOfMemory extends Schema.TaggedError<DeviceOutOfMemory>()("DeviceOutOfMemory", {
  label: Schema.String,
  bytes: Schema.Number,
  reason: Schema.String,
}) {
  override get message(): string {
    return `device out of memory allocating ${this.label} (${this.bytes} bytes): ${this.reason}`
  }
}

/** WGSL that does not compile; `line` quotes the offending source line. */
export class ShaderCompileError extends Schema.TaggedError<ShaderCompileError>()("ShaderCompileError", {
  shader: Schema.String,
  lineNumber: Schema.Number,
  line: Schema.String,
  reason: Schema.String,
}) {
  override get message(): string {
    return `shader ${this.shader}:${this.lineNumber}: ${this.reason}\n    ${this.line.trim()}`
  }
}

/** The device went away (driver reset, destroyed); the device actor restarts under supervision. */
export class DeviceLost extends Schema.TaggedError<DeviceLost>()("DeviceLost", {
  reason: Schema.String,
}) {
  override get message(): string {
    return `GPU device lost: ${this.reason}`
  }
}

/** Any other WebGPU validation error, with the label of what failed. */
export class GpuValidationError extends Schema.TaggedError<GpuValidationError>()("GpuValidationError", {
  label: Schema.String,
  reason: Schema.String,
}) {
  override get message(): string {
    return `WebGPU validation failed (${this.label}): ${this.reason}`
  }
}
