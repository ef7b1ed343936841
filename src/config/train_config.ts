/**
 * The m-LoRA JSON training config (spec §6): parsed into typed objects with a comment and default per field.
 *
 * Spellings of m-LoRA (seed era), MoE-PEFT and HF PEFT are accepted: `alpha` / `lora_alpha`, `dropout` /
 * `lora_dropout`, `evaluate_batch_size` / `test_batch_size`, routing strategies `mixtral` (= `mixlora`),
 * `mixlora-switch`, `mixlora-dynamic`, target modules `w1_proj` / `w3_proj` / `w2_proj` (and `w1_gate_proj` ...)
 * for `gate_proj` / `up_proj` / `down_proj`. Keys starting with `_` are comments. Any other key the runtime
 * does not use (unknown, or not used by the adapter's routing strategy) is listed in ONE warning line;
 * invalid values throw a `ConfigError` whose key names the adapter and the key: `lora[1](copy).micro_batch_size`.
 *
 * File paths (`data`, `test_data`, `prompt`) are resolved against the config file's directory first and the
 * working directory second (seed configs name paths relative to the repository root), and must exist.
 * @module
 */
import { dirname, isAbsolute, resolve } from "node:path"
import { ConfigError } from "../errors.ts"
import { readJsonFile } from "../io/read_json.ts"
import { type Projection, PROJECTIONS } from "../model/types.ts"
import { FieldReader, isRecord } from "./_fields.ts"

/** Router of a MixLoRA adapter (spec §3): top-k, switch (top-1 with capacity) or dynamic (top-p). */
export type RoutingStrategy = "mixlora" | "switch" | "dynamic"

/** MixLoRA-only settings; defaults as MoE-PEFT per strategy. */
export interface MixLoraConfig {
  /** `routing_strategy`; "mixtral" (seed) = "mixlora"; "mixlora-switch" = "switch"; "mixlora-dynamic" = "dynamic". Default "mixlora" */
  readonly routingStrategy: RoutingStrategy
  /** E, `num_experts` (required, ≥ 1) */
  readonly numExperts: number
  /** K, `top_k`: mixlora default 2, 1 ≤ K ≤ E; switch always 1; dynamic null (top-p instead) */
  readonly topK: number | null
  /** `top_p` of dynamic routing, in (0, 1], default 0.8; null for other strategies */
  readonly topP: number | null
  /** `expert_capacity` of switch routing: tokens per expert per micro-batch, default 32; null otherwise */
  readonly expertCapacity: number | null
  /** `act_fn` of the experts; null (default) = the base model's `hidden_act` */
  readonly actFn: "silu" | "gelu" | "gelu_new" | "gelu_pytorch_tanh" | null
  /** `router_aux_loss_coef`, ≥ 0, default 0.001 */
  readonly routerAuxLossCoef: number
  /** `router_init_range`: std of the router's normal init, ≥ 0; default 0.02 (switch: 1.0, as MoE-PEFT) */
  readonly routerInitRange: number
  /** `jitter_noise` j in [0, 1): router input × U(1−j, 1+j) while training; default 0 (switch: 0.01) */
  readonly jitterNoise: number
}

