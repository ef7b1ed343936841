// Packs activations for the register-tile kernels: P[m, k] = X[m, k] for k < K, 0 for K ≤ k < Kp.
// P's row stride Kp is a multiple of 64 floats (256 bytes), the row pitch copyBufferToTexture needs,
// so that P can be copied into the rgba32float staging texture the tile kernels read. Only used when
// K is not a multiple of 64 (otherwise X is copied directly) or X lacks COPY_SRC.
//
// Bindings:
//   0 dims  uniform  Dims {M, K, Kp, pad}
//   1 P     (M, Kp)  f32 storage, read_write   =
//   2 X     (M, K)   f32 storage, read
// Grid: [Kp / 64, M, 1], workgroup (64, 1).
// Reference: none (a copy); checked through the linear tests with K = 45, 130.

struct Dims { M: u32, K: u32, Kp: u32, pad: u32 }

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read_write> P: array<f32>;
@group(0) @binding(2) var<storage, read> X: array<f32>;

@compute @workgroup_size(64, 1)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
  let k = g.x;
  let m = g.y;
  if (k >= dims.Kp || m >= dims.M) { return; }
  var v = 0.0;
  if (k < dims.K) { v = X[m * dims.K + k]; }
  P[m * dims.Kp + k] = v;
}

// Entry `main4` (K % 4 = 0): the same over vec4 chunks, P4[m, c] = X4[m, c] for 4c < K, 0 up to Kp; grid
// [ceil(Kp / 256), M, 1]: a quarter of the loads and stores of `main`.
@group(0) @binding(1) var<storage, read_write> P4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> X4: array<vec4<f32>>;

@compute @workgroup_size(64, 1)
fn main4(@builtin(global_invocation_id) g: vec3<u32>) {
  let c = g.x;
  let m = g.y;
  if (4u * c >= dims.Kp || m >= dims.M) { return; }
  var v = vec4<f32>(0.0);
  if (4u * c < dims.K) { v = X4[m * (dims.K / 4u) + c]; }
  P4[m * (dims.Kp / 4u) + c] = v;
}
