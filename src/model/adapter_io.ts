/**
 * Adapter files (spec §5), MoE-PEFT compatible. The ONLY module that knows adapter tensor names and
 * adapter_config.json keys (`checkpoint_io.ts` writes checkpoints through it).
 *
 * Layout under `--dir`:
 * ```
 * {dir}/{name}/adapter_config.json           peft_type, task_type, r, lora_alpha, ... (MoE-PEFT `export()` keys)
 * {dir}/{name}/adapter_model.safetensors     F32 weights, names below
 * ```
 * Tensor names (i layer, e expert; A (R, in), B (out, R), router (E, D)):
 * - MixLoRA router `mixlora.layers.{i}.mlp.moe_gate.weight`
 * - MixLoRA experts `mixlora.layers.{i}.mlp.{gate_proj|up_proj|down_proj}.experts.{e}.lora_{A|B}.weight`
 * - MixLoRA attention `mixlora.layers.{i}.self_attn.{q_proj|k_proj|v_proj|o_proj}.lora_{A|B}.weight`
 * - plain LoRA `base_model.model.model.layers.{i}.{self_attn|mlp}.{proj}.lora_{A|B}.weight`
 * Loading also accepts the seed-era names: `mixlora.layers.{i}.gate.weight`,
 * `mixlora.layers.{i}.experts.{e}.{w1_proj|w2_proj|w3_proj}.lora_{A|B}.weight` (w1 = gate, w3 = up, w2 = down;
 * HF projection names in that position too), seed LoRA names with `w*_proj` or with FFN projections under
 * `self_attn`, and `routing_strategy: "mixtral"`.
 *
 * Crash safety: every file is written to a temporary name, synced, then renamed. A final adapter save stages
 * both files completely before renaming them over the previous pair (config first, weights last; a config
 * already renamed is restored from a copy if the weights rename fails), so a failed save leaves the previous
 * good files. Checkpoints (`checkpoint-{step}/` with optimizer and trainer state) live in `checkpoint_io.ts`.
 *
 * MoeSpec fields a routing strategy does not use are normalised on load: `topK` = E for "dynamic", `topP` = 1
 * except for "dynamic", `expertCapacity` = 0 except for "switch".
 * @module
 */
import { join } from "node:path"
import { ConfigError, SafetensorsError } from "../errors.ts"
import { readJsonFile } from "../io/read_json.ts"
import { openSafetensors, type TensorToWrite } from "../io/safetensors.ts"
import { ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, checkName, fieldsOf, writeAdapterPair } from "./_adapter_files.ts"
import {
  type AdapterLayerWeights,
  type AdapterSpec,
  type AdapterWeights,
  ATTENTION_PROJECTIONS,
  FFN_PROJECTIONS,
  type FfnProjection,
  type LoraPair,
  type MoeSpec,
  projectionShape,
  type RoutingStrategy,
} from "./adapter.ts"
import { type LlamaConfig, type Projection, PROJECTIONS } from "./types.ts"

export { ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE }

/** An adapter read from disk: its weights plus `base_model_name_or_path`. */
export interface LoadedAdapter extends AdapterWeights {
  readonly baseModel: string
}

// ---- names -----------------------------------------------------------------------------------------------

type Slot =
  | { readonly layer: number; readonly kind: "router" }
  | {
    readonly layer: number
    readonly kind: "expert"
    readonly expert: number
    readonly proj: FfnProjection
    readonly ab: "A" | "B"
  }
  | { readonly layer: number; readonly kind: "lora"; readonly proj: Projection; readonly ab: "A" | "B" }

const slotKey = (s: Slot): string =>
  s.kind === "router"
    ? `${s.layer}/router`
    : s.kind === "expert"
    ? `${s.layer}/${s.expert}/${s.proj}/${s.ab}`
    : `${s.layer}/${s.proj}/${s.ab}`

const isAttention = (p: Projection): boolean => (ATTENTION_PROJECTIONS as readonly string[]).includes(p)

/** The MoE-PEFT name of a slot. */
function tensorName(kind: AdapterSpec["kind"], s: Slot): string {
  if (s.kind === "router") return `mixlora.layers.${s.layer}.mlp.moe_gate.weight`
  if (s.kind === "expert") return `mixlora.layers.${s.layer}.mlp.${s.proj}.experts.${s.expert}.lora_${s.ab}.weight`
  const module = isAttention(s.proj) ? "self_attn" : "mlp"
  const prefix = kind === "mixlora" ? "mixlora" : "base_model.model.model"
  return `${prefix}.layers.${s.layer}.${module}.${s.proj}.lora_${s.ab}.weight`
}

