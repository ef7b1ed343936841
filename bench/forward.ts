/**
 * Forward benchmark of the embedded default model: tokens/s of a packed batch, f32 vs int8 base weights,
 * measured side by side (alternating rounds, median), and queue round trips per forward.
 * @module
 */
import type { GpuContext } from "../src/gpu/context.ts"
import { uploadBase } from "../src/model/base_weights.ts"
import { ensureDefaultModel } from "../src/model/default_model.ts"
import { readLlamaConfig } from "../src/model/hf_config.ts"
import { LlamaModel } from "../src/model/llama.ts"
import { packBatch } from "../src/reference/batch.ts"
import { Rng } from "../src/util/rng.ts"

export interface ForwardRow {
  readonly weights: "f32" | "int8"
  readonly rows: number
  readonly seqLen: number
  readonly msPerForward: number
  readonly tokensPerSecond: number
  readonly roundTripsPerForward: number
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]

/** Times `rounds` forwards (loss readback) per weight kind at rows × seqLen tokens. */
export async function benchForward(
  ctx: GpuContext,
  opts: { rows?: number; seqLen?: number; rounds?: number } = {},
): Promise<ForwardRow[]> {
  const rows = opts.rows ?? 8, seqLen = opts.seqLen ?? 64, rounds = opts.rounds ?? 5
  const dir = await ensureDefaultModel()
  const config = await readLlamaConfig(dir)
  const rng = Rng.fromSeed(3)
  const batch = packBatch(
    Array.from({ length: rows }, () => Array.from({ length: seqLen }, () => rng.nextInt(config.vocabSize))),
    { padSide: "right" },
  )
  const models = {
    f32: new LlamaModel(ctx, await uploadBase(ctx, dir, config, { load8bit: false })),
    int8: new LlamaModel(ctx, await uploadBase(ctx, dir, config, { load8bit: true })),
  }
  const times: Record<"f32" | "int8", number[]> = { f32: [], int8: [] }
  const trips: Record<"f32" | "int8", number> = { f32: 0, int8: 0 }
  for (const m of Object.values(models)) await m.loss(batch) // compile + warm
  for (let r = 0; r < rounds; r++) {
    for (const kind of ["f32", "int8"] as const) {
      const before = ctx.roundTrips
      const t0 = performance.now()
      await models[kind].loss(batch)
      times[kind].push(performance.now() - t0)
      trips[kind] = ctx.roundTrips - before
    }
  }
  return (["f32", "int8"] as const).map((weights) => {
    const ms = median(times[weights])
    return {
      weights,
      rows,
      seqLen,
      msPerForward: ms,
      tokensPerSecond: rows * seqLen / (ms / 1000),
      roundTripsPerForward: trips[weights],
    }
  })
}
