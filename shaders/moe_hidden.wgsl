// MixLoRA stages 5b + 6, per (token, ffn column): each routed expert's hidden value and the weighted mix.
//   g = g0 + s · B1_e t1[p],  u = u0 + s · B3_e t3[p],  h[p] = act(g) · u
//   mix[gi] = Σ_j w[p] · h[p]      (the frozen W2 then runs once on mix: y = mix · W2ᵀ)
// Pad and dropped tokens get mix = 0. moe_bwd_hidden.wgsl repeats this recomputation in the backward.
// Bindings:
//   0 dims       uniform  Dims (moe_common.wgsl)
//   1 mix        (·, F)   f32, read_write  =   batch-shaped
//   2 hs         (N, S, F) f32, read_write =   h per (token, slot); 0 for empty slots
//   3 g0         (·, F)   f32, read        batch-shaped x · W1ᵀ
//   4 u0         (·, F)   f32, read        batch-shaped x · W3ᵀ
//   5 t          (3, N, S, R) f32, read    t1, t3
//   6 w          (N, S)   f32, read
//   7 expert_of  (N, S)   i32, read
//   8 p          parameters f32, read      B1, B3
// Grid: 1-D over N·F, folded into 2-D.
// Reference: src/reference/mixlora.ts mixloraForward (h, mix)

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read_write> mix: array<f32>;
@group(0) @binding(2) var<storage, read_write> hs: array<f32>;
@group(0) @binding(3) var<storage, read> g0: array<f32>;
@group(0) @binding(4) var<storage, read> u0: array<f32>;
@group(0) @binding(5) var<storage, read> t: array<f32>;
@group(0) @binding(6) var<storage, read> w: array<f32>;
@group(0) @binding(7) var<storage, read> expert_of: array<i32>;
@group(0) @binding(8) var<storage, read> p: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>) {
  let idx = flat_index(wid, nwg, lid);
  if (idx >= dims.N * dims.F) {
    return;
  }
  let i = idx / dims.F;
  let f = idx % dims.F;
  let bi = (dims.row0 + i) * dims.F + f;
  let nsr = dims.N * dims.S * dims.R;
  var acc = 0.0;
  for (var j = 0u; j < dims.S; j++) {
    let pr = i * dims.S + j;
    let ei = expert_of[pr];
    if (ei < 0) {
      hs[pr * dims.F + f] = 0.0;
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
    let h = act(g) * u;
    hs[pr * dims.F + f] = h;
    acc += w[pr] * h;
  }
  mix[bi] = acc;
}
