// MixLoRA stages 1–3 for one token per invocation: router logits, softmax, selection, slot weights.
//   logits_e = Σ_d G[e, d] · x[gi, d] · jitter(key, d)         jitter = 1 unless training with jitter_noise
//   key = token_key(gi) (moe_common.wgsl): the token's sequence in the segment and position in that sequence
//   P = softmax(logits) (f32, max-subtracted)
//   picks in descending P, ties to the lower expert index:
//     mixlora (0)  K picks, w_j = P_j / Σ_picks P (summed in pick order)
//     switch  (1)  1 pick, w = P (capacity is applied by moe_lists.wgsl)
//     dynamic (2)  pick while the exclusive prefix sum of picked P ≤ top_p (always ≥ 1 pick), w = P
//   pad tokens: no picks. Unused slots: expert −1, weight 0.
// Bindings (group-local buffers at token li = loc0 + i, see moe_common.wgsl):
//   0 segs       uniform  array<Dims, MOE_MAX_SEG> (moe_common.wgsl)
//   1 P          (Nt, E)  f32, read_write  =
//   2 w          (Nt, S)  f32, read_write  =   slot weights
//   3 expert_of  (Nt, S)  i32, read_write  =   slot experts (−1: none)
//   4 sel        (Nt, E)  u32, read_write  =   j + 1 when e is in slot j, else 0
//   5 x          (·, D)   f32, read        batch-shaped
//   6 p          parameters f32, read      G (E, D) at dims.router
//   7 lengths    (rows)   u32, read        real tokens per batch row
// Grid: 1-D over the largest segment's N tokens, folded into x, y; z = segment.
// Reference: src/reference/mixlora.ts mixloraRoute

@group(0) @binding(1) var<storage, read_write> P: array<f32>;
@group(0) @binding(2) var<storage, read_write> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> expert_of: array<i32>;
@group(0) @binding(4) var<storage, read_write> sel: array<u32>;
@group(0) @binding(5) var<storage, read> x: array<f32>;
@group(0) @binding(6) var<storage, read> p: array<f32>;
@group(0) @binding(7) var<storage, read> lengths: array<u32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>) {
  dims = segs[wid.z];
  let i = flat_index(wid, nwg, lid);
  if (i >= dims.N) {
    return;
  }
  let E = dims.E;
  let gi = dims.row0 + i;
  let li = dims.loc0 + i;
  let len = lengths[gi / dims.T];
  let key = token_key(gi, len);
  var lg: array<f32, MAX_E>;
  for (var e = 0u; e < E; e++) {
    lg[e] = 0.0;
  }
  for (var d = 0u; d < dims.D; d++) {
    let xr = x[gi * dims.D + d] * jitter(key, d);
    for (var e = 0u; e < E; e++) {
      lg[e] += p[dims.router + e * dims.D + d] * xr;
    }
  }
  var m = lg[0];
  for (var e = 1u; e < E; e++) {
    m = max(m, lg[e]);
  }
  var z = 0.0;
  for (var e = 0u; e < E; e++) {
    lg[e] = exp(lg[e] - m);
    z += lg[e];
  }
  for (var e = 0u; e < E; e++) {
    lg[e] = lg[e] / z;
    P[li * E + e] = lg[e];
    sel[li * E + e] = 0u;
  }
  for (var j = 0u; j < dims.S; j++) {
    expert_of[li * dims.S + j] = -1;
    w[li * dims.S + j] = 0.0;
  }
  if (!is_real_token(gi, len)) {
    return;
  }
  var picks = dims.K;
  if (dims.routing == ROUTING_SWITCH) {
    picks = 1u;
  } else if (dims.routing == ROUTING_DYNAMIC) {
    picks = E;
  }
  var used = 0u;
  var cum = 0.0;
  var n = 0u;
  for (var j = 0u; j < picks; j++) {
    if (dims.routing == ROUTING_DYNAMIC && cum > dims.top_p) {
      break;
    }
    var best = 0u;
    var bp = -1.0;
    for (var e = 0u; e < E; e++) {
      if (((used >> e) & 1u) == 0u && lg[e] > bp) {
        best = e;
        bp = lg[e];
      }
    }
    used |= 1u << best;
    expert_of[li * dims.S + j] = i32(best);
    sel[li * E + best] = j + 1u;
    w[li * dims.S + j] = bp;
    cum += bp;
    n += 1u;
  }
  if (dims.routing == ROUTING_MIXLORA) {
    for (var j = 0u; j < n; j++) {
      w[li * dims.S + j] = w[li * dims.S + j] / cum;
    }
  }
}
