/**
 * Generators of the MixLoRA backward expert kernels (bwd_experts, bwd_grads, bwd_dx); see src/kernels/moe_codegen.ts.
 * @module
 */
import { type Gen, range, rankBlock, sum } from "./adapter_codegen.ts"
import {
  aRows,
  batchRow,
  bRows,
  bTimes,
  bTransposeAcc,
  ci,
  has,
  ifPair,
  jitterRow,
  keep,
  listBase,
  maskRow,
  MOE_TC,
  type MoeKernelSpec,
  moeListTile,
  rankLoad,
  rankStore,
  SHORT,
  tileHead,
} from "./moe_tile_codegen.ts"

/**
 * Workgroups of the bwd_grads segments, in kernel order, as WGSL expressions over u_ dims and WG (`wgsl`) and
 * as numbers for the launcher (`count`).
 */
export function gradSegments(s: MoeKernelSpec): { name: string; wgsl: string; count: (d: SegDims) => number }[] {
  const cdiv = (a: number, b: number) => Math.ceil(a / b)
  const segs: { name: string; wgsl: string; count: (d: SegDims) => number }[] = []
  for (const p of ["down_proj", "gate_proj", "up_proj"] as const) {
    if (!s.targets.includes(p)) continue
    const [rows, cols]: ("D" | "F")[] = p === "down_proj" ? ["D", "F"] : ["F", "D"]
    const blocks = s.R / rankBlock(s.R, s.w)
    for (const [kind, n] of [["B", rows], ["A", cols]] as const) {
      segs.push({
        name: `${kind}_${SHORT[p]}`,
        wgsl: `${s.E}u * cdiv(cdiv(u_${n}, ${MOE_TC}u) * ${blocks}u, WG)`,
        count: (d) => s.E * cdiv(cdiv(d[n], MOE_TC) * blocks, d.WG),
      })
    }
  }
  segs.push({ name: "combine", wgsl: `cdiv(u_N, WG)`, count: (d) => cdiv(d.N, d.WG) })
  segs.push({ name: "router", wgsl: `cdiv(u_D / ${s.w}u, WG)`, count: (d) => cdiv(d.D / s.w, d.WG) })
  return segs
}

export interface SegDims {
  readonly N: number
  readonly D: number
  readonly F: number
  readonly WG: number
}

/**
 * bwd_experts: expert e's list tile, B2, B1, B3, A2 chunks shared by its TP pairs. Empty slots get nothing: their
 * dts and dw entries are never read (bwd_dx, bwd_grads and moe_bwd_router check expert_of).
 */
