// Per-expert token lists (deterministic compaction without atomics), switch capacity, router statistics.
// Workgroup e scans the tokens in order, one chunk of WG tokens at a time inside each sequence of T tokens,
// with a workgroup prefix sum of the "selected e" flags:
//   list[e, c] = p = i·S + j for the c-th routed token i (slot j), in token order;  counts[e] = c_max
//   switch: the selection rank of token i within its sequence is seq_count + excl; rank ≥ cap ⇒ dropped
//           (sel = DROPPED, slot 0 expert −1, weight 0; output 0, no gradient through its weight)
//   stats[stats_off + 0] = real tokens, [.. + 1 + e] = C_e (selections incl. dropped), [.. + 1 + E + e] = Σ P_e
// Σ P_e is a per-lane sum over the lane's tokens in order, then a fixed tree over lanes: bit-reproducible.
// Bindings (group-local buffers at token li = loc0 + i, see moe_common.wgsl):
//   0 segs       uniform  array<Dims, MOE_MAX_SEG> (moe_common.wgsl)
//   1 list       (Nt·E)   u32, read_write  =   segment rows e at loc0·E + e·N, first counts entries of each
//   2 counts     (·, E)   u32, read_write  =   at cnt0 + e
//   3 sel        (Nt, E)  u32, read_write      DROPPED written for over-capacity tokens
//   4 expert_of  (Nt, S)  i32, read_write      −1 written for over-capacity tokens
//   5 w          (Nt, S)  f32, read_write      0 written for over-capacity tokens
//   6 stats      (·, 2E + 1) f32, read_write  =   row dims.stats_off / (2E + 1)
//   7 P          (Nt, E)  f32, read
//   8 lengths    (rows)   u32, read
// Grid: (E, 1, segments) workgroups of WG lanes (WG a power of two).
// Reference: src/reference/mixlora.ts mixloraRoute (capacity, stats)

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
  // sd: the segment read straight from the uniform table, so that the loop bounds around the barriers are
  // provably workgroup-uniform (reads of the private copy `dims` are not, for WGSL's uniformity analysis)
  let sd = segs[wid.z];
  dims = sd;
  let e = wid.x;
  let l = lid.x;
  let E = sd.E;
  let lb = sd.loc0 * E + e * sd.N;
  var offset = 0u;
  var selected = 0u;
  var psum = 0.0;
  let seqs = sd.N / sd.T;
  for (var s = 0u; s < seqs; s++) {
    var seq_count = 0u;
    for (var base = 0u; base < sd.T; base += WG) {
      let t = base + l;
      let i = s * sd.T + t;
      let li = sd.loc0 + i;
      var flag = 0u;
      var v = 0u;
      if (t < sd.T) {
        let gi = dims.row0 + i;
        if (is_real_token(gi, lengths[gi / dims.T])) {
          psum += P[li * E + e];
        }
        v = sel[li * E + e];
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
          list[lb + offset + excl] = li * dims.S + slot;
        } else {
          sel[li * E + e] = DROPPED;
          expert_of[li * dims.S + slot] = -1;
          w[li * dims.S + slot] = 0.0;
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
    counts[dims.cnt0 + e] = offset;
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
