// Backward of attention.wgsl (causal GQA over packed padded rows) from the saved out and lse, flash style: nothing
// T×T is stored, P is recomputed from lse. For a real query i of row r and head h (kv head g = h / (H / KV)) and a
// visible key j (start ≤ j ≤ i):
//   P_ij = exp(s_ij − lse_i),  s_ij = (q_i · k_j) · scale,  Δ_i = dout_i · out_i
//   dP_ij = dout_i · v_j,  dS_ij = P_ij (dP_ij − Δ_i)
//   dq_i = scale Σ_j dS_ij k_j         (entry dq: a thread owns 4 queries and walks their keys)
//   dk_j = scale Σ_{h in g} Σ_i dS_ij q_i,   dv_j = Σ_{h in g} Σ_i P_ij dout_i
//                                      (entry dkdv: a thread owns 4 keys and walks, head by head, their queries)
// Every output element is summed by one thread in a fixed order, so the result is deterministic (no float atomics);
// the price is computing the scores twice. Pad queries contribute nothing (their dout is never read: masked
// entries go through select, and the query/key indices a thread loads are clamped to real rows) and get dq = 0;
// pad keys get dk = dv = 0.
// Tiling as in the forward: 4 owned rows × 8 streamed rows in vec4 registers, the outputs double as accumulators
// (read-modify-write per block), so Dh is unbounded. The head-row tensors are accessed in groups of 4 through a
// prelude chosen by the launcher: attention_backward_io_vec4.wgsl (Dh % 4 == 0: one vec4 load/store per group) or
// attention_backward_io_scalar.wgsl (four f32 accesses, the last group of a head masked); it declares bindings
// 1..4, 7, 8 of dq_main/dkdv and 2, 3 of delta. stats is read as (lse, Δ) pairs: one load per query.
//
// Entry `delta`: stats[(r, h, i)] = (lse_i, Δ_i) for the other two (Δ_i = 0 at pad queries), one thread per
// (r, h, i), idx = (r·H + h)·T + i folded into 2-D with 64 threads per group.
//   0 dims     uniform           Dims
//   1 stats    (rows, H, T, 2)   f32, read_write   =
//   2 d_dout   (N, H, Dh)        f32, read
//   3 d_out    (N, H, Dh)        f32, read         saved by the forward
//   4 lse      (rows, H, T)      f32, read         saved by the forward
//   5 lengths  (rows)            u32, read
// Entries `dq` and `dkdv`, bindings 0..6 shared:
//   0 dims     uniform           Dims {rows, T, H, KV, Dh, left, scale}
//   1 q        (N, H, Dh)        f32, read   after rope
//   2 k        (N, KV, Dh)       f32, read   after rope
//   3 v        (N, KV, Dh)       f32, read
//   4 dout     (N, H, Dh)        f32, read
//   5 stats    (rows, H, T, 2)   f32, read   from `delta`
//   6 lengths  (rows)            u32, read
//   dq:   7 dq (N, H, Dh) f32, read_write =                      grid (gx, H, gz)
//   dkdv: 7 dk (N, KV, Dh), 8 dv (N, KV, Dh) f32, read_write =   grid (gx, KV, gz)
// gx · gz ≥ ceil(rows · ceil(T/4) / WG) groups; flat thread t = (z·gx + x)·WG + lid.x owns rows (queries for dq,
// keys for dkdv) 4·(t / rows) + 0..3 of row t % rows: rows vary fastest so that the lanes of a SIMD group walk
// equally many blocks of the causal triangle (as in the forward).
// Reference: src/reference/attention.ts attentionBackward

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
@group(0) @binding(5) var<storage, read> stats: array<vec2<f32>>;
@group(0) @binding(6) var<storage, read> lengths: array<u32>;
// q, k, v, dout, dq, dk, dv and their group-of-4 accessors ld_q, ld_k, ld_v, ld_do (o, d) and acc_dq, acc_dk,
// acc_dv (o, d, x, acc) come from the prelude (o: the head row's first element, d: the group)

override WG: u32 = 8u;

