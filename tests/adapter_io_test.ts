import assert from "node:assert/strict"
import { join } from "node:path"
import { ConfigError, SafetensorsError } from "../src/errors.ts"
import { openSafetensors, type TensorToWrite, writeSafetensors } from "../src/io/safetensors.ts"
import {
  type AdapterLayerWeights,
  type AdapterSpec,
  type AdapterWeights,
  type FfnProjection,
  type LoraPair,
  type MoeSpec,
  projectionShape,
} from "../src/model/adapter.ts"
import { loadAdapter, saveAdapter } from "../src/model/adapter_io.ts"
import { type CheckpointData, latestCheckpoint, loadCheckpoint, saveCheckpoint } from "../src/model/checkpoint_io.ts"
import type { LlamaConfig, Projection } from "../src/model/types.ts"
import { Rng } from "../src/util/rng.ts"

const CONFIG: LlamaConfig = {
  vocabSize: 32,
  hiddenSize: 8,
  intermediateSize: 12,
  numLayers: 2,
  numHeads: 2,
  numKvHeads: 1,
  headDim: 4,
  rmsNormEps: 1e-6,
  ropeTheta: 10000,
  maxPositionEmbeddings: 64,
  tieWordEmbeddings: false,
  hiddenAct: "silu",
  bosTokenId: 1,
  eosTokenId: 2,
  padTokenId: 0,
}
const R = 3
const E = 3

function randomPair(rng: Rng, proj: Projection, r = R): LoraPair {
  const { inDim, outDim } = projectionShape(proj, CONFIG)
  return {
    a: Float32Array.from({ length: r * inDim }, () => rng.normal()),
    b: Float32Array.from({ length: outDim * r }, () => rng.normal()),
  }
}

function loraWeights(seed: number): AdapterWeights {
  const rng = Rng.fromSeed(seed)
  const targets: Projection[] = ["q_proj", "v_proj", "down_proj"]
  const spec: AdapterSpec = { name: "plain", kind: "lora", r: R, alpha: 16, useRslora: false, dropout: 0.05, targets }
  const layers = Array.from({ length: CONFIG.numLayers }, () => ({
    lora: Object.fromEntries(targets.map((p) => [p, randomPair(rng, p)])),
  }))
  return { spec, layers }
}

const MOE: Record<MoeSpec["routing"], MoeSpec> = {
  mixlora: {
    routing: "mixlora",
    numExperts: E,
    topK: 2,
    topP: 1,
    expertCapacity: 0,
    actFn: "silu",
    routerAuxLossCoef: 0.001,
    routerInitRange: 0.02,
    jitterNoise: 0,
  },
  switch: {
    routing: "switch",
    numExperts: E,
    topK: 1,
    topP: 1,
    expertCapacity: 16,
    actFn: "gelu_new",
    routerAuxLossCoef: 0.01,
    routerInitRange: 1,
    jitterNoise: 0.01,
  },
  dynamic: {
    routing: "dynamic",
    numExperts: E,
    topK: E,
    topP: 0.7,
    expertCapacity: 0,
    actFn: "silu",
    routerAuxLossCoef: 0.001,
    routerInitRange: 0.02,
    jitterNoise: 0.1,
  },
}

function mixWeights(seed: number, moe: MoeSpec): AdapterWeights {
  const rng = Rng.fromSeed(seed)
  const targets: Projection[] = ["q_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
  const spec: AdapterSpec = { name: "mix", kind: "mixlora", r: R, alpha: 6, useRslora: true, dropout: 0, targets, moe }
  const layers: AdapterLayerWeights[] = Array.from({ length: CONFIG.numLayers }, () => ({
    lora: { q_proj: randomPair(rng, "q_proj"), o_proj: randomPair(rng, "o_proj") },
    router: Float32Array.from({ length: E * CONFIG.hiddenSize }, () => rng.normal()),
    experts: Array.from({ length: E }, () => ({
      gate_proj: randomPair(rng, "gate_proj"),
      up_proj: randomPair(rng, "up_proj"),
      down_proj: randomPair(rng, "down_proj"),
    })),
  }))
  return { spec, layers }
}

async function tensorNames(file: string): Promise<string[]> {
  using st = await openSafetensors(file)
  return [...st.tensors.keys()].sort()
}

async function readConfig(dir: string): Promise<Record<string, unknown>> {
  return JSON.parse(await Deno.readTextFile(join(dir, "adapter_config.json")))
}

/** All tensors of a file, as they are (for rewriting with changed names). */
async function readAll(file: string): Promise<TensorToWrite[]> {
  using st = await openSafetensors(file)
  const out: TensorToWrite[] = []
  for (const [name, info] of st.tensors) {
    out.push({ name, dtype: info.dtype, shape: info.shape, data: await st.readRaw(name) })
  }
  return out
}

async function withTmp(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "adapter_io_test_" })
  try {
    await fn(dir)
  } finally {
    await Deno.remove(dir, { recursive: true })
  }
}

