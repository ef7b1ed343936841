// Activations of the FFN (hidden_act), shared as a prelude by shaders/swiglu.wgsl and the MixLoRA kernels
// (shaders/moe_common.wgsl and the generated MoE kernels). ACT: 0 silu, 1 gelu (erf), 2 gelu_tanh.
// Reference: src/reference/swiglu.ts activate / activateGrad / onePlusErf.

override ACT: u32 = 0u;

// 1 + erf(z); see onePlusErf in src/reference/swiglu.ts
fn one_plus_erf(z: f32) -> f32 {
  let t = 1.0 / (1.0 + 0.5 * abs(z));
  let p = -1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806 +
    t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))));
  let erfc = t * exp(-z * z + p);
  return select(erfc, 2.0 - erfc, z >= 0.0);
}

fn act(x: f32) -> f32 {
  if (ACT == 1u) {
    return 0.5 * x * one_plus_erf(x * 0.70710678118654752);
  }
  if (ACT == 2u) {
    // tanh saturates to ±1 in f32 beyond |y| = 9; clamping keeps e^2y-based tanh implementations off inf/inf
    let y = clamp(0.79788456080286536 * (x + 0.044715 * x * x * x), -10.0, 10.0);
    return 0.5 * x * (1.0 + tanh(y));
  }
  // silu; for x → −∞ e^−x overflows to inf and x / inf = −0, the right limit
  return x / (1.0 + exp(-x));
}

// act'(x); see activateGrad in src/reference/swiglu.ts
fn act_grad(x: f32) -> f32 {
  if (ACT == 1u) {
    return 0.5 * one_plus_erf(x * 0.70710678118654752) + x * exp(-0.5 * x * x) * 0.39894228040143268;
  }
  if (ACT == 2u) {
    let c = 0.79788456080286536;
    // clamped like act (beyond |y| = 9, 1 − tanh² y is 0 in f32 either way)
    let t = tanh(clamp(c * (x + 0.044715 * x * x * x), -10.0, 10.0));
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * c * (1.0 + 0.134145 * x * x);
  }
  // silu; σ = 0 for x → −∞ (e^−x = inf), then 0 · (1 + x) = 0
  let s = 1.0 / (1.0 + exp(-x));
  return s * (1.0 + x * (1.0 - s));
}
