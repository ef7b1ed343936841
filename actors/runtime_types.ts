/**
 * Public types and typed errors of the embeddable runtime (actors/runtime.ts): options, adapter sources and info,
 * requests and results of train / score / generate, metrics.
 * @module
 */
import { Schema } from "effect"
import type { Example } from "../src/data/tokenize.ts"
import type { ConfigError, SafetensorsError } from "../src/errors.ts"
import type { ActorStopped } from "./actor.ts"
import type { DeviceChoice, DeviceError } from "./device.ts"
import type { SchedulerMetrics } from "./scheduler.ts"
import type { LoadError } from "./weight_cache.ts"

/** The name that means "no adapter" in `score` and `generate`. */
export const BASE_MODEL = "base"

/** No adapter registered under this name. */
export class UnknownAdapter extends Schema.TaggedError<UnknownAdapter>()("UnknownAdapter", {
  name: Schema.String,
  known: Schema.String,
}) {
  override get message(): string {
    return `unknown adapter "${this.name}" (registered: ${this.known || "none"}; "${BASE_MODEL}" is the base model)`
  }
}

/** A registration that cannot be done: name taken, reserved or not a directory name. */
export class AdapterConflict extends Schema.TaggedError<AdapterConflict>()("AdapterConflict", {
  name: Schema.String,
  reason: Schema.String,
}) {
  override get message(): string {
    return `adapter "${this.name}": ${this.reason}`
  }
}

/** A score / generate / train request with bad inputs. */
export class RequestError extends Schema.TaggedError<RequestError>()("RequestError", {
  reason: Schema.String,
}) {
  override get message(): string {
    return `bad request: ${this.reason}`
  }
}

export interface RuntimeOptions {
  /** HF model directory of the base model; default: the embedded default model (created on first use) */
  readonly base?: string
  /** hold the base projections as int8 (spec §4); default false */
  readonly load8bit?: boolean
  /** default "auto" (a WebGPU adapter, software or not); the runtime cannot run on "cpu" */
  readonly device?: DeviceChoice
  /** seed of fresh adapters and of training (`deno task train --seed`); default 42 */
  readonly seed?: number
  /** where `train` saves adapters (`{trainDir}/{name}`); default a temporary directory removed by close */
  readonly trainDir?: string
  readonly batch?: {
    /** how long the first request of a batch waits for others, ms (default 5) */
    readonly windowMs?: number
    /** Σ tokens of a batch (score: text lengths; generate: prompt + max new tokens), default 8192 */
    readonly tokenBudget?: number
    /** requests per batch at most (default 128) */
    readonly maxRequests?: number
  }
  readonly train?: {
    /** jobs on the device at once (`train_lora_candidate_num`), default 4 */
    readonly candidates?: number
    /** jobs per fused step (`train_lora_simultaneously_num`), default 4 */
    readonly simultaneous?: number
    /** default "optim" */
    readonly strategy?: "none" | "optim"
    /** checkpoint every this many optimizer steps, default 0 (never) */
    readonly saveStep?: number
  }
}

/** Where a registered adapter comes from. */
export type AdapterSource =
  /** a saved adapter: `{dir}/{name}/adapter_config.json` + `adapter_model.safetensors` */
  | { readonly dir: string }
  /**
   * a fresh adapter (LoRA B = 0, as training starts it) from one element of an m-LoRA config's `lora` list;
   * training-only keys (`data`, `lr`, `batch_size`, `num_epochs`) may be left out
   */
  | { readonly config: unknown; readonly seed?: number }

export interface AdapterInfo {
  readonly name: string
  readonly kind: "lora" | "mixlora"
  readonly r: number
  readonly targets: readonly string[]
  /** MixLoRA experts (0 for LoRA) */
  readonly experts: number
}

/** Training request: one adapter config and its data. */
export interface TrainRequest {
  /** one element of an m-LoRA config's `lora` list (name, lr, batch_size, num_epochs, r, lora_alpha, ...) */
  readonly config: unknown
  /** records as in a data file (instruction / text / choice / input_ids); default: the config's `data` file */
  readonly data?: readonly unknown[]
  /** or already tokenized examples */
  readonly examples?: readonly Example[]
  /** `cutoff_len`, default 256 */
  readonly cutoffLen?: number
}

/** A text to score: a string (tokenized with BOS and EOS) or token ids used as they are (at least 2). */
export type ScoreInput = string | readonly number[]

export interface ScoreResult {
  /** mean next-token cross-entropy over `tokens` positions */
  readonly loss: number
  /** predicted positions: token count − 1 */
  readonly tokens: number
}

export interface GenerateOptions {
  /** new tokens at most (default 16) */
  readonly maxTokens?: number
  /** 0 (default): greedy */
  readonly temperature?: number
  /** default 1 (off) */
  readonly topP?: number
  /** default 0 (off) */
  readonly topK?: number
  /** seed of this request's sampling RNG (default 0) */
  readonly seed?: number
}

export interface GenerateOutput {
  /** the new tokens decoded, special tokens skipped */
  readonly text: string
  readonly outputIds: number[]
  /** "stop": ended with EOS; "length": reached maxTokens */
  readonly finishReason: "stop" | "length"
  readonly promptTokens: number
}

/** Work done by one kind of request since the runtime started. */
export interface WorkMetrics {
  readonly requests: number
  /** score: tokens forwarded; generate: new tokens */
  readonly tokens: number
  /** device seconds spent on them (wall clock inside the device job) */
  readonly seconds: number
  readonly tokensPerSecond: number
}

export interface RuntimeMetrics {
  /** score / generate requests waiting for a batch */
  readonly queueDepth: number
  /** device batches served */
  readonly batches: number
  /** mean requests per device batch */
  readonly batchFill: number
  readonly score: WorkMetrics
  readonly generate: WorkMetrics
  readonly train: SchedulerMetrics
  readonly adapters: number
}

export type RuntimeError = DeviceError | ActorStopped | LoadError
export type RegisterError = AdapterConflict | ConfigError | SafetensorsError | RuntimeError
