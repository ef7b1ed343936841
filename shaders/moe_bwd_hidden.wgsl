// MixLoRA backward through stages 5b/6 per (token, ffn column), recomputing the forward's g, u, h:
//   dh[p] = w[p] · dmix[gi] + w[p] · m2 ⊙ (A2_eᵀ u2[p])          (dmix = dy · W2, the frozen down's input grad)
//   dg[p] = dh · u · act'(g),  du[p] = dh · act(g)
//   dg0[gi] = Σ_j dg[p],  du0[gi] = Σ_j du[p]                      (then dx = dg0 · W1 + du0 · W3)
// Bindings:
//   0 dims       uniform  Dims (moe_common.wgsl)
//   1 hs         (3, N, S, F) f32, read_write  =  h at 0, dg at N·S·F, du at 2·N·S·F; 0 for empty slots
//   2 dg0        (·, F)   f32, read_write  =   batch-shaped
//   3 du0        (·, F)   f32, read_write  =   batch-shaped
//   4 dmix       (·, F)   f32, read        batch-shaped
//   5 g0         (·, F)   f32, read
//   6 u0         (·, F)   f32, read
//   7 t          (3, N, S, R) f32, read    t1, t3
//   8 dts        (3, N, S, R) f32, read    u2
//   9 w          (N, S)   f32, read
//  10 expert_of  (N, S)   i32, read
//  11 p          parameters f32, read      B1, B3, A2
// Grid: 1-D over N·F, folded into 2-D.
// Reference: src/reference/mixlora.ts mixloraBackward (dg, du, dg0, du0)

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read_write> hs: array<f32>;
@group(0) @binding(2) var<storage, read_write> dg0: array<f32>;
@group(0) @binding(3) var<storage, read_write> du0: array<f32>;
@group(0) @binding(4) var<storage, read> dmix: array<f32>;
@group(0) @binding(5) var<storage, read> g0: array<f32>;
@group(0) @binding(6) var<storage, read> u0: array<f32>;
@group(0) @binding(7) var<storage, read> t: array<f32>;
@group(0) @binding(8) var<storage, read> dts: array<f32>;
@group(0) @binding(9) var<storage, read> w: array<f32>;
@group(0) @binding(10) var<storage, read> expert_of: array<i32>;
@group(0) @binding(11) var<storage, read> p: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>) {
  let idx = flat_index(wid, nwg, lid);
  if (idx >= dims.N * dims.F) {
    return;
  }
  let i = idx / dims.F;
  let f = idx % dims.F;
  let gi = dims.row0 + i;
  let bi = gi * dims.F + f;
  let nsr = dims.N * dims.S * dims.R;
  let nsf = dims.N * dims.S * dims.F;
  var sg = 0.0;
  var su = 0.0;
  for (var j = 0u; j < dims.S; j++) {
    let pr = i * dims.S + j;
    let hi = pr * dims.F + f;
    let ei = expert_of[pr];
    if (ei < 0) {
      hs[hi] = 0.0;
      hs[nsf + hi] = 0.0;
      hs[2u * nsf + hi] = 0.0;
      continue;
    }
    let e = u32(ei);
    var g1 = 0.0;
    var g3 = 0.0;
    if (has_gate()) {
      let bo = dims.b1 + (e * dims.F + f) * dims.R;
      for (var r = 0u; r < dims.R; r++) {
        g1 += p[bo + r] * t[pr * dims.R + r];
      }
    }
    if (has_up()) {
      let bo = dims.b3 + (e * dims.F + f) * dims.R;
      for (var r = 0u; r < dims.R; r++) {
        g3 += p[bo + r] * t[nsr + pr * dims.R + r];
      }
    }
    let g = g0[bi] + dims.scale * g1;
    let u = u0[bi] + dims.scale * g3;
    let a = act(g);
    let wp = w[pr];
    var dh = wp * dmix[bi];
    if (has_down()) {
      var acc = 0.0;
      let ao = dims.a2 + e * dims.R * dims.F + f;
      for (var r = 0u; r < dims.R; r++) {
        acc += p[ao + r * dims.F] * dts[pr * dims.R + r];
      }
      dh += wp * acc * expert_mult(e, 2u, gi, f);
    }
    let dg = dh * u * act_grad(g);
    let du = dh * a;
    hs[hi] = a * u;
    hs[nsf + hi] = dg;
    hs[2u * nsf + hi] = du;
    sg += dg;
    su += du;
  }
  dg0[bi] = sg;
  du0[bi] = su;
}
