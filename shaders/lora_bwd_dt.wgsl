// LoRA backward, rank-space gradient: dt (N, R) = scale · dy[row0 .. row0 + N) · B, written (=).
// Bindings:
//   0 dims  uniform  Dims (lora_dims.wgsl)
//   1 dt    (N, R)        f32, read_write  =
//   2 dy    (·, OUT)      f32, read        batch-shaped
//   3 p     parameters    f32, read        B (OUT, R) at dims.b
// Grid: 1-D over N·R, folded into 2-D.
// Reference: src/reference/lora.ts loraBackward (dt)

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read_write> dt: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
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
  let yo = (dims.row0 + i) * dims.OUT;
  var acc = 0.0;
  for (var o = 0u; o < dims.OUT; o++) {
    acc += dy[yo + o] * p[dims.b + o * dims.R + r];
  }
  dt[idx] = dims.scale * acc;
}