Deno.test("LoRA round trip is bit-exact, with PEFT names and adapter_config.json keys", async () => {
  await withTmp(async (dir) => {
    const w = loraWeights(1)
    const path = await saveAdapter(dir, "plain", w, { baseModel: "models/tiny" })
    assert.equal(path, join(dir, "plain"))
    const names = []
    for (let i = 0; i < 2; i++) {
      for (const [m, p] of [["self_attn", "q_proj"], ["self_attn", "v_proj"], ["mlp", "down_proj"]]) {
        for (const ab of ["A", "B"]) names.push(`base_model.model.model.layers.${i}.${m}.${p}.lora_${ab}.weight`)
      }
    }
    assert.deepEqual(await tensorNames(join(path, "adapter_model.safetensors")), names.sort())
    assert.deepEqual(await readConfig(path), {
      bias: "none",
      peft_type: "LORA",
      r: 3,
      lora_alpha: 16,
      lora_dropout: 0.05,
      target_modules: ["q_proj", "v_proj", "down_proj"],
      use_rslora: false,
      base_model_name_or_path: "models/tiny",
      task_type: "CAUSAL_LM",
    })
    {
      using st = await openSafetensors(join(path, "adapter_model.safetensors"))
      const info = st.tensors.get("base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight")!
      assert.equal(info.dtype, "F32")
      assert.deepEqual(info.shape, [4, 3]) // (KV·Dh, R)
    }
    const back = await loadAdapter(dir, "plain", CONFIG)
    assert.equal(back.baseModel, "models/tiny")
    assert.deepEqual({ spec: back.spec, layers: back.layers }, w)
  })
})

Deno.test("MixLoRA round trip is bit-exact for mixlora, switch and dynamic routing, with MoE-PEFT names", async () => {
  await withTmp(async (dir) => {
    for (const moe of Object.values(MOE)) {
      const w = mixWeights(7, moe)
      const name = `mix_${moe.routing}`
      await saveAdapter(dir, name, w, { baseModel: "base" })
      const file = join(dir, name, "adapter_model.safetensors")
      const names = await tensorNames(file)
      assert.equal(names.length, 2 * (1 + 2 * 2 + E * 3 * 2))
      for (
        const n of [
          "mixlora.layers.0.mlp.moe_gate.weight",
          "mixlora.layers.1.mlp.gate_proj.experts.2.lora_A.weight",
          "mixlora.layers.1.mlp.up_proj.experts.0.lora_B.weight",
          "mixlora.layers.0.mlp.down_proj.experts.1.lora_A.weight",
          "mixlora.layers.1.self_attn.q_proj.lora_A.weight",
          "mixlora.layers.0.self_attn.o_proj.lora_B.weight",
        ]
      ) assert.ok(names.includes(n), n)
      {
        using st = await openSafetensors(file)
        assert.deepEqual(st.tensors.get("mixlora.layers.0.mlp.moe_gate.weight")!.shape, [E, 8])
        assert.deepEqual(st.tensors.get("mixlora.layers.0.mlp.down_proj.experts.1.lora_A.weight")!.shape, [R, 12])
      }
      const cfg = await readConfig(join(dir, name))
      assert.equal(cfg.peft_type, "MIXLORA")
      assert.equal(cfg.num_experts, E)
      assert.equal(cfg.use_rslora, true)
      assert.equal(cfg.act_fn, moe.actFn)
      assert.equal(cfg.router_aux_loss_coef, moe.routerAuxLossCoef)
      assert.equal(cfg.router_init_range, moe.routerInitRange)
      assert.equal(cfg.jitter_noise, moe.jitterNoise)
      const strategyKeys = {
        mixlora: { routing_strategy: "mixlora", top_k: 2 },
        switch: { routing_strategy: "mixlora-switch", expert_capacity: 16, sparse_step: null },
        dynamic: { routing_strategy: "mixlora-dynamic", top_p: 0.7, temperature: 0 },
      }[moe.routing]
      for (const [k, v] of Object.entries(strategyKeys)) assert.equal(cfg[k], v, k)
      for (const k of ["top_k", "top_p", "expert_capacity"]) assert.equal(k in strategyKeys, k in cfg, k)
      const back = await loadAdapter(dir, name, CONFIG)
      assert.deepEqual({ spec: back.spec, layers: back.layers }, { ...w, spec: { ...w.spec, name } })
    }
  })
})

