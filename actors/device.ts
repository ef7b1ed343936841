/**
 * The device actor: owns the WebGPU device (or the CPU reference backend with `--device cpu`),
 * serialises all work on it, and restarts it under supervision when it is lost. Everything on the
 * device is released when the layer's scope closes.
 *
 * Users hand it a function of the live backend; it runs inside the actor, so two callers never
 * encode into the device at once. Thrown typed errors (ShaderCompileError, DeviceOutOfMemory, ...)
 * come back as typed failures; DeviceLost and defects restart the device (and bump `generation`,
 * which tells caches that what they uploaded is gone).
 * @module
 */
import { Context, Effect, Layer } from "effect"
import { GpuContext, MEMORY_CATEGORIES, type MemoryCategory } from "../src/gpu/context.ts"
import { arenaOf } from "../src/model/adapter_arena.ts"
import { DeviceLost, DeviceOutOfMemory, GpuValidationError, NoAdapterError, ShaderCompileError } from "../src/errors.ts"
import { type ActorStopped, makeActor } from "./actor.ts"

export type DeviceChoice = "auto" | "gpu" | "cpu"

/** What a job running on the device sees. */
export type Backend =
  | { readonly kind: "gpu"; readonly ctx: GpuContext; readonly generation: number }
  | { readonly kind: "cpu"; readonly generation: number }

export type DeviceError = DeviceLost | DeviceOutOfMemory | GpuValidationError | ShaderCompileError

export interface MemoryReport {
  readonly backend: "gpu" | "cpu"
  readonly adapter: string
  readonly bytes: Readonly<Record<MemoryCategory, number>>
  readonly total: number
  /** bytes of adapter parameter and gradient blocks in use (≤ bytes.adapters, the arena's reserved slabs) */
  readonly adapterBytesInUse: number
}

const isDeviceError = (e: unknown): e is DeviceError =>
  e instanceof DeviceLost || e instanceof DeviceOutOfMemory || e instanceof GpuValidationError ||
  e instanceof ShaderCompileError

export class Device extends Context.Service<Device, {
  readonly kind: "gpu" | "cpu"
  /** e.g. "llvmpipe (LLVM 15.0.6, 256 bits) [software]" or "CPU reference kernels" */
  readonly description: string
  /** Runs `job` with exclusive use of the backend. */
  readonly run: <A>(job: (backend: Backend) => Promise<A> | A) => Effect.Effect<A, DeviceError | ActorStopped>
  /** Bytes on the device by category. */
  readonly memory: Effect.Effect<MemoryReport, ActorStopped>
  /** Incremented on every restart of the device; caches compare it to know their uploads are gone. */
  readonly generation: Effect.Effect<number, ActorStopped>
}>()("mixlora/Device") {
  /** The device for `choice`; fails with NoAdapterError when `gpu` (or `auto`) finds no adapter. */
  static readonly layer = (choice: DeviceChoice) =>
    Layer.effect(
      Device,
      Effect.gen(function* () {
        if (choice === "cpu") return yield* cpuDevice
        // the first open happens here so that "no adapter" is a typed failure of the layer
        const first = yield* Effect.tryPromise({
          try: () => GpuContext.create({ kind: choice }),
          catch: (e) => e instanceof NoAdapterError ? e : new NoAdapterError({ reason: String(e) }),
        })
        let opened: GpuContext | null = first
        let generation = 0
        const open = Effect.acquireRelease(
          Effect.promise(async () => {
            const ctx = opened ?? await GpuContext.create({ kind: choice })
            opened = null
            return { ctx, generation }
          }),
          (s) => Effect.sync(() => s.ctx.destroy()),
        )
        const actor = yield* makeActor({
          name: "device",
          init: open,
          restartOn: (e) => e instanceof DeviceLost,
          onRestart: (n, reason) =>
            Effect.sync(() => {
              generation = n
            }).pipe(Effect.andThen(Effect.logWarning(`device restarted (${n}) after: ${String(reason)}`))),
        })
        return Device.of({
          kind: "gpu",
          description: first.description,
          run: <A>(job: (b: Backend) => Promise<A> | A) =>
            actor.ask((s) =>
              Effect.tryPromise({
                try: async () => {
                  s.ctx.ensureAlive()
                  return await job({ kind: "gpu", ctx: s.ctx, generation: s.generation })
                },
                catch: (e) => e,
              }).pipe(Effect.catch((e) => isDeviceError(e) ? Effect.fail(e) : Effect.die(e)))
            ),
          memory: actor.ask((s) =>
            Effect.sync(() => report("gpu", first.description, s.ctx.memory(), arenaOf(s.ctx).usedBytes()))
          ),
          generation: actor.ask((s) => Effect.succeed(s.generation)),
        })
      }),
    )
}

const report = (
  backend: "gpu" | "cpu",
  adapter: string,
  bytes: Record<MemoryCategory, number>,
  adapterBytesInUse = 0,
): MemoryReport => ({
  backend,
  adapter,
  bytes,
  total: MEMORY_CATEGORIES.reduce((n, c) => n + bytes[c], 0),
  adapterBytesInUse,
})

/** `--device cpu`: the plain TypeScript reference kernels; still serialised through an actor. */
const cpuDevice = Effect.gen(function* () {
  const actor = yield* makeActor({ name: "device(cpu)", init: Effect.succeed({ generation: 0 }) })
  const zero = Object.fromEntries(MEMORY_CATEGORIES.map((c) => [c, 0])) as Record<MemoryCategory, number>
  return Device.of({
    kind: "cpu",
    description: "CPU reference kernels (src/reference)",
    run: <A>(job: (b: Backend) => Promise<A> | A) =>
      actor.ask(() =>
        Effect.tryPromise({ try: async () => await job({ kind: "cpu", generation: 0 }), catch: (e) => e }).pipe(
          Effect.catch((e) => isDeviceError(e) ? Effect.fail(e) : Effect.die(e)),
        )
      ),
    memory: Effect.succeed(report("cpu", "CPU reference kernels", zero)),
    generation: Effect.succeed(0),
  })
})
