/**
 * A progress board: one bar per adapter (step, loss, tokens/s, ETA), redrawn in place on a terminal and
 * printed as plain lines at most every few seconds otherwise (CI logs stay readable).
 * @module
 */

export interface BoardRow {
  readonly name: string
  readonly step: number
  readonly total: number
  readonly loss: number
  readonly tokens: number
  readonly status: string
}

const enc = new TextEncoder()

export class ProgressBoard {
  private readonly tty = Deno.stderr.isTerminal()
  private readonly start = performance.now()
  private drawn = 0
  private lastPlain = 0

  constructor(private readonly width = 20) {}

  private line(r: BoardRow): string {
    const frac = r.total > 0 ? Math.min(1, r.step / r.total) : 1
    const secs = (performance.now() - this.start) / 1000
    const eta = frac > 0 && frac < 1 ? `ETA ${Math.round(secs * (1 - frac) / frac)}s` : ""
    const filled = Math.round(frac * this.width)
    const bar = "█".repeat(filled) + "░".repeat(this.width - filled)
    const loss = Number.isFinite(r.loss) ? r.loss.toFixed(4) : "  –   "
    const tps = secs > 0 ? (r.tokens / secs).toFixed(0) : "0"
    return `${r.name.padEnd(16)} ${bar} ${String(r.step).padStart(4)}/${r.total} loss ${loss}  ${
      tps.padStart(6)
    } tok/s  ${r.status === "running" ? eta : r.status}`
  }

  /** Redraws (terminal) or prints (pipe, at most every 5 s unless `force`). */
  draw(rows: readonly BoardRow[], force = false): void {
    if (this.tty) {
      const up = this.drawn > 0 ? `\x1b[${this.drawn}A` : ""
      const text = rows.map((r) => `\r\x1b[2K${this.line(r)}`).join("\n") + "\n"
      Deno.stderr.writeSync(enc.encode(up + text))
      this.drawn = rows.length
      return
    }
    const now = performance.now()
    if (!force && now - this.lastPlain < 5000) return
    this.lastPlain = now
    for (const r of rows) console.error(this.line(r))
  }

  /** A line above the board (events), keeping the board below it. */
  event(line: string): void {
    if (this.tty && this.drawn > 0) {
      Deno.stderr.writeSync(enc.encode(`\x1b[${this.drawn}A\r\x1b[2K${line}\n`))
      this.drawn = 0
    } else console.error(line)
  }
}
