// Prelude (prepended by src/kernels/lora.ts and src/kernels/moe.ts, not a kernel on its own): the counter-based
// random streams shared by LoRA dropout and MixLoRA router jitter. A mask value is a pure function of
// (seed, stream, row, col), so forward and backward regenerate the same mask without storing it:
//   h = pcg(pcg(pcg(pcg(seed) ^ stream) ^ row) ^ col)     row = mask_key of the token, col = feature
//   mask_key = r · 65536 + p: r the token's sequence within its adapter's micro-batch, p its position in that
//   sequence (right padding p = t, left padding p = t − (T − len)) — the same whether the adapter trains alone
//   or packed with others (any row0, any padded T ≤ 65536, either pad side)
//   dropout keep ⇔ h ≥ thr (thr = round(p · 2³²)), kept values × keep = fround(1 / (1 − p))
//   jitter factor = lo + span · u, u = (h >> 8) · 2⁻²⁴      (lo = 1 − j, span = 2j)
// Reference: src/reference/lora.ts pcgHash, maskHash, maskRowKey, dropoutMask, jitterNoise.

// PCG-RXS-M-XS 32-bit output permutation of an LCG step.
fn pcg(v: u32) -> u32 {
  let s = v * 747796405u + 2891336453u;
  let w = ((s >> ((s >> 28u) + 4u)) ^ s) * 277803737u;
  return (w >> 22u) ^ w;
}

// Mask row key of token i = r·T + t of an adapter's micro-batch (i counted from the adapter's first token; len
// = real tokens of its sequence r, read only for left padding): r · 65536 + p, p = t (right padding) or
// t − (T − len) (left padding; wraps around on the left pads, whose masked values are never used).
fn mask_key(i: u32, T: u32, left: u32, len: u32) -> u32 {
  let t = i % T;
  let p = select(t, t + len - T, left == 1u);
  return (i / T) * 65536u + p;
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
