/**
 * Evaluation of many adapters in shared packed forwards (spec §7 `deno task eval`): per adapter, the test loss,
 * perplexity and multiple-choice accuracy.
 *
 * Every example becomes rows of token ids:
 * - a **loss row**: the example's ids; position t predicts ids[t + 1] for every t < len − 1 (every next-token
 *   position of the full sequence; `train_on_inputs` and given `labels` play no part here);
 * - for a multiple-choice example (`ChoiceInfo`), one **choice row** per wrong choice c:
 *   ids[0, P) ++ continuations[c] (P = promptLength), predicting only the continuation tokens. The right choice
 *   needs no row of its own: the loss row starts with exactly ids[0, P) ++ continuations[answer], and causal
 *   attention makes its first P + |cont| positions independent of what follows.
 *
 * With ℓ_t = −log p(target_t | tokens ≤ t) read back per position (the cross-entropy kernel's `loss` buffer):
 *   loss       = Σ_{loss rows} Σ_{t < len−1} ℓ_t / tokens,   tokens = Σ_{loss rows} (len − 1)   (no aux term)
 *   perplexity = exp(loss)
 *   score_c    = log p(cont_c | prompt) = −Σ_{t = P−1}^{P+|cont_c|−2} ℓ_t   (log-likelihood of the choice tokens)
 *   predicted  = argmax_c score_c (first index on ties),  accuracy = #(predicted = answer) / #choice records
 * Sums run in f64 on the host over the f32 per-position losses.
 *
 * Packing: each adapter's rows are sorted by length (stable; results do not depend on row order, except for
 * switch routing whose expert capacity counts the tokens of one batch) and cut into chunks of `batchSize` rows
 * (`test_batch_size`). Packed batch k holds chunk k of every adapter that has one, one segment per adapter, so the
 * frozen base runs once for all of them. Each packed batch is one command buffer and one readback.
 * Adapters run as at inference: no dropout, no router jitter.
 * @module
 */
import { ConfigError } from "../errors.ts"
import type { Example } from "../data/tokenize.ts"
import type { AdapterWeights } from "../model/adapter.ts"
import { type AdapterRows, LoraSaved, MoeState } from "../model/adapter_layers.ts"
import { type DeviceAdapter, releaseAdapter, uploadAdapter } from "../model/adapter_device.ts"
import type { LlamaModel } from "../model/llama.ts"
import type { BatchDescriptor } from "../model/types.ts"
import { rowStart } from "../reference/batch.ts"

/** One adapter to evaluate. */
export interface EvalTask {
  /** name in the results (several tasks may share weights, e.g. "before" and "after" columns) */
  readonly name: string
  readonly weights: AdapterWeights
  /** the same weights already on the device (the caller keeps and frees them); uploaded here when absent */
  readonly device?: DeviceAdapter
  /** tokenized test records */
  readonly examples: readonly Example[]
  /** rows of this adapter per packed batch (`test_batch_size`) */
  readonly batchSize: number
  /** pad side of the batches whose first segment is this adapter (`expand_side`; it never changes a result) */
  readonly padSide?: "left" | "right"
  /** names the test data file in errors */
  readonly file?: string
}

/** Metrics of one adapter (the report's fields, spec §7). */
export interface EvalResult {
  readonly name: string
  /** mean next-token cross-entropy over `tokens` predicted positions */
  readonly loss: number
  /** exp(loss) */
  readonly perplexity: number
  /** predicted positions: Σ (len − 1) over the test records */
  readonly tokens: number
  /** right / choice records; null when no record has choices */
  readonly accuracy: number | null
  /** multiple-choice records scored */
  readonly choiceRecords: number
  /** per example: log-likelihood of each choice's tokens (empty for examples without choices) */
  readonly scores: readonly (readonly number[])[]
}

/** Throughput facts of one `evaluate` call. */
export interface EvalStats {
  /** packed forwards (= command buffers = readbacks) */
  readonly batches: number
  /** rows forwarded (loss rows + choice rows) */
  readonly rows: number
  /** real (non-pad) tokens forwarded */
  readonly realTokens: number
  /** padded positions forwarded (Σ rows · T) */
  readonly paddedTokens: number
  readonly seconds: number
  readonly roundTrips: number
}

export interface EvalOptions {
  /** token id at pad positions */
  readonly padId: number
  /** after every packed batch: batches done, batches in all */
  readonly onBatch?: (done: number, total: number) => void
}

