/**
 * Helpers shared by the generated LoRA and MixLoRA kernels (src/kernels/lora_codegen.ts, moe_codegen.ts).
 *
 * Why generated (REPORT.md §2/3, and src/kernels/matmul_codegen.ts): on lavapipe every storage-buffer load is
 * an 8-iteration per-lane loop (~100–200 cycles per vec4 per 8 lanes), and Mesa 22.3 neither unrolls loops nor
 * scalarises small arrays. The adapter kernels therefore give every invocation a register tile (e.g. all R ranks
 * of several output columns), written as named scalars / vec4s in straight-line code, so that each fetched value
 * feeds many FMAs; and they load 16-byte vec4s where rows are contiguous.
 *
 * Uniform values go through opaque locals (`opaqueDims`): lavapipe (Mesa 22.3) "inlines" uniform values that
 * decide `if` / loop conditions and then, when inlining changes the shader's size a lot (loops unrolled once
 * their trip count is known), compiles a new variant at **every dispatch** (~0.8 ms from Mesa's disk cache,
 * ~200 ms without it) instead of once. Conditions that also depend on `num_workgroups` cannot be inlined.
 *
 * Width `w`: 4 when every row stride and tensor offset the kernel touches is a multiple of 4 floats (then the
 * f32 buffers are bound as `array<vec4<f32>>` and loops step 4 columns at a time), else 1 (`array<f32>`, the
 * same code with scalars). `Gen` renders the few expressions that differ between the two.
 * @module
 */

export type Width = 1 | 4

/** Line builder plus the width-dependent WGSL spellings. */
export class Gen {
  readonly lines: string[] = []
  constructor(readonly w: Width) {}

  /** appends lines */
  p(...s: string[]): void {
    this.lines.push(...s)
  }

  /** the chunk type: vec4<f32> or f32 */
  get t(): string {
    return this.w === 4 ? "vec4<f32>" : "f32"
  }

  get zero(): string {
    return this.w === 4 ? "vec4<f32>(0.0)" : "0.0"
  }

  /** `w` as a WGSL u32 literal */
  get wu(): string {
    return `${this.w}u`
  }

  /** the chunk of `buf` starting at element index `e` (a multiple of w) */
  at(buf: string, e: string): string {
    return this.w === 4 ? `${buf}[(${e}) >> 2u]` : `${buf}[${e}]`
  }

  /** component c of a chunk */
  c(v: string, c: number): string {
    return this.w === 4 ? `${v}.${"xyzw"[c]}` : v
  }

  /** Σ_c a[c]·b[c] of two chunks */
  dot(a: string, b: string): string {
    return this.w === 4 ? `dot(${a}, ${b})` : `${a} * ${b}`
  }

  /** sum of a chunk's components */
  hsum(v: string): string {
    return this.w === 4 ? `dot(${v}, vec4<f32>(1.0))` : v
  }

  /** a chunk from w scalar expressions */
  vec(parts: readonly string[]): string {
    return this.w === 4 ? `vec4<f32>(${parts.join(", ")})` : parts[0]
  }

  /** a chunk-wise application of the scalar function `fn` */
  map(fn: string, v: string): string {
    return this.w === 4 ? `vec4<f32>(${[0, 1, 2, 3].map((c) => `${fn}(${v}.${"xyzw"[c]})`).join(", ")})` : `${fn}(${v})`
  }

  /** scalar r of a rank vector held as chunks `${name}_${q}` */
  rank(name: string, r: number): string {
    return this.c(`${name}_${Math.floor(r / this.w)}`, r % this.w)
  }

  /** chunk q of a rank vector held as scalars `${name}_${r}` */
  pack(name: string, q: number): string {
    return this.vec(range(0, this.w).map((c) => `${name}_${q * this.w + c}`))
  }

  code(): string {
    return this.lines.join("\n") + "\n"
  }
}

/**
 * `let u_X = dims.X + z;` for each u32 field X (of `from`, default the uniform `dims`), with z = 0 computed from num_workgroups, which lavapipe cannot
 * fold: conditions on u_X are then not "inlinable uniforms" (see the module doc). Needs `nwg` in scope.
 */
export function opaqueDims(
  g: Gen,
  fields: readonly string[],
  from = "dims",
  opts: { declareZero?: boolean } = {},
): void {
  if (opts.declareZero ?? true) {
    g.p(`  let z = select(0u, 1u, nwg.x == 0u); // 0, opaque to lavapipe's uniform inlining`)
  }
  g.p(`  ` + fields.map((f) => `let u_${f} = ${from}.${f} + z;`).join(" "))
}

/**
 * Rows (tokens or list entries) per invocation of the kernels that keep whole rank vectors in registers: 4 for
 * R ≤ 8, fewer for larger R, since code size and LLVM compile time grow with rows · R (cold compiles of R = 32
 * kernels took 4–28 s before this bound).
 */
export function rowTile(R: number): number {
  return Math.max(1, Math.min(4, Math.floor(32 / R)))
}

/** Ranks per invocation of the gradient tiles (dA, dB): the largest divisor of R that is ≤ 8 and a multiple of w. */
export function rankBlock(R: number, w: Width): number {
  for (let b = 8; b >= 1; b--) if (R % b === 0 && b % w === 0) return b
  throw new Error(`no rank block for R = ${R}, w = ${w}`)
}

/** [a, b) */
export function range(a: number, b: number): number[] {
  return Array.from({ length: Math.max(0, b - a) }, (_, i) => a + i)
}

/** Sum of terms as one WGSL expression (`zero` when empty). */
export function sum(terms: readonly string[], zero = "0.0"): string {
  return terms.length === 0 ? zero : terms.join(" + ")
}

/**
 * WGSL helpers for masks regenerated from (seed, stream, row, col) (shaders/lora_common.wgsl): the first three
 * PCG rounds depend on the row only, so a kernel hashes them once per row (`row_hash`) and one round per column.
 *   mask_hash(seed, stream, row, col) = pcg(row_hash(seed, stream, row) ^ col)
 * `row` is the token's mask key (`mask_key` of lora_common.wgsl: its sequence within the adapter's rows and its
 * position in that sequence), never its batch row, so that masks do not depend on the packing.
 */
export function maskHelpers(g: Gen): void {
  g.p(
    `fn row_hash(seed: u32, stream: u32, row: u32) -> u32 { return pcg(pcg(pcg(seed) ^ stream) ^ row); }`,
    `// dropout multipliers of columns col .. col + w − 1 (0 or keep; 1 when dropout is off)`,
    `fn keep_w(on: u32, hr: u32, thr: u32, keep: f32, col: u32) -> ${g.t} {`,
    `  if (on == 0u) { return ${g.w === 4 ? "vec4<f32>(1.0)" : "1.0"}; }`,
    `  return ${g.vec(range(0, g.w).map((c) => `select(0.0, keep, pcg(hr ^ (col + ${c}u)) >= thr)`))};`,
    `}`,
  )
}
