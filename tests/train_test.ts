/**
 * Training end to end on the embedded model with small data: exact resume after a kill, NaN handling,
 * and bad training configs through the CLI.
 */
import assert from "node:assert/strict"
import { prepareTraining, runTraining } from "../src/cli/train_run.ts"
import { GpuContext } from "../src/gpu/context.ts"
import { loadAdapter } from "../src/model/adapter_io.ts"
import { uploadBase } from "../src/model/base_weights.ts"
import { ensureDefaultModel } from "../src/model/default_model.ts"
import { readLlamaConfig } from "../src/model/hf_config.ts"
import { LlamaModel } from "../src/model/llama.ts"
import { TrainJob } from "../src/train/job.ts"
import { Trainer } from "../src/train/trainer.ts"

const DATA = new URL("../config/data/", import.meta.url).pathname
const ctx = await GpuContext.create()
const baseDir = await ensureDefaultModel()
const modelConfig = await readLlamaConfig(baseDir)
const base = await uploadBase(ctx, baseDir, modelConfig, { load8bit: true })

/** A small two-adapter config (LoRA + MixLoRA top-2) over the first `records` demo records. */
async function smallConfig(dir: string, opts: { records?: number; lr?: number; saveStep?: number } = {}) {
  const take = async (name: string) => {
    const lines = (await Deno.readTextFile(`${DATA}/${name}`)).trim().split("\n").slice(0, opts.records ?? 24)
    await Deno.writeTextFile(`${dir}/${name}`, lines.join("\n") + "\n")
    return name
  }
  const common = {
    optim: "adamw",
    batch_size: 8,
    micro_batch_size: 4,
    num_epochs: 2,
    r: 4,
    lora_alpha: 8,
    lora_dropout: 0.1,
    train_on_inputs: false,
  }
  const config = {
    cutoff_len: 64,
    save_step: opts.saveStep ?? 2,
    train_lora_candidate_num: 2,
    train_lora_simultaneously_num: 2,
    train_strategy: "none",
    lora: [
      {
        ...common,
        name: "copy",
        lr: opts.lr ?? 3e-3,
        target_modules: ["q_proj", "v_proj", "down_proj"],
        data: await take("copy_digits_train.jsonl"),
      },
      {
        ...common,
        name: "moe",
        lr: 3e-3,
        target_modules: ["q_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        routing_strategy: "mixlora",
        num_experts: 3,
        top_k: 2,
        jitter_noise: 0.01,
        data: await take("category_choice_train.jsonl"),
        expand_side: "left",
      },
    ],
  }
  await Deno.writeTextFile(`${dir}/train.json`, JSON.stringify(config))
  return `${dir}/train.json`
}

const flags = (dir: string, config: string, extra: Partial<{ loadAdapter: boolean; overwrite: boolean }> = {}) => ({
  baseDir,
  config,
  dir: `${dir}/out`,
  seed: 7,
  loadAdapter: false,
  overwrite: false,
  logFile: "",
  ...extra,
})

Deno.test("train: killed after a checkpoint and resumed with --load_adapter ends at the uninterrupted weights", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "mixlora-train-" })
  try {
    const config = await smallConfig(tmp)
    // uninterrupted
    const full = await prepareTraining(flags(`${tmp}/a`, config))
    await runTraining(ctx, base, full)
    // interrupted: run the trainer until the first checkpoint of every job, then drop everything
    const part = await prepareTraining(flags(`${tmp}/b`, config))
    const jobs = await Promise.all(
      part.train.adapters.map((a) =>
        TrainJob.create(ctx, part.model, a, part.examples.get(a.name)!, {
          seed: 7,
          dir: `${tmp}/b/out`,
          baseModel: baseDir,
          resume: false,
        })
      ),
    )
    const trainer = new Trainer(new LlamaModel(ctx, base), jobs, {
      saveStep: 2,
      simultaneous: 2,
      strategy: "none",
      padId: part.padId,
    })
    while (jobs.some((j) => j.lastCheckpoint < 2)) await trainer.step()
    for (const j of jobs) j.release()
    // resume from the checkpoints
    const resumed = await prepareTraining(flags(`${tmp}/b`, config, { loadAdapter: true }))
    await runTraining(ctx, base, resumed)
    for (const name of ["copy", "moe"]) {
      const a = await loadAdapter(`${tmp}/a/out`, name, modelConfig)
      const b = await loadAdapter(`${tmp}/b/out`, name, modelConfig)
      assert.deepEqual(b.layers, a.layers, `${name}: resumed weights differ from the uninterrupted run`)
    }
  } finally {
    await Deno.remove(tmp, { recursive: true })
  }
})