export function bwdExperts(g: Gen, s: MoeKernelSpec): void {
  const { R } = s
  const nq = R / g.w
  const gate = has(s, "gate_proj"), up = has(s, "up_proj"), down = has(s, "down_proj")
  const TP = () => range(0, moeListTile(R))
  tileHead(g, R)
  // u2 = s · B2ᵀ dy
  if (down) {
    for (const m of TP()) {
      g.p(`  let db_${m} = gi_${m} * u_D;`)
      g.p(`  ` + range(0, nq).map((q) => `var u2_${m}_${q} = ${g.zero};`).join(" "))
    }
    g.p(`  for (var d = 0u; d < u_D; d += ${g.wu}) {`)
    bRows(g, R, "b2", "u_b2", "u_D", "d", "    ")
    for (const m of TP()) {
      g.p(`    let ev_${m} = dy[${ci(g, `db_${m} + d`)}];`)
      bTransposeAcc(g, R, "b2", `u2_${m}`, `ev_${m}`, "    ")
    }
    g.p(`  }`)
  }
  for (const m of TP()) {
    if (down) {
      for (const q of range(0, nq)) g.p(`  u2_${m}_${q} = dims.scale * u2_${m}_${q};`)
      rankLoad(g, R, `t2_${m}`, "t", `2u * nsr + pr_${m} * ${R}u`)
    }
    g.p(`  let wp_${m} = wt[pr_${m}];`)
    // dts row 0 holds w u2 (what dA2 uses, saving bwd_grads a wt load per list entry); dw below uses u2 itself
    ifPair(g, m, "  ", () => {
      rankStore(g, R, "dts", `pr_${m} * ${R}u`, (q) => down ? `wp_${m} * u2_${m}_${q}` : g.zero, "    ")
    })
    if (gate) rankLoad(g, R, `t1v_${m}`, "t", `pr_${m} * ${R}u`)
    if (up) rankLoad(g, R, `t3v_${m}`, "t", `nsr + pr_${m} * ${R}u`)
    if (gate) g.p(`  ` + range(0, nq).map((q) => `var dt1_${m}_${q} = ${g.zero};`).join(" "))
    if (up) g.p(`  ` + range(0, nq).map((q) => `var dt3_${m}_${q} = ${g.zero};`).join(" "))
    if (down) g.p(`  let hr2_${m} = ${maskRow(2, `gi_${m}`)};`)
    g.p(`  var dwv_${m} = ${g.zero};`)
    g.p(`  let gb_${m} = gi_${m} * u_F;`)
    g.p(`  let hb_${m} = pr_${m} * u_F;`)
  }
  g.p(`  for (var f = 0u; f < u_F; f += ${g.wu}) {`)
  if (gate) bRows(g, R, "b1", "u_b1", "u_F", "f", "    ")
  if (up) bRows(g, R, "b3", "u_b3", "u_F", "f", "    ")
  if (down) aRows(g, R, "a2", "u_a2", "u_F", "f", "    ")
  for (const m of TP()) {
    g.p(`    var gv_${m} = g0[${ci(g, `gb_${m} + f`)}];`)
    g.p(`    var uv_${m} = u0[${ci(g, `gb_${m} + f`)}];`)
    g.p(`    let dm_${m} = dmix[${ci(g, `gb_${m} + f`)}];`)
    if (gate) g.p(`    gv_${m} = gv_${m} + dims.scale * ${bTimes(g, R, "b1", `t1v_${m}`)};`)
    if (up) g.p(`    uv_${m} = uv_${m} + dims.scale * ${bTimes(g, R, "b3", `t3v_${m}`)};`)
    g.p(`    let av_${m} = ${g.map("act", `gv_${m}`)};`)
    g.p(`    let h_${m} = av_${m} * uv_${m};`)
    g.p(`    var dh_${m} = wp_${m} * dm_${m};`)
    if (down) {
      const terms = range(0, R).map((r) => `${g.rank(`u2_${m}`, r)} * a2_${r}`)
      g.p(`    dh_${m} = dh_${m} + wp_${m} * (${terms.join(" + ")}) * ${keep(`hr2_${m}`, "f")};`)
    }
    g.p(`    let dg_${m} = dh_${m} * uv_${m} * ${g.map("act_grad", `gv_${m}`)};`)
    g.p(`    let du_${m} = dh_${m} * av_${m};`)
    ifPair(g, m, "    ", () => {
      g.p(`      hs[${ci(g, `hb_${m} + f`)}] = h_${m};`)
      g.p(`      hs[${ci(g, `nsf + hb_${m} + f`)}] = dg_${m};`)
      g.p(`      hs[${ci(g, `2u * nsf + hb_${m} + f`)}] = du_${m};`)
    })
    if (gate) bTransposeAcc(g, R, "b1", `dt1_${m}`, `dg_${m}`, "    ")
    if (up) bTransposeAcc(g, R, "b3", `dt3_${m}`, `du_${m}`, "    ")
    g.p(`    dwv_${m} = dwv_${m} + dm_${m} * h_${m};`)
  }
  g.p(`  }`)
  for (const m of TP()) {
    ifPair(g, m, "  ", () => {
      rankStore(g, R, "dts", `nsr + pr_${m} * ${R}u`, (q) => gate ? `dims.scale * dt1_${m}_${q}` : g.zero, "    ")
      rankStore(g, R, "dts", `2u * nsr + pr_${m} * ${R}u`, (q) => up ? `dims.scale * dt3_${m}_${q}` : g.zero, "    ")
      const tu = down ? ` + ${sum(range(0, nq).map((q) => g.dot(`t2_${m}_${q}`, `u2_${m}_${q}`)))}` : ""
      g.p(`    dw[pr_${m}] = ${g.hsum(`dwv_${m}`)}${tu};`)
    })
  }
}