/** Module spellings → HF projection names (spec §2: w1 = gate, w3 = up, w2 = down). */
const PROJ_ALIASES: ReadonlyMap<string, Projection> = new Map<string, Projection>([
  ...PROJECTIONS.map((p) => [p, p] as const),
  ["w1_proj", "gate_proj"],
  ["w3_proj", "up_proj"],
  ["w2_proj", "down_proj"],
  ["w1_gate_proj", "gate_proj"],
  ["w3_up_proj", "up_proj"],
  ["w2_down_proj", "down_proj"],
])

const N = "(0|[1-9][0-9]*)"
const P = "([a-z0-9_]+)"
const AB = "lora_([AB])\\.weight"
const NAME_PATTERNS: readonly { re: RegExp; kind: AdapterSpec["kind"]; parse: (m: string[]) => Slot | string }[] = [
  {
    re: new RegExp(`^mixlora\\.layers\\.${N}\\.mlp\\.moe_gate\\.weight$`),
    kind: "mixlora",
    parse: (m) => router(m[1]),
  },
  { re: new RegExp(`^mixlora\\.layers\\.${N}\\.gate\\.weight$`), kind: "mixlora", parse: (m) => router(m[1]) },
  {
    re: new RegExp(`^mixlora\\.layers\\.${N}\\.mlp\\.${P}\\.experts\\.${N}\\.${AB}$`),
    kind: "mixlora",
    parse: (m) => expert(m[1], m[3], m[2], m[4]),
  },
  {
    re: new RegExp(`^mixlora\\.layers\\.${N}\\.experts\\.${N}\\.${P}\\.${AB}$`),
    kind: "mixlora",
    parse: (m) => expert(m[1], m[2], m[3], m[4]),
  },
  {
    re: new RegExp(`^mixlora\\.layers\\.${N}\\.self_attn\\.${P}\\.${AB}$`),
    kind: "mixlora",
    parse: (m) => {
      const proj = PROJ_ALIASES.get(m[2])
      if (!proj || !isAttention(proj)) return `"${m[2]}" is not an attention projection`
      return { layer: Number(m[1]), kind: "lora", proj, ab: m[3] as "A" | "B" }
    },
  },
  {
    re: new RegExp(`^base_model\\.model\\.model\\.layers\\.${N}\\.(self_attn|mlp)\\.${P}\\.${AB}$`),
    kind: "lora",
    parse: (m) => {
      const proj = PROJ_ALIASES.get(m[3])
      if (!proj) return `unknown projection "${m[3]}"`
      // the seed era wrote every projection under self_attn; an attention projection under mlp is never valid
      if (m[2] === "mlp" && isAttention(proj)) return `attention projection "${m[3]}" under mlp`
      return { layer: Number(m[1]), kind: "lora", proj, ab: m[4] as "A" | "B" }
    },
  },
]

function router(layer: string): Slot {
  return { layer: Number(layer), kind: "router" }
}

function expert(layer: string, e: string, projName: string, ab: string): Slot | string {
  const proj = PROJ_ALIASES.get(projName)
  if (!proj || isAttention(proj)) return `"${projName}" is not an FFN projection`
  return { layer: Number(layer), kind: "expert", expert: Number(e), proj: proj as FfnProjection, ab: ab as "A" | "B" }
}

// ---- adapter_config.json ---------------------------------------------------------------------------------

const ROUTING_TO_FILE: Readonly<Record<RoutingStrategy, string>> = {
  mixlora: "mixlora",
  switch: "mixlora-switch",
  dynamic: "mixlora-dynamic",
}
const ROUTING_FROM_FILE: Readonly<Record<string, RoutingStrategy>> = {
  mixlora: "mixlora",
  mixtral: "mixlora",
  "mixlora-switch": "switch",
  switch: "switch",
  "mixlora-dynamic": "dynamic",
  dynamic: "dynamic",
}
const ACT_FNS = ["silu", "gelu", "gelu_new", "gelu_pytorch_tanh"] as const

