/**
 * Flags shared by the commands (spec §7 names: `--base_model`, `--load_8bit`, `--device`).
 * @module
 */
import { Flag } from "effect/cli"

export const baseModelFlag = Flag.String("base_model").pipe(
  Flag.withDescription("HF LLaMA-family model directory (default: the embedded model, created on first use)"),
  Flag.withDefault(""),
)
export const load8bitFlag = Flag.Boolean("load_8bit").pipe(
  Flag.withDescription("Hold the seven projections of every layer as int8 with per-row scales"),
  Flag.withDefault(false),
)
export const deviceFlag = Flag.Literals("device", ["auto", "gpu", "cpu"] as const).pipe(
  Flag.withDescription("auto: best WebGPU adapter; gpu: refuse software adapters; cpu: TypeScript reference kernels"),
  Flag.withDefault("auto" as const),
)
