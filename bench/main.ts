/**
 * `deno task bench`: every benchmark of the project, figures measured side by side in one run.
 * Sections: base loading (device bytes f32 vs int8, peak host RSS), matmul kernels, forward pass, training,
 * generation and evaluation (packed across adapters vs one adapter at a time).
 * `deno task bench load|matmul|forward|train|generate|eval` runs one section.
 * @module
 */
import { formatBytes, table } from "../src/cli/output.ts"
import { BIG_CONFIG, makeBigCheckpoint, measureLoad } from "./load.ts"

const only = Deno.args[0]
const want = (s: string) => !only || only === s

if (want("load")) {
  const dir = new URL("../.cache/bench-llama-1g", import.meta.url).pathname
  console.log(
    `\n## base loading: generated LLaMA checkpoint, ${BIG_CONFIG.num_hidden_layers} layers D=${BIG_CONFIG.hidden_size} F=${BIG_CONFIG.intermediate_size}`,
  )
  const t0 = performance.now()
  const size = await makeBigCheckpoint(dir)
  console.log(
    `checkpoint: ${formatBytes(size)} of F32 in ${BIG_CONFIG.num_hidden_layers + 1} shards (ready in ${
      ((performance.now() - t0) / 1000).toFixed(1)
    } s)`,
  )
  const f32 = await measureLoad(dir, false)
  const q8 = await measureLoad(dir, true)
  const streamF32 = await measureLoad(dir, false, "stream")
  const streamQ8 = await measureLoad(dir, true, "stream")
  const proj = (f: typeof f32) => f.byCategory.base_f32 + f.byCategory.base_int8
  console.log(table(["", "f32", "--load_8bit", "ratio"], [
    ["projections on device", formatBytes(proj(f32)), formatBytes(proj(q8)), (proj(q8) / proj(f32)).toFixed(3) + "×"],
    [
      "whole base on device",
      formatBytes(f32.baseBytes),
      formatBytes(q8.baseBytes),
      (q8.baseBytes / f32.baseBytes).toFixed(3) + "×",
    ],
    ["peak RSS, load onto device", formatBytes(f32.peakRssBytes), formatBytes(q8.peakRssBytes), ""],
    [
      "  minus bytes held on device",
      formatBytes(f32.peakRssBytes - f32.baseBytes),
      formatBytes(q8.peakRssBytes - q8.baseBytes),
      "",
    ],
    ["peak RSS, loader alone", formatBytes(streamF32.peakRssBytes), formatBytes(streamQ8.peakRssBytes), ""],
    ["load time", `${f32.seconds.toFixed(1)} s`, `${q8.seconds.toFixed(1)} s`, ""],
  ]))
  console.log(
    `loader alone, peak RSS / checkpoint size: f32 ${(streamF32.peakRssBytes / size).toFixed(2)}, int8 ${
      (streamQ8.peakRssBytes / size).toFixed(2)
    }`,
  )
  console.log("(a software device's buffers live in this process, so its RSS includes the bytes held on the device)")
  console.log("(the whole-base ratio includes embed_tokens, lm_head and norms, which stay f32 by spec §4)")
}

if (want("matmul")) {
  const { GpuContext } = await import("../src/gpu/context.ts")
  const { benchMatmul, formatMatmulBench } = await import("./matmul.ts")
  const ctx = await GpuContext.create()
  console.log(`\n## matmul kernels, GFLOP/s = 2MNK / time (${ctx.description})`)
  console.log(formatMatmulBench(await benchMatmul(ctx, { rounds: 5 })))
  ctx.destroy()
}

if (want("forward")) {
  const { GpuContext } = await import("../src/gpu/context.ts")
  const { benchForward } = await import("./forward.ts")
  const ctx = await GpuContext.create()
  console.log(`\n## forward pass of the embedded default model (${ctx.description})`)
  const rows = await benchForward(ctx)
  console.log(table(
    ["weights", "batch", "ms / forward", "tokens/s", "round trips / forward"],
    rows.map((r) => [
      r.weights,
      `${r.rows}×${r.seqLen}`,
      r.msPerForward.toFixed(1),
      r.tokensPerSecond.toFixed(0),
      String(r.roundTripsPerForward),
    ]),
  ))
  ctx.destroy()
}

