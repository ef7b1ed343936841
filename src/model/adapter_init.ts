/**
 * Fresh adapter weights (spec §3), as MoE-PEFT initialises them:
 * - LoRA A (R, in): torch `kaiming_uniform_(a=√5)`: bound = gain · √(3 / fan_in), gain = √(2 / (1 + a²)) = √(1/3),
 *   so A ~ U(−1/√in, 1/√in);
 * - LoRA B (out, R): zeros (the adapter starts as the identity on the base model);
 * - router `moe_gate` (E, D): normal(0, router_init_range).
 * Every tensor draws from its own stream `rng.fork(name)` (name as in the checkpoint, spec §5), so the values do not
 * depend on the order of generation and adding a target leaves the other tensors unchanged. `rng` is not advanced.
 * @module
 */
import type { Rng } from "../util/rng.ts"
import {
  type AdapterLayerWeights,
  type AdapterSpec,
  type AdapterWeights,
  FFN_PROJECTIONS,
  type FfnProjection,
  type LoraPair,
  projectionShape,
} from "./adapter.ts"
import type { LlamaConfig, Projection } from "./types.ts"

/** The model dimensions an adapter's shapes depend on. */
export type AdapterModelDims = Pick<
  LlamaConfig,
  "hiddenSize" | "intermediateSize" | "numHeads" | "numKvHeads" | "headDim" | "numLayers"
>

const isFfn = (p: Projection): p is FfnProjection => (FFN_PROJECTIONS as readonly string[]).includes(p)

/** A (R, in) ~ U(−1/√in, 1/√in), B (out, R) = 0. */
function initPair(rng: Rng, name: string, R: number, inDim: number, outDim: number): LoraPair {
  const stream = rng.fork(`${name}.lora_A.weight`)
  const bound = 1 / Math.sqrt(inDim)
  const a = new Float32Array(R * inDim)
  for (let i = 0; i < a.length; i++) a[i] = stream.uniform(-bound, bound)
  return { a, b: new Float32Array(outDim * R) }
}

/** Initial weights of `spec` for a model of `config`'s shape, drawn from forks of `rng`. */
export function initAdapter(spec: AdapterSpec, config: AdapterModelDims, rng: Rng): AdapterWeights {
  const R = spec.r
  const layers: AdapterLayerWeights[] = []
  for (let l = 0; l < config.numLayers; l++) {
    const lora: Partial<Record<Projection, LoraPair>> = {}
    if (spec.kind === "lora") {
      for (const p of spec.targets) {
        const { inDim, outDim } = projectionShape(p, config)
        const block = isFfn(p) ? "mlp" : "self_attn"
        lora[p] = initPair(rng, `base_model.model.model.layers.${l}.${block}.${p}`, R, inDim, outDim)
      }
      layers.push({ lora })
      continue
    }
    const moe = spec.moe
    if (!moe) throw new RangeError(`adapter ${spec.name}: kind "mixlora" without moe settings`)
    for (const p of spec.targets) {
      if (isFfn(p)) continue
      const { inDim, outDim } = projectionShape(p, config)
      lora[p] = initPair(rng, `mixlora.layers.${l}.self_attn.${p}`, R, inDim, outDim)
    }
    const D = config.hiddenSize
    const routerName = `mixlora.layers.${l}.mlp.moe_gate.weight`
    const rs = rng.fork(routerName)
    const router = new Float32Array(moe.numExperts * D)
    for (let i = 0; i < router.length; i++) router[i] = rs.normal(0, moe.routerInitRange)
    const experts: Partial<Record<FfnProjection, LoraPair>>[] = []
    for (let e = 0; e < moe.numExperts; e++) {
      const ex: Partial<Record<FfnProjection, LoraPair>> = {}
      for (const p of FFN_PROJECTIONS) {
        if (!spec.targets.includes(p)) continue
        const { inDim, outDim } = projectionShape(p, config)
        ex[p] = initPair(rng, `mixlora.layers.${l}.mlp.${p}.experts.${e}`, R, inDim, outDim)
      }
      experts.push(ex)
    }
    layers.push({ lora, router, experts })
  }
  return { spec, layers }
}
