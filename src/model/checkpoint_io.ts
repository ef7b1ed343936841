/**
 * Training checkpoints (spec §5), MoE-PEFT compatible; adapter tensor names and adapter_config.json keys stay in
 * `adapter_io.ts`.
 *
 * Layout under `--dir`:
 * ```
 * {dir}/{name}/checkpoint-{step}/            one complete resumable snapshot, made visible by one rename:
 *     adapter_config.json
 *     adapter_model.safetensors
 *     optimizer.safetensors                  F32 1-D: exp_avg + exp_avg_sq (AdamW) or momentum_buffer (SGD, μ > 0);
 *                                            __metadata__ {"kind": "adamw" | "sgd", "step": "<updates taken>"}
 *     trainer_state.json                     {"step", "epoch", "data_position", "rng_state": [4 × u32], "extra": {...}}
 * ```
 * Crash safety: a checkpoint is written into `.checkpoint-{step}.tmp-*` (every file synced) and renamed to
 * `checkpoint-{step}` only when complete; `latestCheckpoint` ignores anything else (and any checkpoint dir without
 * trainer_state.json).
 * @module
 */
import { basename, dirname, join } from "node:path"
import { ConfigError, SafetensorsError } from "../errors.ts"
import { readJsonFile } from "../io/read_json.ts"
import { openSafetensors, type TensorToWrite, writeSafetensors } from "../io/safetensors.ts"
import type { OptimizerState } from "../reference/optimizer.ts"
import { Rng } from "../util/rng.ts"
import {
  ADAPTER_CONFIG_FILE,
  ADAPTER_WEIGHTS_FILE,
  checkName,
  errText,
  fieldsOf,
  randomSuffix,
  syncDir,
  writeTextSynced,
} from "./_adapter_files.ts"
import type { AdapterWeights } from "./adapter.ts"
import { adapterTensors, configJson, loadAdapterFrom, type LoadedAdapter } from "./adapter_io.ts"
import type { LlamaConfig } from "./types.ts"

export const OPTIMIZER_FILE = "optimizer.safetensors"
export const TRAINER_STATE_FILE = "trainer_state.json"

/** Trainer counters stored with a checkpoint; any further keys are kept as JSON under "extra". */
export interface CheckpointCounters {
  /** optimizer steps taken */
  readonly step: number
  readonly epoch: number
  /** position in the (shuffled) training data where the next batch starts */
  readonly dataPosition: number
  /** `Rng.state()` of the trainer's generator */
  readonly rngState: readonly number[]
  readonly [extra: string]: unknown
}

/** Everything `saveCheckpoint` writes and `loadCheckpoint` returns. */
export interface CheckpointData {
  readonly weights: AdapterWeights
  readonly optimizer: OptimizerState
  readonly counters: CheckpointCounters
  /** `base_model_name_or_path` of adapter_config.json */
  readonly baseModel: string
}

export interface LoadedCheckpoint extends CheckpointData {
  readonly path: string
  /** the N of checkpoint-N */
  readonly step: number
  readonly weights: LoadedAdapter
}

const CHECKPOINT_RE = /^checkpoint-(0|[1-9][0-9]*)$/

/** Optimizer state → tensors + metadata of optimizer.safetensors (validated). */
function optimizerTensors(
  state: OptimizerState,
  file: string,
): { tensors: TensorToWrite[]; metadata: Record<string, string> } {
  const fail = (tensor: string, reason: string) => new SafetensorsError({ file, tensor, reason })
  if (state.kind !== "adamw" && state.kind !== "sgd") {
    throw fail("", `unknown optimizer kind ${JSON.stringify(state.kind)}`)
  }
  if (!Number.isSafeInteger(state.step) || state.step < 0) {
    throw fail("", `optimizer step ${state.step} must be an integer ≥ 0`)
  }
  const parts: [string, Float32Array | undefined][] = state.kind === "adamw"
    ? [["exp_avg", state.m], ["exp_avg_sq", state.v]]
    : state.momentum
    ? [["momentum_buffer", state.momentum]]
    : []
  const tensors: TensorToWrite[] = []
  for (const [name, data] of parts) {
    if (!(data instanceof Float32Array)) throw fail(name, `missing from the ${state.kind} state`)
    if (tensors.length > 0 && data.length !== tensors[0].shape[0]) {
      throw fail(name, `${data.length} values but ${tensors[0].name} has ${tensors[0].shape[0]}`)
    }
    tensors.push({ name, dtype: "F32", shape: [data.length], data })
  }
  return { tensors, metadata: { kind: state.kind, step: String(state.step) } }
}

