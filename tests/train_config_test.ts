import assert from "node:assert/strict"
import { join, relative } from "node:path"
import { loadTrainConfig, loraScaling, parseTrainConfig, warmupStepsFor } from "../src/config/train_config.ts"
import { ConfigError } from "../src/errors.ts"

const DEMO = new URL("../config/demo.json", import.meta.url).pathname

/** A temp dir with `train.jsonl`, `test.jsonl`, `tpl.json`; `fn` gets the path of a config file inside it. */
async function withConfigDir(fn: (configFile: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "train_config_test_" })
  try {
    await Deno.writeTextFile(join(dir, "train.jsonl"), '{"text": "a"}\n')
    await Deno.writeTextFile(join(dir, "test.jsonl"), '{"text": "b"}\n')
    await Deno.writeTextFile(
      join(dir, "tpl.json"),
      '{"prompt_input": "{instruction}{input}", "prompt_no_input": "{instruction}"}',
    )
    await fn(join(dir, "cfg.json"))
  } finally {
    await Deno.remove(dir, { recursive: true })
  }
}

const lora = (patch: Record<string, unknown> = {}): Record<string, unknown> => ({
  name: "a",
  lr: 1e-3,
  batch_size: 8,
  micro_batch_size: 4,
  num_epochs: 1,
  r: 4,
  lora_alpha: 8,
  target_modules: ["q_proj", "v_proj"],
  data: "train.jsonl",
  ...patch,
})
const moe = (patch: Record<string, unknown> = {}) =>
  lora({ target_modules: ["q_proj", "gate_proj", "up_proj", "down_proj"], num_experts: 4, ...patch })

/** Expects parsing to throw a ConfigError naming `file` and exactly `key`, with `reason` matching. */
async function expectError(json: unknown, file: string, key: string, reason: RegExp): Promise<void> {
  await assert.rejects(parseTrainConfig(json, file), (e: unknown) => {
    assert.ok(e instanceof ConfigError, `expected ConfigError, got ${e}`)
    assert.equal(e.file, file)
    assert.equal(e.key, key)
    assert.match(e.reason, reason)
    return true
  })
}