/** One adapter of the `lora` list. */
export interface AdapterConfig {
  /** `name`: unique, also its directory under `--dir` (no "/", "\\", not "." or "..") */
  readonly name: string
  /** "MIXLORA" when `routing_strategy` or `num_experts` is given (or `peft_type` says so), else "LORA" */
  readonly peftType: "LORA" | "MIXLORA"
  /** `optim`: "adamw" (default) or "sgd" */
  readonly optim: "adamw" | "sgd"
  /** `lr` (required, > 0): peak learning rate */
  readonly lr: number
  /** `momentum` of SGD, ≥ 0, default 0 */
  readonly momentum: number
  /** `weight_decay`, ≥ 0, torch semantics (AdamW decoupled, SGD L2): default 0.01 for AdamW, 0 for SGD */
  readonly weightDecay: number
  /** `batch_size` (required): examples per optimizer step */
  readonly batchSize: number
  /** `micro_batch_size`: examples per forward/backward, default batch_size; must divide batch_size */
  readonly microBatchSize: number
  /** batch_size / micro_batch_size: micro-batches accumulated per optimizer step (loss divided by it) */
  readonly accumulationSteps: number
  /** `test_batch_size` (or `evaluate_batch_size`): examples per evaluation batch, default micro_batch_size */
  readonly testBatchSize: number
  /** `num_epochs` (required, ≥ 1) */
  readonly numEpochs: number
  /** R, `r` (required, ≥ 1) */
  readonly r: number
  /** `lora_alpha` (or `alpha`, required, > 0): scaling alpha / r (alpha / √r with use_rslora) */
  readonly loraAlpha: number
  /** `lora_dropout` (or `dropout`), in [0, 1), default 0: on the LoRA input while training only */
  readonly loraDropout: number
  /** `use_rslora`, default false */
  readonly useRslora: boolean
  /** `target_modules` (required): dict of bools or list, normalised to HF names in PROJECTIONS order */
  readonly targetModules: readonly Projection[]
  /** `data` (required): resolved path of the training data (.json array or .jsonl) */
  readonly data: string
  /** `test_data`: resolved path of the held-out data, or null */
  readonly testData: string | null
  /** `prompt`: resolved path of a prompt template JSON; null (default, or "alpaca") = built-in Alpaca */
  readonly prompt: string | null
  /** `group_by_length`, default false: sort by length within shuffled mega-batches (HF LengthGroupedSampler) */
  readonly groupByLength: boolean
  /** `expand_side`: pad side of this adapter's micro-batches, "right" (default, m-LoRA) or "left" */
  readonly expandSide: "left" | "right"
  /** `train_on_inputs`, default true (alpaca-lora); false: prompt tokens are not predicted */
  readonly trainOnInputs: boolean
  /** `scheduler_type`: "constant" (default; "constant_with_warmup" is accepted for it), "linear", "cosine" */
  readonly schedulerType: "constant" | "linear" | "cosine"
  /** `warmup_steps` (≥ 0 integer), or null when not given */
  readonly warmupSteps: number | null
  /** `warmup_ratio` in [0, 1) of the total optimizer steps, default 0; at most one of the two may be given */
  readonly warmupRatio: number
  /** MixLoRA settings; null for plain LoRA */
  readonly mixlora: MixLoraConfig | null
}

/** The whole training config. */
export interface TrainConfig {
  /** the config file (for messages) */
  readonly file: string
  /** `cutoff_len`: tokens per sequence after truncation, default 256 */
  readonly cutoffLen: number
  /** `save_step`: checkpoint every this many optimizer steps of an adapter, default 2000 */
  readonly saveStep: number
  /** `train_lora_candidate_num`: adapters loaded and eligible at once, default all of them */
  readonly candidateNum: number
  /** `train_lora_simultaneously_num`: adapters packed into one step, ≤ candidateNum, default candidateNum */
  readonly simultaneousNum: number
  /** `train_strategy`: "optim" (default: pick adapters whose next lengths are closest) or "none" (in order) */
  readonly strategy: "optim" | "none"
  /** `lora`: at least one adapter, names unique */
  readonly adapters: readonly AdapterConfig[]
}

/** A parsed config plus the warnings to print (zero or one line). */
export interface LoadedTrainConfig {
  readonly config: TrainConfig
  readonly warnings: string[]
}

/** Target-module spellings → HF projection names (spec §2: w1 = gate, w3 = up, w2 = down). */
const MODULE_NAMES: Readonly<Record<string, Projection>> = {
  ...Object.fromEntries(PROJECTIONS.map((p) => [p, p])),
  w1_proj: "gate_proj",
  w3_proj: "up_proj",
  w2_proj: "down_proj",
  w1_gate_proj: "gate_proj",
  w3_up_proj: "up_proj",
  w2_down_proj: "down_proj",
}
const FFN_PROJECTIONS: readonly Projection[] = ["gate_proj", "up_proj", "down_proj"]
const ROUTING_ALIASES: Readonly<Record<string, RoutingStrategy>> = {
  mixtral: "mixlora",
  "mixlora-switch": "switch",
  "mixlora-dynamic": "dynamic",
}
const ACT_FNS = ["silu", "gelu", "gelu_new", "gelu_pytorch_tanh"] as const

