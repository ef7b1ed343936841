// MixLoRA backward, rank-space gradients of the gate/up LoRA: dt1[p] = s · B1_eᵀ dg[p], dt3[p] = s · B3_eᵀ du[p];
// 0 for empty slots and untargeted projections.
// Bindings:
//   0 dims       uniform  Dims (moe_common.wgsl)
//   1 dts        (3, N, S, R) f32, read_write  =  dt1 at N·S·R, dt3 at 2·N·S·R
//   2 hs         (3, N, S, F) f32, read    dg, du
//   3 expert_of  (N, S)   i32, read
//   4 p          parameters f32, read      B1, B3
// Grid: 1-D over N·S·R, folded into 2-D.
// Reference: src/reference/mixlora.ts mixloraBackward (dt of gate/up)

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read_write> dts: array<f32>;
@group(0) @binding(2) var<storage, read> hs: array<f32>;
@group(0) @binding(3) var<storage, read> expert_of: array<i32>;
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
  let nsf = dims.N * dims.S * dims.F;
  let ei = expert_of[pr];
  var acc1 = 0.0;
  var acc3 = 0.0;
  if (ei >= 0) {
    let e = u32(ei);
    let o1 = dims.b1 + e * dims.F * dims.R + r;
    let o3 = dims.b3 + e * dims.F * dims.R + r;
    for (var f = 0u; f < dims.F; f++) {
      if (has_gate()) {
        acc1 += p[o1 + f * dims.R] * hs[nsf + pr * dims.F + f];
      }
      if (has_up()) {
        acc3 += p[o3 + f * dims.R] * hs[2u * nsf + pr * dims.F + f];
      }
    }
  }
  dts[nsr + idx] = dims.scale * acc1;
  dts[2u * nsr + idx] = dims.scale * acc3;
}
