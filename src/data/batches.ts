/**
 * Epoch iteration and padding of an adapter's examples.
 *
 * `EpochIterator` hands out micro-batches of `micro_batch_size` consecutive examples of each epoch's order
 * (the last one of an epoch may be smaller, as m-LoRA). Each epoch's order is drawn from the iterator's RNG:
 * - plain: a Fisher–Yates shuffle (j = rng.nextInt(i + 1) for i = n−1 … 1);
 * - `group_by_length`: HF `get_length_grouped_indices`: a shuffle, cut into mega-batches of
 *   m · batch_size examples (m = min(⌊n / (4 · batch_size)⌋, 50), at least 1), each sorted by length, longest
 *   first (stable), then the longest mega-batch's first example swapped to the very front (so a too-long batch
 *   fails at once).
 * The state (epoch, position, RNG state at the start of the epoch) is plain JSON: the order is re-derived from
 * it, so a checkpointed iterator resumes with exactly the micro-batches it would have produced.
 *
 * `padBatch` packs micro-batches of one or more adapters into one `BatchDescriptor` padded to the longest row,
 * with labels aligned to the tokens and the shifted next-token targets the loss reads.
 * @module
 */
import type { BatchDescriptor } from "../model/types.ts"
import { Rng } from "../util/rng.ts"
import { type Example, IGNORE_INDEX } from "./tokenize.ts"

/** Serialisable position of an `EpochIterator` (store it in checkpoints as JSON). */
export interface EpochIteratorState {
  /** 0-based epoch being read; equals numEpochs once all are done */
  readonly epoch: number
  /** examples of this epoch's order already handed out */
  readonly position: number
  /** RNG state (4 u32) at the start of this epoch; the epoch's order is re-derived from it */
  readonly rng: readonly number[]
  /** number of examples, checked on resume (resuming against other data is refused) */
  readonly examples: number
}

/** Options of `EpochIterator`. */
export interface EpochIteratorOptions {
  /** examples per micro-batch (`micro_batch_size`) */
  readonly microBatchSize: number
  /** `num_epochs` */
  readonly numEpochs: number
  /** `group_by_length` */
  readonly groupByLength: boolean
  /** `batch_size` (examples per optimizer step): mega-batches of group_by_length are multiples of it */
  readonly batchSize: number
  /** shuffling RNG (copied, never advanced); fork one per adapter, e.g. `rng.fork("data/<name>")` */
  readonly rng: Rng
  /** continue from a saved `state()` instead of the start (then `rng` is not used) */
  readonly state?: EpochIteratorState
}

/** A micro-batch of one adapter. */
export interface MicroBatch {
  readonly examples: readonly Example[]
  /** indices of the examples in the iterator's example list */
  readonly indices: readonly number[]
  /** 0-based epoch it belongs to */
  readonly epoch: number
  /** position of its first example in the epoch's order */
  readonly position: number
  /** true for the last micro-batch of its epoch */
  readonly endOfEpoch: boolean
}

/** Fisher–Yates shuffle of 0..n−1. */
function shuffled(n: number, rng: Rng): number[] {
  const order = Array.from({ length: n }, (_, i) => i)
  for (let i = n - 1; i > 0; i--) {
    const j = rng.nextInt(i + 1)
    ;[order[i], order[j]] = [order[j], order[i]]
  }
  return order
}

/** HF `get_length_grouped_indices` (see the module doc) over a shuffle drawn from `rng`. */
export function lengthGroupedOrder(lengths: readonly number[], batchSize: number, rng: Rng): number[] {
  const n = lengths.length
  const order = shuffled(n, rng)
  const megabatchSize = Math.max(1, Math.min(Math.floor(n / (batchSize * 4)), 50)) * batchSize
  const megabatches: number[][] = []
  for (let i = 0; i < n; i += megabatchSize) {
    megabatches.push(order.slice(i, i + megabatchSize).sort((a, b) => lengths[b] - lengths[a]))
  }
  let maxIdx = 0
  megabatches.forEach((mb, i) => {
    if (lengths[mb[0]] > lengths[megabatches[maxIdx][0]]) maxIdx = i
  })
  ;[megabatches[0][0], megabatches[maxIdx][0]] = [megabatches[maxIdx][0], megabatches[0][0]]
  return megabatches.flat()
}

