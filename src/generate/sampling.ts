/**
 * Next-token choice, shared by the device kernel (shaders/sample_tokens.wgsl) and its host mirror here:
 * greedy at temperature 0, else HF's order of logits warpers — temperature, then top-k, then top-p — and one
 * draw with a uniform u ∈ [0, 1) that the host takes from the request's own RNG (src/util/rng.ts), so a request's
 * samples depend only on its seed, never on which other requests share its batch.
 *
 * Sampling runs on the device, so a decode step reads back (rows) token ids rather than (rows, V) logits; the rule
 * needs no sort: both thresholds are found by bisection over the order-preserving u32 keys of the scaled logits
 * (see the shader header for the exact formulas). `sampleTokenReference` repeats the kernel's arithmetic in f32,
 * the same lane-strided sums and the same reduction tree, so only `exp` rounding can tell them apart.
 * @module
 */

/** Sampling settings of one request (HF `generate` semantics). */
export interface SamplingParams {
  /** 0: greedy (argmax, first index on ties); otherwise logits are divided by it */
  readonly temperature: number
  /** keep the top_k most likely tokens (ties at the boundary kept too); 0: off */
  readonly topK: number
  /** keep the most likely tokens whose mass above each is < top_p; 1: off, 0: only the most likely */
  readonly topP: number
}

/** Lanes per row in the kernel (its reductions are mirrored here). */
export const SAMPLE_LANES = 64

const f32 = new Float32Array(1)
const u32 = new Uint32Array(f32.buffer)
const bitsOf = (x: number) => (f32[0] = x, u32[0])
const fr = Math.fround

/** Throws a RangeError naming `where` unless the settings are usable. */
export function checkSamplingParams(p: SamplingParams, where: string): void {
  if (!Number.isFinite(p.temperature) || p.temperature < 0) {
    throw new RangeError(`${where}: temperature ${p.temperature} must be finite and ≥ 0`)
  }
  if (!Number.isSafeInteger(p.topK) || p.topK < 0) {
    throw new RangeError(`${where}: top_k ${p.topK} must be an integer ≥ 0`)
  }
  if (!(p.topP >= 0 && p.topP <= 1)) throw new RangeError(`${where}: top_p ${p.topP} must be in [0, 1]`)
}

/** True when the settings choose the argmax (no uniform is drawn for such a request). */
export const isGreedy = (p: SamplingParams): boolean => p.temperature === 0 || p.topK === 1

/** The kernel's four parameter words [bits(1/temperature) or 0, top_k, bits(top_p), bits(u)]. */
export function samplingWords(p: SamplingParams, u: number): [number, number, number, number] {
  const invT = p.temperature > 0 ? fr(1 / p.temperature) : 0
  return [bitsOf(invT), p.topK >>> 0, bitsOf(p.topP), bitsOf(u)]
}

/** Order-preserving u32 image of an f32: negatives flip every bit, non-negatives set the sign bit. */
export function floatKey(x: number): number {
  const b = bitsOf(x)
  return (b & 0x80000000) === 0 ? (b | 0x80000000) >>> 0 : ~b >>> 0
}

/** Σ of per-lane values by the kernel's tree: lane l += lane l + w for w = WG/2 .. 1, in f32 or as integers. */
function tree(parts: number[], round: (x: number) => number): number {
  const a = [...parts]
  for (let w = a.length / 2; w >= 1; w /= 2) for (let l = 0; l < w; l++) a[l] = round(a[l] + a[l + w])
  return a[0]
}

/** Per-lane sums of f(v) over v ≡ l (mod WG), increasing v, then the tree. */
function laneSum(V: number, f: (v: number) => number, round: (x: number) => number): number {
  const parts = new Array(SAMPLE_LANES).fill(0)
  for (let v = 0; v < V; v++) parts[v % SAMPLE_LANES] = round(parts[v % SAMPLE_LANES] + f(v))
  return tree(parts, round)
}

/**
 * The token the kernel picks for `logits` (V) with settings `p` and uniform `u`, in the kernel's f32 arithmetic
 * (see shaders/sample_tokens.wgsl for the rule).
 */
export function sampleTokenReference(logits: Float32Array, p: SamplingParams, u: number): number {
  const V = logits.length
  let a = 0
  for (let v = 1; v < V; v++) if (logits[v] > logits[a]) a = v
  const [invBits, K, topPBits, uBits] = samplingWords(p, u)
  f32[0] = 0
  u32[0] = invBits
  const invT = f32[0]
  if (invT <= 0 || K === 1) return a
  const m = logits[a]
  const z = Float32Array.from(logits, (x) => fr(fr(x - m) * invT))
  const keys = Uint32Array.from(z, floatKey)
  const int = (x: number) => x
  let kthr = 0
  if (K > 0 && K < V) {
    let lo = 0, hi = 0x80000000
    for (let it = 0; it < 32; it++) {
      const mid = lo + Math.floor((hi - lo) / 2) + ((hi - lo) & 1)
      if (laneSum(V, (v) => keys[v] >= mid ? 1 : 0, int) >= K) lo = mid
      else hi = mid - 1
    }
    kthr = lo
  }
  let thr = kthr
  u32[0] = topPBits
  const topP = f32[0]
  if (topP < 1) {
    const P = fr(topP * laneSum(V, (v) => keys[v] >= kthr ? fr(Math.exp(z[v])) : 0, fr))
    let lo = kthr, hi = 0x80000000
    for (let it = 0; it < 32; it++) {
      const mid = lo + Math.floor((hi - lo) / 2)
      if (laneSum(V, (v) => keys[v] > mid ? fr(Math.exp(z[v])) : 0, fr) < P) hi = mid
      else lo = mid + 1
    }
    thr = hi
  }
  const C = Math.ceil(V / SAMPLE_LANES)
  const kept = (v: number) => keys[v] >= thr
  const chunk = Array.from({ length: SAMPLE_LANES }, (_, l) => {
    let s = 0
    for (let v = l * C; v < Math.min(l * C + C, V); v++) if (kept(v)) s = fr(s + fr(Math.exp(z[v])))
    return s
  })
  let total = 0
  for (const s of chunk) total = fr(total + s)
  u32[0] = uBits
  const target = fr(f32[0] * total)
  let acc = 0
  for (let w = 0; w < SAMPLE_LANES; w++) {
    if (fr(acc + chunk[w]) > target) {
      let pick = a
      for (let v = w * C; v < Math.min(w * C + C, V); v++) {
        if (!kept(v)) continue
        pick = v
        acc = fr(acc + fr(Math.exp(z[v])))
        if (acc > target) break
      }
      return pick
    }
    acc = fr(acc + chunk[w])
  }
  return a
}