/** (x·a, x·b, x·c, x·d): one row against 4 rows */
fn dots(x: vec4<f32>, a: vec4<f32>, b: vec4<f32>, c: vec4<f32>, d: vec4<f32>) -> vec4<f32> {
  return vec4<f32>(dot(x, a), dot(x, b), dot(x, c), dot(x, d));
}

/** Σ_b w_b y_b over 8 rows (wa: rows 0..3, wb: rows 4..7) */
fn mix8(
  wa: vec4<f32>, wb: vec4<f32>,
  y0: vec4<f32>, y1: vec4<f32>, y2: vec4<f32>, y3: vec4<f32>,
  y4: vec4<f32>, y5: vec4<f32>, y6: vec4<f32>, y7: vec4<f32>,
) -> vec4<f32> {
  return ((wa.x * y0 + wa.y * y1) + (wa.z * y2 + wa.w * y3)) + ((wb.x * y4 + wb.y * y5) + (wb.z * y6 + wb.w * y7));
}

/** P and dS · scale of one owned row against 8 streamed rows (a: 0..3, b: 4..7), 0 where not visible */
struct Grad8 {
  pa: vec4<f32>,
  pb: vec4<f32>,
  da: vec4<f32>,
  db: vec4<f32>,
}

/**
 * From raw dots s = q·k and e = dout·v of 8 pairs with per-pair lse and Δ: P = exp(s·scale − lse),
 * dS·scale = P (e − Δ) · scale. Pair b is visible iff lo ≤ b ≤ hi; select (not a product) so that an overflowed
 * exp of a masked pair never reaches a sum.
 */
fn grad8(
  sa: vec4<f32>, sb: vec4<f32>, ea: vec4<f32>, eb: vec4<f32>,
  la: vec4<f32>, lb: vec4<f32>, xa: vec4<f32>, xb: vec4<f32>,
  lo: i32, hi: i32,
) -> Grad8 {
  let ba = vec4<i32>(0, 1, 2, 3);
  let bb = vec4<i32>(4, 5, 6, 7);
  let va = (ba >= vec4<i32>(lo)) & (ba <= vec4<i32>(hi));
  let vb = (bb >= vec4<i32>(lo)) & (bb <= vec4<i32>(hi));
  let pa = exp(sa * dims.scale - la);
  let pb = exp(sb * dims.scale - lb);
  let z = vec4<f32>(0.0);
  return Grad8(
    select(z, pa, va),
    select(z, pb, vb),
    select(z, pa * (ea - xa) * dims.scale, va),
    select(z, pb * (eb - xb) * dims.scale, vb),
  );
}

// ---- entry dq ----------------------------------------------------------------------------------------------------