Deno.test("seed-era names (gate.weight, experts.{e}.w1/w2/w3_proj, mixtral, self_attn.w2_proj) load to the same weights", async () => {
  await withTmp(async (dir) => {
    const mix = mixWeights(3, MOE.mixlora)
    await saveAdapter(dir, "modern", mix, { baseModel: "base" })
    const seedProj: Record<FfnProjection, string> = { gate_proj: "w1_proj", up_proj: "w3_proj", down_proj: "w2_proj" }
    const renamed = (await readAll(join(dir, "modern", "adapter_model.safetensors"))).map((t) => {
      let name = t.name.replace(/^mixlora\.layers\.(\d+)\.mlp\.moe_gate\.weight$/, "mixlora.layers.$1.gate.weight")
      name = name.replace(
        /^mixlora\.layers\.(\d+)\.mlp\.(gate_proj|up_proj|down_proj)\.experts\.(\d+)\.(lora_[AB]\.weight)$/,
        (_, i, p: FfnProjection, e, rest) => `mixlora.layers.${i}.experts.${e}.${seedProj[p]}.${rest}`,
      )
      return { ...t, name }
    })
    assert.ok(renamed.some((t) => t.name === "mixlora.layers.1.experts.2.w2_proj.lora_B.weight"))
    await Deno.mkdir(join(dir, "seed"))
    await writeSafetensors(join(dir, "seed", "adapter_model.safetensors"), renamed)
    const seedCfg: Record<string, unknown> = {
      ...(await readConfig(join(dir, "modern"))),
      routing_strategy: "mixtral",
      target_modules: ["q_proj", "o_proj", "w1_proj", "w2_proj", "w3_proj"],
    }
    delete seedCfg.act_fn // seed configs leave it out: the base model's hidden_act
    await Deno.writeTextFile(join(dir, "seed", "adapter_config.json"), JSON.stringify(seedCfg))
    const back = await loadAdapter(dir, "seed", CONFIG)
    assert.equal(back.spec.moe!.routing, "mixlora")
    assert.equal(back.spec.moe!.actFn, "silu")
    assert.deepEqual(back.layers, mix.layers)

    // seed m-LoRA wrote every plain-LoRA projection under self_attn, FFN ones as w*_proj
    const lora = loraWeights(4)
    await saveAdapter(dir, "lora_modern", lora, { baseModel: "base" })
    const seedLora = (await readAll(join(dir, "lora_modern", "adapter_model.safetensors"))).map((t) => ({
      ...t,
      name: t.name.replace(".mlp.down_proj.", ".self_attn.w2_proj."),
    }))
    await Deno.mkdir(join(dir, "lora_seed"))
    await writeSafetensors(join(dir, "lora_seed", "adapter_model.safetensors"), seedLora)
    const cfg = await readConfig(join(dir, "lora_modern"))
    await Deno.writeTextFile(
      join(dir, "lora_seed", "adapter_config.json"),
      JSON.stringify({ ...cfg, target_modules: { q_proj: true, v_proj: true, w2_proj: true, k_proj: false } }),
    )
    assert.deepEqual((await loadAdapter(dir, "lora_seed", CONFIG)).layers, lora.layers)
  })
})

