// Prelude of attention_decode.wgsl for Dh % 4 != 0 (chosen by src/kernels/attention_decode.ts; the other is
// attention_decode_io_vec4.wgsl): the head-row tensors bound as f32 arrays and accessed in groups of 4
// (D4 = ceil(Dh / 4) groups per head row starting at element o); the last group of a row is masked: elements past
// Dh read as 0 (select: the cache past a row may hold anything) and are never stored.
//   scores: 2 q (rows, H, Dh) f32, read      3 kc (slots, KV, maxLen, Dh) f32, read
//   mix:    1 out (rows, H, Dh) f32, read_write   3 vc (slots, KV, maxLen, Dh) f32, read

@group(0) @binding(2) var<storage, read> q: array<f32>;
@group(0) @binding(3) var<storage, read> kc: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<storage, read> vc: array<f32>;

// elements 4d .. 4d+3 of the head row starting at element o; masked elements read as 0
fn ld_q(o: u32, d: u32) -> vec4<f32> {
  let e = o + 4u * d;
  return mask(d, vec4<f32>(q[e], q[e + 1u], q[e + 2u], q[e + 3u]));
}

fn ld_kc(o: u32, d: u32) -> vec4<f32> {
  let e = o + 4u * d;
  return mask(d, vec4<f32>(kc[e], kc[e + 1u], kc[e + 2u], kc[e + 3u]));
}

fn ld_vc(o: u32, d: u32) -> vec4<f32> {
  let e = o + 4u * d;
  return mask(d, vec4<f32>(vc[e], vc[e + 1u], vc[e + 2u], vc[e + 3u]));
}

fn st_out(o: u32, d: u32, x: vec4<f32>) {
  let e = o + 4u * d;
  let m = in_head(d);
  out[e] = x.x;
  if (m.y) { out[e + 1u] = x.y; }
  if (m.z) { out[e + 2u] = x.z; }
  if (m.w) { out[e + 3u] = x.w; }
}
