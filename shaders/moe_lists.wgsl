// Per-expert token lists (deterministic compaction without atomics), switch capacity, router statistics.
// Workgroup e scans the tokens in order, one chunk of WG tokens at a time inside each sequence of T tokens,
// with a workgroup prefix sum of the "selected e" flags:
//   list[e, c] = p = i·S + j for the c-th routed token i (slot j), in token order;  counts[e] = c_max
//   switch: the selection rank of token i within its sequence is seq_count + excl; rank ≥ cap ⇒ dropped
//           (sel = DROPPED, slot 0 expert −1, weight 0; output 0, no gradient through its weight)
//   stats[stats_off + 0] = real tokens, [.. + 1 + e] = C_e (selections incl. dropped), [.. + 1 + E + e] = Σ P_e
// Σ P_e is a per-lane sum over the lane's tokens in order, then a fixed tree over lanes: bit-reproducible.
// Bindings:
//   0 dims       uniform  Dims (moe_common.wgsl)
//   1 list       (E, N)   u32, read_write  =   first counts[e] entries of row e
//   2 counts     (E)      u32, read_write  =
//   3 sel        (N, E)   u32, read_write      DROPPED written for over-capacity tokens
//   4 expert_of  (N, S)   i32, read_write      −1 written for over-capacity tokens
//   5 w          (N, S)   f32, read_write      0 written for over-capacity tokens
//   6 stats      (L, 2E + 1) f32, read_write  =   row dims.stats_off / (2E + 1)
//   7 P          (N, E)   f32, read
//   8 lengths    (rows)   u32, read
// Grid: E workgroups of WG lanes (WG a power of two).
// Reference: src/reference/mixlora.ts mixloraRoute (capacity, stats)

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read_write> list: array<u32>;
@group(0) @binding(2) var<storage, read_write> counts: array<u32>;
@group(0) @binding(3) var<storage, read_write> sel: array<u32>;
@group(0) @binding(4) var<storage, read_write> expert_of: array<i32>;
@group(0) @binding(5) var<storage, read_write> w: array<f32>;
@group(0) @binding(6) var<storage, read_write> stats: array<f32>;
@group(0) @binding(7) var<storage, read> P: array<f32>;
@group(0) @binding(8) var<storage, read> lengths: array<u32>;

var<workgroup> scan: array<u32, WG>;
var<workgroup> fsum: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let e = wid.x;
  let l = lid.x;
  let E = dims.E;
  var offset = 0u;
  var selected = 0u;
  var psum = 0.0;
  let seqs = dims.N / dims.T;
  for (var s = 0u; s < seqs; s++) {
    var seq_count = 0u;
    for (var base = 0u; base < dims.T; base += WG) {
      let t = base + l;
      let i = s * dims.T + t;
      var flag = 0u;
      var v = 0u;
      if (t < dims.T) {
        let gi = dims.row0 + i;
        if (is_real_token(gi, lengths[gi / dims.T])) {
          psum += P[i * E + e];
        }
        v = sel[i * E + e];
        flag = select(0u, 1u, v != 0u);
      }
      // inclusive Hillis–Steele scan of the flags
      scan[l] = flag;
      workgroupBarrier();
      for (var off = 1u; off < WG; off *= 2u) {
        var add = 0u;
        if (l >= off) {
          add = scan[l - off];
        }
        workgroupBarrier();
        scan[l] += add;
        workgroupBarrier();
      }
      let excl = scan[l] - flag;
      let total = scan[WG - 1u];
      workgroupBarrier();
      if (flag == 1u) {
        let slot = v - 1u;
        if (seq_count + excl < dims.cap) {
          list[e * dims.N + offset + excl] = i * dims.S + slot;
        } else {
          sel[i * E + e] = DROPPED;
          expert_of[i * dims.S + slot] = -1;
          w[i * dims.S + slot] = 0.0;
        }
      }
      var room = 0u;
      if (dims.cap > seq_count) {
        room = dims.cap - seq_count;
      }
      offset += min(total, room);
      seq_count += total;
      selected += total;
    }
  }
  fsum[l] = psum;
  workgroupBarrier();
  for (var half = WG / 2u; half > 0u; half /= 2u) {
    if (l < half) {
      fsum[l] += fsum[l + half];
    }
    workgroupBarrier();
  }
  if (l == 0u) {
    counts[e] = offset;
    stats[dims.stats_off + 1u + e] = f32(selected);
    stats[dims.stats_off + 1u + E + e] = fsum[0];
    if (e == 0u) {
      var tokens = 0u;
      for (var r = 0u; r < seqs; r++) {
        tokens += lengths[(dims.row0 + r * dims.T) / dims.T];
      }
      stats[dims.stats_off] = f32(tokens);
    }
  }
}