Deno.test("malformed adapters: each error names the file and the tensor or key", async () => {
  await withTmp(async (dir) => {
    await saveAdapter(dir, "good", mixWeights(5, MOE.mixlora), { baseModel: "base" })
    const goodTensors = await readAll(join(dir, "good", "adapter_model.safetensors"))
    const goodCfg = await readConfig(join(dir, "good"))
    let n = 0
    const check = async (
      what: string,
      edit: { tensors?: (t: TensorToWrite[]) => TensorToWrite[]; config?: (c: Record<string, unknown>) => unknown },
      expected: { error: typeof ConfigError | typeof SafetensorsError; file: string; where: string; reason: RegExp },
    ) => {
      const name = `bad${n++}`
      await Deno.mkdir(join(dir, name))
      const cfg = edit.config ? edit.config(structuredClone(goodCfg)) : goodCfg
      await Deno.writeTextFile(join(dir, name, "adapter_config.json"), JSON.stringify(cfg))
      const tensors = edit.tensors ? edit.tensors(goodTensors.slice()) : goodTensors
      await writeSafetensors(join(dir, name, "adapter_model.safetensors"), tensors)
      const err = await loadAdapter(dir, name, CONFIG).then(() => null, (e) => e)
      assert.ok(err instanceof expected.error, `${what}: got ${err}`)
      assert.equal(err.file, join(dir, name, expected.file), what)
      assert.equal(err instanceof ConfigError ? err.key : err.tensor, expected.where, what)
      assert.match(err.message, expected.reason, what)
    }
    const ST = "adapter_model.safetensors"
    const CF = "adapter_config.json"
    const gate1 = "mixlora.layers.1.mlp.gate_proj.experts.1.lora_A.weight"
    const without = (name: string) => (t: TensorToWrite[]) => t.filter((x) => x.name !== name)
    await check("missing tensor", { tensors: without(gate1) }, {
      error: SafetensorsError,
      file: ST,
      where: gate1,
      reason: /missing/,
    })
    await check("wrong shape", {
      tensors: (t) => t.map((x) => x.name === gate1 ? { ...x, shape: [R, 4, 2] } : x),
    }, { error: SafetensorsError, file: ST, where: gate1, reason: /shape \[3,4,2\].*need \[3,8\]/ })
    await check("r in config differs from the tensors", { config: (c) => ({ ...c, r: 4 }) }, {
      error: SafetensorsError,
      file: ST,
      where: "mixlora.layers.0.self_attn.q_proj.lora_A.weight",
      reason: /shape \[3,8\] but the model config and r=4 need \[4,8\]/,
    })
    const extra = (name: string, shape: number[]) => (t: TensorToWrite[]) => [
      ...t,
      { name, dtype: "F32" as const, shape, data: new Float32Array(shape.reduce((a, b) => a * b, 1)) },
    ]
    await check("layer beyond the model", { tensors: extra("mixlora.layers.2.mlp.moe_gate.weight", [E, 8]) }, {
      error: SafetensorsError,
      file: ST,
      where: "mixlora.layers.2.mlp.moe_gate.weight",
      reason: /layer 2 ≥ num_hidden_layers 2/,
    })
    await check("expert beyond num_experts", {
      tensors: extra("mixlora.layers.0.mlp.up_proj.experts.3.lora_A.weight", [R, 8]),
    }, {
      error: SafetensorsError,
      file: ST,
      where: "mixlora.layers.0.mlp.up_proj.experts.3.lora_A.weight",
      reason: /expert 3/,
    })
    await check("projection not targeted", {
      tensors: extra("mixlora.layers.0.self_attn.k_proj.lora_A.weight", [R, 8]),
    }, {
      error: SafetensorsError,
      file: ST,
      where: "mixlora.layers.0.self_attn.k_proj.lora_A.weight",
      reason: /not in target_modules/,
    })
    await check("plain LoRA name in a MixLoRA file", {
      tensors: extra("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", [R, 8]),
    }, {
      error: SafetensorsError,
      file: ST,
      where: "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
      reason: /not a MixLoRA/,
    })
    await check("old and new spelling of one weight", { tensors: extra("mixlora.layers.1.gate.weight", [E, 8]) }, {
      error: SafetensorsError,
      file: ST,
      where: "mixlora.layers.1.mlp.moe_gate.weight",
      reason: /duplicate/,
    })
    await check("integer dtype", {
      tensors: (t) =>
        t.map((x) =>
          x.name === gate1
            ? { ...x, dtype: "I32" as const, data: new Int32Array((x.data as Uint8Array).length / 4) }
            : x
        ),
    }, { error: SafetensorsError, file: ST, where: gate1, reason: /not F32, F16 or BF16/ })
    await check("unknown peft_type", { config: (c) => ({ ...c, peft_type: "IA3" }) }, {
      error: ConfigError,
      file: CF,
      where: "peft_type",
      reason: /unknown peft_type "IA3"/,
    })
    await check("unknown routing", { config: (c) => ({ ...c, routing_strategy: "expert-choice" }) }, {
      error: ConfigError,
      file: CF,
      where: "routing_strategy",
      reason: /unknown routing strategy/,
    })
    await check("top_k over num_experts", { config: (c) => ({ ...c, top_k: 4 }) }, {
      error: ConfigError,
      file: CF,
      where: "top_k",
      reason: /\[1, 3\]/,
    })
    await check("unknown target module", { config: (c) => ({ ...c, target_modules: ["q_proj", "dense_h_to_4h"] }) }, {
      error: ConfigError,
      file: CF,
      where: "target_modules",
      reason: /dense_h_to_4h/,
    })
    await check("r not an integer", { config: (c) => ({ ...c, r: 2.5 }) }, {
      error: ConfigError,
      file: CF,
      where: "r",
      reason: /integer/,
    })
    await check("config is not an object", { config: () => [1, 2] }, {
      error: ConfigError,
      file: CF,
      where: "",
      reason: /not a JSON object/,
    })
    const missing = await loadAdapter(dir, "nowhere", CONFIG).then(() => null, (e) => e)
    assert.ok(missing instanceof ConfigError)
    assert.equal(missing.file, join(dir, "nowhere", CF))
  })
})