/**
 * Deterministic, resumable epochs of micro-batches over one adapter's examples.
 *
 * @example
 * ```ts
 * const it = new EpochIterator(examples, { microBatchSize: 4, numEpochs: 2, groupByLength: false, batchSize: 8,
 *   rng: Rng.fromSeed(42).fork("data/lora_a") })
 * for (let mb = it.next(); mb !== null; mb = it.next()) {
 *   const { batch, targets } = padBatch([{ slot: 0, examples: mb.examples }], { padSide: "right", padId: 0 })
 *   // ... train; to checkpoint: JSON.stringify(it.state())
 * }
 * ```
 */
export class EpochIterator {
  readonly #examples: readonly Example[]
  readonly #opts: EpochIteratorOptions
  readonly #rng: Rng
  #epoch: number
  #position: number
  #epochStart: number[] = []
  #order: number[] = []

  constructor(examples: readonly Example[], opts: EpochIteratorOptions) {
    const { microBatchSize, numEpochs, batchSize } = opts
    for (const [k, v] of Object.entries({ microBatchSize, numEpochs, batchSize })) {
      if (!Number.isSafeInteger(v) || v < 1) throw new RangeError(`EpochIterator: ${k} must be ≥ 1, got ${v}`)
    }
    if (examples.length === 0) throw new RangeError("EpochIterator: no examples")
    this.#examples = examples
    this.#opts = opts
    const s = opts.state
    if (s === undefined) {
      this.#rng = Rng.fromState(opts.rng.state())
      this.#epoch = 0
      this.#position = 0
    } else {
      const n = examples.length
      if (s.examples !== n) {
        throw new RangeError(`EpochIterator: saved state is for ${s.examples} examples, the data has ${n}`)
      }
      const done = s.epoch === numEpochs && s.position === 0
      const inRange = Number.isSafeInteger(s.epoch) && s.epoch >= 0 && s.epoch < numEpochs &&
        Number.isSafeInteger(s.position) && s.position >= 0 && s.position < n
      if (!done && !inRange) {
        throw new RangeError(
          `EpochIterator: saved position epoch ${s.epoch} / example ${s.position} is outside ` +
            `${numEpochs} epochs of ${n} examples`,
        )
      }
      this.#rng = Rng.fromState(s.rng)
      this.#epoch = s.epoch
      this.#position = s.position
    }
    this.#startEpoch()
  }

