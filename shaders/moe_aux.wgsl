// MixLoRA load-balancing loss of one adapter over its L MoE layers' statistics (moe_lists.wgsl), one invocation
// per adapter (segment s = workgroup x, up to MOE_AUX_SEG adapters per dispatch):
//   T = Σ_l tokens_l,  C_e = Σ_l count_{l,e},  SP_e = Σ_l sumP_{l,e}
//   aux = coef · E · Σ_e C_e · SP_e / T²        (= coef · E · Σ_e f_e · Pbar_e)
//   auxg_e = gscale · coef · E · C_e / T²      (∂aux/∂P_{t,e} for every real token, times the loss scale)
// T = 0 gives aux = 0 and auxg = 0.
// Bindings:
//   0 segs   uniform  array<AuxDims, MOE_AUX_SEG>
//   1 out    (·, 1 + E)  f32, read_write  =   [aux, auxg_0 .. auxg_{E−1}] at out_off
//   2 stats  (·, 2E + 1) f32, read         L rows [tokens, count_0.., sumP_0..] from stats_off
// Grid: one workgroup of 1 invocation per segment.
// Reference: src/reference/mixlora.ts moeAuxLoss

// 8 words (32 bytes, a multiple of 16: the uniform array stride)
struct AuxDims {
  L: u32, E: u32, stats_off: u32, out_off: u32,
  coef: f32, gscale: f32, pad0: u32, pad1: u32,
}

const MOE_AUX_SEG: u32 = 16u;

@group(0) @binding(0) var<uniform> segs: array<AuxDims, MOE_AUX_SEG>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> stats: array<f32>;

@compute @workgroup_size(1)
fn main(@builtin(workgroup_id) wid: vec3<u32>) {
  let dims = segs[wid.x];
  let E = dims.E;
  let row = 2u * E + 1u;
  var T = 0.0;
  for (var l = 0u; l < dims.L; l++) {
    T += stats[dims.stats_off + l * row];
  }
  var aux = 0.0;
  for (var e = 0u; e < E; e++) {
    var C = 0.0;
    var SP = 0.0;
    for (var l = 0u; l < dims.L; l++) {
      C += stats[dims.stats_off + l * row + 1u + e];
      SP += stats[dims.stats_off + l * row + 1u + E + e];
    }
    var gr = 0.0;
    if (T > 0.0) {
      aux += C * SP;
      gr = dims.gscale * dims.coef * f32(E) * C / (T * T);
    }
    out[dims.out_off + 1u + e] = gr;
  }
  if (T > 0.0) {
    aux = dims.coef * f32(E) * aux / (T * T);
  }
  out[dims.out_off] = aux;
}
