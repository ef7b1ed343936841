/**
 * Greedy / sampled generation with a device KV cache, many adapters packed into one batch (spec §7 `eval
 * --inference`). Output ids are only the new tokens; a row stops after `maxNewTokens` or after emitting EOS (the
 * EOS id is kept in its output, as HF `generate` returns it).
 *
 * Requests are grouped by adapter and cut into batches of at most `maxBatchRows` rows, filled round-robin across
 * the adapters (so one batch packs several adapters) from each adapter's requests sorted by prompt length (less
 * padding). Per batch:
 *   1. prefill  one command buffer over the left-padded prompts (src/generate/decode.ts), one readback of (rows) ids;
 *   2. decode   one command buffer per step over the live rows only, one readback of (live rows) ids.
 * A finished row leaves the batch at once: the live rows are re-packed (adapter order kept, so each adapter's rows
 * stay contiguous) and each keeps its cache slot through the row → slot map, so every kernel of later steps runs
 * over live rows only — nothing is computed for finished sequences and no cache data moves.
 *
 * Each request draws its sampling uniforms from its own `Rng.fromSeed(seed)` (one per sampled token, none when
 * greedy), so its output does not depend on the other requests of its batch, nor on the batch size.
 *
 * MixLoRA in decode steps: each row is its own sequence of one token (T = 1), so the switch router's
 * `expert_capacity` (counted per sequence) applies within the prompt at prefill and never drops a generated token
 * (for capacity ≥ 1). Full recomputation of the whole prefix would count generated tokens towards the capacity
 * too; the two agree whenever the capacity does not bind (and for the mixlora and dynamic strategies always).
 * @module
 */
import { LoraSaved, MoeState } from "../model/adapter_layers.ts"
import type { DeviceAdapter } from "../model/adapter_device.ts"
import type { LlamaModel } from "../model/llama.ts"
import type { BatchDescriptor } from "../model/types.ts"
import { Rng } from "../util/rng.ts"
import { DecodeWorkspace, encodeDecodeStep, encodePrefill, type PassAdapters } from "./decode.ts"
import { KvCache } from "./kv_cache.ts"
import { checkSamplingParams, isGreedy, type SamplingParams, samplingWords } from "./sampling.ts"

/** One prompt to continue. */
export interface GenerateRequest extends SamplingParams {
  /** the adapter on top of the base model, or null for the base model alone */
  readonly adapter: DeviceAdapter | null
  /** prompt token ids (BOS included if wanted), at least one */
  readonly promptIds: readonly number[]
  /** new tokens at most (0: nothing is generated) */
  readonly maxNewTokens: number
  /** seed of this request's sampling RNG (unused when greedy) */
  readonly seed: number
}

export interface GenerateOptions {
  /** a row stops after emitting this id; null: only maxNewTokens stops rows */
  readonly eosId: number | null
  /** called for every new token, in generation order (request index into `requests`) */
  readonly onToken?: (requestIndex: number, id: number) => void
  /** rows per packed batch (default 32): bounds the prefill activations and the KV cache */
  readonly maxBatchRows?: number
}

export interface GenerateResult {
  /** the new tokens only */
  readonly outputIds: number[]
}

/** Work done by one `generateWithStats` call. */
export interface GenerateStats {
  /** packed batches (one prefill each) */
  readonly batches: number
  /** decode steps over all batches */
  readonly decodeSteps: number
  /** Σ over decode steps of the rows computed (live rows only) */
  readonly decodeRows: number
  /** tokens generated (prefill choices included) */
  readonly newTokens: number
  /** queue round trips (ctx.roundTrips difference) */
  readonly roundTrips: number
  /** seconds spent in prefill passes and in decode steps (wall clock, readback included) */
  readonly prefillSeconds: number
  readonly decodeSeconds: number
}

const DEFAULT_BATCH_ROWS = 32

/** Generates for every request; results in the order of `requests`. */
export async function generate(
  model: LlamaModel,
  requests: readonly GenerateRequest[],
  opts: GenerateOptions,
): Promise<GenerateResult[]> {
  return (await generateWithStats(model, requests, opts)).results
}