/** LoRA scaling of an adapter (spec §3): alpha / r, or alpha / √r with `use_rslora`. */
export function loraScaling(adapter: Pick<AdapterConfig, "r" | "loraAlpha" | "useRslora">): number {
  return adapter.loraAlpha / (adapter.useRslora ? Math.sqrt(adapter.r) : adapter.r)
}

/** Warmup optimizer steps: `warmup_steps` if given, else ⌈warmup_ratio · totalSteps⌉ (as HF `get_warmup_steps`). */
export function warmupStepsFor(
  adapter: Pick<AdapterConfig, "warmupSteps" | "warmupRatio">,
  totalSteps: number,
): number {
  return adapter.warmupSteps ?? Math.ceil(adapter.warmupRatio * totalSteps)
}

async function isFile(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isFile
  } catch {
    return false
  }
}

/** `value` resolved against `baseDir`, then the working directory; the first existing file, else an error. */
async function resolveFile(f: FieldReader, key: string, value: string, baseDir: string): Promise<string> {
  const tried = isAbsolute(value) ? [value] : [...new Set([resolve(baseDir, value), resolve(value)])]
  for (const path of tried) if (await isFile(path)) return path
  throw f.fail(key, `file not found: ${tried.join(" or ")}`)
}

/** target_modules as a dict of bools or a list of names → HF projections in PROJECTIONS order. */
function parseTargetModules(f: FieldReader): Projection[] {
  const { key, value } = f.required("target_modules")
  const entries: [string, unknown][] = Array.isArray(value)
    ? value.map((v) => [v, true])
    : isRecord(value)
    ? Object.entries(value)
    : (() => {
      throw f.fail(key, `must be a list of module names or an object of booleans, got ${JSON.stringify(value)}`)
    })()
  const chosen = new Set<Projection>()
  for (const [name, on] of entries) {
    if (typeof name !== "string" || !(name in MODULE_NAMES)) {
      throw f.fail(key, `unknown module ${JSON.stringify(name)} (known: ${Object.keys(MODULE_NAMES).join(", ")})`)
    }
    if (typeof on !== "boolean") throw f.fail(`${key}.${name}`, `must be true or false, got ${JSON.stringify(on)}`)
    if (on) chosen.add(MODULE_NAMES[name])
  }
  if (chosen.size === 0) throw f.fail(key, "no module enabled")
  return PROJECTIONS.filter((p) => chosen.has(p))
}

/** The MixLoRA block of an adapter; strategy-specific keys of other strategies stay unread (→ warning). */
function parseMixLora(f: FieldReader): MixLoraConfig {
  const routingStrategy = f.choice("routing_strategy", ["mixlora", "switch", "dynamic"] as const, {
    fallback: "mixlora",
    aliasValues: ROUTING_ALIASES,
  })
  const numExperts = f.integer("num_experts", { min: 1 })
  const isSwitch = routingStrategy === "switch"
  let topK: number | null = null
  if (routingStrategy === "mixlora") topK = f.integer("top_k", { min: 1, max: numExperts, fallback: 2 })
  if (isSwitch) topK = f.integer("top_k", { min: 1, max: 1, fallback: 1 })
  const topP = routingStrategy === "dynamic"
    ? f.number("top_p", { min: 0, exclusiveMin: true, max: 1, fallback: 0.8 })
    : null
  const expertCapacity = isSwitch ? f.integer("expert_capacity", { min: 1, fallback: 32 }) : null
  const actGot = f.raw("act_fn")
  if (actGot !== undefined && !ACT_FNS.includes(actGot.value as never)) {
    throw f.fail(actGot.key, `must be one of ${ACT_FNS.join(", ")}, got ${JSON.stringify(actGot.value)}`)
  }
  return {
    routingStrategy,
    numExperts,
    topK,
    topP,
    expertCapacity,
    actFn: (actGot?.value ?? null) as MixLoraConfig["actFn"],
    routerAuxLossCoef: f.number("router_aux_loss_coef", { min: 0, fallback: 0.001 }),
    routerInitRange: f.number("router_init_range", { min: 0, fallback: isSwitch ? 1.0 : 0.02 }),
    jitterNoise: f.number("jitter_noise", { min: 0, max: 1, exclusiveMax: true, fallback: isSwitch ? 0.01 : 0 }),
  }
}

