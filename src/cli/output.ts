/**
 * What a person reads: one-line user errors (no stack trace), byte sizes, tables and progress bars.
 * @module
 */
import { Cause, Effect } from "effect"
import type { MemoryReport } from "../../actors/device.ts"
import { MEMORY_CATEGORIES } from "../gpu/context.ts"

/** Tags of errors caused by the user's input or machine: printed as one line, exit code 1. */
const USER_ERRORS = new Set([
  "ConfigError",
  "SafetensorsError",
  "NoAdapterError",
  "DeviceOutOfMemory",
  "ShaderCompileError",
  "DeviceLost",
  "GpuValidationError",
])

const isUserError = (e: unknown): e is { _tag: string; message: string } =>
  typeof e === "object" && e !== null && USER_ERRORS.has((e as { _tag?: string })._tag ?? "")

/**
 * Runs `program`; a typed user error (or one thrown inside a device job) becomes
 * `error: <file>: <key>: <reason>` on stderr and exit code 1. Anything else is a bug and keeps its trace.
 */
export const reportUserErrors = <A, E, R>(program: Effect.Effect<A, E, R>): Effect.Effect<A | void, E, R> =>
  program.pipe(
    Effect.catchCause((cause) => {
      const err = Cause.squash(cause)
      if (isUserError(err)) {
        return Effect.sync(() => {
          console.error(`error: ${err.message}`)
          Deno.exitCode = 1
        })
      }
      return Effect.failCause(cause)
    }),
  )

/** 1536 → "1.5 KiB" */
export function formatBytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"]
  let i = 0
  let v = n
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024
    i++
  }
  return i === 0 ? `${n} B` : `${v.toFixed(v >= 100 ? 0 : v >= 10 ? 1 : 2)} ${units[i]}`
}

/** Left-aligned first column, right-aligned others. */
export function table(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = header.map((h, c) => Math.max(h.length, ...rows.map((r) => r[c].length)))
  const line = (r: readonly string[]) =>
    r.map((s, c) => c === 0 ? s.padEnd(widths[c]) : s.padStart(widths[c])).join("  ")
  return [line(header), widths.map((w) => "─".repeat(w)).join("  "), ...rows.map(line)].join("\n")
}

/** The device-memory report by category. */
export function formatMemory(r: MemoryReport): string {
  const rows = MEMORY_CATEGORIES.filter((c) => r.bytes[c] > 0).map((
    c,
  ) => [c.replace("_", " "), formatBytes(r.bytes[c])])
  return `device memory (${r.adapter}):\n` + table(["category", "bytes"], [...rows, ["total", formatBytes(r.total)]])
}

/** A one-line progress bar, redrawn in place on a terminal and printed every 10% otherwise. */
export class Progress {
  private lastPrinted = -1
  private readonly tty = Deno.stderr.isTerminal()
  private readonly start = performance.now()

  constructor(private readonly label: string, private readonly total: number) {}

  update(done: number, detail = ""): void {
    const frac = this.total > 0 ? Math.min(1, done / this.total) : 1
    const elapsed = (performance.now() - this.start) / 1000
    const eta = frac > 0 ? elapsed * (1 - frac) / frac : 0
    const width = 24
    const filled = Math.round(frac * width)
    const bar = "█".repeat(filled) + "░".repeat(width - filled)
    const text = `${this.label} ${bar} ${(frac * 100).toFixed(0).padStart(3)}% ${detail} ETA ${eta.toFixed(0)}s`
    if (this.tty) Deno.stderr.writeSync(new TextEncoder().encode(`\r\x1b[2K${text}`))
    else if (Math.floor(frac * 10) > this.lastPrinted) {
      this.lastPrinted = Math.floor(frac * 10)
      console.error(text)
    }
  }

  done(detail = ""): void {
    this.update(this.total, detail)
    if (this.tty) Deno.stderr.writeSync(new TextEncoder().encode("\n"))
  }
}
