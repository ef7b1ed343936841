// RoPE angle shared by shaders/rope.wgsl (positions from each row's first real token) and
// shaders/rope_positions.wgsl (explicit per-row positions, decoding), prepended to both as a prelude.
// angle a = position · inv_freq[i] in f32 as HF computes it, reduced to [−π, π] with a three-part 2π (Cody–Waite) so
// that cos/sin stay accurate at positions in the thousands; returns (cos a, sin a).

const INV_2PI: f32 = 0.15915493667125702;
const C1: f32 = 6.28125;
const C2: f32 = 0.0019353071693331003;
const C3: f32 = 1.0253131677018246e-11;

fn rope_cos_sin(a: f32) -> vec2<f32> {
  let kk = round(a * INV_2PI);
  let red = ((a - kk * C1) - kk * C2) - kk * C3;
  return vec2<f32>(cos(red), sin(red));
}