Deno.test("demo config parses: three adapters, MixLoRA top-2, plain LoRA, dynamic MixLoRA with a template", async () => {
  const { config, warnings } = await loadTrainConfig(DEMO)
  assert.deepEqual(warnings, [])
  assert.equal(config.cutoffLen, 64)
  assert.deepEqual(config.adapters.map((a) => [a.name, a.peftType, a.mixlora?.routingStrategy ?? null]), [
    ["mixlora_choice", "MIXLORA", "mixlora"],
    ["lora_copy", "LORA", null],
    ["mixlora_digits", "MIXLORA", "dynamic"],
  ])
  const [choice, copy, digits] = config.adapters
  assert.deepEqual(choice.targetModules, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
  assert.equal(choice.mixlora!.topK, 2)
  assert.equal(choice.accumulationSteps, 2)
  assert.equal(copy.mixlora, null)
  // seed names w1/w2/w3 map to gate/down/up (w1 and w3 switched off: experts on down_proj only), output in HF order
  assert.deepEqual(digits.targetModules, ["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"])
  assert.equal(digits.mixlora!.topP, 0.75)
  assert.equal(digits.mixlora!.topK, null)
  assert.ok(digits.prompt!.endsWith("config/templates/short.json"))
  for (const a of config.adapters) {
    assert.ok((await Deno.stat(a.data)).isFile)
    assert.ok((await Deno.stat(a.testData!)).isFile)
  }
})

Deno.test("defaults and derived values", async () => {
  await withConfigDir(async (file) => {
    const { config } = await parseTrainConfig(
      { lora: [lora({ micro_batch_size: undefined }), moe({ name: "b" })] },
      file,
    )
    assert.equal(config.cutoffLen, 256)
    assert.equal(config.saveStep, 2000)
    assert.equal(config.candidateNum, 2)
    assert.equal(config.simultaneousNum, 2)
    assert.equal(config.strategy, "optim")
    const [a, b] = config.adapters
    assert.equal(a.peftType, "LORA")
    assert.equal(a.microBatchSize, 8)
    assert.equal(a.accumulationSteps, 1)
    assert.equal(a.testBatchSize, 8)
    assert.equal(a.optim, "adamw")
    assert.equal(a.weightDecay, 0.01)
    assert.equal(a.loraDropout, 0)
    assert.equal(a.useRslora, false)
    assert.equal(a.groupByLength, false)
    assert.equal(a.expandSide, "right")
    assert.equal(a.trainOnInputs, true)
    assert.equal(a.schedulerType, "constant")
    assert.equal(a.testData, null)
    assert.equal(a.prompt, null)
    assert.equal(a.data, join(file, "..", "train.jsonl"))
    assert.equal(loraScaling(a), 2)
    assert.equal(loraScaling({ r: 4, loraAlpha: 8, useRslora: true }), 4)
    assert.deepEqual(b.mixlora, {
      routingStrategy: "mixlora",
      numExperts: 4,
      topK: 2,
      topP: null,
      expertCapacity: null,
      actFn: null,
      routerAuxLossCoef: 0.001,
      routerInitRange: 0.02,
      jitterNoise: 0,
    })
    const sgd = (await parseTrainConfig({ lora: [lora({ optim: "sgd" })] }, file)).config.adapters[0]
    assert.equal(sgd.weightDecay, 0)
    assert.equal(warmupStepsFor({ warmupSteps: null, warmupRatio: 0.1 }, 95), 10)
    assert.equal(warmupStepsFor({ warmupSteps: 3, warmupRatio: 0 }, 95), 3)
  })
})

Deno.test("seed-era and MoE-PEFT spellings are accepted; unknown keys give one warning line", async () => {
  await withConfigDir(async (file) => {
    const seed = {
      cutoff_len: 128,
      save_step: 10,
      early_stop_test_step: 2000,
      train_lora_candidate_num: 2,
      train_lora_simultaneously_num: 1,
      train_strategy: "none",
      _comment: "comments are silent",
      lora: [
        {
          ...lora({ lora_alpha: undefined, alpha: 16, dropout: 0.05, routing_strategy: "mixtral", num_experts: 8 }),
          target_modules: { q_proj: true, k_proj: false, w1_proj: true, w2_proj: false, w3_proj: true },
          _alpha_comment: "alpha/r",
          frobnicate: 1,
        },
        moe({
          name: "sw",
          routing_strategy: "mixlora-switch",
          expert_capacity: 16,
          evaluate_batch_size: 3,
          top_p: 0.5,
          prompt: "tpl.json",
          test_data: "test.jsonl",
          scheduler_type: "constant_with_warmup",
          target_modules: { w1_gate_proj: true, w3_up_proj: true, w2_down_proj: true },
        }),
      ],
    }
    const { config, warnings } = await parseTrainConfig(seed, file)
    const [a, b] = config.adapters
    assert.equal(a.loraAlpha, 16)
    assert.equal(a.loraDropout, 0.05)
    assert.equal(a.mixlora!.routingStrategy, "mixlora")
    assert.equal(a.mixlora!.numExperts, 8)
    assert.deepEqual(a.targetModules, ["q_proj", "gate_proj", "up_proj"])
    assert.equal(b.mixlora!.routingStrategy, "switch")
    assert.equal(b.mixlora!.topK, 1)
    assert.equal(b.mixlora!.expertCapacity, 16)
    assert.equal(b.mixlora!.routerInitRange, 1.0)
    assert.equal(b.mixlora!.jitterNoise, 0.01)
    assert.equal(b.testBatchSize, 3)
    assert.equal(b.schedulerType, "constant")
    assert.ok(b.prompt!.endsWith("tpl.json"))
    assert.equal(config.strategy, "none")
    assert.equal(config.simultaneousNum, 1)
    assert.deepEqual(warnings, [
      `${file}: ignoring unknown or unused keys: early_stop_test_step, lora[0](a).frobnicate, lora[1](sw).top_p`,
    ])
  })
})

Deno.test("'alpaca' as prompt means the built-in template; a relative path falls back to the working directory", async () => {
  await withConfigDir(async (file) => {
    const { config } = await parseTrainConfig({ lora: [lora({ prompt: "alpaca" })] }, file)
    assert.equal(config.adapters[0].prompt, null)
    // a path that exists only relative to the working directory (seed configs name paths from the repo root)
    const abs = new URL("../config/data/copy_digits_train.jsonl", import.meta.url).pathname
    const cwdRelative = await parseTrainConfig({ lora: [lora({ data: relative(Deno.cwd(), abs) })] }, file)
    assert.equal(cwdRelative.config.adapters[0].data, abs)
  })
})

Deno.test("every invalid value is a ConfigError naming the adapter and the key", async () => {
  await withConfigDir(async (file) => {
    const cases: [Record<string, unknown>, string, RegExp][] = [
      [lora({ r: 0 }), "lora[0](a).r", /integer in \[1, inf\)/],
      [lora({ r: 2.5 }), "lora[0](a).r", /must be an integer/],
      [lora({ lr: 0 }), "lora[0](a).lr", /\(0, inf\)/],
      [lora({ lr: -1e-3 }), "lora[0](a).lr", /got -0.001/],
      [lora({ lr: "fast" }), "lora[0](a).lr", /must be a number/],
      [lora({ lr: undefined }), "lora[0](a).lr", /missing/],
      [lora({ batch_size: 16, micro_batch_size: 5 }), "lora[0](a).micro_batch_size", /does not divide batch_size 16/],
      [lora({ batch_size: 4, micro_batch_size: 8 }), "lora[0](a).micro_batch_size", /\[1, 4\]/],
      [lora({ num_epochs: 0 }), "lora[0](a).num_epochs", /\[1, inf\)/],
      [lora({ lora_alpha: 8, alpha: 16 }), "lora[0](a).alpha", /given twice \(as lora_alpha and alpha\)/],
      [lora({ lora_dropout: 1 }), "lora[0](a).lora_dropout", /\[0, 1\)/],
      [lora({ optim: "adam" }), "lora[0](a).optim", /"adamw", "sgd"/],
      [lora({ expand_side: "up" }), "lora[0](a).expand_side", /"right", "left"/],
      [lora({ scheduler_type: "step" }), "lora[0](a).scheduler_type", /"constant", "linear", "cosine"/],
      [lora({ warmup_steps: 2, warmup_ratio: 0.1 }), "lora[0](a).warmup_ratio", /not both/],
      [lora({ warmup_steps: -1 }), "lora[0](a).warmup_steps", /\[0, inf\)/],
      [lora({ train_on_inputs: "yes" }), "lora[0](a).train_on_inputs", /true or false/],
      [lora({ data: "missing.jsonl" }), "lora[0](a).data", /file not found: .*missing\.jsonl/],
      [lora({ data: undefined }), "lora[0](a).data", /missing/],
      [lora({ test_data: "nope.jsonl" }), "lora[0](a).test_data", /file not found/],
      [lora({ prompt: "nope.json" }), "lora[0](a).prompt", /file not found/],
      [lora({ target_modules: ["q_proj", "attn"] }), "lora[0](a).target_modules", /unknown module "attn"/],
      [lora({ target_modules: { q_proj: "yes" } }), "lora[0](a).target_modules.q_proj", /true or false/],
      [lora({ target_modules: { q_proj: false } }), "lora[0](a).target_modules", /no module enabled/],
      [lora({ target_modules: "q_proj" }), "lora[0](a).target_modules", /list of module names/],
      [lora({ name: undefined }), "lora[0].name", /missing/],
      [lora({ name: "a/b" }), "lora[0](a/b).name", /directory name/],
      [moe({ routing_strategy: "topk" }), "lora[0](a).routing_strategy", /"mixlora", "switch", "dynamic", "mixtral"/],
      [moe({ top_k: 5 }), "lora[0](a).top_k", /\[1, 4\], got 5/],
      [moe({ num_experts: undefined, routing_strategy: "mixlora" }), "lora[0](a).num_experts", /missing/],
      [moe({ num_experts: 0 }), "lora[0](a).num_experts", /\[1, inf\)/],
      [moe({ routing_strategy: "switch", top_k: 2 }), "lora[0](a).top_k", /\[1, 1\]/],
      [moe({ routing_strategy: "dynamic", top_p: 0 }), "lora[0](a).top_p", /\(0, 1\]/],
      [moe({ routing_strategy: "switch", expert_capacity: 0 }), "lora[0](a).expert_capacity", /\[1, inf\)/],
      [moe({ act_fn: "relu" }), "lora[0](a).act_fn", /silu/],
      [moe({ router_aux_loss_coef: -1 }), "lora[0](a).router_aux_loss_coef", /\[0, inf\)/],
      [moe({ jitter_noise: 1 }), "lora[0](a).jitter_noise", /\[0, 1\)/],
      [moe({ target_modules: ["q_proj", "v_proj"] }), "lora[0](a).target_modules", /gate_proj, up_proj, down_proj/],
      [moe({ peft_type: "LORA" }), "lora[0](a).peft_type", /use "MIXLORA"/],
      [lora({ peft_type: "MIXLORA" }), "lora[0](a).num_experts", /missing/],
      [lora({ peft_type: "IA3" }), "lora[0](a).peft_type", /"LORA" or "MIXLORA"/],
    ]
    for (const [adapter, key, reason] of cases) {
      await expectError({ lora: [adapter] }, file, key, reason)
    }
    // the second adapter is named in its errors
    await expectError({ lora: [lora(), lora({ name: "b", r: -1 })] }, file, "lora[1](b).r", /\[1, inf\)/)
    await expectError({ lora: [lora(), lora()] }, file, "lora[1](a).name", /duplicate adapter name "a"/)
    await expectError({ lora: [lora(), 3] }, file, "lora[1]", /must be an object/)
  })
})

Deno.test("invalid top-level values name the key", async () => {
  await withConfigDir(async (file) => {
    await expectError({ lora: [] }, file, "lora", /non-empty list/)
    await expectError({}, file, "lora", /missing/)
    await expectError({ cutoff_len: 0, lora: [lora()] }, file, "cutoff_len", /\[1, inf\)/)
    await expectError({ save_step: 1.5, lora: [lora()] }, file, "save_step", /integer/)
    await expectError({ train_strategy: "fast", lora: [lora()] }, file, "train_strategy", /"optim", "none"/)
    await expectError(
      { train_lora_candidate_num: 1, train_lora_simultaneously_num: 2, lora: [lora()] },
      file,
      "train_lora_simultaneously_num",
      /exceeds train_lora_candidate_num 1/,
    )
    await expectError([1], file, "", /not a JSON object/)
    await assert.rejects(loadTrainConfig(join(file, "..", "absent.json")), (e: unknown) => {
      assert.ok(e instanceof ConfigError)
      assert.match(e.message, /absent\.json: cannot read training config: not found/)
      return true
    })
  })
})