/** trainer_state.json text; rejects counters that would not restore (bad RNG state, negative positions). */
function trainerStateText(c: CheckpointCounters, file: string): string {
  const { step, epoch, dataPosition, rngState, ...extra } = c
  const fail = (key: string, reason: string) => new ConfigError({ file, key, reason })
  if (!Number.isSafeInteger(step) || step < 0) throw fail("step", `must be an integer ≥ 0, got ${step}`)
  if (!(typeof epoch === "number" && epoch >= 0 && Number.isFinite(epoch))) {
    throw fail("epoch", `must be ≥ 0, got ${epoch}`)
  }
  if (!Number.isSafeInteger(dataPosition) || dataPosition < 0) {
    throw fail("data_position", `must be an integer ≥ 0, got ${dataPosition}`)
  }
  try {
    Rng.fromState(rngState)
  } catch (e) {
    throw fail("rng_state", errText(e))
  }
  return JSON.stringify({ step, epoch, data_position: dataPosition, rng_state: [...rngState], extra }, null, 2) + "\n"
}

/**
 * Writes `{dir}/{name}/checkpoint-{step}/` (adapter files, optimizer.safetensors, trainer_state.json) into a
 * temporary directory and renames it into place when complete, so a crash or error never leaves a
 * `checkpoint-{step}` that looks complete. An existing checkpoint of the same step is replaced. Returns its path.
 */
export async function saveCheckpoint(dir: string, name: string, step: number, data: CheckpointData): Promise<string> {
  const adapterDir = join(dir, name)
  checkName(name, adapterDir)
  if (!Number.isSafeInteger(step) || step < 0) {
    throw new ConfigError({ file: adapterDir, key: "step", reason: `checkpoint step ${step} must be an integer ≥ 0` })
  }
  const final = join(adapterDir, `checkpoint-${step}`)
  const tensors = adapterTensors(data.weights, join(final, ADAPTER_WEIGHTS_FILE))
  const stateText = trainerStateText(data.counters, join(final, TRAINER_STATE_FILE))
  await Deno.mkdir(adapterDir, { recursive: true })
  const tmp = join(adapterDir, `.checkpoint-${step}.tmp-${randomSuffix()}`)
  await Deno.mkdir(tmp)
  try {
    const configText = JSON.stringify(configJson(data.weights.spec, data.baseModel), null, 4) + "\n"
    await writeTextSynced(join(tmp, ADAPTER_CONFIG_FILE), configText)
    await writeSafetensors(join(tmp, ADAPTER_WEIGHTS_FILE), tensors, { format: "pt" })
    const opt = optimizerTensors(data.optimizer, join(final, OPTIMIZER_FILE))
    await writeSafetensors(join(tmp, OPTIMIZER_FILE), opt.tensors, opt.metadata)
    await writeTextSynced(join(tmp, TRAINER_STATE_FILE), stateText)
    await syncDir(tmp)
    let old: string | null = null
    try {
      await Deno.rename(final, old = join(adapterDir, `.checkpoint-${step}.old-${randomSuffix()}`))
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e
      old = null
    }
    await Deno.rename(tmp, final)
    await syncDir(adapterDir)
    if (old) await Deno.remove(old, { recursive: true })
    return final
  } catch (e) {
    await Deno.remove(tmp, { recursive: true }).catch(() => undefined)
    if (e instanceof ConfigError || e instanceof SafetensorsError) throw e
    throw new ConfigError({ file: final, key: "", reason: `saving the checkpoint failed (${errText(e)})` })
  }
}