@compute @workgroup_size(WG)
fn dq_main(
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
  let real0 = i0 >= start && i0 < end;
  let real1 = i1 >= start && i1 < end;
  let real2 = i2 >= start && i2 < end;
  let real3 = i3 >= start && i3 < end;
  let qo0 = ((r * T + i0) * H + h) * Dh;
  let qo1 = ((r * T + i1) * H + h) * Dh;
  let qo2 = ((r * T + i2) * H + h) * Dh;
  let qo3 = ((r * T + i3) * H + h) * Dh;
  let so = (r * H + h) * T;
  // (lse, Δ) of each query
  let st0 = stats[so + i0];
  let st1 = stats[so + i1];
  let st2 = stats[so + i2];
  let st3 = stats[so + i3];
  let l0 = vec4<f32>(st0.x);
  let l1 = vec4<f32>(st1.x);
  let l2 = vec4<f32>(st2.x);
  let l3 = vec4<f32>(st3.x);
  let x0 = vec4<f32>(st0.y);
  let x1 = vec4<f32>(st1.y);
  let x2 = vec4<f32>(st2.y);
  let x3 = vec4<f32>(st3.y);
  // key j0 + b is visible to query i iff b ≤ i − j0 and i is real; hi = −1 hides every key from a pad query
  let any_real = real0 || real1 || real2 || real3;
  let jmax = min(i3, end - 1u);
  let kstride = dims.KV * Dh;
  var first = true;
  for (var j0 = start; any_real && j0 <= jmax; j0 += 8u) {
    // keys past jmax repeat jmax (masked for every query)
    let ko0 = ((r * T + j0) * dims.KV + g) * Dh;
    let ko1 = ko0 + min(1u, jmax - j0) * kstride;
    let ko2 = ko0 + min(2u, jmax - j0) * kstride;
    let ko3 = ko0 + min(3u, jmax - j0) * kstride;
    let ko4 = ko0 + min(4u, jmax - j0) * kstride;
    let ko5 = ko0 + min(5u, jmax - j0) * kstride;
    let ko6 = ko0 + min(6u, jmax - j0) * kstride;
    let ko7 = ko0 + min(7u, jmax - j0) * kstride;
    // s<query><a: keys 0..3, b: keys 4..7> = q·k,  e<query><a, b> = dout·v
    var s0a = vec4<f32>(0.0);
    var s0b = vec4<f32>(0.0);
    var s1a = vec4<f32>(0.0);
    var s1b = vec4<f32>(0.0);
    var s2a = vec4<f32>(0.0);
    var s2b = vec4<f32>(0.0);
    var s3a = vec4<f32>(0.0);
    var s3b = vec4<f32>(0.0);
    var e0a = vec4<f32>(0.0);
    var e0b = vec4<f32>(0.0);
    var e1a = vec4<f32>(0.0);
    var e1b = vec4<f32>(0.0);
    var e2a = vec4<f32>(0.0);
    var e2b = vec4<f32>(0.0);
    var e3a = vec4<f32>(0.0);
    var e3b = vec4<f32>(0.0);
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
      let v0 = ld_v(ko0, d);
      let v1 = ld_v(ko1, d);
      let v2 = ld_v(ko2, d);
      let v3 = ld_v(ko3, d);
      let v4 = ld_v(ko4, d);
      let v5 = ld_v(ko5, d);
      let v6 = ld_v(ko6, d);
      let v7 = ld_v(ko7, d);
      x = ld_do(qo0, d);
      e0a += dots(x, v0, v1, v2, v3);
      e0b += dots(x, v4, v5, v6, v7);
      x = ld_do(qo1, d);
      e1a += dots(x, v0, v1, v2, v3);
      e1b += dots(x, v4, v5, v6, v7);
      x = ld_do(qo2, d);
      e2a += dots(x, v0, v1, v2, v3);
      e2b += dots(x, v4, v5, v6, v7);
      x = ld_do(qo3, d);
      e3a += dots(x, v0, v1, v2, v3);
      e3b += dots(x, v4, v5, v6, v7);
    }
    let w0 = grad8(s0a, s0b, e0a, e0b, l0, l0, x0, x0, 0, select(-1, i32(i0) - i32(j0), real0));
    let w1 = grad8(s1a, s1b, e1a, e1b, l1, l1, x1, x1, 0, select(-1, i32(i1) - i32(j0), real1));
    let w2 = grad8(s2a, s2b, e2a, e2b, l2, l2, x2, x2, 0, select(-1, i32(i2) - i32(j0), real2));
    let w3 = grad8(s3a, s3b, e3a, e3b, l3, l3, x3, x3, 0, select(-1, i32(i3) - i32(j0), real3));
    // dq_q (+)= Σ_b dS_qb · scale · k_b
    for (var d = 0u; d < D4; d++) {
      let k0 = ld_k(ko0, d);
      let k1 = ld_k(ko1, d);
      let k2 = ld_k(ko2, d);
      let k3 = ld_k(ko3, d);
      let k4 = ld_k(ko4, d);
      let k5 = ld_k(ko5, d);
      let k6 = ld_k(ko6, d);
      let k7 = ld_k(ko7, d);
      acc_dq(qo0, d, mix8(w0.da, w0.db, k0, k1, k2, k3, k4, k5, k6, k7), !first);
      if (live1) {
        acc_dq(qo1, d, mix8(w1.da, w1.db, k0, k1, k2, k3, k4, k5, k6, k7), !first);
      }
      if (live2) {
        acc_dq(qo2, d, mix8(w2.da, w2.db, k0, k1, k2, k3, k4, k5, k6, k7), !first);
      }
      if (live3) {
        acc_dq(qo3, d, mix8(w3.da, w3.db, k0, k1, k2, k3, k4, k5, k6, k7), !first);
      }
    }
    first = false;
  }
  // pad queries (and blocks without a real query) get exact zeros
  let z = vec4<f32>(0.0);
  for (var d = 0u; d < D4; d++) {
    if (first || !real0) {
      acc_dq(qo0, d, z, false);
    }
    if (live1 && (first || !real1)) {
      acc_dq(qo1, d, z, false);
    }
    if (live2 && (first || !real2)) {
      acc_dq(qo2, d, z, false);
    }
    if (live3 && (first || !real3)) {
      acc_dq(qo3, d, z, false);
    }
  }
}

