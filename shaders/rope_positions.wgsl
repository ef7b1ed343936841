// Rotary position embedding at explicit per-token positions, in place on q (N, H, Dh) and k (N, KV, Dh), HF
// rotate_half convention — the decode-step variant of rope.wgsl, where token n is one live sequence whose next
// position is positions[n] (its cache length), so no (rows, T, pad side) layout applies. For token n, head h and
// i < Dh/2:
//   a = f32(positions[n]) · inv_freq[i]            (f32 product, as HF: inv_freq @ position_ids in f32)
//   x[i]        ← x[i] · cos a − x[i + Dh/2] · sin a
//   x[i + Dh/2] ← x[i + Dh/2] · cos a + x[i] · sin a
// inv_freq and the Cody-Waite reduction of a to [−π, π] are exactly those of rope.wgsl, so a token rotated here at
// position p gets the same bits as the same token rotated by rope.wgsl at position p of a packed batch.
//
// Bindings:
//   0 dims       uniform     Dims {N, H, KV, Dh, inv_freq[Dh/2] packed in vec4s}
//   1 q          (N, H, Dh)  f32, read_write   = rope(q) in place
//   2 k          (N, KV, Dh) f32, read_write   = rope(k) in place
//   3 positions  (N)         u32, read         position of each token
// Grid: one thread per (n, head of H + KV, i < Dh/2), flat index folded into 2-D:
//   idx = (wid.y * num_workgroups.x + wid.x) * WG + lid.x; i = idx % (Dh/2); head = idx / (Dh/2) % (H + KV);
//   n = idx / (Dh/2) / (H + KV). Heads below H rotate q, the others k.
// Reference: src/reference/rope.ts ropeForward (positions given explicitly)

struct Dims {
  N: u32,
  H: u32,
  KV: u32,
  Dh: u32,
  inv_freq: array<vec4<f32>, 32>,
}

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read_write> q: array<f32>;
@group(0) @binding(2) var<storage, read_write> k: array<f32>;
@group(0) @binding(3) var<storage, read> positions: array<u32>;

override WG: u32 = 64u;

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
  let a = f32(positions[n]) * dims.inv_freq[i / 4u][i % 4u];
  let cs = rope_cos_sin(a);
  let c = cs.x;
  let s = cs.y;
  rope_rotate(n, head, i, c, s);
}
