/**
 * Host-side facts about a packed padded batch (pure functions of `BatchDescriptor`): where each row's
 * real tokens start, the RoPE position of every token, the real-token mask, next-token targets and the
 * per-row lengths as the u32 array the kernels read.
 *
 * Row r holds its `len` real tokens in [start, start + len) with start = T − len (left padding) or 0
 * (right padding). Token t of row r is flat position n = r·T + t.
 * @module
 */
import type { BatchDescriptor } from "../model/types.ts"

/** The row layout the attention and RoPE code needs (a `BatchDescriptor` is one). */
export type RowLayout = Pick<BatchDescriptor, "rows" | "seqLen" | "lengths" | "padSide">

/** Index of row r's first real token: T − len with left padding, 0 with right padding. */
export function rowStart(layout: RowLayout, r: number): number {
  return layout.padSide === "left" ? layout.seqLen - layout.lengths[r] : 0
}

/**
 * (N) RoPE position of every token: t − start for real tokens. Pad tokens get max(t − start, 0), the value
 * the rope kernel computes too (don't-care, but finite and identical on both sides).
 */
export function tokenPositions(layout: RowLayout): Int32Array {
  const T = layout.seqLen
  const pos = new Int32Array(layout.rows * T)
  for (let r = 0; r < layout.rows; r++) {
    const s = rowStart(layout, r)
    for (let t = 0; t < T; t++) pos[r * T + t] = Math.max(t - s, 0)
  }
  return pos
}

/** (N) 1 where the token is real, 0 at pad positions. */
export function realTokenMask(layout: RowLayout): Uint8Array {
  const T = layout.seqLen
  const mask = new Uint8Array(layout.rows * T)
  for (let r = 0; r < layout.rows; r++) {
    const s = rowStart(layout, r)
    mask.fill(1, r * T + s, r * T + s + layout.lengths[r])
  }
  return mask
}

/**
 * (N) next-token targets: position t of row r predicts token t+1 of the same row, so
 * target[r·T + t] = tokens[r·T + t + 1] when both t and t+1 are real tokens, else −1 (ignored):
 * pad positions, each row's last real token, and (left padding) nothing before the row's start.
 */
export function nextTokenTargets(batch: BatchDescriptor): Int32Array {
  const T = batch.seqLen
  const targets = new Int32Array(batch.rows * T).fill(-1)
  for (let r = 0; r < batch.rows; r++) {
    const s = rowStart(batch, r)
    const e = s + batch.lengths[r]
    for (let t = s; t + 1 < e; t++) targets[r * T + t] = batch.tokens[r * T + t + 1]
  }
  return targets
}

/** (rows) the lengths as u32, the layout the attention and rope kernels bind. */
export function lengthsU32(layout: RowLayout): Uint32Array {
  return Uint32Array.from(layout.lengths)
}

/**
 * Throws a RangeError unless the batch is well formed: 1 ≤ len ≤ T per row, tokens (rows·T) all in
 * [0, vocabSize) (pad positions too: the embedding gather reads them), segments inside [0, rows).
 */
export function checkBatch(batch: BatchDescriptor, opts: { vocabSize: number }): void {
  const { rows, seqLen: T } = batch
  if (!Number.isInteger(rows) || rows < 1) throw new RangeError(`batch: rows must be ≥ 1, got ${rows}`)
  if (!Number.isInteger(T) || T < 1) throw new RangeError(`batch: seqLen must be ≥ 1, got ${T}`)
  if (batch.lengths.length !== rows) {
    throw new RangeError(`batch: ${batch.lengths.length} lengths for ${rows} rows`)
  }
  batch.lengths.forEach((len, r) => {
    if (!Number.isInteger(len) || len < 1 || len > T) {
      throw new RangeError(`batch: row ${r} length ${len} not in [1, ${T}]`)
    }
  })
  if (batch.tokens.length !== rows * T) {
    throw new RangeError(`batch: ${batch.tokens.length} tokens for ${rows}×${T}`)
  }
  for (let n = 0; n < batch.tokens.length; n++) {
    const id = batch.tokens[n]
    if (id < 0 || id >= opts.vocabSize) {
      throw new RangeError(
        `batch: token ${id} at row ${Math.floor(n / T)} position ${n % T} not in [0, ${opts.vocabSize})`,
      )
    }
  }
  for (const seg of batch.segments) {
    if (seg.start < 0 || seg.end > rows || seg.start >= seg.end) {
      throw new RangeError(`batch: segment [${seg.start}, ${seg.end}) not inside [0, ${rows})`)
    }
  }
}

/**
 * Packs token sequences into a batch padded to T = max length (or `seqLen`), pad positions filled with
 * `padId`; one segment covering all rows with `slot` (default −1: base model).
 */
export function packBatch(
  sequences: readonly (readonly number[])[],
  opts: { padSide: "left" | "right"; padId?: number; seqLen?: number; slot?: number },
): BatchDescriptor {
  const rows = sequences.length
  const T = opts.seqLen ?? Math.max(...sequences.map((s) => s.length))
  const tokens = new Int32Array(rows * T).fill(opts.padId ?? 0)
  const lengths = sequences.map((seq, r) => {
    if (seq.length < 1 || seq.length > T) {
      throw new RangeError(`packBatch: row ${r} length ${seq.length} not in [1, ${T}]`)
    }
    tokens.set(seq, r * T + (opts.padSide === "left" ? T - seq.length : 0))
    return seq.length
  })
  return {
    rows,
    seqLen: T,
    lengths,
    padSide: opts.padSide,
    tokens,
    segments: [{ start: 0, end: rows, slot: opts.slot ?? -1 }],
  }
}