/** One element of `lora`. `seen` holds the names of the adapters before it. */
async function parseAdapter(
  json: unknown,
  index: number,
  ctx: { file: string; baseDir: string; seen: Set<string>; unused: string[] },
): Promise<AdapterConfig> {
  if (!isRecord(json)) {
    throw new ConfigError({ file: ctx.file, key: `lora[${index}]`, reason: "must be an object" })
  }
  const name = new FieldReader(json, ctx.file, `lora[${index}].`).string("name")
  const f = new FieldReader(json, ctx.file, `lora[${index}](${name}).`)
  f.raw("name")
  if (/[/\\]/.test(name) || name === "." || name === "..") {
    throw f.fail("name", `${JSON.stringify(name)} cannot be a directory name`)
  }
  if (ctx.seen.has(name)) throw f.fail("name", `duplicate adapter name ${JSON.stringify(name)}`)
  ctx.seen.add(name)

  const peftGot = f.raw("peft_type")
  if (peftGot !== undefined && peftGot.value !== "LORA" && peftGot.value !== "MIXLORA") {
    throw f.fail(peftGot.key, `must be "LORA" or "MIXLORA", got ${JSON.stringify(peftGot.value)}`)
  }
  const moeKeys = f.has("routing_strategy") || f.has("num_experts")
  if (peftGot?.value === "LORA" && moeKeys) {
    throw f.fail(peftGot.key, `"LORA" with MixLoRA keys (routing_strategy / num_experts); use "MIXLORA"`)
  }
  const peftType = peftGot?.value === "MIXLORA" || moeKeys ? "MIXLORA" : "LORA"

  const optim = f.choice("optim", ["adamw", "sgd"] as const, { fallback: "adamw" })
  const lr = f.number("lr", { min: 0, exclusiveMin: true })
  const momentum = f.number("momentum", { min: 0, fallback: 0 })
  const weightDecay = f.number("weight_decay", { min: 0, fallback: optim === "adamw" ? 0.01 : 0 })
  const batchSize = f.integer("batch_size", { min: 1 })
  const microBatchSize = f.integer("micro_batch_size", { min: 1, max: batchSize, fallback: batchSize })
  if (batchSize % microBatchSize !== 0) {
    throw f.fail("micro_batch_size", `${microBatchSize} does not divide batch_size ${batchSize}`)
  }
  const testBatchSize = f.integer("test_batch_size", {
    min: 1,
    fallback: microBatchSize,
    aliases: ["evaluate_batch_size"],
  })
  const numEpochs = f.integer("num_epochs", { min: 1 })
  const r = f.integer("r", { min: 1 })
  const loraAlpha = f.number("lora_alpha", { min: 0, exclusiveMin: true, aliases: ["alpha"] })
  const loraDropout = f.number("lora_dropout", {
    min: 0,
    max: 1,
    exclusiveMax: true,
    fallback: 0,
    aliases: ["dropout"],
  })
  const useRslora = f.boolean("use_rslora", false)
  const targetModules = parseTargetModules(f)

  const data = await resolveFile(f, "data", f.string("data"), ctx.baseDir)
  const testDataName = f.optionalString("test_data")
  const testData = testDataName === null ? null : await resolveFile(f, "test_data", testDataName, ctx.baseDir)
  const promptName = f.optionalString("prompt")
  // "alpaca" is MoE-PEFT's name of the built-in template; a file of that name still wins.
  const prompt = promptName === null || (promptName === "alpaca" && !(await isFile(resolve(ctx.baseDir, promptName))))
    ? null
    : await resolveFile(f, "prompt", promptName, ctx.baseDir)

  const groupByLength = f.boolean("group_by_length", false)
  const expandSide = f.choice("expand_side", ["right", "left"] as const, { fallback: "right" })
  const trainOnInputs = f.boolean("train_on_inputs", true)
  const schedulerType = f.choice("scheduler_type", ["constant", "linear", "cosine"] as const, {
    fallback: "constant",
    aliasValues: { constant_with_warmup: "constant" },
  })
  if (f.has("warmup_steps") && f.has("warmup_ratio")) {
    throw f.fail("warmup_ratio", "give either warmup_steps or warmup_ratio, not both")
  }
  const warmupSteps = f.optionalNumber("warmup_steps", { min: 0, integer: true })
  const warmupRatio = f.number("warmup_ratio", { min: 0, max: 1, exclusiveMax: true, fallback: 0 })

  let mixlora: MixLoraConfig | null = null
  if (peftType === "MIXLORA") {
    mixlora = parseMixLora(f)
    if (!targetModules.some((p) => FFN_PROJECTIONS.includes(p))) {
      throw f.fail("target_modules", "MixLoRA experts need at least one of gate_proj, up_proj, down_proj")
    }
  }
  ctx.unused.push(...f.unused())
  return {
    name,
    peftType,
    optim,
    lr,
    momentum,
    weightDecay,
    batchSize,
    microBatchSize,
    accumulationSteps: batchSize / microBatchSize,
    testBatchSize,
    numEpochs,
    r,
    loraAlpha,
    loraDropout,
    useRslora,
    targetModules,
    data,
    testData,
    prompt,
    groupByLength,
    expandSide,
    trainOnInputs,
    schedulerType,
    warmupSteps,
    warmupRatio,
    mixlora,
  }
}