/** adapter_config.json as MoE-PEFT's `export()` writes it, plus the keys of spec §5. */
export function configJson(spec: AdapterSpec, baseModel: string): Record<string, unknown> {
  const out: Record<string, unknown> = {
    bias: "none",
    peft_type: spec.kind === "mixlora" ? "MIXLORA" : "LORA",
    r: spec.r,
    lora_alpha: spec.alpha,
    lora_dropout: spec.dropout,
    target_modules: PROJECTIONS.filter((p) => spec.targets.includes(p)),
    use_rslora: spec.useRslora,
  }
  const moe = spec.moe
  if (spec.kind === "mixlora" && moe) {
    out.routing_strategy = ROUTING_TO_FILE[moe.routing]
    out.num_experts = moe.numExperts
    out.act_fn = moe.actFn
    if (moe.routing === "mixlora") out.top_k = moe.topK
    if (moe.routing === "dynamic") Object.assign(out, { top_p: moe.topP, temperature: 0 })
    if (moe.routing === "switch") Object.assign(out, { expert_capacity: moe.expertCapacity, sparse_step: null })
    out.router_aux_loss_coef = moe.routerAuxLossCoef
    out.router_init_range = moe.routerInitRange
    out.jitter_noise = moe.jitterNoise
  }
  out.base_model_name_or_path = baseModel
  out.task_type = "CAUSAL_LM"
  return out
}

/** Parses adapter_config.json into a spec (validated against the base model config). */
function parseAdapterConfig(
  file: string,
  json: unknown,
  name: string,
  config: LlamaConfig,
): { spec: AdapterSpec; baseModel: string } {
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    throw new ConfigError({ file, key: "", reason: "adapter config is not a JSON object" })
  }
  const f = fieldsOf(file, json as Record<string, unknown>)
  const obj = json as Record<string, unknown>

  const peft = f.str("peft_type")
  let kind: AdapterSpec["kind"]
  if (peft === undefined) kind = f.present("routing_strategy") ? "mixlora" : "lora"
  else if (peft.toUpperCase() === "LORA") kind = "lora"
  else if (peft.toUpperCase() === "MIXLORA") kind = "mixlora"
  else throw f.fail("peft_type", `unknown peft_type ${JSON.stringify(peft)} (expected "LORA" or "MIXLORA")`)
  if (kind === "lora" && f.present("routing_strategy")) {
    throw f.fail("routing_strategy", `given for peft_type "LORA"; MixLoRA adapters have peft_type "MIXLORA"`)
  }
  const task = f.str("task_type")
  if (task !== undefined && task !== "CAUSAL_LM") {
    throw f.fail("task_type", `only "CAUSAL_LM" is supported, got "${task}"`)
  }
  // keys that would change the math and that this runtime does not implement
  const bias = f.str("bias")
  if (bias !== undefined && bias !== "none") throw f.fail("bias", `only "none" is supported, got "${bias}"`)
  for (const key of ["use_dora", "fan_in_fan_out"]) if (f.bool(key, false)) throw f.fail(key, "true is not supported")
  if (f.present("expert_lora")) throw f.fail("expert_lora", "separate expert LoRA settings are not supported")

  const r = f.num("r", { min: 1, integer: true })
  const alpha = f.num("lora_alpha", { min: 0, minOpen: true })
  const dropout = f.num("lora_dropout", { min: 0, max: 1, maxOpen: true, fallback: 0 })
  const useRslora = f.bool("use_rslora", false)

  const rawTargets = obj.target_modules
  let names: string[]
  if (Array.isArray(rawTargets) && rawTargets.every((t) => typeof t === "string")) names = rawTargets
  else if (typeof rawTargets === "object" && rawTargets !== null && !Array.isArray(rawTargets)) {
    const entries = Object.entries(rawTargets)
    if (!entries.every(([, v]) => typeof v === "boolean")) {
      throw f.fail("target_modules", "dict values must be booleans")
    }
    names = entries.filter(([, v]) => v).map(([k]) => k)
  } else throw f.fail("target_modules", "missing, or not a list of names / dict of booleans")
  const unknown = names.filter((n) => !PROJ_ALIASES.has(n))
  if (unknown.length > 0) {
    throw f.fail("target_modules", `unknown module(s) ${unknown.map((n) => JSON.stringify(n)).join(", ")}`)
  }
  const targets = PROJECTIONS.filter((p) => names.some((n) => PROJ_ALIASES.get(n) === p))
  if (kind === "lora" && targets.length === 0) throw f.fail("target_modules", "no projection is targeted")

  let moe: MoeSpec | undefined
  if (kind === "mixlora") {
    const routingName = f.str("routing_strategy")
    if (routingName === undefined) throw f.fail("routing_strategy", "missing (required for MIXLORA)")
    const routing = ROUTING_FROM_FILE[routingName]
    if (!routing) {
      throw f.fail(
        "routing_strategy",
        `unknown routing strategy "${routingName}" (expected "mixlora", "mixlora-switch", "mixlora-dynamic" or "mixtral")`,
      )
    }
    const E = f.num("num_experts", { min: 1, integer: true })
    const topK = routing === "mixlora"
      ? f.num("top_k", { min: 1, max: E, integer: true, fallback: 2 })
      : routing === "switch"
      ? f.num("top_k", { min: 1, max: 1, integer: true, fallback: 1 })
      : E
    const topP = routing === "dynamic" ? f.num("top_p", { min: 0, minOpen: true, max: 1, fallback: 0.8 }) : 1
    if (routing === "dynamic" && f.num("temperature", { min: 0, fallback: 0 }) !== 0) {
      throw f.fail("temperature", "only temperature 0 (no router temperature) is supported")
    }
    const expertCapacity = routing === "switch" ? f.num("expert_capacity", { min: 1, integer: true, fallback: 32 }) : 0
    if (routing === "switch" && f.present("sparse_step")) {
      throw f.fail("sparse_step", "sparse MoE layers are not supported")
    }
    const act = f.str("act_fn") ?? config.hiddenAct
    if (!(ACT_FNS as readonly string[]).includes(act)) throw f.fail("act_fn", `unknown activation "${act}"`)
    const isSwitch = routing === "switch"
    // MoE-PEFT: router_loss false disables the load-balancing loss
    const auxCoef = f.num("router_aux_loss_coef", { min: 0, fallback: 0.001 })
    moe = {
      routing,
      numExperts: E,
      topK,
      topP,
      expertCapacity,
      actFn: act as MoeSpec["actFn"],
      routerAuxLossCoef: f.bool("router_loss", true) ? auxCoef : 0,
      routerInitRange: f.num("router_init_range", { min: 0, fallback: isSwitch ? 1.0 : 0.02 }),
      jitterNoise: f.num("jitter_noise", { min: 0, max: 1, maxOpen: true, fallback: isSwitch ? 0.01 : 0 }),
    }
  }
  const baseModel = f.str("base_model_name_or_path") ?? ""
  const spec: AdapterSpec = { name, kind, r, alpha, useRslora, dropout, targets, ...(moe ? { moe } : {}) }
  return { spec, baseModel }
}

