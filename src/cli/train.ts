/**
 * `deno task train`: trains every adapter of an m-LoRA config (default: config/demo.json on the embedded
 * model), packing their micro-batches into shared passes over the frozen base (spec §7). `--device cpu` runs the
 * same loop on the plain TypeScript reference (src/train/cpu_trainer.ts): slow, same results and files.
 * @module
 */
import "../no_async_hooks.ts"
import { Console, Effect, Layer } from "effect"
import { Command, Flag } from "effect/cli"
import { Device } from "../../actors/device.ts"
import { WeightCache } from "../../actors/weight_cache.ts"
import { ConfigError } from "../errors.ts"
import { ensureDefaultModel } from "../model/default_model.ts"
import { formatBytes, formatMemory, reportUserErrors, table } from "./output.ts"
import { baseModelFlag, deviceFlag, load8bitFlag } from "./flags.ts"
import { DenoCliServices, runMain } from "./platform.ts"
import { prepareTraining, runCpuTraining, runTraining } from "./train_run.ts"

const DEFAULT_CONFIG = new URL("../../config/demo.json", import.meta.url).pathname

const train = Command.make(
  "train",
  {
    baseModel: baseModelFlag,
    config: Flag.String("config").pipe(
      Flag.withDescription("m-LoRA training config (default: config/demo.json)"),
      Flag.withDefault(DEFAULT_CONFIG),
    ),
    load8bit: load8bitFlag,
    loadAdapter: Flag.Boolean("load_adapter").pipe(
      Flag.withDescription("Resume each adapter from its latest checkpoint in --dir"),
      Flag.withDefault(false),
    ),
    dir: Flag.String("dir").pipe(Flag.withDescription("Where adapters and checkpoints go"), Flag.withDefault("runs")),
    seed: Flag.Int("seed").pipe(Flag.withDescription("Seed of data order, init and dropout"), Flag.withDefault(42)),
    device: deviceFlag,
    logFile: Flag.String("log_file").pipe(
      Flag.withDescription("Append progress lines to this file"),
      Flag.withDefault(""),
    ),
    overwrite: Flag.Boolean("overwrite").pipe(
      Flag.withDescription("Replace adapters already saved in --dir"),
      Flag.withDefault(false),
    ),
  },
  (flags) =>
    Effect.gen(function* () {
      const baseDir = flags.baseModel || (yield* Effect.promise(() => ensureDefaultModel()))
      const prepared = yield* Effect.tryPromise({
        try: () => prepareTraining({ ...flags, baseDir }),
        catch: (e) => e as ConfigError,
      })
      for (const w of prepared.warnings) yield* Console.error(`warning: ${w}`)
      const layer = WeightCache.layer().pipe(Layer.provideMerge(Device.layer(flags.device)))
      const summary = yield* Effect.scoped(
        Effect.gen(function* () {
          const dev = yield* Device
          yield* Console.error(`device: ${dev.description}`)
          const loaded = yield* (yield* WeightCache).use({ dir: baseDir, load8bit: flags.load8bit })
          // --device cpu: the CPU trainer on the host weights (src/train/cpu_trainer.ts, the reference loops)
          const out = yield* dev.run((b) => {
            if (b.kind === "gpu" && loaded.kind === "gpu") return runTraining(b.ctx, loaded.base, prepared)
            if (b.kind === "cpu" && loaded.kind === "cpu") return runCpuTraining(loaded.weights, prepared)
            throw new Error("unreachable: the base weights are on another backend than the device")
          })
          if (out.backend === "gpu") yield* Console.error(formatMemory(yield* dev.memory))
          return out
        }).pipe(Effect.provide(layer)),
      )
      yield* Console.log(table(
        ["adapter", "steps", "first loss", "last loss", "tokens", "tokens/s", "status"],
        summary.rows.map((r) => [
          r.name,
          String(r.steps),
          Number.isFinite(r.firstLoss) ? r.firstLoss.toFixed(4) : "–",
          Number.isFinite(r.lastLoss) ? r.lastLoss.toFixed(4) : "–",
          String(r.tokens),
          r.tokensPerSecond.toFixed(0),
          r.status,
        ]),
      ))
      yield* Console.log(
        `${summary.microSteps} packed micro-steps in ${summary.seconds.toFixed(1)} s, ` +
          (summary.backend === "cpu"
            ? "on the CPU reference kernels"
            : `${summary.roundTrips} queue round trips, peak activations ${formatBytes(summary.peakActivationBytes)}`),
      )
      if (summary.rows.some((r) => r.status === "failed")) Deno.exitCode = 1
    }).pipe(reportUserErrors),
).pipe(Command.withDescription("Train the adapters of an m-LoRA config, packed into shared passes"))

if (import.meta.main) {
  train.pipe(Command.run({ version: "0.1.0" }), Effect.provide(DenoCliServices), runMain)
}