/**
 * Validates a parsed training config. `file` names it in errors and warnings; relative paths resolve
 * against `dirname(file)`, then the working directory.
 *
 * @example
 * ```ts
 * const { config, warnings } = await parseTrainConfig(JSON.parse(text), "config/demo.json")
 * for (const w of warnings) console.error(w)
 * config.adapters[0].accumulationSteps // batch_size / micro_batch_size
 * ```
 */
export async function parseTrainConfig(json: unknown, file: string): Promise<LoadedTrainConfig> {
  if (!isRecord(json)) throw new ConfigError({ file, key: "", reason: "training config is not a JSON object" })
  const f = new FieldReader(json, file, "")
  const cutoffLen = f.integer("cutoff_len", { min: 1, fallback: 256 })
  const saveStep = f.integer("save_step", { min: 1, fallback: 2000 })
  const strategy = f.choice("train_strategy", ["optim", "none"] as const, { fallback: "optim" })
  const { key: loraKey, value: list } = f.required("lora")
  if (!Array.isArray(list) || list.length === 0) throw f.fail(loraKey, "must be a non-empty list of adapters")
  const candidateNum = f.integer("train_lora_candidate_num", { min: 1, fallback: list.length })
  const simultaneousNum = f.integer("train_lora_simultaneously_num", { min: 1, fallback: candidateNum })
  if (simultaneousNum > candidateNum) {
    throw f.fail("train_lora_simultaneously_num", `${simultaneousNum} exceeds train_lora_candidate_num ${candidateNum}`)
  }
  const ctx = { file, baseDir: dirname(resolve(file)), seen: new Set<string>(), unused: f.unused() }
  const adapters: AdapterConfig[] = []
  for (let i = 0; i < list.length; i++) adapters.push(await parseAdapter(list[i], i, ctx))
  const warnings = ctx.unused.length === 0 ? [] : [`${file}: ignoring unknown or unused keys: ${ctx.unused.join(", ")}`]
  return { config: { file, cutoffLen, saveStep, candidateNum, simultaneousNum, strategy, adapters }, warnings }
}

/** Reads and validates a training config file (`ConfigError` naming the file when unreadable or not JSON). */
export async function loadTrainConfig(file: string): Promise<LoadedTrainConfig> {
  return await parseTrainConfig(await readJsonFile(file, "training config"), file)
}
