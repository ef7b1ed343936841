// KV-cache append: copies the real tokens' k and v (after RoPE) of a packed batch into a per-layer cache.
// The cache of one layer holds, per sequence slot, KV heads of maxLen positions: kc, vc (slots, KV, maxLen, Dh).
// Batch row r (its tokens n = r·T + t, t < T) writes into cache slot slots[r]; its real tokens t ∈ [start, start +
// len) (start = T − len with left padding, 0 with right padding, len = lengths[r]) go to cache positions
//   p = pos0[r] + (t − start)
// so a prefill writes a prompt at positions 0 .. len − 1 (pos0 = 0) and a decode step (T = 1, len = 1) writes the
// new token at its row's current cache length pos0[r]. Pad tokens are not written. Positions ≥ maxLen are skipped
// (the launcher's caller sizes the cache; the host guards it).
//
// Bindings:
//   0 dims     uniform              Dims {rows, T, KV, Dh, maxLen, left}
//   1 kc       (slots, KV, maxLen, Dh)  f32, read_write   = at the written positions, elsewhere untouched
//   2 vc       (slots, KV, maxLen, Dh)  f32, read_write   = likewise
//   3 k        (rows·T, KV, Dh)     f32, read
//   4 v        (rows·T, KV, Dh)     f32, read
//   5 slots    (rows)               u32, read   cache slot of each batch row
//   6 pos0     (rows)               u32, read   cache position of each row's first real token
//   7 lengths  (rows)               u32, read   real tokens per row
// Grid: one thread per element idx < rows·T·KV·Dh of k (the same flat index into v), folded into 2-D:
//   idx = (wid.y * num_workgroups.x + wid.x) * WG + lid.x; d = idx % Dh; g = idx / Dh % KV; n = idx / (Dh·KV).
// Reference: src/generate/kv_cache.ts cacheIndex (the layout) and referenceKvWrite

struct Dims {
  rows: u32,
  T: u32,
  KV: u32,
  Dh: u32,
  maxLen: u32,
  left: u32,
}

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read_write> kc: array<f32>;
@group(0) @binding(2) var<storage, read_write> vc: array<f32>;
@group(0) @binding(3) var<storage, read> k: array<f32>;
@group(0) @binding(4) var<storage, read> v: array<f32>;
@group(0) @binding(5) var<storage, read> slots: array<u32>;
@group(0) @binding(6) var<storage, read> pos0: array<u32>;
@group(0) @binding(7) var<storage, read> lengths: array<u32>;

override WG: u32 = 64u;

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
) {
  let idx = (wid.y * nwg.x + wid.x) * WG + lid.x;
  let T = dims.T;
  if (idx >= dims.rows * T * dims.KV * dims.Dh) {
    return;
  }
  let d = idx % dims.Dh;
  let g = (idx / dims.Dh) % dims.KV;
  let n = idx / (dims.Dh * dims.KV);
  let r = n / T;
  let t = n % T;
  let len = lengths[r];
  let start = select(0u, T - len, dims.left != 0u);
  if (t < start || t >= start + len) {
    return;
  }
  let p = pos0[r] + (t - start);
  if (p >= dims.maxLen) {
    return;
  }
  let o = ((slots[r] * dims.KV + g) * dims.maxLen + p) * dims.Dh + d;
  kc[o] = k[idx];
  vc[o] = v[idx];
}