/** bwd_grads: the segments of `gradSegments`, each a block of workgroups. */
export function bwdGrads(g: Gen, s: MoeKernelSpec): void {
  g.p(`  var q = wid.y * nwg.x + wid.x; // workgroup index, then index within its segment`)
  g.p(`  let l = lid.x;`)
  for (const seg of gradSegments(s)) {
    g.p(`  let n_${seg.name} = ${seg.wgsl};`)
    g.p(`  if (q < n_${seg.name}) {`)
    const [kind, p] = seg.name.split("_")
    if (kind === "B") gradB(g, s, p)
    else if (kind === "A") gradA(g, s, p)
    else if (kind === "combine") combine(g)
    else router(g, s)
    g.p(`    return;`)
    g.p(`  }`)
    g.p(`  q = q - n_${seg.name};`)
  }
}

/**
 * The gradient tile of workgroup q, lane l of a segment over `n` rows (dB) or columns (dA) × rank blocks of
 * expert e: first row / column o0, first rank r0, column chunks k_c clamped to n − w (never stored when past n).
 */
function tile(g: Gen, R: number, n: string): { nc: number; RB: number } {
  const nc = MOE_TC / g.w
  const RB = rankBlock(R, g.w)
  g.p(`    let tiles = cdiv(${n}, ${MOE_TC}u);`)
  g.p(`    let per = cdiv(tiles * ${R / RB}u, WG);`)
  g.p(`    let e = q / per;`)
  g.p(`    let k = (q % per) * WG + l;`)
  g.p(`    if (k >= tiles * ${R / RB}u) { return; }`)
  g.p(`    let o0 = (k % tiles) * ${MOE_TC}u;`)
  g.p(`    let r0 = (k / tiles) * ${RB}u;`)
  for (const c of range(0, nc)) g.p(`    let k_${c} = min(o0 + ${c * g.w}u, ${n} - ${g.wu});`)
  return { nc, RB }
}

const PROJ = {
  d: { k: 2, a: "u_a2", b: "u_b2", t: "2u * nsr", dt: "0u", hs: "0u" },
  g: { k: 0, a: "u_a1", b: "u_b1", t: "0u", dt: "nsr", hs: "nsf" },
  u: { k: 1, a: "u_a3", b: "u_b3", t: "nsr", dt: "2u * nsr", hs: "2u * nsf" },
} as const

/**
 * dB_e (rows × RB ranks) += s · Σ_p coef · rowv[p, rows] ⊗ tv[p, r0 ..]; down: coef w, rowv dy, tv t2;
 * gate / up: rowv dg / du, tv t1 / t3.
 */
function gradB(g: Gen, s: MoeKernelSpec, p: string): void {
  const { R } = s
  const P = PROJ[p as keyof typeof PROJ]
  const rows = p === "d" ? "u_D" : "u_F"
  const { nc, RB } = tile(g, R, rows)
  const nq = RB / g.w
  for (const c of range(0, MOE_TC)) g.p(`    ` + range(0, nq).map((q) => `var g_${c}_${q} = ${g.zero};`).join(" "))
  g.p(`    let cnt = counts[u_cnt0 + e];`)
  g.p(`    let lb = ${listBase("e")};`)
  g.p(`    for (var c = 0u; c < cnt; c++) {`)
  g.p(`      let pr = list[lb + c];`)
  if (p === "d") {
    g.p(`      let wp = wt[pr];`)
    g.p(`      let vb = (${batchRow("pr")}) * u_D;`)
    rankLoad(g, RB, "tv", "t", `${P.t} + pr * ${R}u + r0`, "wp * ", "      ")
    for (const c of range(0, nc)) g.p(`      let v_${c} = dy[${ci(g, `vb + k_${c}`)}];`)
  } else {
    rankLoad(g, RB, "tv", "t", `${P.t} + pr * ${R}u + r0`, "", "      ")
    for (const c of range(0, nc)) g.p(`      let v_${c} = hs[${ci(g, `${P.hs} + pr * u_F + k_${c}`)}];`)
  }
  for (const c of range(0, MOE_TC)) {
    const v = g.c(`v_${Math.floor(c / g.w)}`, c % g.w)
    for (const q of range(0, nq)) g.p(`      g_${c}_${q} = g_${c}_${q} + tv_${q} * ${v};`)
  }
  g.p(`    }`)
  for (const c of range(0, MOE_TC)) {
    g.p(`    if (o0 + ${c}u < ${rows}) {`)
    g.p(`      let gb = ${ci(g, `${P.b} + (e * ${rows} + o0 + ${c}u) * ${R}u + r0`)};`)
    for (const q of range(0, nq)) g.p(`      g[gb + ${q}u] = g[gb + ${q}u] + dims.scale * g_${c}_${q};`)
    g.p(`    }`)
  }
}