// ---- weights → tensors -----------------------------------------------------------------------------------

/** Checks the weights against their spec and lists the tensors to write (shapes from lengths and R, E). */
export function adapterTensors(weights: AdapterWeights, where: string): TensorToWrite[] {
  const { spec, layers } = weights
  const fail = (key: string, reason: string) => new ConfigError({ file: where, key, reason })
  if (!Number.isInteger(spec.r) || spec.r < 1) throw fail("r", `must be an integer ≥ 1, got ${spec.r}`)
  if (spec.kind === "mixlora" && !spec.moe) throw fail("moe", "a MixLoRA spec needs its moe settings")
  if (layers.length === 0) throw fail("layers", "no layers")
  const R = spec.r
  const out: TensorToWrite[] = []
  const pair = (slotA: Slot, slotB: Slot, p: LoraPair | undefined) => {
    const nameA = tensorName(spec.kind, slotA)
    if (!p) throw fail(nameA, "missing: the projection is targeted but has no LoRA pair")
    for (const [slot, data] of [[slotA, p.a], [slotB, p.b]] as const) {
      const name = tensorName(spec.kind, slot)
      if (!(data instanceof Float32Array)) throw fail(name, "is not a Float32Array")
      if (data.length === 0 || data.length % R !== 0) {
        throw fail(name, `${data.length} values is not a multiple of r=${R}`)
      }
      const shape = slot === slotA ? [R, data.length / R] : [data.length / R, R]
      out.push({ name, dtype: "F32", shape, data })
    }
  }
  const extra = (have: readonly string[], allowed: readonly string[], what: string, i: number) => {
    const bad = have.filter((p) => !allowed.includes(p))
    if (bad.length > 0) throw fail(`layers[${i}]`, `${what} has ${bad.join(", ")} that the spec does not target`)
  }
  const ffnTargets = FFN_PROJECTIONS.filter((p) => spec.targets.includes(p))
  layers.forEach((layer: AdapterLayerWeights, i) => {
    const loraTargets = spec.kind === "mixlora" ? spec.targets.filter(isAttention) : spec.targets
    extra(Object.keys(layer.lora), loraTargets, "lora", i)
    for (const proj of loraTargets) {
      pair({ layer: i, kind: "lora", proj, ab: "A" }, { layer: i, kind: "lora", proj, ab: "B" }, layer.lora[proj])
    }
    if (spec.kind === "lora") {
      if (layer.router || layer.experts) throw fail(`layers[${i}]`, "a LoRA adapter has a router or experts")
      return
    }
    const E = spec.moe!.numExperts
    const routerName = tensorName(spec.kind, { layer: i, kind: "router" })
    const r = layer.router
    if (!(r instanceof Float32Array) || r.length === 0 || r.length % E !== 0) {
      throw fail(routerName, `router must be a Float32Array of E=${E} × D values, got ${r?.length ?? "none"}`)
    }
    out.push({ name: routerName, dtype: "F32", shape: [E, r.length / E], data: r })
    if (layer.experts?.length !== E) {
      throw fail(`layers[${i}]`, `has ${layer.experts?.length ?? 0} experts, spec E=${E}`)
    }
    layer.experts.forEach((ex, e) => {
      extra(Object.keys(ex), ffnTargets, `expert ${e}`, i)
      for (const proj of ffnTargets) {
        const slot = (ab: "A" | "B"): Slot => ({ layer: i, kind: "expert", expert: e, proj, ab })
        pair(slot("A"), slot("B"), ex[proj])
      }
    })
  })
  return out
}

