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

// Rotates pair (i, i + Dh/2) of head `head` of token n by the angle with cosine c and sine s: heads 0 .. H − 1 are
// q's, H .. H + KV − 1 are k's. Uses the including shader's q, k (f32, read_write) and dims.H, dims.KV, dims.Dh.
fn rope_rotate(n: u32, head: u32, i: u32, c: f32, s: f32) {
  let half = dims.Dh / 2u;
  if (head < dims.H) {
    let o = (n * dims.H + head) * dims.Dh + i;
    let x1 = q[o];
    let x2 = q[o + half];
    q[o] = x1 * c - x2 * s;
    q[o + half] = x2 * c + x1 * s;
  } else {
    let o = (n * dims.KV + head - dims.H) * dims.Dh + i;
    let x1 = k[o];
    let x2 = k[o + half];
    k[o] = x1 * c - x2 * s;
    k[o + half] = x2 * c + x1 * s;
  }
}
