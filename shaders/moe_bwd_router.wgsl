// MixLoRA backward through selection and softmax, one token per invocation:
//   mixlora  w_j = P_j / Σ_sel P  ⇒  dP_j = (dw_j − Σ_k dw_k w_k) / Σ_sel P   for selected j
//   switch, dynamic  w_j = P_j  ⇒  dP_j = dw_j   (dropped and pad tokens have no slots: no gradient)
//   aux (dims.aux = 1, real tokens): dP_e += auxg_e = ∂aux/∂P_e from moe_aux.wgsl
//   softmax: dlogit_e = P_e · (dP_e − Σ_k P_k dP_k)
// Bindings (group-local buffers at token li = loc0 + i, see moe_common.wgsl):
//   0 segs       uniform  array<Dims, MOE_MAX_SEG> (moe_common.wgsl)
//   1 dlogits    (Nt, E)  f32, read_write  =
//   2 P          (Nt, E)  f32, read
//   3 dw         (Nt, S)  f32, read
//   4 w          (Nt, S)  f32, read
//   5 expert_of  (Nt, S)  i32, read
//   6 aux        (·, 1 + E) f32, read      [aux, auxg_0 .. auxg_{E−1}] at aux_off
//   7 lengths    (rows)   u32, read
// Grid: 1-D over the largest segment's N, folded into x, y; z = segment.
// Reference: src/reference/mixlora.ts mixloraBackward (router)

@group(0) @binding(1) var<storage, read_write> dlogits: array<f32>;
@group(0) @binding(2) var<storage, read> P: array<f32>;
@group(0) @binding(3) var<storage, read> dw: array<f32>;
@group(0) @binding(4) var<storage, read> w: array<f32>;
@group(0) @binding(5) var<storage, read> expert_of: array<i32>;
@group(0) @binding(6) var<storage, read> aux: array<f32>;
@group(0) @binding(7) var<storage, read> lengths: array<u32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>) {
  dims = segs[wid.z];
  let i = flat_index(wid, nwg, lid);
  if (i >= dims.N) {
    return;
  }
  let li = dims.loc0 + i;
  let E = dims.E;
  let S = dims.S;
  var dP: array<f32, MAX_E>;
  for (var e = 0u; e < E; e++) {
    dP[e] = 0.0;
  }
  if (dims.routing == ROUTING_MIXLORA) {
    var total = 0.0;
    var dot = 0.0;
    for (var j = 0u; j < S; j++) {
      let ei = expert_of[li * S + j];
      if (ei >= 0) {
        total += P[li * E + u32(ei)];
        dot += dw[li * S + j] * w[li * S + j];
      }
    }
    for (var j = 0u; j < S; j++) {
      let ei = expert_of[li * S + j];
      if (ei >= 0) {
        dP[u32(ei)] = (dw[li * S + j] - dot) / total;
      }
    }
  } else {
    for (var j = 0u; j < S; j++) {
      let ei = expert_of[li * S + j];
      if (ei >= 0) {
        dP[u32(ei)] = dw[li * S + j];
      }
    }
  }
  let gi = dims.row0 + i;
  if (dims.aux == 1u && is_real_token(gi, lengths[gi / dims.T])) {
    for (var e = 0u; e < E; e++) {
      dP[e] += aux[dims.aux_off + 1u + e];
    }
  }
  var s = 0.0;
  for (var e = 0u; e < E; e++) {
    s += P[li * E + e] * dP[e];
  }
  for (var e = 0u; e < E; e++) {
    dlogits[li * E + e] = P[li * E + e] * (dP[e] - s);
  }
}
