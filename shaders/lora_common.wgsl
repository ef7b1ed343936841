// Prelude (prepended by src/kernels/lora.ts and src/kernels/moe.ts, not a kernel on its own): the counter-based
// random streams shared by LoRA dropout and MixLoRA router jitter. A mask value is a pure function of
// (seed, stream, row, col), so forward and backward regenerate the same mask without storing it:
//   h = pcg(pcg(pcg(pcg(seed) ^ stream) ^ row) ^ col)     row = token index in the packed batch, col = feature
//   dropout keep ⇔ h ≥ thr (thr = round(p · 2³²)), kept values × keep = fround(1 / (1 − p))
//   jitter factor = lo + span · u, u = (h >> 8) · 2⁻²⁴      (lo = 1 − j, span = 2j)
// Reference: src/reference/lora.ts pcgHash, maskHash, dropoutMask, jitterNoise.

// PCG-RXS-M-XS 32-bit output permutation of an LCG step.
fn pcg(v: u32) -> u32 {
  let s = v * 747796405u + 2891336453u;
  let w = ((s >> ((s >> 28u) + 4u)) ^ s) * 277803737u;
  return (w >> 22u) ^ w;
}

fn mask_hash(seed: u32, stream: u32, row: u32, col: u32) -> u32 {
  return pcg(pcg(pcg(pcg(seed) ^ stream) ^ row) ^ col);
}

// Dropout multiplier: 0 (dropped) or keep (= 1 / (1 − p)); 1 when dropout is off.
fn drop_mult(on: u32, seed: u32, stream: u32, thr: u32, keep: f32, row: u32, col: u32) -> f32 {
  if (on == 0u) {
    return 1.0;
  }
  return select(0.0, keep, mask_hash(seed, stream, row, col) >= thr);
}
