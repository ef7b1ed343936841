/**
 * A small serialising actor: a fiber that owns state `S`, takes closures from a bounded mailbox one
 * at a time and replies through a Deferred. Its resources come from `init` in a scope of their own;
 * a defect (or an error the `restartOn` predicate accepts, e.g. DeviceLost) tears that scope down and
 * runs `init` again under a backoff schedule. Closing the enclosing scope stops the actor and fails
 * queued and in-flight callers with `ActorStopped`.
 * @module
 */
import { Cause, Deferred, Effect, Exit, Queue, Schedule, Schema, Scope } from "effect"

export class ActorStopped extends Schema.TaggedError<ActorStopped>()("ActorStopped", {
  actor: Schema.String,
}) {
  override get message(): string {
    return `actor ${this.actor} is stopped`
  }
}

class ActorCrashed extends Schema.TaggedError<ActorCrashed>()("ActorCrashed", {
  actor: Schema.String,
  cause: Schema.Defect(),
}) {}

interface Envelope<S> {
  readonly run: (state: S) => Effect.Effect<unknown, unknown>
  readonly reply: Deferred.Deferred<unknown, unknown>
}

export interface Actor<S> {
  readonly name: string
  /** Runs `f` inside the actor (never concurrently with another message) and waits for its result. */
  readonly ask: <A, E>(f: (state: S) => Effect.Effect<A, E>) => Effect.Effect<A, E | ActorStopped>
  /** Fire and forget (still back-pressured by the bounded mailbox). */
  readonly tell: (f: (state: S) => Effect.Effect<unknown>) => Effect.Effect<void, ActorStopped>
}

export interface ActorOptions<S, R> {
  readonly name: string
  /** Builds the actor's state and resources in a fresh scope; re-run after every restart. */
  readonly init: Effect.Effect<S, never, R>
  readonly capacity?: number
  /** Typed failures of a message that should restart the actor (after replying to that caller). */
  readonly restartOn?: (error: unknown) => boolean
  /** Called with the incarnation number after each restart. */
  readonly onRestart?: (restarts: number, reason: unknown) => Effect.Effect<void>
  /** Default: exponential backoff from 10 ms, at most 5 restarts in a row. */
  readonly restart?: Schedule.Schedule<unknown, ActorCrashed>
}

export const makeActor = <S, R>(
  options: ActorOptions<S, R>,
): Effect.Effect<Actor<S>, never, Scope.Scope | Exclude<R, Scope.Scope>> =>
  Effect.gen(function* () {
    const { name } = options
    const mailbox = yield* Queue.bounded<Envelope<S>>(options.capacity ?? 1024)
    const stopped = new ActorStopped({ actor: name })
    let restarts = 0

    const crashes = (exit: Exit.Exit<unknown, unknown>): unknown => {
      if (Exit.isSuccess(exit)) return undefined
      if (Exit.hasDies(exit)) return Cause.squash(exit.cause)
      const err = Cause.squash(exit.cause)
      return options.restartOn?.(err) ? err : undefined
    }
    // hot path in flatMap form: Effect.gen per message measured slower and noisier (guide §8)
    const handle = (state: S) => (env: Envelope<S>) =>
      Effect.flatMap(Effect.exit(env.run(state)), (exit) => {
        Deferred.doneUnsafe(env.reply, exit)
        const crash = crashes(exit)
        return crash === undefined ? Effect.void : Effect.die(crash)
      }).pipe(Effect.onInterrupt(() => Deferred.fail(env.reply, stopped)))

    const incarnation = Effect.scoped(
      Effect.flatMap(options.init, (state) => Effect.forever(Effect.flatMap(Queue.take(mailbox), handle(state)))),
    )
    const supervised = incarnation.pipe(
      Effect.catchDefect((cause) => Effect.fail(new ActorCrashed({ actor: name, cause }))),
      Effect.tapError((e) =>
        Effect.gen(function* () {
          restarts++
          yield* Effect.logWarning(`actor ${name} crashed (${String(e.cause)}), restarting`)
          if (options.onRestart) yield* options.onRestart(restarts, e.cause)
        })
      ),
      Effect.retry(options.restart ?? Schedule.max([Schedule.exponential("10 millis"), Schedule.recurs(5)])),
      Effect.tapCause((cause) => Effect.logError(`actor ${name} gave up`, cause)),
    )

    yield* Effect.addFinalizer(() =>
      Effect.gen(function* () {
        const pending = yield* Queue.clear(mailbox)
        yield* Queue.shutdown(mailbox)
        for (const env of pending) yield* Deferred.fail(env.reply, stopped)
      })
    )
    yield* Effect.forkScoped(supervised)

    const send = <A, E>(f: (state: S) => Effect.Effect<A, E>) =>
      Effect.suspend(() => {
        const reply = Deferred.makeUnsafe<A, E>()
        return Effect.flatMap(
          Queue.offer(mailbox, { run: f, reply: reply as Deferred.Deferred<unknown, unknown> }),
          (ok) => ok ? Effect.succeed(reply) : Effect.fail(stopped),
        )
      })
    return {
      name,
      ask: (f) => Effect.flatMap(send(f), Deferred.await),
      tell: (f) => Effect.asVoid(send(f)),
    }
  })
