// Gated FFN activation: h = act(g) ⊙ u over (N, F) flattened to count = N·F elements, act chosen by ACT:
//   0 silu       act(x) = x / (1 + e^−x)
//   1 gelu       act(x) = x/2 · (1 + erf(x/√2))   (erfc from the Numerical Recipes Chebyshev fit, rel. err < 1.2e-7)
//   2 gelu_tanh  act(x) = x/2 · (1 + tanh(√(2/π) · (x + 0.044715 x³)))   ("gelu_new", "gelu_pytorch_tanh")
//
// Bindings:
//   0 dims  uniform  Dims {count}
//   1 h     (N, F)   f32, read_write   =   (not g or u: WebGPU forbids one buffer writable and read-only in a dispatch)
//   2 g     (N, F)   f32, read         gate_proj output
//   3 u     (N, F)   f32, read         up_proj output
// Grid: 1-D over count, folded into 2-D: i = (wid.y * num_workgroups.x + wid.x) * WG + lid.x.
// Reference: src/reference/swiglu.ts swigluForward
//
// Entries `backward` and `backward_inplace`: dg = dh ⊙ u ⊙ act'(g), du = dh ⊙ act(g), both written, with
//   silu'(x) = σ(x) · (1 + x · (1 − σ(x)))
//   gelu'(x) = (1 + erf(x/√2)) / 2 + x · φ(x),  φ(x) = e^(−x²/2) / √(2π)
//   gelu_tanh'(x) = (1 + tanh y) / 2 + x/2 · (1 − tanh² y) · √(2/π) · (1 + 3 · 0.044715 x²),  y as in act
// Bindings (backward):
//   0 dims  uniform  Dims {count}
//   1 dg    (N, F)   f32, read_write   =
//   2 du    (N, F)   f32, read_write   =
//   3 dh    (N, F)   f32, read
//   4 g     (N, F)   f32, read
//   5 u     (N, F)   f32, read
// Bindings (backward_inplace, g and u are not needed after the backward): 1 g → dg, 2 u → du (read_write,
//   overwritten), 3 dh (read).
// Grid: as the forward. Reference: src/reference/swiglu.ts swigluBackward

struct Dims {
  count: u32,
}

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read_write> h: array<f32>;
@group(0) @binding(2) var<storage, read> g: array<f32>;
@group(0) @binding(3) var<storage, read> u: array<f32>;

override WG: u32 = 64u;

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
) {
  let i = (wid.y * nwg.x + wid.x) * WG + lid.x;
  if (i < dims.count) {
    h[i] = act(g[i]) * u[i];
  }
}

@group(0) @binding(1) var<storage, read_write> b_dg: array<f32>;
@group(0) @binding(2) var<storage, read_write> b_du: array<f32>;
@group(0) @binding(3) var<storage, read> b_dh: array<f32>;
@group(0) @binding(4) var<storage, read> b_g: array<f32>;
@group(0) @binding(5) var<storage, read> b_u: array<f32>;

@compute @workgroup_size(WG)
fn backward(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
) {
  let i = (wid.y * nwg.x + wid.x) * WG + lid.x;
  if (i < dims.count) {
    let x = b_g[i];
    let dh = b_dh[i];
    b_dg[i] = dh * b_u[i] * act_grad(x);
    b_du[i] = dh * act(x);
  }
}

@group(0) @binding(1) var<storage, read_write> ip_g: array<f32>;
@group(0) @binding(2) var<storage, read_write> ip_u: array<f32>;
@group(0) @binding(3) var<storage, read> ip_dh: array<f32>;

@compute @workgroup_size(WG)
fn backward_inplace(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
) {
  let i = (wid.y * nwg.x + wid.x) * WG + lid.x;
  if (i < dims.count) {
    let x = ip_g[i];
    let dh = ip_dh[i];
    ip_g[i] = dh * ip_u[i] * act_grad(x);
    ip_u[i] = dh * act(x);
  }
}

// ---- vec4 entries: the same three kernels over count / 4 chunks of 4 elements (count % 4 == 0), so that every
// load and store moves 16 bytes (on lavapipe a storage access costs about the same for f32 and vec4<f32>).
// Entry `main4` binds h4, g4, u4 as entry `main` binds h, g, u; `backward4` as `backward`; `backward_inplace4` as
// `backward_inplace`. Same per-element arithmetic, so the results are identical to the scalar entries.

fn act4(x: vec4<f32>) -> vec4<f32> {
  return vec4<f32>(act(x.x), act(x.y), act(x.z), act(x.w));
}

fn act_grad4(x: vec4<f32>) -> vec4<f32> {
  return vec4<f32>(act_grad(x.x), act_grad(x.y), act_grad(x.z), act_grad(x.w));
}

@group(0) @binding(1) var<storage, read_write> h4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> g4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> u4: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn main4(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
) {
  let i = (wid.y * nwg.x + wid.x) * WG + lid.x;
  if (i < dims.count / 4u) {
    h4[i] = act4(g4[i]) * u4[i];
  }
}

@group(0) @binding(1) var<storage, read_write> b4_dg: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> b4_du: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> b4_dh: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> b4_g: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> b4_u: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn backward4(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
) {
  let i = (wid.y * nwg.x + wid.x) * WG + lid.x;
  if (i < dims.count / 4u) {
    let x = b4_g[i];
    let dh = b4_dh[i];
    b4_dg[i] = dh * b4_u[i] * act_grad4(x);
    b4_du[i] = dh * act4(x);
  }
}

@group(0) @binding(1) var<storage, read_write> ip4_g: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> ip4_u: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> ip4_dh: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn backward_inplace4(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
) {
  let i = (wid.y * nwg.x + wid.x) * WG + lid.x;
  if (i < dims.count / 4u) {
    let x = ip4_g[i];
    let dh = ip4_dh[i];
    ip4_g[i] = dh * ip4_u[i] * act_grad4(x);
    ip4_u[i] = dh * act4(x);
  }
}
