/**
 * Generator of the MixLoRA expert kernels (launchers: src/kernels/moe.ts; preludes shaders/lora_common.wgsl and
 * shaders/moe_common.wgsl, whose header explains the efficient FFN and the segment table; reference
 * src/reference/mixlora.ts). Every kernel serves all segments (adapters) of its call: wid.z = seg · Z + z'.
 * Token i of a segment is li = loc0 + i in the group-local buffers and gi = row0 + i in the batch; pair
 * p = li·S + j is slot j of token li, e = expert_of[p] (−1: empty), s = scale, m1 / m3 / m2 the expert dropout
 * masks of gate / up / down (stream 8 + 3e + proj), n the router jitter (stream 7). Masks and jitter are keyed
 * by the token's mask key (`key_of(gi)` = token_key of shaders/moe_common.wgsl: its sequence within the segment
 * and its position in that sequence, reading `lengths` for left padding), so they do not depend on the packing.
 *
 *   kernel       invocation              computes
 *   fwd_experts  TP entries of list[e]   t1 = A1 (m1 ⊙ x), t3 = A3 (m3 ⊙ x); h = act(g0 + s B1 t1) ⊙ (u0 + s B3 t3)
 *                                        → hs; t2 = A2 (m2 ⊙ h)      (z' = E: t = 0 for the empty slots)
 *   mix          token, w columns        mix = Σ_j w h
 *   expand_down  token                   y += Σ_j w s B2 t2                    (+=, slot by slot)
 *   bwd_experts  TP entries of list[e]   u2 = s B2ᵀ dy; recompute g, u, h; dh = w dmix + w m2 ⊙ A2ᵀ u2;
 *                                        dg = dh u act'(g), du = dh act(g) → hs (h, dg, du); dt1 = s B1ᵀ dg,
 *                                        dt3 = s B3ᵀ du → dts (w u2, dt1, dt3); dw = dmix · h + t2 · u2
 *   bwd_grads    segments (workgroups)   dB2, dA2, dB1, dA1, dB3, dA3 (+=) per expert over its list; dg0 = Σ_j dg,
 *                                        du0 = Σ_j du (=, one token per invocation); dG += Σ_i dlogits_i ⊗ (n ⊙ x_i)
 *   bwd_dx       token                   dx += Σ_j (m1 ⊙ A1ᵀ dt1 + m3 ⊙ A3ᵀ dt3) + n ⊙ Gᵀ dlogits   (+=)
 *
 * fwd_experts / bwd_experts walk the token list (moe_lists.wgsl) of expert e = z' TP = moeListTile(R) entries per
 * invocation: each chunk of the expert's A / B rows is loaded once for TP pairs (per-lane storage loads are what
 * costs on lavapipe), the pairs' rank-R vectors (t1, t3, u2 ...) stay in registers and every contraction over D
 * or F is one loop with an unrolled body. The gradient segments give each invocation a register tile of TC rows
 * (dB) or columns (dA) × a block of ≤ 8 ranks and walk the expert's list in order. Kernels whose outputs are
 * rows of a token (mix, expand_down, bwd_dx, dg0 / du0) stay token-major, since a token's slots sit in different
 * experts' lists. Every output is written by one invocation with a fixed summation order: bit-reproducible, no
 * atomics.
 * @module
 */
import { Gen, maskHelpers, opaqueDims, range } from "./adapter_codegen.ts"
import { bwdDx, bwdExperts, bwdGrads } from "./moe_bwd_codegen.ts"
import { expandDown, fwdExperts, mix } from "./moe_fwd_codegen.ts"
import { type MoeKernel, type MoeKernelSpec, SHORT } from "./moe_tile_codegen.ts"

export { gradSegments, type SegDims } from "./moe_bwd_codegen.ts"
export { MOE_TC, type MoeKernel, type MoeKernelSpec, moeListTile } from "./moe_tile_codegen.ts"

export function moeKernelName(s: MoeKernelSpec): string {
  return `moe_${s.kernel}_r${s.R}_e${s.E}_w${s.w}_${s.targets.map((t) => SHORT[t]).join("") || "none"}`
}

const FIELDS = [
  "N",
  "E",
  "D",
  "F",
  "S",
  "row0",
  "loc0",
  "Nt",
  "cnt0",
  "jit",
  "jit_seed",
  "drop",
  "drop_seed",
  "thr",
  "router",
  "a1",
  "b1",
  "a3",
  "b3",
  "a2",
  "b2",
]

