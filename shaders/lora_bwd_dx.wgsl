// LoRA backward, input gradient: dx[row0 + i] += m_i ⊙ (dt_i · A), accumulated (+=) onto the frozen
// weight's dy · W (src/kernels/matmul.ts linearBackwardInput).
// Bindings:
//   0 dims  uniform  Dims (lora_dims.wgsl)
//   1 dx    (·, IN)       f32, read_write  +=  batch-shaped
//   2 dt    (N, R)        f32, read
//   3 p     parameters    f32, read        A (R, IN) at dims.a
// Grid: 1-D over N·IN, folded into 2-D.
// Reference: src/reference/lora.ts loraBackward (dx)

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read_write> dx: array<f32>;
@group(0) @binding(2) var<storage, read> dt: array<f32>;
@group(0) @binding(3) var<storage, read> p: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>) {
  let idx = flat_index(wid, nwg, lid);
  if (idx >= dims.N * dims.IN) {
    return;
  }
  let i = idx / dims.IN;
  let k = idx % dims.IN;
  var acc = 0.0;
  for (var r = 0u; r < dims.R; r++) {
    acc += dt[i * dims.R + r] * p[dims.a + r * dims.IN + k];
  }
  let xi = (dims.row0 + i) * dims.IN + k;
  dx[xi] = dx[xi] + acc * mult(i, k);
}