Deno.test("train: a NaN loss stops that adapter, keeps its last good checkpoint; the other finishes", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "mixlora-nan-" })
  try {
    // lr 1e30 makes the first update overflow; the second step's loss is NaN
    const config = await smallConfig(tmp, { lr: 1e30, saveStep: 1 })
    const p = await prepareTraining(flags(tmp, config))
    const summary = await runTraining(ctx, base, p)
    const copy = summary.rows.find((r) => r.name === "copy")!
    const moe = summary.rows.find((r) => r.name === "moe")!
    assert.match(copy.status, /^failed: loss is (NaN|Infinity|-Infinity)/)
    assert.equal(moe.status, "done")
    const saved = [...Deno.readDirSync(`${tmp}/out/copy`)].map((e) => e.name)
    assert.ok(saved.includes("checkpoint-1"), `kept checkpoints: ${saved}`)
    await loadAdapter(`${tmp}/out`, "moe", modelConfig) // the healthy adapter was saved
  } finally {
    await Deno.remove(tmp, { recursive: true })
  }
})

const TRAIN = new URL("../src/cli/train.ts", import.meta.url).pathname
const PRELOAD = new URL("../src/no_async_hooks.ts", import.meta.url).pathname

for (
  const [what, edit, pattern] of [
    ["r ≤ 0", (c: Record<string, unknown>[]) => (c[0].r = 0), /lora\[0\]\(copy\)\.r/],
    [
      "batch not divisible by micro-batch",
      (c: Record<string, unknown>[]) => (c[1].batch_size = 7),
      /lora\[1\]\(moe\)\.(micro_)?batch_size/,
    ],
    [
      "unknown routing strategy",
      (c: Record<string, unknown>[]) => (c[1].routing_strategy = "sparse"),
      /lora\[1\]\(moe\)\.routing_strategy/,
    ],
    ["missing data file", (c: Record<string, unknown>[]) => (c[0].data = "nope.jsonl"), /lora\[0\]\(copy\)\.data/],
  ] as const
) {
  Deno.test(`train cli: ${what} → one line naming adapter and key, exit 1, nothing saved touched`, async () => {
    const tmp = await Deno.makeTempDir({ prefix: "mixlora-badcfg-" })
    try {
      const file = await smallConfig(tmp)
      const cfg = JSON.parse(await Deno.readTextFile(file))
      edit(cfg.lora)
      await Deno.writeTextFile(file, JSON.stringify(cfg))
      await Deno.mkdir(`${tmp}/out/copy`, { recursive: true })
      await Deno.writeTextFile(`${tmp}/out/copy/adapter_config.json`, "{}")
      const out = await new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", "--preload", PRELOAD, TRAIN, "--config", file, "--dir", `${tmp}/out`, "--load_adapter"],
        stdout: "piped",
        stderr: "piped",
        env: { NO_COLOR: "1" },
      }).output()
      const lines = new TextDecoder().decode(out.stderr).trim().split("\n").filter((l) => l.startsWith("error"))
      assert.equal(out.code, 1)
      assert.equal(lines.length, 1, new TextDecoder().decode(out.stderr))
      assert.match(lines[0], pattern)
      assert.equal(await Deno.readTextFile(`${tmp}/out/copy/adapter_config.json`), "{}")
    } finally {
      await Deno.remove(tmp, { recursive: true })
    }
  })
}
