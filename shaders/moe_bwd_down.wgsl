// MixLoRA backward of stage 7's adapter part, rank space: u2[p] = s · B2_eᵀ dy[gi] (unweighted; the slot's
// dt2 = w[p] · u2[p]); 0 for empty slots or without down_proj LoRA.
// Bindings:
//   0 dims       uniform  Dims (moe_common.wgsl)
//   1 dts        (3, N, S, R) f32, read_write  =  u2 at 0 (dt1, dt3 follow: moe_bwd_dt_in.wgsl)
//   2 dy         (·, D)   f32, read        batch-shaped
//   3 expert_of  (N, S)   i32, read
//   4 p          parameters f32, read      B2
// Grid: 1-D over N·S·R, folded into 2-D.
// Reference: src/reference/mixlora.ts mixloraBackward (u2)

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read_write> dts: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read> expert_of: array<i32>;
@group(0) @binding(4) var<storage, read> p: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>) {
  let idx = flat_index(wid, nwg, lid);
  if (idx >= dims.N * dims.S * dims.R) {
    return;
  }
  let pr = idx / dims.R;
  let r = idx % dims.R;
  let ei = expert_of[pr];
  var acc = 0.0;
  if (ei >= 0 && has_down()) {
    let yo = (dims.row0 + pr / dims.S) * dims.D;
    let bo = dims.b2 + u32(ei) * dims.D * dims.R + r;
    for (var d = 0u; d < dims.D; d++) {
      acc += p[bo + d * dims.R] * dy[yo + d];
    }
  }
  dts[idx] = dims.scale * acc;
}