/**
 * dA_e (RB ranks × cols) += Σ_p dv[p, r0 ..] ⊗ (m ⊙ in[p, cols]); down: dv = w u2 (stored so by bwd_experts), in = h;
 * gate / up: dt1 / dt3, x
 */
function gradA(g: Gen, s: MoeKernelSpec, p: string): void {
  const { R } = s
  const P = PROJ[p as keyof typeof PROJ]
  const cols = p === "d" ? "u_F" : "u_D"
  const { nc, RB } = tile(g, R, cols)
  for (const r of range(0, RB)) g.p(`    ` + range(0, nc).map((c) => `var a_${r}_${c} = ${g.zero};`).join(" "))
  g.p(`    let cnt = counts[u_cnt0 + e];`)
  g.p(`    let lb = ${listBase("e")};`)
  g.p(`    for (var c = 0u; c < cnt; c++) {`)
  g.p(`      let pr = list[lb + c];`)
  g.p(`      let gi = ${batchRow("pr")};`)
  rankLoad(g, RB, "dv", "dts", `${P.dt} + pr * ${R}u + r0`, "", "      ")
  g.p(`      let hr = ${maskRow(P.k)};`)
  const src = (c: number) => p === "d" ? `hs[${ci(g, `pr * u_F + k_${c}`)}]` : `x[${ci(g, `gi * u_D + k_${c}`)}]`
  for (const c of range(0, nc)) g.p(`      let v_${c} = ${src(c)} * ${keep("hr", `k_${c}`)};`)
  for (const r of range(0, RB)) {
    for (const c of range(0, nc)) g.p(`      a_${r}_${c} = a_${r}_${c} + ${g.rank("dv", r)} * v_${c};`)
  }
  g.p(`    }`)
  for (const c of range(0, nc)) {
    g.p(`    if (o0 + ${c * g.w}u < ${cols}) {`)
    for (const r of range(0, RB)) {
      const ga = ci(g, `${P.a} + (e * ${R}u + r0 + ${r}u) * ${cols} + k_${c}`)
      g.p(`      { let ga = ${ga}; g[ga] = g[ga] + a_${r}_${c}; }`)
    }
    g.p(`    }`)
  }
}

/**
 * dg0[gi] = Σ_j dg[p], du0[gi] = Σ_j du[p] (=), one token row per invocation. The routed slots are read once
 * into a bit mask (S ≤ MAX_E = 32), not once per column chunk: each storage load costs on lavapipe.
 */
function combine(g: Gen): void {
  g.p(`    let i = q * WG + l;`)
  g.p(`    if (i >= u_N) { return; }`)
  g.p(`    let bb = (u_row0 + i) * u_F;`)
  g.p(`    var routed = 0u;`)
  g.p(`    for (var j = 0u; j < u_S; j++) {`)
  g.p(`      if (expert_of[(u_loc0 + i) * u_S + j] >= 0) { routed = routed | (1u << j); }`)
  g.p(`    }`)
  g.p(`    for (var f = 0u; f < u_F; f += ${g.wu}) {`)
  g.p(`      var sg = ${g.zero};`)
  g.p(`      var su = ${g.zero};`)
  g.p(`      for (var j = 0u; j < u_S; j++) {`)
  g.p(`        let pr = (u_loc0 + i) * u_S + j;`)
  g.p(`        if ((routed & (1u << j)) != 0u) {`)
  g.p(`          sg = sg + hs[${ci(g, "nsf + pr * u_F + f")}];`)
  g.p(`          su = su + hs[${ci(g, "2u * nsf + pr * u_F + f")}];`)
  g.p(`        }`)
  g.p(`      }`)
  g.p(`      dg0[${ci(g, "bb + f")}] = sg;`)
  g.p(`      du0[${ci(g, "bb + f")}] = su;`)
  g.p(`    }`)
}

