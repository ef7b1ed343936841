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