/** `generate`, also returning what the batches cost (benchmarks, the CLI's summary line). */
export async function generateWithStats(
  model: LlamaModel,
  requests: readonly GenerateRequest[],
  opts: GenerateOptions,
): Promise<{ results: GenerateResult[]; stats: GenerateStats }> {
  const c = model.base.config
  requests.forEach((r, i) => checkRequest(r, i, c.vocabSize, c.numLayers))
  const maxRows = opts.maxBatchRows ?? DEFAULT_BATCH_ROWS
  if (!Number.isSafeInteger(maxRows) || maxRows < 1) throw new RangeError(`maxBatchRows ${maxRows} must be ≥ 1`)
  if (opts.eosId !== null && !(Number.isInteger(opts.eosId) && opts.eosId >= 0)) {
    throw new RangeError(`eosId ${opts.eosId} must be a token id or null`)
  }
  const results: GenerateResult[] = requests.map(() => ({ outputIds: [] }))
  const stats = {
    batches: 0,
    decodeSteps: 0,
    decodeRows: 0,
    newTokens: 0,
    roundTrips: 0,
    prefillSeconds: 0,
    decodeSeconds: 0,
  }
  const trips0 = model.ctx.roundTrips
  for (const batch of plan(requests, maxRows)) await runBatch(model, requests, batch, opts, results, stats)
  stats.roundTrips = model.ctx.roundTrips - trips0
  return { results, stats }
}

function checkRequest(r: GenerateRequest, i: number, V: number, L: number): void {
  const where = `generate request ${i}`
  if (r.promptIds.length < 1) throw new RangeError(`${where}: empty prompt`)
  const bad = r.promptIds.findIndex((id) => !Number.isInteger(id) || id < 0 || id >= V)
  if (bad >= 0) throw new RangeError(`${where}: prompt token ${r.promptIds[bad]} at ${bad} not in [0, ${V})`)
  if (!Number.isSafeInteger(r.maxNewTokens) || r.maxNewTokens < 0) {
    throw new RangeError(`${where}: maxNewTokens ${r.maxNewTokens} must be an integer ≥ 0`)
  }
  if (!Number.isSafeInteger(r.seed) || r.seed < 0) throw new RangeError(`${where}: seed ${r.seed} must be ≥ 0`)
  checkSamplingParams(r, where)
  if (r.adapter && r.adapter.layout.layers.length !== L) {
    throw new RangeError(
      `${where}: adapter ${r.adapter.spec.name} has ${r.adapter.layout.layers.length} layers, model ${L}`,
    )
  }
}

/**
 * Batches of request indices: requests grouped by adapter (groups in order of first appearance), each group sorted
 * by prompt length (stable), batches filled round-robin over the groups; inside a batch, rows ordered by group.
 */
function plan(requests: readonly GenerateRequest[], maxRows: number): number[][] {
  const groups = new Map<DeviceAdapter | null, number[]>()
  requests.forEach((r, i) => {
    if (r.maxNewTokens === 0) return
    let g = groups.get(r.adapter)
    if (!g) groups.set(r.adapter, g = [])
    g.push(i)
  })
  const queues = [...groups.values()].map((g) =>
    g.map((i, k) => ({ i, k })).sort((a, b) =>
      requests[a.i].promptIds.length - requests[b.i].promptIds.length || a.k - b.k
    ).map((e) => e.i)
  )
  const batches: number[][] = []
  while (queues.some((q) => q.length)) {
    const take: number[][] = queues.map(() => [])
    let n = 0
    while (n < maxRows && queues.some((q) => q.length)) {
      queues.forEach((q, g) => {
        if (n < maxRows && q.length) {
          take[g].push(q.shift()!)
          n++
        }
      })
    }
    batches.push(take.flat())
  }
  return batches
}

/** A sequence being generated: its request, cache slot, and the position of its next token. */
interface Live {
  readonly request: number
  readonly slot: number
  pos: number
  token: number
  readonly rng: Rng
}

/** Contiguous runs of rows with the same adapter → the pass's adapter rows (T tokens per row). */
function passAdapters(model: LlamaModel, adapters: readonly (DeviceAdapter | null)[], T: number): PassAdapters {
  const rows: { row0: number; N: number; dev: DeviceAdapter }[] = []
  adapters.forEach((dev, r) => {
    if (!dev) return
    const last = rows[rows.length - 1]
    if (last && last.dev === dev && last.row0 + last.N === r * T) rows.push({ ...rows.pop()!, N: last.N + T })
    else rows.push({ row0: r * T, N: T, dev })
  })
  const moe = rows.some((a) => a.dev.spec.moe) ? new MoeState(model.pool, model.base.config, rows) : null
  return { rows, saved: new LoraSaved(model.pool), moe }
}

