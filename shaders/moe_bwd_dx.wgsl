// MixLoRA backward, the adapter's part of the input gradient, accumulated (+=) onto dx = dg0 · W1 + du0 · W3
// (src/kernels/matmul.ts linearBackwardInput):
//   dx[gi] += Σ_j (m1 ⊙ A1_eᵀ dt1[p] + m3 ⊙ A3_eᵀ dt3[p]) + jitter ⊙ (Gᵀ dlogits_i)
// Bindings:
//   0 dims       uniform  Dims (moe_common.wgsl)
//   1 dx         (·, D)   f32, read_write  +=  batch-shaped
//   2 dts        (3, N, S, R) f32, read    dt1, dt3
//   3 dlogits    (N, E)   f32, read
//   4 expert_of  (N, S)   i32, read
//   5 p          parameters f32, read      A1, A3, G
// Grid: 1-D over N·D, folded into 2-D.
// Reference: src/reference/mixlora.ts mixloraBackward (dx)

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read_write> dx: array<f32>;
@group(0) @binding(2) var<storage, read> dts: array<f32>;
@group(0) @binding(3) var<storage, read> dlogits: array<f32>;
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
  let gi = dims.row0 + i;
  let nsr = dims.N * dims.S * dims.R;
  var acc = 0.0;
  for (var j = 0u; j < dims.S; j++) {
    let pr = i * dims.S + j;
    let ei = expert_of[pr];
    if (ei < 0) {
      continue;
    }
    let e = u32(ei);
    if (has_gate()) {
      var s = 0.0;
      for (var r = 0u; r < dims.R; r++) {
        s += dts[nsr + pr * dims.R + r] * p[dims.a1 + (e * dims.R + r) * dims.D + d];
      }
      acc += s * expert_mult(e, 0u, gi, d);
    }
    if (has_up()) {
      var s = 0.0;
      for (var r = 0u; r < dims.R; r++) {
        s += dts[2u * nsr + pr * dims.R + r] * p[dims.a3 + (e * dims.R + r) * dims.D + d];
      }
      acc += s * expert_mult(e, 1u, gi, d);
    }
  }
  var rs = 0.0;
  for (var e = 0u; e < dims.E; e++) {
    rs += dlogits[i * dims.E + e] * p[dims.router + e * dims.D + d];
  }
  acc += rs * jitter(gi, d);
  let xi = gi * dims.D + d;
  dx[xi] = dx[xi] + acc;
}
