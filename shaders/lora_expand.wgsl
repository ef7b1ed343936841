// LoRA expand: y[row0 + i] += scale · t · Bᵀ, accumulated (+=) onto the base projection's output.
// Bindings:
//   0 dims  uniform  Dims (lora_dims.wgsl)
//   1 y     (·, OUT)      f32, read_write  +=  batch-shaped
//   2 t     (N, R)        f32, read
//   3 p     parameters    f32, read        B (OUT, R) at dims.b
// Grid: 1-D over N·OUT, folded into 2-D.
// Reference: src/reference/lora.ts loraExpand

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<storage, read> t: array<f32>;
@group(0) @binding(3) var<storage, read> p: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>) {
  let idx = flat_index(wid, nwg, lid);
  if (idx >= dims.N * dims.OUT) {
    return;
  }
  let i = idx / dims.OUT;
  let o = idx % dims.OUT;
  let bo = dims.b + o * dims.R;
  var acc = 0.0;
  for (var r = 0u; r < dims.R; r++) {
    acc += p[bo + r] * t[i * dims.R + r];
  }
  let yi = (dims.row0 + i) * dims.OUT + o;
  y[yi] = y[yi] + dims.scale * acc;
}