function releasePass(p: PassAdapters | null): void {
  p?.saved.release()
  p?.moe?.release()
}

/** The sampling words of each live row; draws one uniform from each sampling row's RNG. */
function paramWords(requests: readonly GenerateRequest[], live: readonly Live[]): Uint32Array {
  const words = new Uint32Array(live.length * 4)
  live.forEach((s, i) => {
    const r = requests[s.request]
    words.set(samplingWords(r, isGreedy(r) ? 0 : s.rng.nextFloat()), 4 * i)
  })
  return words
}

async function runBatch(
  model: LlamaModel,
  requests: readonly GenerateRequest[],
  batchRows: readonly number[],
  opts: GenerateOptions,
  results: GenerateResult[],
  stats: { -readonly [K in keyof GenerateStats]: GenerateStats[K] },
): Promise<void> {
  const ctx = model.ctx
  const c = model.base.config
  const n0 = batchRows.length
  const prompts = batchRows.map((i) => requests[i].promptIds)
  const T = Math.max(...prompts.map((p) => p.length))
  // the last new token is never fed back, so a slot holds at most prompt + maxNewTokens − 1 positions
  const maxLen = Math.max(...batchRows.map((i) => requests[i].promptIds.length + requests[i].maxNewTokens - 1))
  const tokens = new Int32Array(n0 * T)
  prompts.forEach((p, r) => tokens.set(p, r * T + T - p.length))
  const batch: BatchDescriptor = {
    rows: n0,
    seqLen: T,
    lengths: prompts.map((p) => p.length),
    padSide: "left",
    tokens,
    segments: [{ start: 0, end: n0, slot: -1 }],
  }
  const cache = KvCache.create(ctx, c, { slots: n0, maxLen })
  const ws = new DecodeWorkspace(model, n0, maxLen)
  let pass: PassAdapters | null = null
  let live: Live[] = batchRows.map((request, slot) => ({
    request,
    slot,
    pos: requests[request].promptIds.length,
    token: -1,
    rng: Rng.fromSeed(requests[request].seed),
  }))
  /** records each live row's new token; drops finished rows; true when the live set changed */
  const accept = (ids: Int32Array): boolean => {
    const before = live.length
    live = live.filter((s, i) => {
      const id = ids[i]
      const out = results[s.request].outputIds
      out.push(id)
      stats.newTokens++
      opts.onToken?.(s.request, id)
      s.token = id
      return !(id === opts.eosId || out.length >= requests[s.request].maxNewTokens)
    })
    return live.length !== before
  }
  try {
    stats.batches++
    let t0 = performance.now()
    const bufs = model.allocate(batch, { keepActivations: true })
    pass = passAdapters(model, batchRows.map((i) => requests[i].adapter), T)
    try {
      model.writeBatch(bufs, batch)
      ws.writeRows({
        slots: Uint32Array.from(live, (s) => s.slot),
        pos: new Uint32Array(n0),
        params: paramWords(requests, live),
      })
      const step = ctx.begin("prefill")
      encodePrefill(step, model, { bufs, batch, cache, ws }, pass)
      const [ids] = await ctx.read([{ buffer: ws.ids, offset: 0, size: n0 * 4 }], step)
      accept(new Int32Array(ids))
    } finally {
      model.free(bufs)
      releasePass(pass)
      pass = null
    }
    stats.prefillSeconds += (performance.now() - t0) / 1000
    t0 = performance.now()
    let changed = true
    while (live.length) {
      const n = live.length
      if (changed) {
        releasePass(pass)
        pass = passAdapters(model, live.map((s) => requests[s.request].adapter), 1)
        ws.writeRows({ slots: Uint32Array.from(live, (s) => s.slot) })
      }
      ws.writeRows({
        tokens: Int32Array.from(live, (s) => s.token),
        pos: Uint32Array.from(live, (s) => s.pos),
        params: paramWords(requests, live),
      })
      const Lk = Math.max(...live.map((s) => s.pos)) + 1
      const step = ctx.begin("decode")
      encodeDecodeStep(step, model, { ws, cache, n, Lk }, pass!)
      const [ids] = await ctx.read([{ buffer: ws.ids, offset: 0, size: n * 4 }], step)
      stats.decodeSteps++
      stats.decodeRows += n
      for (const s of live) s.pos++
      changed = accept(new Int32Array(ids))
    }
    stats.decodeSeconds += (performance.now() - t0) / 1000
  } finally {
    releasePass(pass)
    ws.release()
    cache.release()
  }
}
