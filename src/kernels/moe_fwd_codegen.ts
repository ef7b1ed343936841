/**
 * Generators of the MixLoRA forward expert kernels (fwd_experts, mix, expand_down); see src/kernels/moe_codegen.ts.
 * @module
 */
import { type Gen, range } from "./adapter_codegen.ts"
import {
  aRows,
  bRows,
  bTimes,
  ci,
  has,
  ifPair,
  keep,
  maskRow,
  type MoeKernelSpec,
  moeListTile,
  rankLoad,
  rankStore,
  tileHead,
} from "./moe_tile_codegen.ts"

/** fwd_experts: expert e's list tile; z' = E zeroes t of the empty slots of TP tokens per invocation. */
export function fwdExperts(g: Gen, s: MoeKernelSpec): void {
  const { R } = s
  const nq = R / g.w
  const tp = moeListTile(R)
  const TP = () => range(0, tp)
  g.p(`  if (zz == u_E) {`)
  g.p(`    for (var i = inv * ${tp}u; i < min(inv * ${tp}u + ${tp}u, u_N); i++) {`)
  g.p(`      for (var j = 0u; j < u_S; j++) {`)
  g.p(`        let pr = (u_loc0 + i) * u_S + j;`)
  g.p(`        if (expert_of[pr] < 0) {`)
  for (const off of ["0u", "nsr", "2u * nsr"]) rankStore(g, R, "t", `${off} + pr * ${R}u`, () => g.zero, "          ")
  g.p(`        }`)
  g.p(`      }`)
  g.p(`    }`)
  g.p(`    return;`)
  g.p(`  }`)
  tileHead(g, R)
  const gate = has(s, "gate_proj"), up = has(s, "up_proj"), down = has(s, "down_proj")
  const ins = [[gate, 1, "u_a1", 0], [up, 3, "u_a3", 1]] as const
  // stage 5a: t1, t3 = A (m ⊙ x) over D, A chunks shared by the tile's pairs
  if (gate || up) {
    for (const m of TP()) {
      g.p(`  let xb_${m} = gi_${m} * u_D;`)
      for (const [on, k, , proj] of ins) {
        if (!on) continue
        g.p(`  let hr${k}_${m} = ${maskRow(proj, `gi_${m}`)};`)
        g.p(`  ` + range(0, R).map((r) => `var t${k}_${m}_${r} = 0.0;`).join(" "))
      }
    }
    g.p(`  for (var d = 0u; d < u_D; d += ${g.wu}) {`)
    for (const [on, k, base] of ins) if (on) aRows(g, R, `a${k}`, base, "u_D", "d", "    ")
    for (const m of TP()) {
      g.p(`    let xv_${m} = x[${ci(g, `xb_${m} + d`)}];`)
      for (const [on, k] of ins) {
        if (!on) continue
        g.p(`    let xm${k}_${m} = xv_${m} * ${keep(`hr${k}_${m}`, "d")};`)
        for (const r of range(0, R)) {
          g.p(`    t${k}_${m}_${r} = t${k}_${m}_${r} + ${g.dot(`a${k}_${r}`, `xm${k}_${m}`)};`)
        }
      }
    }
    g.p(`  }`)
  }
  for (const m of TP()) {
    for (const [on, k] of ins) {
      if (on) { for (const q of range(0, nq)) g.p(`  let t${k}v_${m}_${q} = ${g.pack(`t${k}_${m}`, q)};`) }
    }
    ifPair(g, m, "  ", () => {
      for (const [on, k, , , off] of [[gate, 1, 0, 0, "0u"], [up, 3, 0, 0, "nsr"]] as const) {
        rankStore(g, R, "t", `${off} + pr_${m} * ${R}u`, (q) => on ? `t${k}v_${m}_${q}` : g.zero, "    ")
      }
    })
  }
  // stages 5b / 5c over F: B1, B3, A2 chunks shared
  for (const m of TP()) {
    g.p(`  let gb_${m} = gi_${m} * u_F;`)
    g.p(`  let hb_${m} = pr_${m} * u_F;`)
    if (down) {
      g.p(`  let hr2_${m} = ${maskRow(2, `gi_${m}`)};`)
      g.p(`  ` + range(0, R).map((r) => `var t2_${m}_${r} = 0.0;`).join(" "))
    }
  }
  g.p(`  for (var f = 0u; f < u_F; f += ${g.wu}) {`)
  if (gate) bRows(g, R, "b1", "u_b1", "u_F", "f", "    ")
  if (up) bRows(g, R, "b3", "u_b3", "u_F", "f", "    ")
  if (down) aRows(g, R, "a2", "u_a2", "u_F", "f", "    ")
  for (const m of TP()) {
    g.p(`    var gv_${m} = g0[${ci(g, `gb_${m} + f`)}];`)
    g.p(`    var uv_${m} = u0[${ci(g, `gb_${m} + f`)}];`)
    if (gate) g.p(`    gv_${m} = gv_${m} + dims.scale * ${bTimes(g, R, "b1", `t1v_${m}`)};`)
    if (up) g.p(`    uv_${m} = uv_${m} + dims.scale * ${bTimes(g, R, "b3", `t3v_${m}`)};`)
    g.p(`    let h_${m} = ${g.map("act", `gv_${m}`)} * uv_${m};`)
    ifPair(g, m, "    ", () => g.p(`      hs[${ci(g, `hb_${m} + f`)}] = h_${m};`))
    if (down) {
      g.p(`    let hm_${m} = h_${m} * ${keep(`hr2_${m}`, "f")};`)
      for (const r of range(0, R)) g.p(`    t2_${m}_${r} = t2_${m}_${r} + ${g.dot(`a2_${r}`, `hm_${m}`)};`)
    }
  }
  g.p(`  }`)
  for (const m of TP()) {
    ifPair(g, m, "  ", () => {
      rankStore(g, R, "t", `2u * nsr + pr_${m} * ${R}u`, (q) => down ? g.pack(`t2_${m}`, q) : g.zero, "    ")
    })
  }
}

