/**
 * A batching actor: callers submit requests one at a time; the actor collects them into batches and serves each
 * batch with one call of `run`, then answers every caller with its own result.
 *
 * Collection (the guide's Scheduler loop): the first request of a batch opens a window of `windowMs`; requests
 * that arrive before it closes join, until the next one would take the batch's Σ cost over `tokenBudget` (that
 * one is carried over to open the next batch) or the batch holds `maxItems`. Time is read through Effect's
 * `Clock`, so tests drive the window with `TestClock`. A request whose cost alone exceeds the budget still forms a
 * batch of its own (callers that must bound memory reject such requests before submitting).
 *
 * Lifetimes: `onDone(item)` runs exactly once per submitted item, after its batch was served (or failed), or
 * when the actor stops with the item still queued; owners release what the item holds there (e.g. an adapter
 * reference), never when the caller stops waiting. Closing the scope fails queued and in-flight callers with
 * `ActorStopped`.
 * @module
 */
import { Clock, Deferred, Effect, Exit, Option, Queue, Scope } from "effect"
import { ActorStopped } from "./actor.ts"

export interface BatcherOptions<I, A, E> {
  /** names the actor in ActorStopped */
  readonly name: string
  /** how long the first request of a batch waits for others (ms); timers are ≈ 2 ms coarse on Deno */
  readonly windowMs: number
  /** Σ cost of a batch is at most this (unless one request alone exceeds it) */
  readonly tokenBudget: number
  /** requests per batch at most */
  readonly maxItems: number
  /** cost of one request in budget units (tokens) */
  readonly cost: (item: I) => number
  /** serves one batch: one Exit per item, in order; a failure of the effect fails every item of the batch */
  readonly run: (batch: readonly I[]) => Effect.Effect<ReadonlyArray<Exit.Exit<A, E>>, E>
  /** runs once per item when it leaves the actor (answered, failed or dropped at shutdown) */
  readonly onDone?: (item: I) => void
}

/** Counters since the batcher started. */
export interface BatcherStats {
  /** batches served (calls of `run`) */
  readonly batches: number
  /** requests in those batches */
  readonly items: number
  /** Σ cost of those batches */
  readonly cost: number
  /** requests waiting for a batch (queued, plus one carried over) */
  readonly depth: number
}

export interface Batcher<I, A, E> {
  /** Queues `item` and waits for its own result. */
  readonly submit: (item: I) => Effect.Effect<A, E | ActorStopped>
  readonly stats: Effect.Effect<BatcherStats>
}

interface Envelope<I, A, E> {
  readonly item: I
  readonly cost: number
  readonly reply: Deferred.Deferred<A, E | ActorStopped>
}

/** Starts the actor in the current scope. */
export const makeBatcher = <I, A, E>(
  opts: BatcherOptions<I, A, E>,
): Effect.Effect<Batcher<I, A, E>, never, Scope.Scope> =>
  Effect.gen(function* () {
    const mailbox = yield* Queue.unbounded<Envelope<I, A, E>>()
    const stopped = new ActorStopped({ actor: opts.name })
    let carry: Envelope<I, A, E> | undefined
    const counters = { batches: 0, items: 0, cost: 0 }
    const done = (envs: readonly Envelope<I, A, E>[]) => envs.forEach((e) => opts.onDone?.(e.item))

    const collect = Effect.gen(function* () {
      const first = carry ?? (yield* Queue.take(mailbox))
      carry = undefined
      const batch = [first]
      let cost = first.cost
      const deadline = (yield* Clock.currentTimeMillis) + opts.windowMs
      while (cost < opts.tokenBudget && batch.length < opts.maxItems) {
        const remaining = deadline - (yield* Clock.currentTimeMillis)
        if (remaining <= 0) break
        // poll first: a timeout around every take costs a timer and a race per message (guide §9.9)
        const polled = yield* Queue.poll(mailbox)
        const next = Option.isSome(polled) ? polled : yield* Effect.timeoutOption(Queue.take(mailbox), remaining)
        if (Option.isNone(next)) break
        if (cost + next.value.cost > opts.tokenBudget) {
          carry = next.value
          break
        }
        batch.push(next.value)
        cost += next.value.cost
      }
      return { batch, cost }
    })

    const serve = ({ batch, cost }: { batch: Envelope<I, A, E>[]; cost: number }) =>
      Effect.suspend(() => {
        counters.batches++
        counters.items += batch.length
        counters.cost += cost
        return Effect.exit(opts.run(batch.map((e) => e.item)))
      }).pipe(
        Effect.flatMap((exit) =>
          Effect.sync(() => {
            batch.forEach((e, i) => {
              const own: Exit.Exit<A, E | ActorStopped> = Exit.isFailure(exit)
                ? Exit.failCause(exit.cause)
                : exit.value[i] ?? Exit.die(new Error(`${opts.name}: run returned no result for item ${i}`))
              Deferred.doneUnsafe(e.reply, own)
            })
          })
        ),
        Effect.onInterrupt(() =>
          Effect.sync(() => batch.forEach((e) => Deferred.doneUnsafe(e.reply, Exit.fail(stopped))))
        ),
        Effect.ensuring(Effect.sync(() => done(batch))),
      )

    yield* Effect.addFinalizer(() =>
      Effect.gen(function* () {
        const pending = [...(carry ? [carry] : []), ...(yield* Queue.clear(mailbox))]
        carry = undefined
        yield* Queue.shutdown(mailbox)
        for (const e of pending) yield* Deferred.fail(e.reply, stopped)
        done(pending)
      })
    )
    yield* Effect.forkScoped(Effect.forever(Effect.flatMap(collect, serve)))

    return {
      submit: (item) =>
        Effect.uninterruptibleMask((restore) =>
          Effect.gen(function* () {
            const reply = yield* Deferred.make<A, E | ActorStopped>()
            const accepted = yield* Queue.offer(mailbox, { item, cost: opts.cost(item), reply })
            if (!accepted) {
              opts.onDone?.(item)
              return yield* stopped
            }
            return yield* restore(Deferred.await(reply))
          })
        ),
      stats: Effect.map(Queue.size(mailbox), (queued) => ({
        ...counters,
        depth: queued + (carry ? 1 : 0),
      })),
    }
  })