function checkpointData(weights: AdapterWeights, rng: Rng, kind: "adamw" | "sgd"): CheckpointData {
  const count = 1001
  const vec = () => Float32Array.from({ length: count }, () => rng.normal())
  return {
    weights,
    baseModel: "base",
    optimizer: kind === "adamw"
      ? { kind, step: 12, m: vec(), v: vec().map(Math.abs) }
      : { kind, step: 3, momentum: vec() },
    counters: { step: 12, epoch: 1, dataPosition: 40, rngState: rng.state(), lossScale: [1, 2], note: "x" },
  }
}

Deno.test("checkpoint round trip: weights, optimizer state and RNG resume exactly; latestCheckpoint picks the newest", async () => {
  await withTmp(async (dir) => {
    assert.equal(await latestCheckpoint(dir, "mix"), null)
    const rng = Rng.fromSeed(42)
    rng.normal()
    const w = mixWeights(8, MOE.switch)
    const data = checkpointData(w, rng, "adamw")
    const path = await saveCheckpoint(dir, "mix", 12, data)
    assert.equal(path, join(dir, "mix", "checkpoint-12"))
    const next = [rng.nextU32(), rng.nextU32()]
    await saveCheckpoint(dir, "mix", 4, checkpointData(w, Rng.fromSeed(1), "sgd"))
    assert.deepEqual(await latestCheckpoint(dir, "mix"), { path, step: 12 })
    const back = await loadCheckpoint(path, CONFIG)
    assert.equal(back.step, 12)
    assert.deepEqual(back.weights.layers, w.layers)
    assert.deepEqual(back.weights.spec, { ...w.spec, name: "mix" })
    assert.deepEqual(back.optimizer, data.optimizer)
    assert.deepEqual(back.counters, data.counters)
    const resumed = Rng.fromState(back.counters.rngState)
    assert.deepEqual([resumed.nextU32(), resumed.nextU32()], next)
    assert.deepEqual(
      (await readAll(join(path, "optimizer.safetensors"))).map((t) => t.name).sort(),
      ["exp_avg", "exp_avg_sq"],
    )
    const sgd = await loadCheckpoint(join(dir, "mix", "checkpoint-4"), CONFIG)
    assert.equal(sgd.optimizer.kind, "sgd")
    assert.equal(sgd.optimizer.step, 3)
    assert.equal(sgd.optimizer.momentum!.length, 1001)
    // saving the same step again replaces it and leaves nothing else behind
    await saveCheckpoint(dir, "mix", 12, { ...data, counters: { ...data.counters, epoch: 2 } })
    assert.equal((await loadCheckpoint(path, CONFIG)).counters.epoch, 2)
    const entries = [...Deno.readDirSync(join(dir, "mix"))].map((e) => e.name).sort()
    assert.deepEqual(entries, ["checkpoint-12", "checkpoint-4"])
  })
})

