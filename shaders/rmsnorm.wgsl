// RMSNorm, HF LlamaRMSNorm in f32, one thread per row:
//   rstd[n] = 1 / sqrt(mean_d(x[n, d]²) + eps),   y[n, d] = w[d] · (x[n, d] · rstd[n])
// One thread per row rather than a workgroup reduction: on lavapipe every storage or workgroup load costs a
// per-lane loop, so a cooperative reduction only adds shared-memory traffic and barriers; a row per lane
// reads each element exactly twice (sum of squares, then output). Four partial sums shorten the f32
// accumulation chain (error ~ sqrt(D/4) ulp instead of sqrt(D)). D needs no alignment (e.g. 45).
//
// Bindings:
//   0 dims  uniform  Dims {N, D, eps}
//   1 y     (N, D)   f32, read_write   =   (may not alias x)
//   2 rstd  (N)      f32, read_write   =   saved for the backward
//   3 x     (N, D)   f32, read
//   4 w     (D)      f32, read
// Grid: 1-D over rows, folded into 2-D: n = (wid.y * num_workgroups.x + wid.x) * WG + lid.x.
// Reference: src/reference/rmsnorm.ts rmsnormForward
//
// Entry `backward` (w is frozen, so only dx), one thread per row like the forward:
//   c = rstd² · Σ_d (x ⊙ w ⊙ dy) / D,   dx[n, d] (= or +=) rstd · (w[d] · dy[n, d] − x[n, d] · c)
// i.e. dx = rstd · (w⊙dy − x̂ · mean(x̂ ⊙ w⊙dy)) with x̂ = x · rstd. ACC = true accumulates (the residual
// stream's gradient is a sum of the pass-through and the branch's input gradient).
// Bindings (backward):
//   0 dims  uniform  Dims {N, D}
//   1 dx    (N, D)   f32, read_write   = (ACC false) or += (ACC true); may not alias dy or x
//   2 dy    (N, D)   f32, read
//   3 x     (N, D)   f32, read         the forward's input
//   4 w     (D)      f32, read
//   5 rstd  (N)      f32, read         saved by the forward
// Grid (backward): as the forward. Reference: src/reference/rmsnorm.ts rmsnormBackward

struct Dims {
  N: u32,
  D: u32,
  eps: f32,
}

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<storage, read_write> rstd: array<f32>;
@group(0) @binding(3) var<storage, read> x: array<f32>;
@group(0) @binding(4) var<storage, read> w: array<f32>;

override WG: u32 = 64u;

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
) {
  let n = (wid.y * nwg.x + wid.x) * WG + lid.x;
  if (n >= dims.N) {
    return;
  }
  let D = dims.D;
  let o = n * D;
  let D4 = D & ~3u;
  var s0 = 0.0;
  var s1 = 0.0;
  var s2 = 0.0;
  var s3 = 0.0;
  for (var d = 0u; d < D4; d += 4u) {
    let a = x[o + d];
    let b = x[o + d + 1u];
    let c = x[o + d + 2u];
    let e = x[o + d + 3u];
    s0 += a * a;
    s1 += b * b;
    s2 += c * c;
    s3 += e * e;
  }
  for (var d = D4; d < D; d++) {
    let a = x[o + d];
    s0 += a * a;
  }
  let r = inverseSqrt(((s0 + s1) + (s2 + s3)) / f32(D) + dims.eps);
  rstd[n] = r;
  for (var d = 0u; d < D; d++) {
    y[o + d] = w[d] * (x[o + d] * r);
  }
}

@group(0) @binding(1) var<storage, read_write> b_dx: array<f32>;
@group(0) @binding(2) var<storage, read> b_dy: array<f32>;
@group(0) @binding(3) var<storage, read> b_x: array<f32>;
@group(0) @binding(4) var<storage, read> b_w: array<f32>;
@group(0) @binding(5) var<storage, read> b_rstd: array<f32>;

override ACC: bool = false;

@compute @workgroup_size(WG)
fn backward(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
) {
  let n = (wid.y * nwg.x + wid.x) * WG + lid.x;
  if (n >= dims.N) {
    return;
  }
  let D = dims.D;
  let o = n * D;
  let D4 = D & ~3u;
  var s0 = 0.0;
  var s1 = 0.0;
  var s2 = 0.0;
  var s3 = 0.0;
  for (var d = 0u; d < D4; d += 4u) {
    s0 += b_x[o + d] * b_w[d] * b_dy[o + d];
    s1 += b_x[o + d + 1u] * b_w[d + 1u] * b_dy[o + d + 1u];
    s2 += b_x[o + d + 2u] * b_w[d + 2u] * b_dy[o + d + 2u];
    s3 += b_x[o + d + 3u] * b_w[d + 3u] * b_dy[o + d + 3u];
  }
  for (var d = D4; d < D; d++) {
    s0 += b_x[o + d] * b_w[d] * b_dy[o + d];
  }
  let r = b_rstd[n];
  let c = (r * r) * (((s0 + s1) + (s2 + s3)) / f32(D));
  for (var d = 0u; d < D; d++) {
    let g = r * (b_w[d] * b_dy[o + d] - b_x[o + d] * c);
    if (ACC) {
      b_dx[o + d] = b_dx[o + d] + g;
    } else {
      b_dx[o + d] = g;
    }
  }
}

// ---- vec4 entries (D % 4 = 0): `main4` and `backward4` bind x, y, w, dy, dx as vec4 chunks (a quarter of the
// memory instructions). The four partial sums are the components of one vec4 accumulator, in the same order as
// s0..s3 above, and every element is computed by the same expression: results equal the scalar entries bit for bit.

@group(0) @binding(1) var<storage, read_write> y4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> x4: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> w4: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn main4(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
) {
  let n = (wid.y * nwg.x + wid.x) * WG + lid.x;
  if (n >= dims.N) {
    return;
  }
  let C = dims.D / 4u;
  let o = n * C;
  var s = vec4<f32>(0.0);
  for (var c = 0u; c < C; c++) {
    let a = x4[o + c];
    s += a * a;
  }
  let r = inverseSqrt(((s.x + s.y) + (s.z + s.w)) / f32(dims.D) + dims.eps);
  rstd[n] = r;
  for (var c = 0u; c < C; c++) {
    y4[o + c] = w4[c] * (x4[o + c] * r);
  }
}

@group(0) @binding(1) var<storage, read_write> b4_dx: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b4_dy: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> b4_x: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> b4_w: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn backward4(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
) {
  let n = (wid.y * nwg.x + wid.x) * WG + lid.x;
  if (n >= dims.N) {
    return;
  }
  let C = dims.D / 4u;
  let o = n * C;
  var s = vec4<f32>(0.0);
  for (var c = 0u; c < C; c++) {
    s += b4_x[o + c] * b4_w[c] * b4_dy[o + c];
  }
  let r = b_rstd[n];
  let k = (r * r) * (((s.x + s.y) + (s.z + s.w)) / f32(dims.D));
  for (var c = 0u; c < C; c++) {
    let g = r * (b4_w[c] * b4_dy[o + c] - b4_x[o + c] * k);
    if (ACC) {
      b4_dx[o + c] = b4_dx[o + c] + g;
    } else {
      b4_dx[o + c] = g;
    }
  }
}
