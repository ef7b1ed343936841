// Rotary position embedding in place on q (N, H, Dh) and k (N, KV, Dh), HF rotate_half convention.
// For token n = r·T + t of row r, head h and i < Dh/2:
//   pos = t − start_r (start_r = T − len_r with left padding, 0 with right padding; pad tokens: max(pos, 0))
//   a = f32(pos) · inv_freq[i]                     (f32 product, as HF: inv_freq @ position_ids in f32)
//   x[i]        ← x[i] · cos a − x[i + Dh/2] · sin a
//   x[i + Dh/2] ← x[i + Dh/2] · cos a + x[i] · sin a
// inv_freq[i] = 1 / theta^(2i/Dh) comes in the uniform, rounded on the host exactly as HF rounds it (f32 pow
// on the device is a few ulp off, and at position 511 one ulp of inv_freq moves the angle by ~3e-5 rad).
// cos/sin are taken after an explicit Cody-Waite reduction of a to [−π, π] (2π = C1 + C2 + C3, C1 with 8
// significant bits so that k·C1 is exact for k < 2^16): WGSL only bounds sin/cos error inside [−π, π].
// The reduction lives in rope_common.wgsl, a prelude shared with rope_positions.wgsl.
//
// Backward (INVERSE = true): the gradient of a rotation by a is the rotation by −a (its transpose), so the same
// kernel on dq, dk with sin a negated (exactly) gives, in place,
//   dx[i] ← dx[i] · cos a + dx[i + Dh/2] · sin a,   dx[i + Dh/2] ← dx[i + Dh/2] · cos a − dx[i] · sin a.
//
// Bindings:
//   0 dims     uniform     Dims {N, T, H, KV, Dh, left, inv_freq[Dh/2] packed in vec4s}
//   1 q        (N, H, Dh)  f32, read_write   = rope(q) in place
//   2 k        (N, KV, Dh) f32, read_write   = rope(k) in place
//   3 lengths  (rows)      u32, read         real tokens per row
// Grid: one thread per (n, head of H + KV, i < Dh/2), flat index folded into 2-D:
//   idx = (wid.y * num_workgroups.x + wid.x) * WG + lid.x; i = idx % (Dh/2); head = idx / (Dh/2) % (H + KV);
//   n = idx / (Dh/2) / (H + KV). Heads below H rotate q, the others k.
// Reference: src/reference/rope.ts ropeForward, ropeBackward (with tokenPositions from src/reference/batch.ts)

struct Dims {
  N: u32,
  T: u32,
  H: u32,
  KV: u32,
  Dh: u32,
  left: u32,
  pad0: u32,
  pad1: u32,
  inv_freq: array<vec4<f32>, 32>,
}

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read_write> q: array<f32>;
@group(0) @binding(2) var<storage, read_write> k: array<f32>;
@group(0) @binding(3) var<storage, read> lengths: array<u32>;

override WG: u32 = 64u;
/** rotate by −a: the backward */
override INVERSE: bool = false;

/** Position of token n of the batch, counted from its row's first real token (0 for left pads). */
fn token_pos(n: u32) -> i32 {
  let r = n / dims.T;
  let t = n % dims.T;
  let start = select(0u, dims.T - lengths[r], dims.left != 0u);
  return max(i32(t) - i32(start), 0);
}

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
) {
  let half = dims.Dh / 2u;
  let heads = dims.H + dims.KV;
  let idx = (wid.y * nwg.x + wid.x) * WG + lid.x;
  if (idx >= dims.N * heads * half) {
    return;
  }
  let i = idx % half;
  let head = (idx / half) % heads;
  let n = idx / half / heads;
  let a = f32(token_pos(n)) * dims.inv_freq[i / 4u][i % 4u];
  let cs = rope_cos_sin(a);
  let c = cs.x;
  let s = select(cs.y, -cs.y, INVERSE);
  rope_rotate(n, head, i, c, s);
}

// ---- entry `main4` (Dh % 8 = 0): one thread per 4 consecutive pairs (i .. i + 3) of a head, q and k bound as vec4
// chunks: the same per-element expressions with a quarter of the memory instructions (and one lengths load per
// 4 pairs). idx = (n · (H + KV) + head) · Dh/8 + i/4.

@group(0) @binding(1) var<storage, read_write> q4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> k4: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn main4(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
) {
  let hq = dims.Dh / 8u;
  let heads = dims.H + dims.KV;
  let idx = (wid.y * nwg.x + wid.x) * WG + lid.x;
  if (idx >= dims.N * heads * hq) {
    return;
  }
  let i4 = idx % hq;
  let head = (idx / hq) % heads;
  let n = idx / hq / heads;
  let a = f32(token_pos(n)) * dims.inv_freq[i4];
  let c0 = rope_cos_sin(a.x);
  let c1 = rope_cos_sin(a.y);
  let c2 = rope_cos_sin(a.z);
  let c3 = rope_cos_sin(a.w);
  let c = vec4<f32>(c0.x, c1.x, c2.x, c3.x);
  let sn = vec4<f32>(c0.y, c1.y, c2.y, c3.y);
  let s = select(sn, -sn, INVERSE);
  if (head < dims.H) {
    let o = (n * dims.H + head) * (dims.Dh / 4u) + i4;
    let x1 = q4[o];
    let x2 = q4[o + hq];
    q4[o] = x1 * c - x2 * s;
    q4[o + hq] = x2 * c + x1 * s;
  } else {
    let o = (n * dims.KV + head - dims.H) * (dims.Dh / 4u) + i4;
    let x1 = k4[o];
    let x2 = k4[o + hq];
    k4[o] = x1 * c - x2 * s;
    k4[o + hq] = x2 * c + x1 * s;
  }
}