// ---- entry dkdv --------------------------------------------------------------------------------------------------

@compute @workgroup_size(WG)
fn dkdv(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
) {
  let T = dims.T;
  let H = dims.H;
  let KV = dims.KV;
  let Dh = dims.Dh;
  let D4 = (Dh + 3u) / 4u;
  let G = H / KV;
  let g = wid.y;
  let t = (wid.z * nwg.x + wid.x) * WG + lid.x;
  if (t >= dims.rows * ((T + 3u) / 4u)) {
    return;
  }
  let r = t % dims.rows;
  let jb = (t / dims.rows) * 4u;
  let len = lengths[r];
  let start = select(0u, T - len, dims.left != 0u);
  let end = start + len;
  // keys jb .. jb+3; past T they repeat T − 1 for the loads and are never stored (live = false)
  let j0 = jb;
  let j1 = min(jb + 1u, T - 1u);
  let j2 = min(jb + 2u, T - 1u);
  let j3 = min(jb + 3u, T - 1u);
  let live1 = jb + 1u < T;
  let live2 = jb + 2u < T;
  let live3 = jb + 3u < T;
  let real0 = j0 >= start && j0 < end;
  let real1 = live1 && j1 >= start && j1 < end;
  let real2 = live2 && j2 >= start && j2 < end;
  let real3 = live3 && j3 >= start && j3 < end;
  let ko0 = ((r * T + j0) * KV + g) * Dh;
  let ko1 = ((r * T + j1) * KV + g) * Dh;
  let ko2 = ((r * T + j2) * KV + g) * Dh;
  let ko3 = ((r * T + j3) * KV + g) * Dh;
  // the queries that see a real key of the block: i in [max(jb, start), end)
  let any_real = real0 || real1 || real2 || real3;
  let ifirst = max(jb, start);
  let iend = end - 1u;
  let qstride = H * Dh;
  var first = true;
  for (var hh = 0u; any_real && hh < G; hh++) {
    let h = g * G + hh;
    let so = (r * H + h) * T;
    for (var i0 = ifirst; i0 <= iend; i0 += 8u) {
      // queries past iend repeat iend (masked for every key)
      let qo0 = ((r * T + i0) * H + h) * Dh;
      let qo1 = qo0 + min(1u, iend - i0) * qstride;
      let qo2 = qo0 + min(2u, iend - i0) * qstride;
      let qo3 = qo0 + min(3u, iend - i0) * qstride;
      let qo4 = qo0 + min(4u, iend - i0) * qstride;
      let qo5 = qo0 + min(5u, iend - i0) * qstride;
      let qo6 = qo0 + min(6u, iend - i0) * qstride;
      let qo7 = qo0 + min(7u, iend - i0) * qstride;
      // (lse, Δ) of each query
      let st0 = stats[so + i0];
      let st1 = stats[so + i0 + min(1u, iend - i0)];
      let st2 = stats[so + i0 + min(2u, iend - i0)];
      let st3 = stats[so + i0 + min(3u, iend - i0)];
      let st4 = stats[so + i0 + min(4u, iend - i0)];
      let st5 = stats[so + i0 + min(5u, iend - i0)];
      let st6 = stats[so + i0 + min(6u, iend - i0)];
      let st7 = stats[so + i0 + min(7u, iend - i0)];
      let la = vec4<f32>(st0.x, st1.x, st2.x, st3.x);
      let lb = vec4<f32>(st4.x, st5.x, st6.x, st7.x);
      let xa = vec4<f32>(st0.y, st1.y, st2.y, st3.y);
      let xb = vec4<f32>(st4.y, st5.y, st6.y, st7.y);
      // s<key><a: queries 0..3, b: queries 4..7> = k·q,  e<key><a, b> = v·dout
      var s0a = vec4<f32>(0.0);
      var s0b = vec4<f32>(0.0);
      var s1a = vec4<f32>(0.0);
      var s1b = vec4<f32>(0.0);
      var s2a = vec4<f32>(0.0);
      var s2b = vec4<f32>(0.0);
      var s3a = vec4<f32>(0.0);
      var s3b = vec4<f32>(0.0);
      var e0a = vec4<f32>(0.0);
      var e0b = vec4<f32>(0.0);
      var e1a = vec4<f32>(0.0);
      var e1b = vec4<f32>(0.0);
      var e2a = vec4<f32>(0.0);
      var e2b = vec4<f32>(0.0);
      var e3a = vec4<f32>(0.0);
      var e3b = vec4<f32>(0.0);
      for (var d = 0u; d < D4; d++) {
        let q0 = ld_q(qo0, d);
        let q1 = ld_q(qo1, d);
        let q2 = ld_q(qo2, d);
        let q3 = ld_q(qo3, d);
        let q4 = ld_q(qo4, d);
        let q5 = ld_q(qo5, d);
        let q6 = ld_q(qo6, d);
        let q7 = ld_q(qo7, d);
        var x = ld_k(ko0, d);
        s0a += dots(x, q0, q1, q2, q3);
        s0b += dots(x, q4, q5, q6, q7);
        x = ld_k(ko1, d);
        s1a += dots(x, q0, q1, q2, q3);
        s1b += dots(x, q4, q5, q6, q7);
        x = ld_k(ko2, d);
        s2a += dots(x, q0, q1, q2, q3);
        s2b += dots(x, q4, q5, q6, q7);
        x = ld_k(ko3, d);
        s3a += dots(x, q0, q1, q2, q3);
        s3b += dots(x, q4, q5, q6, q7);
        let o0 = ld_do(qo0, d);
        let o1 = ld_do(qo1, d);
        let o2 = ld_do(qo2, d);
        let o3 = ld_do(qo3, d);
        let o4 = ld_do(qo4, d);
        let o5 = ld_do(qo5, d);
        let o6 = ld_do(qo6, d);
        let o7 = ld_do(qo7, d);
        x = ld_v(ko0, d);
        e0a += dots(x, o0, o1, o2, o3);
        e0b += dots(x, o4, o5, o6, o7);
        x = ld_v(ko1, d);
        e1a += dots(x, o0, o1, o2, o3);
        e1b += dots(x, o4, o5, o6, o7);
        x = ld_v(ko2, d);
        e2a += dots(x, o0, o1, o2, o3);
        e2b += dots(x, o4, o5, o6, o7);
        x = ld_v(ko3, d);
        e3a += dots(x, o0, o1, o2, o3);
        e3b += dots(x, o4, o5, o6, o7);
      }
      // query i0 + b sees key j iff b ≥ j − i0 and i0 + b ≤ iend; lo = 8 hides a pad or dead key from all
      let hi = i32(iend - i0);
      let w0 = grad8(s0a, s0b, e0a, e0b, la, lb, xa, xb, select(8, i32(j0) - i32(i0), real0), hi);
      let w1 = grad8(s1a, s1b, e1a, e1b, la, lb, xa, xb, select(8, i32(j1) - i32(i0), real1), hi);
      let w2 = grad8(s2a, s2b, e2a, e2b, la, lb, xa, xb, select(8, i32(j2) - i32(i0), real2), hi);
      let w3 = grad8(s3a, s3b, e3a, e3b, la, lb, xa, xb, select(8, i32(j3) - i32(i0), real3), hi);
      // dv_k (+)= Σ_b P_kb dout_b,  dk_k (+)= Σ_b dS_kb · scale · q_b
      for (var d = 0u; d < D4; d++) {
        let o0 = ld_do(qo0, d);
        let o1 = ld_do(qo1, d);
        let o2 = ld_do(qo2, d);
        let o3 = ld_do(qo3, d);
        let o4 = ld_do(qo4, d);
        let o5 = ld_do(qo5, d);
        let o6 = ld_do(qo6, d);
        let o7 = ld_do(qo7, d);
        acc_dv(ko0, d, mix8(w0.pa, w0.pb, o0, o1, o2, o3, o4, o5, o6, o7), !first);
        if (live1) {
          acc_dv(ko1, d, mix8(w1.pa, w1.pb, o0, o1, o2, o3, o4, o5, o6, o7), !first);
        }
        if (live2) {
          acc_dv(ko2, d, mix8(w2.pa, w2.pb, o0, o1, o2, o3, o4, o5, o6, o7), !first);
        }
        if (live3) {
          acc_dv(ko3, d, mix8(w3.pa, w3.pb, o0, o1, o2, o3, o4, o5, o6, o7), !first);
        }
        let q0 = ld_q(qo0, d);
        let q1 = ld_q(qo1, d);
        let q2 = ld_q(qo2, d);
        let q3 = ld_q(qo3, d);
        let q4 = ld_q(qo4, d);
        let q5 = ld_q(qo5, d);
        let q6 = ld_q(qo6, d);
        let q7 = ld_q(qo7, d);
        acc_dk(ko0, d, mix8(w0.da, w0.db, q0, q1, q2, q3, q4, q5, q6, q7), !first);
        if (live1) {
          acc_dk(ko1, d, mix8(w1.da, w1.db, q0, q1, q2, q3, q4, q5, q6, q7), !first);
        }
        if (live2) {
          acc_dk(ko2, d, mix8(w2.da, w2.db, q0, q1, q2, q3, q4, q5, q6, q7), !first);
        }
        if (live3) {
          acc_dk(ko3, d, mix8(w3.da, w3.db, q0, q1, q2, q3, q4, q5, q6, q7), !first);
        }
      }
      first = false;
    }
  }
  // pad keys (and blocks without a real key) get exact zeros
  let z = vec4<f32>(0.0);
  for (var d = 0u; d < D4; d++) {
    if (first || !real0) {
      acc_dk(ko0, d, z, false);
      acc_dv(ko0, d, z, false);
    }
    if (live1 && (first || !real1)) {
      acc_dk(ko1, d, z, false);
      acc_dv(ko1, d, z, false);
    }
    if (live2 && (first || !real2)) {
      acc_dk(ko2, d, z, false);
      acc_dv(ko2, d, z, false);
    }
    if (live3 && (first || !real3)) {
      acc_dk(ko3, d, z, false);
      acc_dv(ko3, d, z, false);
    }
  }
}

