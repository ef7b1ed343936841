/**
 * Child of bench/load.ts: loads one base model through the weight cache on the GPU backend and prints
 * one JSON line with the device bytes by category and this process's peak RSS (VmHWM).
 * @module
 */
import { Effect, Layer } from "effect"
import { Device } from "../actors/device.ts"
import { WeightCache } from "../actors/weight_cache.ts"
import { streamLlamaTensors } from "../src/model/checkpoint.ts"
import { readLlamaConfig } from "../src/model/hf_config.ts"
import { quantizeRows } from "../src/model/quantize.ts"

const [dir, load8bitText, mode] = Deno.args
const load8bit = load8bitText === "true"
const peakRss = () => {
  const m = Deno.readTextFileSync("/proc/self/status").match(/VmHWM:\s+(\d+) kB/)
  return m ? Number(m[1]) * 1024 : Deno.memoryUsage().rss
}
const t0 = performance.now()
const program = Effect.gen(function* () {
  const cache = yield* WeightCache
  const device = yield* Device
  const loaded = yield* cache.use({ dir, load8bit })
  if (loaded.kind !== "gpu") throw new Error("the load benchmark needs the GPU backend")
  const mem = yield* device.memory
  return mem.bytes
})
if (mode === "stream") {
  // the loader alone: read (and quantise) tensor by tensor, upload nothing
  const config = await readLlamaConfig(dir)
  let n = 0
  for await (const t of streamLlamaTensors(dir, config)) {
    if (load8bit && t.kind === "layer" && t.shape.length === 2) quantizeRows(t.data, t.shape[0], t.shape[1])
    n += t.data.byteLength
  }
  console.log(
    JSON.stringify({
      load8bit,
      baseBytes: 0,
      byCategory: {},
      peakRssBytes: peakRss(),
      seconds: (performance.now() - t0) / 1000,
      streamedBytes: n,
    }),
  )
  Deno.exit(0)
}
const layer = WeightCache.layer().pipe(Layer.provideMerge(Device.layer("auto")))
const bytes = await Effect.runPromise(Effect.scoped(Effect.provide(program, layer)))
const base = bytes.base_f32 + bytes.base_int8 + bytes.base_other
console.log(JSON.stringify({
  load8bit,
  baseBytes: base,
  byCategory: bytes,
  peakRssBytes: peakRss(),
  seconds: (performance.now() - t0) / 1000,
}))
