// MixLoRA stage 5c: rank-space input of each routed expert's down_proj LoRA, t2[p] = A2_e (m2 ⊙ h[p]); 0 for
// empty slots.
// Bindings:
//   0 dims       uniform  Dims (moe_common.wgsl)
//   1 t          (3, N, S, R) f32, read_write  =  t2 at 2·N·S·R
//   2 hs         (N, S, F) f32, read
//   3 expert_of  (N, S)   i32, read
//   4 p          parameters f32, read      A2
// Grid: 1-D over N·S·R, folded into 2-D.
// Reference: src/reference/mixlora.ts mixloraForward (t2)

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read_write> t: array<f32>;
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
  let ei = expert_of[pr];
  var acc = 0.0;
  if (ei >= 0) {
    let e = u32(ei);
    let gi = dims.row0 + pr / dims.S;
    let ao = dims.a2 + (e * dims.R + r) * dims.F;
    for (var f = 0u; f < dims.F; f++) {
      acc += p[ao + f] * (hs[pr * dims.F + f] * expert_mult(e, 2u, gi, f));
    }
  }
  t[2u * nsr + idx] = acc;
}