  /** Draws the current epoch's order (no-op once done), remembering the RNG state it started from. */
  #startEpoch(): void {
    this.#epochStart = this.#rng.state()
    if (this.done) return
    const n = this.#examples.length
    this.#order = this.#opts.groupByLength
      ? lengthGroupedOrder(this.#examples.map((e) => e.ids.length), this.#opts.batchSize, this.#rng)
      : shuffled(n, this.#rng)
  }

  /** True once all epochs are handed out. */
  get done(): boolean {
    return this.#epoch >= this.#opts.numEpochs
  }

  /** Micro-batches per epoch: ⌈n / micro_batch_size⌉. */
  get microBatchesPerEpoch(): number {
    return Math.ceil(this.#examples.length / this.#opts.microBatchSize)
  }

  /** The current epoch (0-based; numEpochs when done). */
  get epoch(): number {
    return this.#epoch
  }

  /** Longest example of the next micro-batch (m-LoRA's "optim" strategy groups adapters by it); 0 when done. */
  peekMaxLength(): number {
    if (this.done) return 0
    const end = Math.min(this.#position + this.#opts.microBatchSize, this.#order.length)
    let max = 0
    for (let i = this.#position; i < end; i++) max = Math.max(max, this.#examples[this.#order[i]].ids.length)
    return max
  }

  /** The next micro-batch, or null when all epochs are done. */
  next(): MicroBatch | null {
    if (this.done) return null
    const n = this.#examples.length
    const start = this.#position
    const end = Math.min(start + this.#opts.microBatchSize, n)
    const indices = this.#order.slice(start, end)
    const batch: MicroBatch = {
      examples: indices.map((i) => this.#examples[i]),
      indices,
      epoch: this.#epoch,
      position: start,
      endOfEpoch: end === n,
    }
    this.#position = end
    if (end === n) {
      this.#epoch++
      this.#position = 0
      this.#startEpoch()
    }
    return batch
  }

  /** The position to save; `new EpochIterator(examples, { ...opts, state })` continues from it. */
  state(): EpochIteratorState {
    return {
      epoch: this.#epoch,
      position: this.#position,
      rng: this.#epochStart.slice(),
      examples: this.#examples.length,
    }
  }
}

/** Consecutive batches of at most `batchSize` examples in data order (evaluation). */
export function sequentialBatches(examples: readonly Example[], batchSize: number): Example[][] {
  if (!Number.isSafeInteger(batchSize) || batchSize < 1) {
    throw new RangeError(`batch size must be ≥ 1, got ${batchSize}`)
  }
  const out: Example[][] = []
  for (let i = 0; i < examples.length; i += batchSize) out.push(examples.slice(i, i + batchSize))
  return out
}

/** The examples of one adapter slot inside a packed batch. */
export interface BatchPart {
  /** adapter slot of these rows (−1: base model only) */
  readonly slot: number
  readonly examples: readonly Example[]
}

/** Options of `padBatch`. */
export interface PadOptions {
  /** where the padding goes (an adapter's `expand_side`); by spec §2 it never changes a result */
  readonly padSide: "left" | "right"
  /** token id written at pad positions (masked everywhere) */
  readonly padId: number
  /** round T up to a multiple of this (m-LoRA uses 8); default 1 */
  readonly padMultiple?: number
}

/** A packed, padded batch with its labels. */
export interface PaddedBatch {
  readonly batch: BatchDescriptor
  /** (rows, T) labels aligned with `batch.tokens`: the token or −100 (not predicted, and at every pad) */
  readonly labels: Int32Array
  /**
   * (rows, T) next-token targets: targets[r·T + t] = labels[r·T + t + 1] when positions t and t+1 are both real
   * and that label is not −100, else −1 (ignored). With all labels predicted this is `nextTokenTargets(batch)`.
   */
  readonly targets: Int32Array
}

/**
 * Packs parts (rows of each part consecutive, one segment per part, in order) into one batch padded to
 * T = longest example (rounded up to `padMultiple`).
 */
export function padBatch(parts: readonly BatchPart[], opts: PadOptions): PaddedBatch {
  const rowsOf = parts.map((p) => p.examples)
  if (parts.length === 0 || rowsOf.some((e) => e.length === 0)) throw new RangeError("padBatch: empty batch or part")
  const all = rowsOf.flat()
  const multiple = opts.padMultiple ?? 1
  const T = Math.ceil(Math.max(...all.map((e) => e.ids.length)) / multiple) * multiple
  const rows = all.length
  const tokens = new Int32Array(rows * T).fill(opts.padId)
  const labels = new Int32Array(rows * T).fill(IGNORE_INDEX)
  const targets = new Int32Array(rows * T).fill(-1)
  const lengths = all.map((ex, r) => {
    const len = ex.ids.length
    if (ex.labels.length !== len) {
      throw new RangeError(`padBatch: row ${r} has ${ex.labels.length} labels for ${len} ids`)
    }
    const s = r * T + (opts.padSide === "left" ? T - len : 0)
    tokens.set(ex.ids, s)
    labels.set(ex.labels, s)
    for (let t = 0; t + 1 < len; t++) {
      const next = ex.labels[t + 1]
      if (next !== IGNORE_INDEX) targets[s + t] = next
    }
    return len
  })
  const segments: { start: number; end: number; slot: number }[] = []
  let start = 0
  for (const part of parts) {
    segments.push({ start, end: start + part.examples.length, slot: part.slot })
    start += part.examples.length
  }
  return { batch: { rows, seqLen: T, lengths, padSide: opts.padSide, tokens, segments }, labels, targets }
}
