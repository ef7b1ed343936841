// MixLoRA stage 7 (adapter part): y[gi] += Σ_j w[p] · s · B2_e t2[p], accumulated onto y = mix · W2ᵀ.
// Bindings:
//   0 dims       uniform  Dims (moe_common.wgsl)
//   1 y          (·, D)   f32, read_write  +=  batch-shaped
//   2 t          (3, N, S, R) f32, read    t2
//   3 w          (N, S)   f32, read
//   4 expert_of  (N, S)   i32, read
//   5 p          parameters f32, read      B2
// Grid: 1-D over N·D, folded into 2-D.
// Reference: src/reference/mixlora.ts mixloraForward (y)

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<storage, read> t: array<f32>;
@group(0) @binding(3) var<storage, read> w: array<f32>;
@group(0) @binding(4) var<storage, read> expert_of: array<i32>;
@group(0) @binding(5) var<storage, read> p: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>) {
  let idx = flat_index(wid, nwg, lid);
  if (idx >= dims.N * dims.D) {
    return;
  }
  let i = idx / dims.D;
  let d = idx % dims.D;
  let t2 = 2u * dims.N * dims.S * dims.R;
  var acc = 0.0;
  for (var j = 0u; j < dims.S; j++) {
    let pr = i * dims.S + j;
    let ei = expert_of[pr];
    if (ei < 0) {
      continue;
    }
    let bo = dims.b2 + (u32(ei) * dims.D + d) * dims.R;
    var bt = 0.0;
    for (var r = 0u; r < dims.R; r++) {
      bt += p[bo + r] * t[t2 + pr * dims.R + r];
    }
    acc += w[pr] * dims.scale * bt;
  }
  let yi = (dims.row0 + i) * dims.D + d;
  y[yi] = y[yi] + acc;
}
