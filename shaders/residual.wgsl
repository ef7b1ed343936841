// Residual add in place: x += y over (N, D) flattened to count = N·D elements.
//
// Backward: z = x + y passes dz unchanged to both terms (dx = dy = dz), so there is no backward kernel: the
// stream's gradient buffer goes to the branch's backward as is, and the branch's input gradient is added back
// into it (rmsnorm backward with ACC, or `axpy` below).
//
// Bindings:
//   0 dims  uniform  Dims
//   1 x     (N, D)   f32, read_write   +=
//   2 y     (N, D)   f32, read
// Grid: 1-D over count, folded into 2-D (gx ≤ 65535): i = (wid.y * num_workgroups.x + wid.x) * WG + lid.x.
// Reference: src/reference/residual.ts residualForward
//
// Gradient helpers over count elements, same grid, alpha in the uniform (AxpyDims {count, alpha}):
//   entry `axpy`:  x += alpha · y    bindings 1 x (read_write, +=), 2 y (read)   reference: axpy
//   entry `scale`: x  = alpha · x    binding  1 x (read_write, =)                reference: scale

struct Dims {
  count: u32,
}

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> y: array<f32>;

override WG: u32 = 64u;

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
) {
  let i = (wid.y * nwg.x + wid.x) * WG + lid.x;
  if (i < dims.count) {
    x[i] = x[i] + y[i];
  }
}

struct AxpyDims {
  count: u32,
  alpha: f32,
}

@group(0) @binding(0) var<uniform> ax: AxpyDims;

@compute @workgroup_size(WG)
fn axpy(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
) {
  let i = (wid.y * nwg.x + wid.x) * WG + lid.x;
  if (i < ax.count) {
    x[i] = x[i] + ax.alpha * y[i];
  }
}

@compute @workgroup_size(WG)
fn scale(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
) {
  let i = (wid.y * nwg.x + wid.x) * WG + lid.x;
  if (i < ax.count) {
    x[i] = ax.alpha * x[i];
  }
}
