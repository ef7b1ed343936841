// MixLoRA backward, gradient of each slot's routing weight:
//   dw[p] = dmix[gi] · h[p] + t2[p] · u2[p]     (from w·W2 h through the mix, and from w · s B2 t2); 0 if empty
// Bindings:
//   0 dims       uniform  Dims (moe_common.wgsl)
//   1 dw         (N, S)   f32, read_write  =
//   2 hs         (3, N, S, F) f32, read    h
//   3 dmix       (·, F)   f32, read        batch-shaped
//   4 t          (3, N, S, R) f32, read    t2
//   5 dts        (3, N, S, R) f32, read    u2
//   6 expert_of  (N, S)   i32, read
// Grid: 1-D over N·S, folded into 2-D.
// Reference: src/reference/mixlora.ts mixloraBackward (dw)

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read_write> dw: array<f32>;
@group(0) @binding(2) var<storage, read> hs: array<f32>;
@group(0) @binding(3) var<storage, read> dmix: array<f32>;
@group(0) @binding(4) var<storage, read> t: array<f32>;
@group(0) @binding(5) var<storage, read> dts: array<f32>;
@group(0) @binding(6) var<storage, read> expert_of: array<i32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>) {
  let pr = flat_index(wid, nwg, lid);
  if (pr >= dims.N * dims.S) {
    return;
  }
  var acc = 0.0;
  if (expert_of[pr] >= 0) {
    let mo = (dims.row0 + pr / dims.S) * dims.F;
    for (var f = 0u; f < dims.F; f++) {
      acc += dmix[mo + f] * hs[pr * dims.F + f];
    }
    let t2 = 2u * dims.N * dims.S * dims.R;
    for (var r = 0u; r < dims.R; r++) {
      acc += t[t2 + pr * dims.R + r] * dts[pr * dims.R + r];
    }
  }
  dw[pr] = acc;
}