/** The newest complete checkpoint of adapter `name` (highest N with trainer_state.json), or null. */
export async function latestCheckpoint(dir: string, name: string): Promise<{ path: string; step: number } | null> {
  const adapterDir = join(dir, name)
  let best: { path: string; step: number } | null = null
  try {
    for await (const entry of Deno.readDir(adapterDir)) {
      const m = CHECKPOINT_RE.exec(entry.name)
      if (!entry.isDirectory || !m) continue
      const step = Number(m[1])
      if (best && step <= best.step) continue
      const path = join(adapterDir, entry.name)
      const complete = await Deno.stat(join(path, TRAINER_STATE_FILE)).then((s) => s.isFile, () => false)
      if (complete) best = { path, step }
    }
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null
    throw new ConfigError({ file: adapterDir, key: "", reason: `cannot list checkpoints (${errText(e)})` })
  }
  return best
}

/** Reads optimizer.safetensors into an OptimizerState (F32 only: the state must be exact). */
async function loadOptimizerState(file: string): Promise<OptimizerState> {
  using st = await openSafetensors(file)
  const fail = (tensor: string, reason: string) => new SafetensorsError({ file, tensor, reason })
  const kind = st.metadata.kind
  if (kind !== "adamw" && kind !== "sgd") {
    throw fail("", `__metadata__ kind ${JSON.stringify(kind)} is not adamw or sgd`)
  }
  const step = Number(st.metadata.step)
  if (!/^(0|[1-9][0-9]*)$/.test(st.metadata.step ?? "") || !Number.isSafeInteger(step)) {
    throw fail("", `__metadata__ step ${JSON.stringify(st.metadata.step)} is not an integer ≥ 0`)
  }
  const allowed = kind === "adamw" ? ["exp_avg", "exp_avg_sq"] : ["momentum_buffer"]
  let length = -1
  for (const [name, info] of st.tensors) {
    if (!allowed.includes(name)) throw fail(name, `unexpected tensor in a ${kind} state`)
    if (info.dtype !== "F32" || info.shape.length !== 1) {
      throw fail(name, `must be 1-D F32, got ${info.dtype} [${info.shape}]`)
    }
    if (length >= 0 && info.shape[0] !== length) {
      throw fail(name, `${info.shape[0]} values, the other tensor has ${length}`)
    }
    length = info.shape[0]
  }
  if (kind === "adamw") {
    for (const name of allowed) if (!st.tensors.has(name)) throw fail(name, "missing")
    return { kind, step, m: await st.readF32("exp_avg"), v: await st.readF32("exp_avg_sq") }
  }
  return st.tensors.has("momentum_buffer")
    ? { kind, step, momentum: await st.readF32("momentum_buffer") }
    : { kind, step }
}

/** Reads trainer_state.json back into counters (extra keys restored at the top level). */
async function loadCounters(file: string): Promise<CheckpointCounters> {
  const json = await readJsonFile(file, "trainer state")
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    throw new ConfigError({ file, key: "", reason: "trainer state is not a JSON object" })
  }
  const f = fieldsOf(file, json as Record<string, unknown>)
  const obj = json as Record<string, unknown>
  const step = f.num("step", { min: 0, integer: true })
  const epoch = f.num("epoch", { min: 0 })
  const dataPosition = f.num("data_position", { min: 0, integer: true })
  const rngState = obj.rng_state
  try {
    Rng.fromState(rngState as number[])
  } catch (e) {
    throw f.fail("rng_state", errText(e))
  }
  const extra = obj.extra ?? {}
  if (typeof extra !== "object" || extra === null || Array.isArray(extra)) {
    throw f.fail("extra", "must be a JSON object")
  }
  return { ...extra, step, epoch, dataPosition, rngState: [...(rngState as number[])] }
}

/**
 * Loads a checkpoint directory written by `saveCheckpoint`: adapter weights (validated as in `loadAdapter`; the
 * adapter name is the parent directory's name), optimizer state and counters.
 */
export async function loadCheckpoint(path: string, config: LlamaConfig): Promise<LoadedCheckpoint> {
  const m = CHECKPOINT_RE.exec(basename(path))
  if (!m) throw new ConfigError({ file: path, key: "", reason: "not a checkpoint-{step} directory" })
  const weights = await loadAdapterFrom(path, basename(dirname(path)), config)
  const optimizer = await loadOptimizerState(join(path, OPTIMIZER_FILE))
  const counters = await loadCounters(join(path, TRAINER_STATE_FILE))
  return { path, step: Number(m[1]), weights, optimizer, counters, baseModel: weights.baseModel }
}
