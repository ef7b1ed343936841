// Decode attention: one query token per live sequence against that sequence's cached keys and values
// (grouped-query, scale 1/sqrt(Dh)). Row r (one live sequence) reads cache slot slots[r], whose first
// len_r = pos[r] + 1 positions are valid (its earlier tokens and the token of this step, appended just before).
// For head h (kv head g = h / (H / KV)):
//   s_j = (q_r,h · k_slot,g,j) · scale                       j < len_r
//   p_j = exp(s_j − m) / l,  m = max_j s_j,  l = Σ_j exp(s_j − m)
//   out_r,h = Σ_j p_j v_slot,g,j
// Three entry points, dispatched in this order by src/kernels/attention_decode.ts:
//   scores   one thread per (r, h, j < Lk): s written for j < len_r      (Lk = max_r len_r this step)
//   softmax  one thread per (r, h): s → p in place over j < len_r
//   mix      one thread per (r, h, group d of 4 elements, d < D4 = ceil(Dh / 4)): out written
// q, kc, vc and out are accessed in groups of 4 through a prelude chosen by the launcher:
// attention_decode_io_vec4.wgsl (Dh % 4 == 0: one vec4 load/store per group, 4× fewer memory instructions) or
// attention_decode_io_scalar.wgsl (four f32 accesses, the last group of a head masked). Each sum still runs
// element by element in the order of the plain loop.
// No causal mask is needed: every cached key precedes (or is) the query. The cache has no pad positions.
//
// Bindings (binding 0 is the uniform Dims {rows, H, KV, Dh, maxLen, Lk, scale} for every entry; q, kc, out, vc
// declared by the prelude):
//   scores   1 s (rows, H, maxLen) f32 read_write =  scores of j < len_r
//            2 q (rows, H, Dh) f32 read, after RoPE     3 kc (slots, KV, maxLen, Dh) f32 read, this layer's keys
//            4 slots (rows) u32 read                    5 pos (rows) u32 read, position of this step's token
//   softmax  1 s (rows, H, maxLen) f32 read_write       in place: scores → probabilities
//            2 pos (rows) u32 read
//   mix      1 out (rows, H, Dh) f32 read_write =       2 s (rows, H, maxLen) f32 read, probabilities
//            3 vc (slots, KV, maxLen, Dh) f32 read      4 slots (rows) u32 read   5 pos (rows) u32 read
// Grid: each entry's threads flat, folded into 2-D: idx = (wid.y * num_workgroups.x + wid.x) * WG + lid.x.
// Reference: src/reference/attention.ts attentionForward (the last query of a row holding the cached tokens)

struct Dims {
  rows: u32,
  H: u32,
  KV: u32,
  Dh: u32,
  maxLen: u32,
  Lk: u32,
  scale: f32,
}

@group(0) @binding(0) var<uniform> dims: Dims;

override WG: u32 = 64u;

fn flat(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
  return (wid.y * nwg.x + wid.x) * WG + lid.x;
}

/** first element of (slot, kv head of query head h, position j) in a cache */
fn cache_at(slot: u32, h: u32, j: u32) -> u32 {
  let g = h / (dims.H / dims.KV);
  return ((slot * dims.KV + g) * dims.maxLen + j) * dims.Dh;
}

// ---- scores ---------------------------------------------------------------------------------------

@group(0) @binding(1) var<storage, read_write> s: array<f32>;
// 2 q, 3 kc and ld_q, ld_kc (o, d) come from the prelude
@group(0) @binding(4) var<storage, read> slots: array<u32>;
@group(0) @binding(5) var<storage, read> pos: array<u32>;

@compute @workgroup_size(WG)
fn scores(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
) {
  let idx = flat(wid, nwg, lid);
  if (idx >= dims.rows * dims.H * dims.Lk) {
    return;
  }
  let j = idx % dims.Lk;
  let h = (idx / dims.Lk) % dims.H;
  let r = idx / dims.Lk / dims.H;
  if (j > pos[r]) {
    return;
  }
  let Dh = dims.Dh;
  let qo = (r * dims.H + h) * Dh;
  let ko = cache_at(slots[r], h, j);
  var acc = 0.0;
  // element by element in order (a masked tail adds exact zeros)
  for (var d = 0u; d < (Dh + 3u) / 4u; d++) {
    let a = ld_q(qo, d);
    let b = ld_kc(ko, d);
    acc += a.x * b.x;
    acc += a.y * b.y;
    acc += a.z * b.z;
    acc += a.w * b.w;
  }
  s[(r * dims.H + h) * dims.maxLen + j] = acc * dims.scale;
}

// ---- softmax --------------------------------------------------------------------------------------

@group(0) @binding(1) var<storage, read_write> p_s: array<f32>;
@group(0) @binding(2) var<storage, read> p_pos: array<u32>;

@compute @workgroup_size(WG)
fn softmax(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
) {
  let idx = flat(wid, nwg, lid);
  if (idx >= dims.rows * dims.H) {
    return;
  }
  let len = p_pos[idx / dims.H] + 1u;
  let so = idx * dims.maxLen;
  var m = p_s[so];
  for (var j = 1u; j < len; j++) {
    m = max(m, p_s[so + j]);
  }
  var l = 0.0;
  for (var j = 0u; j < len; j++) {
    let e = exp(p_s[so + j] - m);
    p_s[so + j] = e;
    l += e;
  }
  let inv = 1.0 / l;
  for (var j = 0u; j < len; j++) {
    p_s[so + j] *= inv;
  }
}

// ---- mix ------------------------------------------------------------------------------------------

// 1 out, 3 vc and st_out (o, d, x), ld_vc (o, d) come from the prelude
@group(0) @binding(2) var<storage, read> m_s: array<f32>;
@group(0) @binding(4) var<storage, read> m_slots: array<u32>;
@group(0) @binding(5) var<storage, read> m_pos: array<u32>;

@compute @workgroup_size(WG)
fn mix(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
) {
  let idx = flat(wid, nwg, lid);
  let Dh = dims.Dh;
  let D4 = (Dh + 3u) / 4u;
  if (idx >= dims.rows * dims.H * D4) {
    return;
  }
  let d = idx % D4;
  let h = (idx / D4) % dims.H;
  let r = idx / D4 / dims.H;
  let len = m_pos[r] + 1u;
  let so = (r * dims.H + h) * dims.maxLen;
  let vo = cache_at(m_slots[r], h, 0u);
  // one probability load feeds 4 elements
  var acc = vec4<f32>(0.0);
  for (var j = 0u; j < len; j++) {
    acc += m_s[so + j] * ld_vc(vo + j * Dh, d);
  }
  st_out((r * dims.H + h) * Dh, d, acc);
}
