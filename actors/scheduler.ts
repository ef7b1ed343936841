/**
 * The batch scheduler actor: keeps the running set of adapter jobs (at most `candidates` on the device; the
 * rest wait in submission order), and loops: admit waiting jobs, run one fused micro-step (the next
 * micro-batches of up to `simultaneous` jobs packed into one forward/backward over the shared base, each job's
 * optimizer stepped when its accumulation is complete), answer the callers whose jobs finished.
 * Jobs are submitted and removed while others run. The base weights come from the WeightCache, borrowed for
 * as long as the scheduler lives.
 * @module
 */
import { Context, Deferred, Effect, Layer, Queue, Ref } from "effect"
import type { AdapterConfig } from "../src/config/train_config.ts"
import type { Example } from "../src/data/tokenize.ts"
import { ConfigError } from "../src/errors.ts"
import { LlamaModel } from "../src/model/llama.ts"
import { TrainJob } from "../src/train/job.ts"
import { Trainer } from "../src/train/trainer.ts"
import { ActorStopped } from "./actor.ts"
import { Device, type DeviceError } from "./device.ts"
import { type BaseKey, type LoadError, WeightCache } from "./weight_cache.ts"

export interface SchedulerOptions {
  readonly base: BaseKey
  /** where checkpoints and final adapters go */
  readonly dir: string
  readonly seed: number
  /** jobs on the device at once (`train_lora_candidate_num`) */
  readonly candidates: number
  /** jobs per fused batch (`train_lora_simultaneously_num`) */
  readonly simultaneous: number
  readonly strategy: "none" | "optim"
  /** most tokens (rows × padded length) of a fused batch */
  readonly maxBatchTokens?: number
  /** checkpoint every this many optimizer steps (0: never) */
  readonly saveStep?: number
  readonly padId: number
  /** progress lines (checkpoint, done, NaN) */
  readonly onEvent?: (line: string) => void
}

/** A training job: a validated adapter config (see `loadTrainConfig`) and its tokenized examples. */
export interface JobRequest {
  readonly adapter: AdapterConfig
  readonly examples: readonly Example[]
  /** continue from the latest checkpoint in `dir` */
  readonly resume?: boolean
}

export interface JobResult {
  readonly name: string
  readonly status: "done" | "failed" | "removed"
  readonly steps: number
  readonly tokens: number
  readonly lastLoss: number
  readonly failure: string
}

export interface SchedulerMetrics {
  /** jobs waiting for a place on the device */
  readonly queued: number
  readonly running: number
  readonly microSteps: number
  /** mean fraction of `simultaneous` slots filled per fused batch */
  readonly batchFill: number
  readonly tokensPerSecond: number
}

type SubmitError = ConfigError | DeviceError | LoadError | ActorStopped

interface Pending {
  readonly req: JobRequest
  readonly reply: Deferred.Deferred<JobResult, SubmitError>
}

type Message =
  | { readonly _tag: "Submit"; readonly pending: Pending }
  | { readonly _tag: "Remove"; readonly name: string; readonly reply: Deferred.Deferred<boolean> }

