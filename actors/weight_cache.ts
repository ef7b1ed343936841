/**
 * The base-weight cache: each (model directory, int8?) is loaded onto the device once and shared,
 * ref-counted, by every user (trainers, evaluators, the scheduler). A user holds the weights for as
 * long as its Scope is open; the last release frees them after `idleTimeToLive`. If the device was
 * restarted since the weights were uploaded (its generation changed), they are loaded again.
 * @module
 */
import { Context, Duration, Effect, Layer, RcMap, Scope } from "effect"
import { ConfigError, SafetensorsError } from "../src/errors.ts"
import { readLlamaConfig } from "../src/model/hf_config.ts"
import { type DeviceBase, loadHostBase, releaseBase, uploadBase } from "../src/model/base_weights.ts"
import type { LlamaConfig, LlamaWeights } from "../src/model/types.ts"
import type { ActorStopped } from "./actor.ts"
import { Device, type DeviceError } from "./device.ts"

export interface BaseKey {
  /** HF model directory */
  readonly dir: string
  /** hold the seven projections as int8 (spec §4) */
  readonly load8bit: boolean
}

/** A loaded base model: on the device (gpu backend) or on the host (cpu backend). */
export type LoadedBase =
  | { readonly kind: "gpu"; readonly config: LlamaConfig; readonly base: DeviceBase; readonly generation: number }
  | { readonly kind: "cpu"; readonly config: LlamaConfig; readonly weights: LlamaWeights; readonly generation: number }

export type LoadError = ConfigError | SafetensorsError | DeviceError | ActorStopped

const encode = (k: BaseKey) => JSON.stringify([k.dir, k.load8bit])
const decode = (s: string): BaseKey => {
  const [dir, load8bit] = JSON.parse(s) as [string, boolean]
  return { dir, load8bit }
}

export class WeightCache extends Context.Service<WeightCache, {
  /** Borrows the base model for as long as the caller's scope is open (loading it if needed). */
  readonly use: (key: BaseKey) => Effect.Effect<LoadedBase, LoadError, Scope.Scope>
  /** Keys currently held. */
  readonly loaded: Effect.Effect<readonly BaseKey[]>
}>()("mixlora/WeightCache") {
  static readonly layer = (opts: {
    readonly idleTimeToLive?: Duration.Input
    /** progress per tensor (the CLI draws a bar) */
    readonly onTensor?: (done: number, total: number, name: string) => void
  } = {}) =>
    Layer.effect(
      WeightCache,
      Effect.gen(function* () {
        const device = yield* Device
        const load = (key: BaseKey) =>
          Effect.gen(function* () {
            const config = yield* Effect.tryPromise({
              try: () => readLlamaConfig(key.dir),
              catch: (e) => e as ConfigError,
            })
            const loadOpts = { load8bit: key.load8bit, onTensor: opts.onTensor }
            return yield* device.run(async (b): Promise<LoadedBase> =>
              b.kind === "gpu"
                ? {
                  kind: "gpu",
                  config,
                  base: await uploadBase(b.ctx, key.dir, config, loadOpts),
                  generation: b.generation,
                }
                : { kind: "cpu", config, weights: await loadHostBase(key.dir, config, loadOpts), generation: 0 }
            )
          })
        const map = yield* RcMap.make({
          lookup: (k: string) =>
            Effect.acquireRelease(
              load(decode(k)),
              (loaded) =>
                loaded.kind === "gpu"
                  ? device.run((b) => {
                    // after a device restart the old buffers are already gone with the old device
                    if (b.kind === "gpu" && b.generation === loaded.generation) releaseBase(b.ctx, loaded.base)
                  }).pipe(Effect.ignore)
                  : Effect.void,
            ),
          idleTimeToLive: opts.idleTimeToLive ?? Duration.seconds(30),
        })
        const use = (key: BaseKey): Effect.Effect<LoadedBase, LoadError, Scope.Scope> =>
          Effect.gen(function* () {
            const k = encode(key)
            const loaded = yield* RcMap.get(map, k)
            if (loaded.generation === (yield* device.generation)) return loaded
            yield* RcMap.invalidate(map, k)
            return yield* RcMap.get(map, k)
          })
        return WeightCache.of({
          use,
          loaded: Effect.map(RcMap.keys(map), (keys) => Array.from(keys, decode)),
        })
      }),
    )
}
