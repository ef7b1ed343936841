// Causal grouped-query attention over packed padded rows, flash style (online softmax, nothing T×T stored).
// Row r holds its len_r real tokens in [start, end): start = T − len (left padding) or 0 (right padding).
// For a real query i of row r and head h, kv head g = h / (H / KV), the visible keys are j ∈ [start, i]:
//   s_j = (q_i · k_j) · scale, scale = 1/sqrt(Dh)
//   m, l: running max and Σ exp(s_j − m); a block of keys rescales the old sums by exp(m_old − m_new)
//   out_i = Σ_j exp(s_j − m) v_j / l;   lse_i = m + log l   (saved for the backward: P_ij = exp(s_ij − lse_i))
// Queries at pad positions write out = 0 and lse = 0.
//
// Tiling for lavapipe, where every storage load is a per-lane loop and private arrays are no cheaper: one
// thread owns 4 consecutive queries and walks the keys 8 at a time, so each k/v vec4 it loads feeds 4
// queries, and the 4 × 8 scores live in 8 vec4 registers. The output rows double as the accumulators
// (read-modify-write per key block), so there is no private array and no limit on Dh. Measured at
// T = 512, Dh = 64 on 2 cores: ~5 GFLOP/s, against ~1.5 for one query per thread with private arrays.
// The last key block scales the accumulator by 1 / l as it stores it, so out is not read back at the end.
// q/k/v/out are accessed in groups of 4 (D4 = ceil(Dh/4) groups per head) through a prelude chosen by the
// launcher: attention_io_vec4.wgsl (Dh % 4 == 0: one vec4 load/store per group, 4× fewer memory instructions)
// or attention_io_scalar.wgsl (four f32 accesses, the last group of a head masked).
//
// Bindings (1, 3, 4, 5 declared by the prelude):
//   0 dims     uniform      Dims {rows, T, H, KV, Dh, left, scale}
//   1 out      (N, H, Dh)   f32, read_write   =
//   2 lse      (rows, H, T) f32, read_write   =
//   3 q        (N, H, Dh)   f32, read         after rope
//   4 k        (N, KV, Dh)  f32, read         after rope
//   5 v        (N, KV, Dh)  f32, read
//   6 lengths  (rows)       u32, read
// Grid: (gx, H, gz) folding ceil(rows · ceil(T/4) / WG) groups into x and z; flat thread t = (z·gx + x)·WG + lid.x
// owns queries 4·(t / rows) + 0..3 of row t % rows. Rows vary fastest so that the lanes of a SIMD group share
// their query block and walk equally many key blocks (the causal triangle makes the trip count grow with the
// block; with blocks fastest a group's lanes would wait for its last block's).
// Reference: src/reference/attention.ts attentionForward

struct Dims {
  rows: u32,
  T: u32,
  H: u32,
  KV: u32,
  Dh: u32,
  left: u32,
  scale: f32,
}

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(2) var<storage, read_write> lse: array<f32>;
@group(0) @binding(6) var<storage, read> lengths: array<u32>;
// bindings 1 out, 3 q, 4 k, 5 v and their group-of-4 accessors ld_q, ld_k, ld_v, ld_out, st_out(o, d, x) (o: the
// head row's first element, d: the group) come from the prelude

override WG: u32 = 8u;

const NEG: f32 = -3.0e38;

/** (x·a, x·b, x·c, x·d): one query against 4 keys */
fn dots(x: vec4<f32>, a: vec4<f32>, b: vec4<f32>, c: vec4<f32>, d: vec4<f32>) -> vec4<f32> {
  return vec4<f32>(dot(x, a), dot(x, b), dot(x, c), dot(x, d));
}

/** Σ_b p_b v_b over 8 keys (pa: keys 0..3, pb: keys 4..7) */
fn mix8(
  pa: vec4<f32>, pb: vec4<f32>,
  v0: vec4<f32>, v1: vec4<f32>, v2: vec4<f32>, v3: vec4<f32>,
  v4: vec4<f32>, v5: vec4<f32>, v6: vec4<f32>, v7: vec4<f32>,
) -> vec4<f32> {
  return ((pa.x * v0 + pa.y * v1) + (pa.z * v2 + pa.w * v3)) + ((pb.x * v4 + pb.y * v5) + (pb.z * v6 + pb.w * v7));
}

/** one query's online-softmax step over a block of 8 keys */
struct Block {
  m: f32,     // new running max
  corr: f32,  // exp(m_old − m_new), rescales l and the accumulator
  pa: vec4<f32>,  // exp(s − m_new) of keys 0..3 (0 where masked)
  pb: vec4<f32>,  // keys 4..7
}

