// Prelude of every shaders/moe_*.wgsl kernel except moe_aux (prepended after lora_common.wgsl by
// src/kernels/moe.ts): the shared uniform struct, dimension helpers, activations and their derivatives.
//
// The efficient MixLoRA FFN these kernels implement (reference: src/reference/mixlora.ts). With slot weights w_j
// of the routed experts e_j of a token x, ΔW = s · B A (m ⊙ ·) per expert and projection:
//   out = Σ_j w_j (W2 + ΔW2_j) h_j,   h_j = act((W1 + ΔW1_j) x) ⊙ (W3 + ΔW3_j) x
//       = W2 (Σ_j w_j h_j) + Σ_j w_j s B2_j A2_j (m2 ⊙ h_j)          (W2 is linear)
//   (W1 + ΔW1_j) x = g0 + s B1_j A1_j (m1 ⊙ x),  g0 = W1 x  (likewise u0 = W3 x)
// so the frozen W1, W3 run once per token (g0, u0, all batch rows), the frozen W2 runs once on the weighted
// mix Σ_j w_j h_j, and only the rank-R terms run per (token, routed expert). Backward mirrors it: dmix = W2ᵀ dy
// once, dh_j = w_j dmix + w_j m2 ⊙ A2ᵀ(s B2ᵀ dy), and dx = W1ᵀ Σ_j dg_j + W3ᵀ Σ_j du_j + rank-R terms + router.
//
// Buffer conventions: "batch-shaped" buffers (x, y, g0, u0, mix, dy, dx, dmix, dg0, du0) are indexed by the
// token's row in the packed batch, gi = row0 + i; "adapter-local" buffers by i ∈ [0, N) (P, sel, w, expertOf,
// list, t, dts, hs, dw, dlogits). Slot j of token i is pair p = i·S + j. Adapter parameters and gradients are
// one flat f32 buffer each (src/model/adapter_device.ts), bound as a range; expert e's tensors sit at
//   A1 = a1 + e·R·D   B1 = b1 + e·F·R   (gate_proj)     A3 = a3 + e·R·D   B3 = b3 + e·F·R   (up_proj)
//   A2 = a2 + e·R·F   B2 = b2 + e·D·R   (down_proj)     G (router, E × D) = router
// relative to the bound range. targets bit 0/1/2 = gate/up/down carry LoRA.

struct Dims {
  N: u32, D: u32, F: u32, R: u32,
  E: u32, S: u32, T: u32, row0: u32,
  left: u32, routing: u32, K: u32, cap: u32,
  stats_off: u32, jit: u32, jit_seed: u32, drop: u32,
  drop_seed: u32, thr: u32, targets: u32, router: u32,
  a1: u32, b1: u32, a3: u32, b3: u32,
  a2: u32, b2: u32, aux: u32, pad0: u32,
  top_p: f32, scale: f32, keep: f32, jit_lo: f32,
  jit_span: f32,
}

override WG: u32 = 64u;
override ACT: u32 = 0u;

const ROUTING_MIXLORA: u32 = 0u;
const ROUTING_SWITCH: u32 = 1u;
const ROUTING_DYNAMIC: u32 = 2u;
const DROPPED: u32 = 0xffffffffu;
const MAX_E: u32 = 32u;
const JITTER_STREAM: u32 = 7u;

fn has_gate() -> bool { return (dims.targets & 1u) != 0u; }
fn has_up() -> bool { return (dims.targets & 2u) != 0u; }
fn has_down() -> bool { return (dims.targets & 4u) != 0u; }

// Dropout multiplier of expert e's LoRA on projection proj (0 gate, 1 up, 2 down): stream 8 + 3e + proj.
fn expert_mult(e: u32, proj: u32, gi: u32, col: u32) -> f32 {
  return drop_mult(dims.drop, dims.drop_seed, 8u + 3u * e + proj, dims.thr, dims.keep, gi, col);
}

// Router-input jitter factor of token gi, feature d (1 when off).
fn jitter(gi: u32, d: u32) -> f32 {
  if (dims.jit == 0u) {
    return 1.0;
  }
  let u = f32(mask_hash(dims.jit_seed, JITTER_STREAM, gi, d) >> 8u) * (1.0 / 16777216.0);
  return dims.jit_lo + dims.jit_span * u;
}

// Flat invocation index of a 1-D grid folded into 2-D (x ≤ maxComputeWorkgroupsPerDimension).
fn flat_index(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
  return (wid.y * nwg.x + wid.x) * WG + lid.x;
}

// 1 + erf(z), the Numerical Recipes erfc fit of src/reference/swiglu.ts onePlusErf.
fn one_plus_erf(z: f32) -> f32 {
  let t = 1.0 / (1.0 + 0.5 * abs(z));
  let p = -1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806 +
    t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))));
  let erfc = t * exp(-z * z + p);
  return select(erfc, 2.0 - erfc, z >= 0.0);
}

// act (ACT 0 silu, 1 gelu, 2 gelu_tanh), as shaders/swiglu.wgsl
fn act(x: f32) -> f32 {
  if (ACT == 1u) {
    return 0.5 * x * one_plus_erf(x * 0.70710678118654752);
  }
  if (ACT == 2u) {
    let y = clamp(0.79788456080286536 * (x + 0.044715 * x * x * x), -10.0, 10.0);
    return 0.5 * x * (1.0 + tanh(y));
  }
  return x / (1.0 + exp(-x));
}

// act'(x): silu σ(1 + x(1 − σ)); gelu ½(1 + erf(x/√2)) + x φ(x); gelu_tanh ½(1 + th) + ½x(1 − th²)·c(1 + 3·0.044715x²)
fn act_grad(x: f32) -> f32 {
  if (ACT == 1u) {
    return 0.5 * one_plus_erf(x * 0.70710678118654752) + x * exp(-0.5 * x * x) * 0.39894228040143268;
  }
  if (ACT == 2u) {
    let c = 0.79788456080286536;
    let th = tanh(clamp(c * (x + 0.044715 * x * x * x), -10.0, 10.0));
    return 0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * c * (1.0 + 0.134145 * x * x);
  }
  let sg = 1.0 / (1.0 + exp(-x));
  return sg * (1.0 + x * (1.0 - sg));
}

// Whether batch token gi is real: row r = gi / T, position t = gi % T; right padding t < len, left t ≥ T − len.
fn is_real_token(gi: u32, len: u32) -> bool {
  let t = gi % dims.T;
  let right = t < len;
  let left = t >= dims.T - len;
  return select(right, left, dims.left == 1u);
}