if (want("train")) {
  const { GpuContext } = await import("../src/gpu/context.ts")
  const { benchTrain, MIN_ROW_EXAMPLES, TRAIN_BENCH_ROUNDS } = await import("./train.ts")
  const { uploadBase } = await import("../src/model/base_weights.ts")
  const { ensureDefaultModel } = await import("../src/model/default_model.ts")
  const { readLlamaConfig } = await import("../src/model/hf_config.ts")
  const ctx = await GpuContext.create()
  const dir = await ensureDefaultModel()
  const base = await uploadBase(ctx, dir, await readLlamaConfig(dir), { load8bit: true })
  console.log(`\n## training, embedded model (int8 base), K adapters packed vs one after another (${ctx.description})`)
  console.log(
    "adapters alternate LoRA r=8 (q,k,v,o) and MixLoRA top-2 of 4 (q,v + gate/up/down); micro-batch 4, batch 8; " +
      `max(48, ${MIN_ROW_EXAMPLES}/K) examples of 24–40 tokens each, 1 epoch; ` +
      `each row the faster of ${TRAIN_BENCH_ROUNDS} runs (other processes: cores they kept busy during that run)`,
  )
  const loadavg = () =>
    Deno.readTextFile("/proc/loadavg").then((t) => t.split(" ").slice(0, 3).join(" "), () => "unknown")
  const loadBefore = await loadavg()
  const rows = await benchTrain(ctx, base)
  console.log(
    `(1/5/15-minute load average before ${loadBefore}, after ${await loadavg()}; ` +
      `${navigator.hardwareConcurrency} cores)`,
  )
  console.log(table(
    [
      "K",
      "mode",
      "examples / adapter",
      "tokens/s",
      "seconds",
      "optimizer steps",
      "round trips / opt step",
      "peak device memory",
      "other processes (cores)",
    ],
    rows.map((r) => [
      String(r.K),
      r.mode,
      String(r.examplesPerAdapter),
      r.tokensPerSecond.toFixed(0),
      r.seconds.toFixed(1),
      String(r.optimizerSteps),
      r.roundTripsPerOptimizerStep.toFixed(2),
      formatBytes(r.peakDeviceBytes),
      r.otherCores === null ? "?" : r.otherCores.toFixed(2),
    ]),
  ))
  console.log(
    "\ndevice memory at the peak: base weights; adapter state = the adapters' arena blocks (parameters + gradients) " +
      "+ optimizer (AdamW m, v); arena reserved = the adapter slabs (blocks in use + free room); activations, of " +
      "which the activation pool holds a buffer per size class seen (held) and uses at most 'in use' at once",
  )
  console.log(table(
    ["K", "mode", "base", "adapter blocks", "optimizer", "arena reserved", "activations", "pool held / in use", "peak"],
    rows.map((r) => [
      String(r.K),
      r.mode,
      formatBytes(r.peak.base),
      formatBytes(r.peak.adapterBlocks),
      formatBytes(r.peak.optimizer),
      formatBytes(r.peak.arenaReserved),
      formatBytes(r.peak.activations),
      `${formatBytes(r.poolHeldBytes)} / ${formatBytes(r.poolPeakInUseBytes)}`,
      formatBytes(r.peak.total),
    ]),
  ))
  // one adapter's state by kind: K = 1 is one LoRA job, K = 2 adds one MixLoRA job
  const state1 = rows.find((r) => r.K === 1)?.adapterStateBytes, state2 = rows.find((r) => r.K === 2)?.adapterStateBytes
  if (state1 !== undefined && state2 !== undefined) {
    console.log(
      `one adapter's state (arena block + optimizer): LoRA ${formatBytes(state1)}, MixLoRA ${
        formatBytes(state2 - state1)
      }; the base: ${formatBytes(rows[0].peak.base)}`,
    )
  }
  for (const K of new Set(rows.map((r) => r.K))) {
    const p = rows.find((r) => r.K === K && r.mode === "packed")!,
      s = rows.find((r) => r.K === K && r.mode === "sequential")!
    console.log(`K=${K}: packed / sequential tokens/s = ${(p.tokensPerSecond / s.tokensPerSecond).toFixed(2)}×`)
    // packed peak = base + K × (mean adapter state) + activations + the arena's free room (slabs are 2 × 4 MiB)
    const a = p.adapterStateBytes / K, m = p.peak
    const predicted = m.base + K * a + m.activations
    console.log(
      `K=${K}: packed peak ${formatBytes(m.total)} vs base + K × one adapter's state + activations = ${
        formatBytes(m.base)
      } + ${K} × ${formatBytes(a)} + ${formatBytes(m.activations)} (${4 * K}-row passes) = ${
        formatBytes(predicted)
      } (+ ${formatBytes(m.total - predicted)} arena room not in use); K × base = ${formatBytes(K * m.base)}`,
    )
  }
  ctx.destroy()
}

if (want("generate")) {
  const { GpuContext } = await import("../src/gpu/context.ts")
  const { benchGenerate, formatGenerateBench } = await import("./generate.ts")
  const ctx = await GpuContext.create()
  console.log(
    `\n## generation, embedded model (f32 base), 4 adapters packed into one generate call vs one at a time (${ctx.description})`,
  )
  console.log("LoRA r=8 (q,k,v,o), MixLoRA top-2 / switch / dynamic of 4 experts (q,v + gate/up/down); greedy, no EOS")
  console.log(formatGenerateBench(await benchGenerate(ctx)))
  ctx.destroy()
}

if (want("eval")) {
  const { GpuContext } = await import("../src/gpu/context.ts")
  const { benchEval, formatEvalBench } = await import("./eval.ts")
  const ctx = await GpuContext.create()
  console.log(
    `\n## evaluation, embedded model (f32 base), demo config's 3 fresh adapters on their test data, packed vs one at a time (${ctx.description})`,
  )
  console.log("tokens: real tokens forwarded (loss rows + wrong-choice rows); best of 2 rounds after a short warm-up")
  console.log(formatEvalBench(await benchEval(ctx)))
  ctx.destroy()
}