/** What a row contributes: loss over all its next-token positions, and/or a choice's score over a span. */
interface Row {
  readonly task: number
  readonly example: number
  readonly ids: readonly number[]
  /** true: every next-token position counts towards the loss */
  readonly loss: boolean
  /** choice scored on this row: predicted by positions [from, from + count) */
  readonly choice: { readonly index: number; readonly from: number; readonly count: number } | null
}

/** The rows of one adapter's examples (see the module doc), sorted by length. */
function rowsOf(task: EvalTask, t: number): Row[] {
  const rows: Row[] = []
  task.examples.forEach((ex, e) => {
    const c = ex.choices
    if (!c) {
      rows.push({ task: t, example: e, ids: ex.ids, loss: true, choice: null })
      return
    }
    const P = c.promptLength
    const bad = c.continuations.findIndex((cont) => cont.length === 0)
    if (P < 1 || bad >= 0 || ex.ids.length < P + c.continuations[c.answer].length) {
      throw new ConfigError({
        file: task.file ?? task.name,
        key: `record[${e}]`,
        reason: P < 1
          ? "multiple-choice prompt has no token before the answer, so the answer cannot be scored"
          : bad >= 0
          ? `choice ${bad} adds no token after the shared prompt`
          : "the answer's tokens were cut off",
      })
    }
    const span = (index: number) => ({ index, from: P - 1, count: c.continuations[index].length })
    rows.push({ task: t, example: e, ids: ex.ids, loss: true, choice: span(c.answer) })
    c.continuations.forEach((cont, i) => {
      if (i === c.answer) return
      rows.push({ task: t, example: e, ids: [...ex.ids.slice(0, P), ...cont], loss: false, choice: span(i) })
    })
  })
  return rows.map((r, i) => ({ r, i })).sort((a, b) => a.r.ids.length - b.r.ids.length || a.i - b.i).map((x) => x.r)
}

/** Batch k packs chunk k of every task's rows. */
function packedChunks(tasks: readonly EvalTask[], rows: readonly Row[][]): Row[][][] {
  const chunks = rows.map((rs, t) => {
    const n = tasks[t].batchSize
    if (!Number.isSafeInteger(n) || n < 1) throw new RangeError(`adapter ${tasks[t].name}: batch size ${n}`)
    return Array.from({ length: Math.ceil(rs.length / n) }, (_, k) => rs.slice(k * n, (k + 1) * n))
  })
  const count = Math.max(0, ...chunks.map((c) => c.length))
  return Array.from({ length: count }, (_, k) => chunks.map((c) => c[k] ?? []))
}

/**
 * Evaluates every task in packed forwards on `model` (weights uploaded here, released at the end).
 * Results come in the order of `tasks`.
 *
 * @example
 * ```ts
 * const { results } = await evaluate(new LlamaModel(ctx, base), [
 *   { name: "lora_copy", weights, examples, batchSize: 20 },
 * ], { padId: tokenizer.padId })
 * results[0].perplexity // exp(mean next-token cross-entropy)
 * ```
 */
