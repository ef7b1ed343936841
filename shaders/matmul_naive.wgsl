// Naive linear, one output per invocation: the baseline of bench/matmul.ts and the tiny-M kernel on
// hardware GPUs (there it is a plain GEMV: one thread per output column, full occupancy for M = 1).
//   Y[m, n0 + n] (= | +=) S[n] · Σ_k X[m, k] · W[n, k]
// W is one row block of a DeviceMatrix (src/kernels/matmul.ts): f32 bit patterns (4 per rgba32uint texel)
// or int8 (16 per texel, byte 0 = lowest k), zero-padded past K; S is the per-row scale (1 for f32).
// X is read straight from storage (row stride K, no alignment needed, e.g. K = 45).
//
// Bindings:
//   0 dims  uniform  Dims {M, N, K, n0, Nb, acc, Kt, pad}
//   1 Y     (M, N)   f32 storage, read_write   columns [n0, n0 + Nb): =, or += when acc = 1
//   2 X     (M, K)   f32 storage, read
//   3 W     texture_2d<u32> rgba32uint (Nb rows, Kt texels)
//   4 S     (Nb)     f32 storage, read
// Override: Q8 (int8 weights when true).
// Grid: [ceil(Nb / 64), M, 1], workgroup (64, 1).
// Reference: src/reference/linear.ts linear (int8: on dequantizeRows weights).

struct Dims { M: u32, N: u32, K: u32, n0: u32, Nb: u32, acc: u32, Kt: u32, pad: u32 }

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read_write> Y: array<f32>;
@group(0) @binding(2) var<storage, read> X: array<f32>;
@group(0) @binding(3) var W: texture_2d<u32>;
@group(0) @binding(4) var<storage, read> S: array<f32>;

override Q8: bool = false;

// x[m, k..k+3] with zeros past K (the weights are zero there too, but x past K is the next row or out of range)
fn x4(m: u32, k: u32) -> vec4<f32> {
  var v = vec4<f32>(0.0);
  for (var c = 0u; c < 4u; c++) {
    if (k + c < dims.K) { v[c] = X[m * dims.K + k + c]; }
  }
  return v;
}

@compute @workgroup_size(64, 1)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
  let n = g.x;
  let m = g.y;
  if (n >= dims.Nb || m >= dims.M) { return; }
  var acc = 0.0;
  for (var kt = 0u; kt < dims.Kt; kt++) {
    let p = textureLoad(W, vec2<u32>(kt, n), 0);
    if (Q8) {
      let k = kt * 16u;
      acc += dot(x4(m, k), vec4<f32>(unpack4xI8(p.x))) + dot(x4(m, k + 4u), vec4<f32>(unpack4xI8(p.y))) +
        dot(x4(m, k + 8u), vec4<f32>(unpack4xI8(p.z))) + dot(x4(m, k + 12u), vec4<f32>(unpack4xI8(p.w)));
    } else {
      acc += dot(x4(m, kt * 4u), bitcast<vec4<f32>>(p));
    }
  }
  let o = m * dims.N + dims.n0 + n;
  let v = acc * S[n];
  if (dims.acc != 0u) { Y[o] = Y[o] + v; } else { Y[o] = v; }
}
