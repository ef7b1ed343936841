// Input gradient of linear: DX[m, k] (= | +=) Σ_n DY[m, n0 + n] · S[n] · W[n, k] over one weight row block
// (rows n0 .. n0 + Nb of W). Each invocation owns 4 rows × one weight texel of k (4 f32 or 16 int8
// columns) as vec4 accumulators written out by hand (Mesa does not unroll loops over arrays); per n it
// fetches one weight texel, one scale and 4 DY values. Simpler than the forward tiles: it is used by
// training only, once per projection per step. Odd shapes: rows past M are clamped loads, never
// stored; columns past K are zero weights, never stored.
//
// Bindings:
//   0 dims  uniform  Dims {M, N, K, n0, Nb, acc, Kt, pad}
//   1 DX    (M, K)   f32 storage, read_write   =, or += when acc = 1
//   2 DY    (M, N)   f32 storage, read         columns [n0, n0 + Nb) belong to this block
//   3 W     texture_2d<u32> rgba32uint (Nb rows, Kt texels): 4 f32 or 16 int8 (byte 0 = lowest k) per texel
//   4 S     (Nb)     f32 storage, read: per-row scale (1 for f32)
// Override: Q8 (int8 weights when true).
// Grid: [ceil(Kt / 64), ceil(M / 4), 1], workgroup (64, 1).
// Reference: src/reference/linear.ts linearBackwardInput (int8: on dequantizeRows weights).

struct Dims { M: u32, N: u32, K: u32, n0: u32, Nb: u32, acc: u32, Kt: u32, pad: u32 }

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read_write> DX: array<f32>;
@group(0) @binding(2) var<storage, read> DY: array<f32>;
@group(0) @binding(3) var W: texture_2d<u32>;
@group(0) @binding(4) var<storage, read> S: array<f32>;

override Q8: bool = false;

// writes 4 consecutive columns k..k+3 of row m, skipping those past K
fn put(m: u32, k: u32, v: vec4<f32>) {
  for (var c = 0u; c < 4u; c++) {
    if (k + c < dims.K) {
      let o = m * dims.K + k + c;
      if (dims.acc != 0u) { DX[o] = DX[o] + v[c]; } else { DX[o] = v[c]; }
    }
  }
}

@compute @workgroup_size(64, 1)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
  let kt = g.x;
  let mt = g.y * 4u;
  if (kt >= dims.Kt || mt >= dims.M) { return; }
  let o0 = mt * dims.N + dims.n0;
  let o1 = min(mt + 1u, dims.M - 1u) * dims.N + dims.n0;
  let o2 = min(mt + 2u, dims.M - 1u) * dims.N + dims.n0;
  let o3 = min(mt + 3u, dims.M - 1u) * dims.N + dims.n0;
  // a{row}{texel word}: columns 4·word .. 4·word + 3 of this texel
  var a00 = vec4<f32>(0.0); var a01 = vec4<f32>(0.0); var a02 = vec4<f32>(0.0); var a03 = vec4<f32>(0.0);
  var a10 = vec4<f32>(0.0); var a11 = vec4<f32>(0.0); var a12 = vec4<f32>(0.0); var a13 = vec4<f32>(0.0);
  var a20 = vec4<f32>(0.0); var a21 = vec4<f32>(0.0); var a22 = vec4<f32>(0.0); var a23 = vec4<f32>(0.0);
  var a30 = vec4<f32>(0.0); var a31 = vec4<f32>(0.0); var a32 = vec4<f32>(0.0); var a33 = vec4<f32>(0.0);
  for (var n = 0u; n < dims.Nb; n++) {
    let p = textureLoad(W, vec2<u32>(kt, n), 0);
    let s = S[n];
    let d0 = DY[o0 + n] * s;
    let d1 = DY[o1 + n] * s;
    let d2 = DY[o2 + n] * s;
    let d3 = DY[o3 + n] * s;
    if (Q8) {
      let w0 = vec4<f32>(unpack4xI8(p.x));
      let w1 = vec4<f32>(unpack4xI8(p.y));
      let w2 = vec4<f32>(unpack4xI8(p.z));
      let w3 = vec4<f32>(unpack4xI8(p.w));
      a00 += d0 * w0; a01 += d0 * w1; a02 += d0 * w2; a03 += d0 * w3;
      a10 += d1 * w0; a11 += d1 * w1; a12 += d1 * w2; a13 += d1 * w3;
      a20 += d2 * w0; a21 += d2 * w1; a22 += d2 * w2; a23 += d2 * w3;
      a30 += d3 * w0; a31 += d3 * w1; a32 += d3 * w2; a33 += d3 * w3;
    } else {
      let w = bitcast<vec4<f32>>(p);
      a00 += d0 * w; a10 += d1 * w; a20 += d2 * w; a30 += d3 * w;
    }
  }
  let k = kt * select(4u, 16u, Q8);
  put(mt, k, a00);
  if (Q8) { put(mt, k + 4u, a01); put(mt, k + 8u, a02); put(mt, k + 12u, a03); }
  if (mt + 1u < dims.M) {
    put(mt + 1u, k, a10);
    if (Q8) { put(mt + 1u, k + 4u, a11); put(mt + 1u, k + 8u, a12); put(mt + 1u, k + 12u, a13); }
  }
  if (mt + 2u < dims.M) {
    put(mt + 2u, k, a20);
    if (Q8) { put(mt + 2u, k + 4u, a21); put(mt + 2u, k + 8u, a22); put(mt + 2u, k + 12u, a23); }
  }
  if (mt + 3u < dims.M) {
    put(mt + 3u, k, a30);
    if (Q8) { put(mt + 3u, k + 4u, a31); put(mt + 3u, k + 8u, a32); put(mt + 3u, k + 12u, a33); }
  }
}