export async function evaluate(
  model: LlamaModel,
  tasks: readonly EvalTask[],
  opts: EvalOptions,
): Promise<{ results: EvalResult[]; stats: EvalStats }> {
  const ctx = model.ctx
  const config = model.base.config
  const rows = tasks.map((task, t) => rowsOf(task, t))
  const batches = packedChunks(tasks, rows)
  // per task: Σ ℓ and count over loss rows; per task and example: score of each choice
  const lossSum = tasks.map(() => 0)
  const lossCount = tasks.map(() => 0)
  const scores = tasks.map((task) => task.examples.map((ex) => ex.choices?.continuations.map(() => NaN) ?? []))
  let realTokens = 0, paddedTokens = 0, rowCount = 0
  const t0 = performance.now()
  const trips0 = ctx.roundTrips
  const devs: DeviceAdapter[] = []
  const owned: DeviceAdapter[] = []
  try {
    for (const task of tasks) {
      const dev = task.device ?? uploadAdapter(ctx, task.weights, config)
      if (!task.device) owned.push(dev)
      devs.push(dev)
    }
    for (const [k, parts] of batches.entries()) {
      const present = parts.map((p, t) => ({ t, rows: p })).filter((p) => p.rows.length > 0)
      const flat = present.flatMap((p) => p.rows)
      const T = Math.max(...flat.map((r) => r.ids.length))
      const padSide = tasks[present[0].t].padSide ?? "right"
      const tokens = new Int32Array(flat.length * T).fill(opts.padId)
      const targets = new Int32Array(flat.length * T).fill(-1)
      const lengths = flat.map((r) => r.ids.length)
      const layout = { rows: flat.length, seqLen: T, lengths, padSide }
      flat.forEach((row, r) => {
        const s = r * T + rowStart(layout, r)
        tokens.set(row.ids, s)
        const len = row.ids.length
        // ℓ_t at position t scores ids[t + 1]
        const [from, to] = row.loss ? [0, len - 1] : [row.choice!.from, row.choice!.from + row.choice!.count]
        for (let t = from; t < to; t++) targets[s + t] = row.ids[t + 1]
      })
      const segments: { start: number; end: number; slot: number }[] = []
      let start = 0
      for (const p of present) {
        segments.push({ start, end: start + p.rows.length, slot: p.t })
        start += p.rows.length
      }
      const batch: BatchDescriptor = { rows: flat.length, seqLen: T, lengths, padSide, tokens, segments }
      const adapters: AdapterRows[] = segments.map((s) => ({
        row0: s.start * T,
        N: (s.end - s.start) * T,
        dev: devs[s.slot],
        dropoutSeed: null,
      }))
      const loss = await forwardLosses(model, batch, targets, adapters)
      flat.forEach((row, r) => {
        const s = r * T + rowStart(layout, r)
        const sum = (from: number, to: number) => {
          let acc = 0
          for (let t = from; t < to; t++) acc += loss[s + t]
          return acc
        }
        if (row.loss) {
          lossSum[row.task] += sum(0, row.ids.length - 1)
          lossCount[row.task] += row.ids.length - 1
        }
        if (row.choice) {
          scores[row.task][row.example][row.choice.index] = -sum(row.choice.from, row.choice.from + row.choice.count)
        }
      })
      realTokens += lengths.reduce((a, b) => a + b, 0)
      paddedTokens += flat.length * T
      rowCount += flat.length
      opts.onBatch?.(k + 1, batches.length)
    }
  } finally {
    for (const dev of owned) releaseAdapter(ctx, dev)
  }
  const results = tasks.map((task, t): EvalResult => {
    const loss = lossCount[t] > 0 ? lossSum[t] / lossCount[t] : NaN
    let right = 0, total = 0
    task.examples.forEach((ex, e) => {
      if (!ex.choices) return
      total++
      if (argmax(scores[t][e]) === ex.choices.answer) right++
    })
    return {
      name: task.name,
      loss,
      perplexity: Math.exp(loss),
      tokens: lossCount[t],
      accuracy: total > 0 ? right / total : null,
      choiceRecords: total,
      scores: scores[t],
    }
  })
  const stats: EvalStats = {
    batches: batches.length,
    rows: rowCount,
    realTokens,
    paddedTokens,
    seconds: (performance.now() - t0) / 1000,
    roundTrips: ctx.roundTrips - trips0,
  }
  return { results, stats }
}

/** Index of the largest score; the first one on ties; −1 when a score is not a number. */
export function argmax(scores: readonly number[]): number {
  let best = -1
  for (let i = 0; i < scores.length; i++) {
    if (Number.isNaN(scores[i])) return -1
    if (best < 0 || scores[i] > scores[best]) best = i
  }
  return best
}

/** One packed forward with custom targets; returns the per-position losses ℓ (N) — one command buffer, one readback. */
async function forwardLosses(
  model: LlamaModel,
  batch: BatchDescriptor,
  targets: Int32Array,
  adapters: readonly AdapterRows[],
): Promise<Float32Array> {
  const bufs = model.allocate(batch)
  const saved = new LoraSaved(model.pool)
  const moe = new MoeState(model.pool, model.base.config, adapters)
  try {
    model.writeBatch(bufs, batch, { targets })
    const step = model.ctx.begin("eval")
    model.encodeForward(step, bufs, batch, adapters, saved, moe)
    const [out] = await model.ctx.read([{ buffer: bufs.loss, offset: 0, size: bufs.N * 4 }], step)
    return new Float32Array(out)
  } finally {
    model.free(bufs)
    saved.release()
    moe.release()
  }
}