export class Scheduler extends Context.Service<Scheduler, {
  /** Trains the adapter to completion, packed with the others; resolves with its result. */
  readonly submit: (req: JobRequest) => Effect.Effect<JobResult, SubmitError>
  /** Stops a queued or running job (its caller gets status "removed"); false if there is none by that name. */
  readonly remove: (name: string) => Effect.Effect<boolean, ActorStopped>
  readonly metrics: Effect.Effect<SchedulerMetrics>
}>()("mixlora/Scheduler") {
  static readonly layer = (opts: SchedulerOptions) =>
    Layer.effect(
      Scheduler,
      Effect.gen(function* () {
        const device = yield* Device
        const loaded = yield* (yield* WeightCache).use(opts.base)
        if (loaded.kind !== "gpu") {
          return yield* new ConfigError({ file: "--device", key: "cpu", reason: "the scheduler needs a WebGPU device" })
        }
        const inbox = yield* Queue.unbounded<Message>()
        const waiting: Pending[] = []
        const replies = new Map<TrainJob, Pending>()
        const stats = yield* Ref.make({ microSteps: 0, filled: 0, tokens: 0, since: performance.now() })
        const trainer = yield* device.run((b) => {
          if (b.kind !== "gpu") throw new Error("unreachable: the base is on the GPU")
          return new Trainer(new LlamaModel(b.ctx, loaded.base), [], {
            saveStep: opts.saveStep ?? 0,
            simultaneous: opts.simultaneous,
            strategy: opts.strategy,
            padId: opts.padId,
            maxBatchTokens: opts.maxBatchTokens,
            onEvent: opts.onEvent,
          })
        })

        const resultOf = (job: TrainJob, status?: JobResult["status"]): JobResult => ({
          name: job.name,
          status: status ?? (job.status === "failed" ? "failed" : "done"),
          steps: job.step,
          tokens: job.tokens,
          lastLoss: job.lastLoss,
          failure: job.failure,
        })
        const release = (job: TrainJob, status?: JobResult["status"]) =>
          Effect.gen(function* () {
            trainer.remove(job)
            yield* device.run(() => job.release()).pipe(Effect.ignore)
            const p = replies.get(job)
            replies.delete(job)
            if (p) yield* Deferred.succeed(p.reply, resultOf(job, status))
          })

        // admit waiting jobs while there is room on the device
        const admit = Effect.gen(function* () {
          while (waiting.length > 0 && replies.size < opts.candidates) {
            const p = waiting.shift()!
            const exit = yield* Effect.exit(device.run((b) => {
              if (b.kind !== "gpu") throw new Error("unreachable")
              return TrainJob.create(b.ctx, loaded.config, p.req.adapter, p.req.examples, {
                seed: opts.seed,
                dir: opts.dir,
                baseModel: opts.base.dir,
                resume: p.req.resume ?? false,
              })
            }))
            if (exit._tag === "Failure") {
              yield* Deferred.failCause(p.reply, exit.cause)
              continue
            }
            replies.set(exit.value, p)
            trainer.add(exit.value)
          }
        })

        const handleRemoval = (r: { name: string; reply: Deferred.Deferred<boolean> }) =>
          Effect.gen(function* () {
            const queued = waiting.findIndex((p) => p.req.adapter.name === r.name)
            if (queued >= 0) {
              const [p] = waiting.splice(queued, 1)
              yield* Deferred.succeed<JobResult, SubmitError>(p.reply, {
                name: r.name,
                status: "removed",
                steps: 0,
                tokens: 0,
                lastLoss: NaN,
                failure: "",
              })
              yield* Deferred.succeed(r.reply, true)
              return
            }
            const job = [...replies.keys()].find((j) => j.name === r.name)
            if (job) yield* release(job, "removed")
            yield* Deferred.succeed(r.reply, job !== undefined)
          })
        const handle = (m: Message) =>
          m._tag === "Submit" ? Effect.sync(() => void waiting.push(m.pending)) : handleRemoval(m)

        const loop = Effect.gen(function* () {
          // idle: block until a message arrives; busy: take what has arrived
          if (replies.size === 0 && waiting.length === 0) yield* handle(yield* Queue.take(inbox))
          for (const m of yield* Queue.clear(inbox)) yield* handle(m)
          yield* admit
          if (replies.size === 0) return
          const before = trainer.microSteps
          const fill = Math.min(opts.simultaneous, [...replies.keys()].filter((j) => j.status === "running").length)
          const tokens0 = [...replies.keys()].reduce((n, j) => n + j.tokens, 0)
          yield* device.run(() => trainer.step())
          const tokens1 = [...replies.keys()].reduce((n, j) => n + j.tokens, 0)
          if (trainer.microSteps > before) {
            yield* Ref.update(stats, (s) => ({
              ...s,
              microSteps: s.microSteps + 1,
              filled: s.filled + fill / opts.simultaneous,
              tokens: s.tokens + tokens1 - tokens0,
            }))
          }
          for (const job of [...replies.keys()]) {
            if (job.status === "done" || job.status === "failed") yield* release(job)
          }
        })

        yield* Effect.addFinalizer(() =>
          Effect.gen(function* () {
            const stopped = new ActorStopped({ actor: "scheduler" })
            for (const m of yield* Queue.clear(inbox)) {
              if (m._tag === "Submit") waiting.push(m.pending)
              else yield* Deferred.succeed(m.reply, false)
            }
            for (const p of [...waiting, ...replies.values()]) yield* Deferred.fail(p.reply, stopped)
            for (const job of replies.keys()) yield* device.run(() => job.release()).pipe(Effect.ignore)
            yield* device.run(() => trainer.model.pool.clear()).pipe(Effect.ignore)
          })
        )
        yield* Effect.forkScoped(Effect.forever(loop))

        return Scheduler.of({
          submit: (req) =>
            Effect.gen(function* () {
              const reply = yield* Deferred.make<JobResult, SubmitError>()
              yield* Queue.offer(inbox, { _tag: "Submit", pending: { req, reply } })
              return yield* Deferred.await(reply)
            }),
          remove: (name) =>
            Effect.gen(function* () {
              const reply = yield* Deferred.make<boolean>()
              yield* Queue.offer(inbox, { _tag: "Remove", name, reply })
              return yield* Deferred.await(reply)
            }),
          metrics: Effect.gen(function* () {
            const s = yield* Ref.get(stats)
            const secs = (performance.now() - s.since) / 1000
            return {
              queued: waiting.length,
              running: replies.size,
              microSteps: s.microSteps,
              batchFill: s.microSteps > 0 ? s.filled / s.microSteps : 0,
              tokensPerSecond: secs > 0 ? s.tokens / secs : 0,
            }
          }),
        })
      }),
    )
}