export function mix(g: Gen): void {
  g.p(`  let nf = u_F / ${g.wu};`)
  g.p(`  if (inv >= u_N * nf) { return; }`)
  g.p(`  let i = inv / nf;`)
  g.p(`  let f = (inv % nf) * ${g.wu};`)
  g.p(`  var acc = ${g.zero};`)
  g.p(`  for (var j = 0u; j < u_S; j++) {`)
  g.p(`    let pr = (u_loc0 + i) * u_S + j;`)
  g.p(`    if (expert_of[pr] >= 0) { acc = acc + wt[pr] * hs[${ci(g, "pr * u_F + f")}]; }`)
  g.p(`  }`)
  g.p(`  mix[${ci(g, "(u_row0 + i) * u_F + f")}] = acc;`)
}

export function expandDown(g: Gen, s: MoeKernelSpec): void {
  const { R } = s
  g.p(`  let i = inv;`)
  g.p(`  if (i >= u_N) { return; }`)
  g.p(`  let yb = (u_row0 + i) * u_D;`)
  g.p(`  for (var j = 0u; j < u_S; j++) {`)
  g.p(`    let pr = (u_loc0 + i) * u_S + j;`)
  g.p(`    let ei = expert_of[pr];`)
  g.p(`    if (ei < 0) { continue; }`)
  g.p(`    let e = u32(ei);`)
  g.p(`    let ws = wt[pr] * dims.scale;`)
  rankLoad(g, R, "t2", "t", `2u * nsr + pr * ${R}u`, "", "    ")
  g.p(`    for (var d = 0u; d < u_D; d += ${g.wu}) {`)
  bRows(g, R, "b2", "u_b2", "u_D", "d", "      ")
  g.p(`      let yi = ${ci(g, "yb + d")};`)
  g.p(`      y[yi] = y[yi] + ws * ${bTimes(g, R, "b2", "t2")};`)
  g.p(`    }`)
  g.p(`  }`)
}