// ---- entry delta -------------------------------------------------------------------------------------------------

// d_dout (2) and d_out (3) and their accessors ld_delta_do, ld_delta_out (o, d) come from the prelude
@group(0) @binding(1) var<storage, read_write> d_stats: array<vec2<f32>>;
@group(0) @binding(4) var<storage, read> d_lse: array<f32>;
@group(0) @binding(5) var<storage, read> d_lengths: array<u32>;

const DWG: u32 = 64u;

@compute @workgroup_size(DWG)
fn delta(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
) {
  let T = dims.T;
  let H = dims.H;
  let Dh = dims.Dh;
  let D4 = (Dh + 3u) / 4u;
  let idx = (wid.y * nwg.x + wid.x) * DWG + lid.x;
  if (idx >= dims.rows * H * T) {
    return;
  }
  let i = idx % T;
  let h = (idx / T) % H;
  let r = idx / (T * H);
  let len = d_lengths[r];
  let start = select(0u, T - len, dims.left != 0u);
  var s = 0.0;
  if (i >= start && i < start + len) {
    let o = ((r * T + i) * H + h) * Dh;
    // element by element in order (a masked tail adds exact zeros)
    for (var d = 0u; d < D4; d++) {
      let a = ld_delta_do(o, d);
      let b = ld_delta_out(o, d);
      s += a.x * b.x;
      s += a.y * b.y;
      s += a.z * b.z;
      s += a.w * b.w;
    }
  }
  d_stats[idx] = vec2<f32>(d_lse[idx], s);
}
