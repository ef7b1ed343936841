// MixLoRA stage 5a, rank-space inputs of the routed experts (only routed (token, slot) pairs do work):
//   t1[p] = A1_e (m1 ⊙ x_i),  t3[p] = A3_e (m3 ⊙ x_i)     p = i·S + j, e = expert_of[p]; 0 for empty slots
//   and untargeted projections.
// Bindings:
//   0 dims       uniform  Dims (moe_common.wgsl)
//   1 t          (3, N, S, R) f32, read_write  =  t1 at 0, t3 at N·S·R (t2 at 2·N·S·R: moe_shrink_down)
//   2 expert_of  (N, S)   i32, read
//   3 x          (·, D)   f32, read        batch-shaped
//   4 p          parameters f32, read      A1, A3
// Grid: 1-D over N·S·R, folded into 2-D.
// Reference: src/reference/mixlora.ts mixloraForward (t1, t3)

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read_write> t: array<f32>;
@group(0) @binding(2) var<storage, read> expert_of: array<i32>;
@group(0) @binding(3) var<storage, read> x: array<f32>;
@group(0) @binding(4) var<storage, read> p: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>) {
  let idx = flat_index(wid, nwg, lid);
  let nsr = dims.N * dims.S * dims.R;
  if (idx >= nsr) {
    return;
  }
  let pr = idx / dims.R;
  let r = idx % dims.R;
  let i = pr / dims.S;
  let ei = expert_of[pr];
  var acc1 = 0.0;
  var acc3 = 0.0;
  if (ei >= 0) {
    let e = u32(ei);
    let gi = dims.row0 + i;
    let xo = gi * dims.D;
    let o1 = dims.a1 + (e * dims.R + r) * dims.D;
    let o3 = dims.a3 + (e * dims.R + r) * dims.D;
    for (var d = 0u; d < dims.D; d++) {
      let xv = x[xo + d];
      if (has_gate()) {
        acc1 += p[o1 + d] * (xv * expert_mult(e, 0u, gi, d));
      }
      if (has_up()) {
        acc3 += p[o3 + d] * (xv * expert_mult(e, 1u, gi, d));
      }
    }
  }
  t[idx] = acc1;
  t[nsr + idx] = acc3;
}
