// LoRA shrink: t (N, R) = drop(x[row0 .. row0 + N)) · Aᵀ, written (=).
// Bindings:
//   0 dims  uniform  Dims (lora_dims.wgsl)
//   1 t     (N, R)        f32, read_write  =
//   2 x     (·, IN)       f32, read        batch-shaped, rows row0 + i
//   3 p     parameters    f32, read        A (R, IN) at dims.a
// Grid: 1-D over N·R, one output per invocation, folded into 2-D.
// Reference: src/reference/lora.ts loraShrink

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read_write> t: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> p: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>) {
  let idx = flat_index(wid, nwg, lid);
  if (idx >= dims.N * dims.R) {
    return;
  }
  let i = idx / dims.R;
  let r = idx % dims.R;
  let xo = (dims.row0 + i) * dims.IN;
  let ao = dims.a + r * dims.IN;
  var acc = 0.0;
  for (var k = 0u; k < dims.IN; k++) {
    acc += p[ao + k] * (x[xo + k] * mult(i, k));
  }
  t[idx] = acc;
}
