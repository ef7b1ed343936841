/**
 * Pieces shared by the MixLoRA kernel generators (src/kernels/moe_codegen.ts and the moe_fwd / moe_bwd
 * generators): the kernel spec, tile sizes, and WGSL snippets for rank vectors (R values of one pair, held as
 * R / w chunks), expert weight rows and expert list tiles. Snippets use the names the kernels define: e (expert),
 * the opaque dims u_X, nsr = Nt·S·R, nsf = Nt·S·F, p (parameters), zz (z' of wid.z = seg · Z + z').
 * @module
 */
import type { FfnProjection } from "../model/adapter.ts"
import { type Gen, range, sum, type Width } from "./adapter_codegen.ts"

export type MoeKernel = "fwd_experts" | "mix" | "expand_down" | "bwd_experts" | "bwd_grads" | "bwd_dx"

/** Rows (dB) or columns (dA) per invocation of the gradient segments (a multiple of 4), × rankBlock(R, w) ranks. */
export const MOE_TC = 8

/**
 * List entries (pairs of one expert) per invocation of fwd_experts / bwd_experts (and tokens of the zero job):
 * TP = min(8, 64 / R), so the tile's rank registers (TP · R per vector) stay near 64. Each A / B chunk load is
 * shared by TP pairs; on lavapipe TP = 8 at R = 8 took ~20 % off both kernels against TP = 4, TP = 16 spilled.
 */
export const moeListTile = (R: number): number => Math.max(1, Math.min(8, Math.floor(64 / R)))

/** Short names of the targeted projections in kernel names and segment names. */
export const SHORT: Record<FfnProjection, string> = { gate_proj: "g", up_proj: "u", down_proj: "d" }

export interface MoeKernelSpec {
  readonly kernel: MoeKernel
  readonly R: number
  readonly E: number
  readonly w: Width
  /** targeted FFN projections (gate, up, down order) */
  readonly targets: readonly FfnProjection[]
}

/** whether projection p carries expert LoRA */
export const has = (s: MoeKernelSpec, p: FfnProjection): boolean => s.targets.includes(p)

/** chunk index of element e (a multiple of w) */
export function ci(g: Gen, e: string): string {
  return g.w === 4 ? `(${e}) >> 2u` : e
}

/** `let ${name}_q = buf[chunk of off + q·w]` for the R/w chunks of a rank vector, optionally times `coef`. */
export function rankLoad(g: Gen, R: number, name: string, buf: string, off: string, coef = "", indent = "  "): void {
  for (const q of range(0, R / g.w)) {
    g.p(`${indent}let ${name}_${q} = ${coef}${buf}[${ci(g, `${off} + ${q * g.w}u`)}];`)
  }
}

/** `buf[chunks of off] = value_q` for a rank vector (`zero` stores zeros) */
export function rankStore(
  g: Gen,
  R: number,
  buf: string,
  off: string,
  value: (q: number) => string,
  indent = "  ",
): void {
  for (const q of range(0, R / g.w)) g.p(`${indent}${buf}[${ci(g, `${off} + ${q * g.w}u`)}] = ${value(q)};`)
}

/**
 * The list tile of invocation `inv` of expert e = z': entries c0 .. c0 + TP − 1 of the segment's list[e]
 * (clamped to the last entry; stores check `c0 + m < cnt`), their pairs pr_m and batch rows gi_m.
 */
export function tileHead(g: Gen, R: number): void {
  const TP = moeListTile(R)
  g.p(`  let e = zz;`)
  g.p(`  let cnt = counts[u_cnt0 + e];`)
  g.p(`  let c0 = inv * ${TP}u;`)
  g.p(`  if (c0 >= cnt) { return; }`)
  g.p(`  let lb = ${listBase("e")};`)
  for (const m of range(0, TP)) {
    g.p(`  let pr_${m} = list[lb + min(c0 + ${m}u, cnt - 1u)];`)
    g.p(`  let gi_${m} = ${batchRow(`pr_${m}`)};`)
  }
}

/** first entry of the segment's list of expert `e` (rows of E·N entries from loc0·E) */
export const listBase = (e: string): string => `u_loc0 * u_E + ${e} * u_N`

/** batch row of the group-local pair `pr`: row0 + (pr / S − loc0) */
export const batchRow = (pr: string): string => `u_row0 + (${pr} / u_S - u_loc0)`

/** `if (c0 + m < cnt) { … }` around the lines `body` emits */
export function ifPair(g: Gen, m: number, indent: string, body: () => void): void {
  g.p(`${indent}if (c0 + ${m}u < cnt) {`)
  body()
  g.p(`${indent}}`)
}

/**
 * mask row hash of expert e's projection (0 gate, 1 up, 2 down) for batch row `row`, keyed by the token's mask key
 * (`key_of`, emitted by moe_codegen.ts: its sequence in the segment and position in it), not by the row
 */
export const maskRow = (proj: number, row = "gi"): string =>
  `row_hash(u_drop_seed, 8u + 3u * e + ${proj}u, key_of(${row}))`

/** row hash of the router jitter (stream 7) of batch row `row` (keyed like `maskRow`) */
export const jitterRow = (row = "gi"): string => `row_hash(u_jit_seed, 7u, key_of(${row}))`

/** expert dropout multipliers (chunk) of columns col .. col + w − 1 for the row hash hr */
export const keep = (hr: string, col: string): string => `keep_w(u_drop, ${hr}, u_thr, dims.keep, ${col})`

/**
 * B rows (row0 + c, c < w) of expert e's B (rows × R, row-major) at `base`: `let ${name}_c_q`, w·R/w = R chunks.
 */
export function bRows(g: Gen, R: number, name: string, base: string, rows: string, row0: string, indent: string): void {
  for (const c of range(0, g.w)) {
    for (const q of range(0, R / g.w)) {
      g.p(
        `${indent}let ${name}_${c}_${q} = p[${
          ci(g, `${base} + (e * ${rows} + ${row0} + ${c}u) * ${R}u + ${q * g.w}u`)
        }];`,
      )
    }
  }
}

/** the chunk (over rows row0 .. row0 + w − 1) of B · v for B rows loaded by `bRows` and rank chunks `v_q` */
export function bTimes(g: Gen, R: number, name: string, v: string): string {
  return g.vec(
    range(0, g.w).map((c) => `(${sum(range(0, R / g.w).map((q) => g.dot(`${name}_${c}_${q}`, `${v}_${q}`)))})`),
  )
}

/** rank chunks acc_q += Σ_c B[row0 + c, q-chunk] · v[c] (Bᵀ v over the w rows) */
export function bTransposeAcc(g: Gen, R: number, name: string, acc: string, v: string, indent: string): void {
  for (const q of range(0, R / g.w)) {
    const terms = range(0, g.w).map((c) => `${name}_${c}_${q} * ${g.c(v, c)}`)
    g.p(`${indent}${acc}_${q} = ${acc}_${q} + ${terms.join(" + ")};`)
  }
}

/** `let ${name}_r = A[e, r, col chunk]` for r < R, A (E, R, cols) at base */
export function aRows(g: Gen, R: number, name: string, base: string, cols: string, col: string, indent: string): void {
  for (const r of range(0, R)) {
    g.p(`${indent}let ${name}_${r} = p[${ci(g, `${base} + (e * ${R}u + ${r}u) * ${cols} + ${col}`)}];`)
  }
}
