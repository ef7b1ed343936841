/**
 * The services `effect/cli` needs, built for Deno from effect core only (no Node platform package):
 * argv, stdout/stderr, terminal size. File flags are plain strings that our loaders check themselves,
 * so the file system service is a no-op. `runMain` turns SIGINT/SIGTERM into interruption so that
 * finalizers (device release, temp-file cleanup) run before exit.
 * @module
 */
import { Effect, FileSystem, Layer, Path, Runtime, Sink, Stdio, Stream, Terminal } from "effect"
import { ChildProcessSpawner } from "effect/process"

const enc = new TextEncoder()
const writer = (fd: typeof Deno.stdout | typeof Deno.stderr) => () =>
  Sink.forEach((chunk: string | Uint8Array) =>
    Effect.sync(() => void fd.writeSync(typeof chunk === "string" ? enc.encode(chunk) : chunk))
  )

const consoleSize = () => {
  try {
    return Deno.consoleSize()
  } catch {
    return { columns: 100, rows: 40 } // not a terminal (pipes, CI)
  }
}

export const DenoCliServices = Layer.mergeAll(
  Path.layer,
  FileSystem.layerNoop({}),
  Layer.succeed(
    Stdio.Stdio,
    Stdio.make({
      args: Effect.sync(() => Deno.args),
      stdout: writer(Deno.stdout),
      stderr: writer(Deno.stderr),
      stdin: Stream.empty,
      stdoutIsTerminal: Effect.sync(() => Deno.stdout.isTerminal()),
    }),
  ),
  Layer.succeed(
    Terminal.Terminal,
    Terminal.make({
      columns: Effect.sync(() => consoleSize().columns),
      rows: Effect.sync(() => consoleSize().rows),
      size: Effect.die("terminal resize events are not supported"),
      readInput: Effect.die("interactive input is not supported"),
      readLine: Effect.die("interactive input is not supported"),
      display: (text) => Effect.sync(() => void Deno.stdout.writeSync(enc.encode(text))),
    }),
  ),
  Layer.succeed(
    ChildProcessSpawner.ChildProcessSpawner,
    ChildProcessSpawner.make(() => Effect.die("child processes are not supported")),
  ),
)

/** runMain for Deno: signals interrupt the main fiber, finalizers run, then the process exits. */
export const runMain = Runtime.makeRunMain(({ fiber, teardown }) => {
  let signalled = false
  const onSignal = () => {
    signalled = true
    fiber.interruptUnsafe(fiber.id)
  }
  Deno.addSignalListener("SIGINT", onSignal)
  Deno.addSignalListener("SIGTERM", onSignal)
  fiber.addObserver((exit) => {
    Deno.removeSignalListener("SIGINT", onSignal)
    Deno.removeSignalListener("SIGTERM", onSignal)
    teardown(exit, (code) => {
      if (signalled || code !== 0) Deno.exit(signalled ? 130 : code)
    })
  })
})
