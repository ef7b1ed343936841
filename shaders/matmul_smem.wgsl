// Shared-memory tiled linear for hardware GPUs (the textbook design; on lavapipe it is 4–7× slower than
// the register-tile kernels of src/kernels/matmul_codegen.ts because workgroup loads cost as much as
// storage loads there, REPORT.md §2/3).
//   Y[m, n0 + n] (= | +=) S[n] · Σ_k X[m, k] · W[n, k]
// A 16×16 workgroup computes a 64×64 tile of Y; each invocation a 4×4 register tile at rows ly + 16·i,
// columns lx + 16·j (strided so that neighbouring invocations read neighbouring shared words). Per 16-wide
// K slab the workgroup stages X (64 rows × 16) and W (64 rows × 16, int8 unpacked to f32 integers) in
// shared memory, zero-filled past M, Nb and K, so that odd shapes need no other guard.
//
// Bindings:
//   0 dims  uniform  Dims {M, N, K, n0, Nb, acc, Kt, pad}
//   1 Y     (M, N)   f32 storage, read_write   columns [n0, n0 + Nb): =, or += when acc = 1
//   2 X     (M, K)   f32 storage, read
//   3 W     texture_2d<u32> rgba32uint (Nb rows, Kt texels): 4 f32 or 16 int8 (byte 0 = lowest k) per texel
//   4 S     (Nb)     f32 storage, read: per-row scale (1 for f32), applied in the epilogue
// Override: Q8 (int8 weights when true).
// Grid: [ceil(Nb / 64), ceil(M / 64), 1], workgroup (16, 16).
// Reference: src/reference/linear.ts linear (int8: on dequantizeRows weights).

struct Dims { M: u32, N: u32, K: u32, n0: u32, Nb: u32, acc: u32, Kt: u32, pad: u32 }

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read_write> Y: array<f32>;
@group(0) @binding(2) var<storage, read> X: array<f32>;
@group(0) @binding(3) var W: texture_2d<u32>;
@group(0) @binding(4) var<storage, read> S: array<f32>;

override Q8: bool = false;

const BM = 64u;
const BN = 64u;
const BK = 16u;

var<workgroup> As: array<f32, 1024>; // [BK][BM]: As[kk * 64 + r]
var<workgroup> Ws: array<f32, 1024>; // [BK][BN]: Ws[kk * 64 + c]

@compute @workgroup_size(16, 16)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
  @builtin(local_invocation_index) li: u32,
) {
  let row0 = wid.y * BM;
  let col0 = wid.x * BN;
  var acc: array<array<f32, 4>, 4>;
  // K slabs: int8 texels hold exactly one slab (16 k); f32 texels hold 4 k, so 4 texels per slab
  var slabs = (dims.Kt + 3u) / 4u;
  if (Q8) { slabs = dims.Kt; }
  for (var kb = 0u; kb < slabs; kb++) {
    let k0 = kb * BK;
    // X slab: 64 rows × 16 k = 1024 values, 4 per invocation
    for (var e = 0u; e < 4u; e++) {
      let idx = li + e * 256u;
      let r = idx / BK;
      let kk = idx % BK;
      var v = 0.0;
      if (row0 + r < dims.M && k0 + kk < dims.K) { v = X[(row0 + r) * dims.K + k0 + kk]; }
      As[kk * BM + r] = v;
    }
    // W slab: 64 rows × 16 k
    if (Q8) {
      if (li < BN) {
        var p = vec4<u32>(0u);
        if (col0 + li < dims.Nb) { p = textureLoad(W, vec2<u32>(kb, col0 + li), 0); }
        let w = array<vec4<f32>, 4>(
          vec4<f32>(unpack4xI8(p.x)),
          vec4<f32>(unpack4xI8(p.y)),
          vec4<f32>(unpack4xI8(p.z)),
          vec4<f32>(unpack4xI8(p.w)),
        );
        for (var kk = 0u; kk < BK; kk++) { Ws[kk * BN + li] = w[kk / 4u][kk % 4u]; }
      }
    } else {
      let c = li / 4u;
      let t = li % 4u;
      let kt = kb * 4u + t;
      var w = vec4<f32>(0.0);
      if (col0 + c < dims.Nb && kt < dims.Kt) { w = bitcast<vec4<f32>>(textureLoad(W, vec2<u32>(kt, col0 + c), 0)); }
      for (var q = 0u; q < 4u; q++) { Ws[(t * 4u + q) * BN + c] = w[q]; }
    }
    workgroupBarrier();
    for (var kk = 0u; kk < BK; kk++) {
      var a: array<f32, 4>;
      var b: array<f32, 4>;
      for (var i = 0u; i < 4u; i++) {
        a[i] = As[kk * BM + lid.y + 16u * i];
        b[i] = Ws[kk * BN + lid.x + 16u * i];
      }
      for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) { acc[i][j] = fma(a[i], b[j], acc[i][j]); }
      }
    }
    workgroupBarrier();
  }
  for (var i = 0u; i < 4u; i++) {
    let m = row0 + lid.y + 16u * i;
    if (m >= dims.M) { continue; }
    for (var j = 0u; j < 4u; j++) {
      let n = col0 + lid.x + 16u * j;
      if (n >= dims.Nb) { continue; }
      let o = m * dims.N + dims.n0 + n;
      let v = acc[i][j] * S[n];
      if (dims.acc != 0u) { Y[o] = Y[o] + v; } else { Y[o] = v; }
    }
  }
}