/** dG[e, cols] += Σ_i dlogits[i, e] · (n ⊙ x)[gi, cols], all E rows × one chunk per invocation */
function router(g: Gen, s: MoeKernelSpec): void {
  const { E } = s
  g.p(`    let k0 = (q * WG + l) * ${g.wu};`)
  g.p(`    if (k0 >= u_D) { return; }`)
  g.p(`    ` + range(0, E).map((e) => `var r_${e} = ${g.zero};`).join(" "))
  g.p(`    for (var i = 0u; i < u_N; i++) {`)
  g.p(`      let gi = u_row0 + i;`)
  g.p(`      let li = u_loc0 + i;`)
  g.p(`      let hj = ${jitterRow()};`)
  g.p(`      let xv = x[${ci(g, "gi * u_D + k0")}] * jitter_w(u_jit, hj, dims.jit_lo, dims.jit_span, k0);`)
  for (const e of range(0, E)) g.p(`      r_${e} = r_${e} + dlogits[li * ${E}u + ${e}u] * xv;`)
  g.p(`    }`)
  for (const e of range(0, E)) g.p(`    { let gr = ${ci(g, `u_router + ${e}u * u_D + k0`)}; g[gr] = g[gr] + r_${e}; }`)
}

export function bwdDx(g: Gen, s: MoeKernelSpec): void {
  const { R, E } = s
  const gate = has(s, "gate_proj"), up = has(s, "up_proj")
  g.p(`  let i = inv;`)
  g.p(`  if (i >= u_N) { return; }`)
  g.p(`  let gi = u_row0 + i;`)
  g.p(`  let li = u_loc0 + i;`)
  g.p(`  let xb = gi * u_D;`)
  if (gate || up) {
    g.p(`  for (var j = 0u; j < u_S; j++) {`)
    g.p(`    let pr = li * u_S + j;`)
    g.p(`    let ei = expert_of[pr];`)
    g.p(`    if (ei < 0) { continue; }`)
    g.p(`    let e = u32(ei);`)
    if (gate) {
      rankLoad(g, R, "d1", "dts", `nsr + pr * ${R}u`, "", "    ")
      g.p(`    let hr1 = ${maskRow(0)};`)
    }
    if (up) {
      rankLoad(g, R, "d3", "dts", `2u * nsr + pr * ${R}u`, "", "    ")
      g.p(`    let hr3 = ${maskRow(1)};`)
    }
    g.p(`    for (var d = 0u; d < u_D; d += ${g.wu}) {`)
    g.p(`      var sv = ${g.zero};`)
    for (const [on, k, base, hr] of [[gate, 1, "u_a1", "hr1"], [up, 3, "u_a3", "hr3"]] as const) {
      if (!on) continue
      aRows(g, R, `a${k}`, base, "u_D", "d", "      ")
      const terms = range(0, R).map((r) => `${g.rank(`d${k}`, r)} * a${k}_${r}`)
      g.p(`      sv = sv + (${terms.join(" + ")}) * ${keep(hr, "d")};`)
    }
    g.p(`      let xi = ${ci(g, "xb + d")};`)
    g.p(`      dx[xi] = dx[xi] + sv;`)
    g.p(`    }`)
    g.p(`  }`)
  }
  for (const e of range(0, E)) g.p(`  let dl_${e} = dlogits[li * ${E}u + ${e}u];`)
  g.p(`  let hj = ${jitterRow()};`)
  g.p(`  for (var d = 0u; d < u_D; d += ${g.wu}) {`)
  const terms = range(0, E).map((e) => `dl_${e} * p[${ci(g, `u_router + ${e}u * u_D + d`)}]`)
  g.p(`    let xi = ${ci(g, "xb + d")};`)
  g.p(`    dx[xi] = dx[xi] + (${terms.join(" + ")}) * jitter_w(u_jit, hj, dims.jit_lo, dims.jit_span, d);`)
  g.p(`  }`)
}