/** Storage bindings a kernel may use, in binding order, outputs first (binding 0 is the Dims uniform). */
const BINDINGS: Record<MoeKernel, { names: readonly string[]; writes: number }> = {
  fwd_experts: { names: ["t", "hs", "list", "counts", "expert_of", "x", "g0", "u0", "p", "lengths"], writes: 2 },
  mix: { names: ["mix", "hs", "wt", "expert_of"], writes: 1 },
  expand_down: { names: ["y", "t", "wt", "expert_of", "p"], writes: 1 },
  bwd_experts: {
    names: ["dts", "hs", "dw", "list", "counts", "dy", "dmix", "g0", "u0", "t", "wt", "p", "lengths"],
    writes: 3,
  },
  bwd_grads: {
    names: ["g", "dg0", "du0", "hs", "expert_of", "x", "dlogits", "list", "counts", "t", "dts", "dy", "wt", "lengths"],
    writes: 3,
  },
  bwd_dx: { names: ["dx", "dts", "dlogits", "expert_of", "p", "lengths"], writes: 1 },
}
const ELEMENT: Record<string, string> = {
  expert_of: "i32",
  list: "u32",
  counts: "u32",
  lengths: "u32",
  wt: "f32",
  dw: "f32",
  dlogits: "f32",
}

/** A generated kernel: WGSL (without the preludes) and the names of its storage bindings 1, 2, … */
export interface MoeKernelCode {
  readonly code: string
  readonly bindings: readonly string[]
}

/**
 * WGSL of one kernel (without the preludes). Only the bindings the targeted projections use are declared
 * (pipelines use the "auto" layout, which drops unused ones).
 */
export function generateMoeKernel(s: MoeKernelSpec): MoeKernelCode {
  const { R, w } = s
  if (w === 4 && R % 4 !== 0) throw new Error(`w = 4 needs R % 4 = 0, got R = ${R}`)
  const g = new Gen(w)
  g.p(`@compute @workgroup_size(WG)`)
  g.p(`fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,`)
  g.p(`        @builtin(local_invocation_id) lid: vec3<u32>) {`)
  // segment and z' from wid.z = seg · Z + z' (Z = E + 1 for fwd_experts, E for bwd_experts, else 1)
  const Z = s.kernel === "fwd_experts" ? s.E + 1 : s.kernel === "bwd_experts" ? s.E : 1
  g.p(Z === 1 ? `  let zz = 0u;` : `  let zz = wid.z % ${Z}u;`)
  g.p(`  dims = segs[${Z === 1 ? "wid.z" : `wid.z / ${Z}u`}];`)
  g.p(`  let inv = flat_index(wid, nwg, lid);`)
  opaqueDims(g, FIELDS)
  // group-local layouts span all segments of the call: t, dts (3, Nt, S, R), hs (3, Nt, S, F)
  g.p(`  let nsr = u_Nt * u_S * ${R}u;`)
  g.p(`  let nsf = u_Nt * u_S * u_F;`)
  const body: Record<MoeKernel, () => void> = {
    fwd_experts: () => fwdExperts(g, s),
    mix: () => mix(g),
    expand_down: () => expandDown(g, s),
    bwd_experts: () => bwdExperts(g, s),
    bwd_grads: () => bwdGrads(g, s),
    bwd_dx: () => bwdDx(g, s),
  }
  body[s.kernel]()
  g.p(`}`)
  const main = g.code()
  const { names, writes } = BINDINGS[s.kernel]
  // key_of (below) reads lengths: the kernels that key masks or jitter bind it
  const keyed = main.includes("key_of(")
  const used = names.filter((n) => new RegExp(`\\b${n}\\[`).test(main) || (n === "lengths" && keyed))
  const h = new Gen(w)
  h.p(`// ${moeKernelName(s)}: generated by src/kernels/moe_codegen.ts, do not edit.`)
  h.p(`// binding 0: the segment table segs (shaders/moe_common.wgsl)`)
  used.forEach((b, k) => {
    const access = names.indexOf(b) < writes ? "read_write" : "read"
    h.p(`@group(0) @binding(${k + 1}) var<storage, ${access}> ${b}: array<${ELEMENT[b] ?? h.t}>;`)
  })
  h.p(``)
  maskHelpers(h)
  h.p(`// router-input jitter of columns col .. col + w − 1: lo + span · u, u = (h >> 8) · 2⁻²⁴ (1 when off)`)
  h.p(`fn jitter_w(on: u32, hr: u32, lo: f32, span: f32, col: u32) -> ${h.t} {`)
  h.p(`  if (on == 0u) { return ${w === 4 ? "vec4<f32>(1.0)" : "1.0"}; }`)
  h.p(
    `  return ${
      h.vec(range(0, w).map((c) => `lo + span * (f32(pcg(hr ^ (col + ${c}u)) >> 8u) * (1.0 / 16777216.0))`))
    };`,
  )
  h.p(`}`)
  if (keyed) {
    h.p(`// mask key of batch row gi (moe_common.wgsl token_key); its sequence's length matters for left padding only`)
    h.p(`fn key_of(gi: u32) -> u32 {`)
    h.p(`  var len = 0u;`)
    h.p(`  if (dims.left == 1u && (dims.drop | dims.jit) != 0u) { len = lengths[gi / dims.T]; }`)
    h.p(`  return token_key(gi, len);`)
    h.p(`}`)
  }
  h.p(`fn cdiv(a: u32, b: u32) -> u32 { return (a + b - 1u) / b; }`)
  h.p(``)
  return { code: h.code() + main, bindings: used }
}