/** raw dot products sa, sb of keys j0 .. j0+7; key j0+b is visible iff b ≤ n = i − j0 */
fn softmax_step(m: f32, sa: vec4<f32>, sb: vec4<f32>, n: i32) -> Block {
  let xa = select(vec4<f32>(NEG), sa * dims.scale, vec4<i32>(0, 1, 2, 3) <= vec4<i32>(n));
  let xb = select(vec4<f32>(NEG), sb * dims.scale, vec4<i32>(4, 5, 6, 7) <= vec4<i32>(n));
  let mx = max(xa, xb);
  let mn = max(m, max(max(mx.x, mx.y), max(mx.z, mx.w)));
  return Block(mn, exp(m - mn), exp(xa - mn), exp(xb - mn));
}

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
) {
  let T = dims.T;
  let H = dims.H;
  let Dh = dims.Dh;
  let D4 = (Dh + 3u) / 4u;
  let h = wid.y;
  let t = (wid.z * nwg.x + wid.x) * WG + lid.x;
  if (t >= dims.rows * ((T + 3u) / 4u)) {
    return;
  }
  let r = t % dims.rows;
  let ib = (t / dims.rows) * 4u;
  let len = lengths[r];
  let start = select(0u, T - len, dims.left != 0u);
  let end = start + len;
  let g = h / (H / dims.KV);
  // queries ib .. ib+3; past T they repeat T − 1 for the loads and are never stored (live = false)
  let i0 = ib;
  let i1 = min(ib + 1u, T - 1u);
  let i2 = min(ib + 2u, T - 1u);
  let i3 = min(ib + 3u, T - 1u);
  let live1 = ib + 1u < T;
  let live2 = ib + 2u < T;
  let live3 = ib + 3u < T;
  let qo0 = ((r * T + i0) * H + h) * Dh;
  let qo1 = ((r * T + i1) * H + h) * Dh;
  let qo2 = ((r * T + i2) * H + h) * Dh;
  let qo3 = ((r * T + i3) * H + h) * Dh;
  var m0 = NEG;
  var m1 = NEG;
  var m2 = NEG;
  var m3 = NEG;
  var l0 = 0.0;
  var l1 = 0.0;
  var l2 = 0.0;
  var l3 = 0.0;
  // the block holds a real query iff [ib, i3] meets [start, end); the keys any of them sees end at jmax
  let any_real = ib < end && i3 >= start;
  let jmax = min(i3, end - 1u);
  let kstride = dims.KV * Dh;
  var first = true;
  for (var j0 = start; any_real && j0 <= jmax; j0 += 8u) {
    // keys past jmax repeat jmax (masked for every real query)
    let ko0 = ((r * T + j0) * dims.KV + g) * Dh;
    let ko1 = ko0 + min(1u, jmax - j0) * kstride;
    let ko2 = ko0 + min(2u, jmax - j0) * kstride;
    let ko3 = ko0 + min(3u, jmax - j0) * kstride;
    let ko4 = ko0 + min(4u, jmax - j0) * kstride;
    let ko5 = ko0 + min(5u, jmax - j0) * kstride;
    let ko6 = ko0 + min(6u, jmax - j0) * kstride;
    let ko7 = ko0 + min(7u, jmax - j0) * kstride;
    // scores: s<query><a: keys 0..3, b: keys 4..7>
    var s0a = vec4<f32>(0.0);
    var s0b = vec4<f32>(0.0);
    var s1a = vec4<f32>(0.0);
    var s1b = vec4<f32>(0.0);
    var s2a = vec4<f32>(0.0);
    var s2b = vec4<f32>(0.0);
    var s3a = vec4<f32>(0.0);
    var s3b = vec4<f32>(0.0);
    for (var d = 0u; d < D4; d++) {
      let k0 = ld_k(ko0, d);
      let k1 = ld_k(ko1, d);
      let k2 = ld_k(ko2, d);
      let k3 = ld_k(ko3, d);
      let k4 = ld_k(ko4, d);
      let k5 = ld_k(ko5, d);
      let k6 = ld_k(ko6, d);
      let k7 = ld_k(ko7, d);
      var x = ld_q(qo0, d);
      s0a += dots(x, k0, k1, k2, k3);
      s0b += dots(x, k4, k5, k6, k7);
      x = ld_q(qo1, d);
      s1a += dots(x, k0, k1, k2, k3);
      s1b += dots(x, k4, k5, k6, k7);
      x = ld_q(qo2, d);
      s2a += dots(x, k0, k1, k2, k3);
      s2b += dots(x, k4, k5, k6, k7);
      x = ld_q(qo3, d);
      s3a += dots(x, k0, k1, k2, k3);
      s3b += dots(x, k4, k5, k6, k7);
    }
    let p0 = softmax_step(m0, s0a, s0b, i32(i0) - i32(j0));
    let p1 = softmax_step(m1, s1a, s1b, i32(i1) - i32(j0));
    let p2 = softmax_step(m2, s2a, s2b, i32(i2) - i32(j0));
    let p3 = softmax_step(m3, s3a, s3b, i32(i3) - i32(j0));
    l0 = l0 * p0.corr + dot(p0.pa + p0.pb, vec4<f32>(1.0));
    l1 = l1 * p1.corr + dot(p1.pa + p1.pb, vec4<f32>(1.0));
    l2 = l2 * p2.corr + dot(p2.pa + p2.pb, vec4<f32>(1.0));
    l3 = l3 * p3.corr + dot(p3.pa + p3.pb, vec4<f32>(1.0));
    m0 = p0.m;
    m1 = p1.m;
    m2 = p2.m;
    m3 = p3.m;
    // out_q ← out_q · corr_q + Σ_b p_qb v_b   (the first block writes without reading); the last block stores
    // out_q / l_q, or 0 for a pad query
    let last = j0 + 8u > jmax;
    let f0 = final_scale(last, l0, i0, start, end);
    let f1 = final_scale(last, l1, i1, start, end);
    let f2 = final_scale(last, l2, i2, start, end);
    let f3 = final_scale(last, l3, i3, start, end);
    for (var d = 0u; d < D4; d++) {
      let v0 = ld_v(ko0, d);
      let v1 = ld_v(ko1, d);
      let v2 = ld_v(ko2, d);
      let v3 = ld_v(ko3, d);
      let v4 = ld_v(ko4, d);
      let v5 = ld_v(ko5, d);
      let v6 = ld_v(ko6, d);
      let v7 = ld_v(ko7, d);
      var a = mix8(p0.pa, p0.pb, v0, v1, v2, v3, v4, v5, v6, v7);
      if (!first) {
        a += ld_out(qo0, d) * p0.corr;
      }
      st_out(qo0, d, scaled(a, f0));
      if (live1) {
        a = mix8(p1.pa, p1.pb, v0, v1, v2, v3, v4, v5, v6, v7);
        if (!first) {
          a += ld_out(qo1, d) * p1.corr;
        }
        st_out(qo1, d, scaled(a, f1));
      }
      if (live2) {
        a = mix8(p2.pa, p2.pb, v0, v1, v2, v3, v4, v5, v6, v7);
        if (!first) {
          a += ld_out(qo2, d) * p2.corr;
        }
        st_out(qo2, d, scaled(a, f2));
      }
      if (live3) {
        a = mix8(p3.pa, p3.pb, v0, v1, v2, v3, v4, v5, v6, v7);
        if (!first) {
          a += ld_out(qo3, d) * p3.corr;
        }
        st_out(qo3, d, scaled(a, f3));
      }
    }
    first = false;
  }
  // a block without a real query never entered the loop: its queries are all pad, out = 0
  if (first) {
    let z = vec4<f32>(0.0);
    for (var d = 0u; d < D4; d++) {
      st_out(qo0, d, z);
      if (live1) {
        st_out(qo1, d, z);
      }
      if (live2) {
        st_out(qo2, d, z);
      }
      if (live3) {
        st_out(qo3, d, z);
      }
    }
  }
  let so = (r * H + h) * T;
  lse[so + i0] = final_lse(l0, m0, i0, start, end);
  if (live1) {
    lse[so + i1] = final_lse(l1, m1, i1, start, end);
  }
  if (live2) {
    lse[so + i2] = final_lse(l2, m2, i2, start, end);
  }
  if (live3) {
    lse[so + i3] = final_lse(l3, m3, i3, start, end);
  }
}

/** how a key block stores a query's accumulator: as is before the last block, then × 1 / l (real) or 0 (pad) */
struct Fin {
  s: f32,
  keep: bool,
}

fn final_scale(last: bool, l: f32, i: u32, start: u32, end: u32) -> Fin {
  let real = i >= start && i < end;
  return Fin(select(1.0, 1.0 / l, last), real || !last);
}

/** select, not a product: a pad query's accumulator may hold anything */
fn scaled(a: vec4<f32>, f: Fin) -> vec4<f32> {
  return select(vec4<f32>(0.0), a * f.s, f.keep);
}

/** lse_i = m + log l for a real query, 0 for a pad query */
fn final_lse(l: f32, m: f32, i: u32, start: u32, end: u32) -> f32 {
  return select(0.0, m + log(l), i >= start && i < end);
}
