// MixLoRA backward, router gradient: dG[e, d] += Σ_i dlogits[i, e] · x[gi, d] · jitter(gi, d), accumulated (+=),
// summed over tokens in order.
// Bindings:
//   0 dims       uniform  Dims (moe_common.wgsl)
//   1 g          gradients f32, read_write  +=  dG (E, D) at dims.router
//   2 dlogits    (N, E)   f32, read
//   3 x          (·, D)   f32, read        batch-shaped
// Grid: 1-D over E·D, folded into 2-D.
// Reference: src/reference/mixlora.ts mixloraBackward (router)

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read_write> g: array<f32>;
@group(0) @binding(2) var<storage, read> dlogits: array<f32>;
@group(0) @binding(3) var<storage, read> x: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>) {
  let idx = flat_index(wid, nwg, lid);
  if (idx >= dims.E * dims.D) {
    return;
  }
  let e = idx / dims.D;
  let d = idx % dims.D;
  var acc = 0.0;
  for (var i = 0u; i < dims.N; i++) {
    let gi = dims.row0 + i;
    acc += dlogits[i * dims.E + e] * (x[gi * dims.D + d] * jitter(gi, d));
  }
  g[dims.router + idx] += acc;
}
