// LoRA backward, parameter gradients, accumulated (+=) so that micro-batches add up:
//   dB (OUT, R) += scale · Σ_i dy_i ⊗ t_i          dA (R, IN) += Σ_i dt_i ⊗ drop(x_i)
// Each output is one invocation summing over tokens i = 0 .. N−1 in order (deterministic, no atomics).
// Bindings:
//   0 dims  uniform  Dims (lora_dims.wgsl)
//   1 g     gradients     f32, read_write  +=  dA at dims.a, dB at dims.b
//   2 dy    (·, OUT)      f32, read        batch-shaped
//   3 t     (N, R)        f32, read        saved by the forward shrink
//   4 dt    (N, R)        f32, read        from lora_bwd_dt
//   5 x     (·, IN)       f32, read        batch-shaped
// Grid: 1-D over OUT·R (dB) then R·IN (dA), folded into 2-D.
// Reference: src/reference/lora.ts loraBackward (da, db)

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read_write> g: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read> t: array<f32>;
@group(0) @binding(4) var<storage, read> dt: array<f32>;
@group(0) @binding(5) var<storage, read> x: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>) {
  let idx = flat_index(wid, nwg, lid);
  let nb = dims.OUT * dims.R;
  if (idx < nb) {
    let o = idx / dims.R;
    let r = idx % dims.R;
    var acc = 0.0;
    for (var i = 0u; i < dims.N; i++) {
      acc += dy[(dims.row0 + i) * dims.OUT + o] * t[i * dims.R + r];
    }
    g[dims.b + idx] = g[dims.b + idx] + dims.scale * acc;
    return;
  }
  let ia = idx - nb;
  if (ia >= dims.R * dims.IN) {
    return;
  }
  let r = ia / dims.IN;
  let k = ia % dims.IN;
  var acc = 0.0;
  for (var i = 0u; i < dims.N; i++) {
    acc += dt[i * dims.R + r] * (x[(dims.row0 + i) * dims.IN + k] * mult(i, k));
  }
  g[dims.a + ia] = g[dims.a + ia] + acc;
}