// ---- public: adapters ------------------------------------------------------------------------------------

/**
 * Saves `weights` as `{dir}/{name}/adapter_config.json` + `adapter_model.safetensors` (F32, MoE-PEFT names).
 * Inconsistent weights (missing pair, length not a multiple of R, wrong expert count) throw a `ConfigError`
 * naming the tensor before anything is written; a failed write leaves the previous files intact.
 * Returns the adapter directory.
 */
export async function saveAdapter(
  dir: string,
  name: string,
  weights: AdapterWeights,
  meta: { baseModel: string },
): Promise<string> {
  const adapterDir = join(dir, name)
  checkName(name, adapterDir)
  const tensors = adapterTensors(weights, join(adapterDir, ADAPTER_WEIGHTS_FILE))
  const configText = JSON.stringify(configJson(weights.spec, meta.baseModel), null, 4) + "\n"
  await Deno.mkdir(adapterDir, { recursive: true })
  await writeAdapterPair(adapterDir, tensors, configText)
  return adapterDir
}

/**
 * Loads the adapter in `{dir}/{name}/`, validating adapter_config.json (ConfigError naming file and key) and
 * every tensor against the model config and R (SafetensorsError naming file and tensor: missing, unexpected,
 * duplicate old/new spelling, wrong shape or dtype). Seed-era names and `routing_strategy: "mixtral"` load too.
 */
export function loadAdapter(dir: string, name: string, config: LlamaConfig): Promise<LoadedAdapter> {
  checkName(name, join(dir, name))
  return loadAdapterFrom(join(dir, name), name, config)
}

