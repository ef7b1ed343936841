/**
 * Test fixtures shared by several test files (not a test itself: the leading underscore keeps it out of the
 * `*_test.ts` pattern).
 * @module
 */
import type { AdapterSpec, AdapterWeights } from "../src/model/adapter.ts"
import { type AdapterModelDims, initAdapter } from "../src/model/adapter_init.ts"
import { Rng } from "../src/util/rng.ts"

/**
 * initAdapter, then every B drawn from N(0, std²) (B is 0 at init) so that the adapter changes the output:
 * deterministic in `seed`.
 */
export function randomAdapter(spec: AdapterSpec, config: AdapterModelDims, seed: number, std: number): AdapterWeights {
  const w = initAdapter(spec, config, Rng.fromSeed(seed))
  const rng = Rng.fromSeed(seed + 1)
  const fill = (a: Float32Array) => a.forEach((_, i) => (a[i] = rng.normal(0, std)))
  for (const l of w.layers) {
    for (const p of Object.values(l.lora)) fill(p!.b)
    for (const e of l.experts ?? []) for (const p of Object.values(e)) fill(p!.b)
  }
  return w
}