Deno.test("atomicity: failed saves leave the previous files and no partial checkpoint-N", async () => {
  await withTmp(async (dir) => {
    const w = loraWeights(2)
    await saveAdapter(dir, "a", w, { baseModel: "base" })
    const before = {
      config: await Deno.readFile(join(dir, "a", "adapter_config.json")),
      weights: await Deno.readFile(join(dir, "a", "adapter_model.safetensors")),
    }
    // a pair whose A is not (r, in): refused before anything is written
    const broken: AdapterWeights = {
      spec: { ...w.spec, alpha: 99 },
      layers: [w.layers[0], {
        lora: { ...w.layers[1].lora, v_proj: { a: new Float32Array(7), b: new Float32Array(12) } },
      }],
    }
    const err = await saveAdapter(dir, "a", broken, { baseModel: "other" }).then(() => null, (e) => e)
    assert.ok(err instanceof ConfigError)
    assert.equal(err.key, "base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight")
    assert.deepEqual(await Deno.readFile(join(dir, "a", "adapter_config.json")), before.config)
    assert.deepEqual(await Deno.readFile(join(dir, "a", "adapter_model.safetensors")), before.weights)
    assert.deepEqual([...Deno.readDirSync(join(dir, "a"))].map((e) => e.name).sort(), [
      "adapter_config.json",
      "adapter_model.safetensors",
    ])

    // a checkpoint that fails after its adapter files are written (bad optimizer state): nothing visible remains
    const good = checkpointData(w, Rng.fromSeed(3), "adamw")
    await saveCheckpoint(dir, "a", 5, good)
    const bad = {
      ...good,
      optimizer: { kind: "adamw" as const, step: 9, m: new Float32Array(4), v: new Float32Array(5) },
    }
    const err2 = await saveCheckpoint(dir, "a", 9, bad).then(() => null, (e) => e)
    assert.ok(err2 instanceof SafetensorsError)
    assert.equal(err2.file, join(dir, "a", "checkpoint-9", "optimizer.safetensors"))
    assert.equal(err2.tensor, "exp_avg_sq")
    const names = [...Deno.readDirSync(join(dir, "a"))].map((e) => e.name).sort()
    assert.deepEqual(names, ["adapter_config.json", "adapter_model.safetensors", "checkpoint-5"])
    // and the same failure over an existing checkpoint-5 keeps the old one
    const err3 = await saveCheckpoint(dir, "a", 5, bad).then(() => null, (e) => e)
    assert.ok(err3 instanceof SafetensorsError)
    assert.deepEqual((await loadCheckpoint(join(dir, "a", "checkpoint-5"), CONFIG)).optimizer, good.optimizer)

    // what a crash can leave: a temp dir, or a foreign checkpoint dir without trainer_state.json → ignored
    await Deno.mkdir(join(dir, "a", ".checkpoint-7.tmp-0123456789ab"))
    await Deno.writeTextFile(join(dir, "a", ".checkpoint-7.tmp-0123456789ab", "trainer_state.json"), "{}")
    await Deno.mkdir(join(dir, "a", "checkpoint-8"))
    await Deno.writeTextFile(join(dir, "a", "checkpoint-8", "adapter_config.json"), "{}")
    assert.deepEqual(await latestCheckpoint(dir, "a"), { path: join(dir, "a", "checkpoint-5"), step: 5 })

    // failures at the commit renames themselves (e.g. disk errors): simulated by failing Deno.rename once
    const failRenameTo = async (target: string, run: () => Promise<unknown>) => {
      const rename = Deno.rename
      let failed = false
      Deno.rename = (from, to) => {
        if (String(to) === target && !failed) {
          failed = true
          return Promise.reject(new Deno.errors.PermissionDenied("simulated failure"))
        }
        return rename(from, to)
      }
      try {
        return await run().then(() => null, (e) => e)
      } finally {
        Deno.rename = rename
      }
    }
    const other = loraWeights(9)
    const e5 = await failRenameTo(
      join(dir, "a", "adapter_model.safetensors"),
      () => saveAdapter(dir, "a", { ...other, spec: { ...other.spec, alpha: 3 } }, { baseModel: "other" }),
    )
    assert.ok(e5 instanceof ConfigError, String(e5))
    assert.deepEqual(await Deno.readFile(join(dir, "a", "adapter_config.json")), before.config)
    assert.deepEqual(await Deno.readFile(join(dir, "a", "adapter_model.safetensors")), before.weights)
    const e6 = await failRenameTo(join(dir, "a", "checkpoint-6"), () => saveCheckpoint(dir, "a", 6, good))
    assert.ok(e6 instanceof ConfigError, String(e6))
    assert.deepEqual([...Deno.readDirSync(join(dir, "a"))].map((e) => e.name).sort(), [
      ".checkpoint-7.tmp-0123456789ab",
      "adapter_config.json",
      "adapter_model.safetensors",
      "checkpoint-5",
      "checkpoint-8",
    ])

    const badRng = { ...good, counters: { ...good.counters, rngState: [0, 0, 0, 0] } }
    const err4 = await saveCheckpoint(dir, "a", 6, badRng).then(() => null, (e) => e)
    assert.ok(err4 instanceof ConfigError)
    assert.equal(err4.key, "rng_state")
    await assert.rejects(saveAdapter(dir, "../x", w, { baseModel: "" }), ConfigError)
  })
})