/** Loads adapter files from directory `path` (an adapter directory or a checkpoint) as adapter `name`. */
export async function loadAdapterFrom(path: string, name: string, config: LlamaConfig): Promise<LoadedAdapter> {
  const configFile = join(path, ADAPTER_CONFIG_FILE)
  const { spec, baseModel } = parseAdapterConfig(
    configFile,
    await readJsonFile(configFile, "adapter config"),
    name,
    config,
  )
  const file = join(path, ADAPTER_WEIGHTS_FILE)
  const fail = (tensor: string, reason: string) => new SafetensorsError({ file, tensor, reason })
  const E = spec.moe?.numExperts ?? 0
  const L = config.numLayers

  // expected slots with their shapes
  const expected = new Map<string, { slot: Slot; shape: number[] }>()
  const add = (slot: Slot, shape: number[]) => expected.set(slotKey(slot), { slot, shape })
  for (let i = 0; i < L; i++) {
    for (const proj of spec.targets) {
      const { inDim, outDim } = projectionShape(proj, config)
      const shapes = { A: [spec.r, inDim], B: [outDim, spec.r] }
      for (const ab of ["A", "B"] as const) {
        if (spec.kind === "lora" || isAttention(proj)) add({ layer: i, kind: "lora", proj, ab }, shapes[ab])
        else {for (let e = 0; e < E; e++) {
            add({ layer: i, kind: "expert", expert: e, proj: proj as FfnProjection, ab }, shapes[ab])
          }}
      }
    }
    if (spec.kind === "mixlora") add({ layer: i, kind: "router" }, [E, config.hiddenSize])
  }

  using st = await openSafetensors(file)
  const found = new Map<string, string>() // slot key → tensor name in the file
  for (const fileName of st.tensors.keys()) {
    const pattern = NAME_PATTERNS.find((p) => p.re.test(fileName))
    if (!pattern || pattern.kind !== spec.kind) {
      throw fail(
        fileName,
        `unexpected tensor: not a ${spec.kind === "mixlora" ? "MixLoRA" : "LoRA"} adapter tensor name`,
      )
    }
    const slot = pattern.parse(pattern.re.exec(fileName)!)
    if (typeof slot === "string") throw fail(fileName, `unexpected tensor: ${slot}`)
    const key = slotKey(slot)
    if (!expected.has(key)) {
      const why = slot.layer >= L
        ? `layer ${slot.layer} ≥ num_hidden_layers ${L}`
        : slot.kind === "expert" && slot.expert >= E
        ? `expert ${slot.expert} ≥ num_experts ${E}`
        : `${slot.kind === "router" ? "router" : slot.proj} is not in target_modules of ${ADAPTER_CONFIG_FILE}`
      throw fail(fileName, `unexpected tensor: ${why}`)
    }
    const prior = found.get(key)
    if (prior) throw fail(fileName, `duplicate: the same weight as tensor "${prior}"`)
    found.set(key, fileName)
  }
  for (const [key, { slot, shape }] of expected) {
    const got = found.get(key)
    if (!got) throw fail(tensorName(spec.kind, slot), "missing")
    const info = st.tensors.get(got)!
    if (info.shape.length !== shape.length || info.shape.some((d, k) => d !== shape[k])) {
      throw fail(got, `shape [${info.shape}] but the model config and r=${spec.r} need [${shape}]`)
    }
  }

  // read one tensor at a time, in file order
  const data = new Map<string, Float32Array>()
  for (const [key, tname] of [...found].sort((a, b) => st.tensors.get(a[1])!.begin - st.tensors.get(b[1])!.begin)) {
    data.set(key, await st.readF32(tname))
  }
  const pairOf = (a: Slot, b: Slot): LoraPair => ({ a: data.get(slotKey(a))!, b: data.get(slotKey(b))! })
  const layers: AdapterLayerWeights[] = []
  for (let i = 0; i < L; i++) {
    const lora: Partial<Record<Projection, LoraPair>> = {}
    for (const proj of spec.targets) {
      if (spec.kind === "mixlora" && !isAttention(proj)) continue
      lora[proj] = pairOf({ layer: i, kind: "lora", proj, ab: "A" }, { layer: i, kind: "lora", proj, ab: "B" })
    }
    if (spec.kind === "lora") {
      layers.push({ lora })
      continue
    }
    const experts = Array.from({ length: E }, (_, e) => {
      const ex: Partial<Record<FfnProjection, LoraPair>> = {}
      for (const proj of FFN_PROJECTIONS) {
        if (!spec.targets.includes(proj)) continue
        const slot = (ab: "A" | "B"): Slot => ({ layer: i, kind: "expert", expert: e, proj, ab })
        ex[proj] = pairOf(slot("A"), slot("B"))
      }
      return ex
    })
    layers.push({ lora, router: data.get(slotKey({ layer: i, kind: "router" }))!, experts })
  }
  return { spec, layers, baseModel }
}
