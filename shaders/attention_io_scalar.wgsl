// Prelude of attention.wgsl for Dh % 4 != 0 (chosen by src/kernels/attention.ts; the other is
// attention_io_vec4.wgsl): out, q, k, v bound as f32 arrays and read in groups of 4 (D4 = ceil(Dh / 4) groups
// per head row starting at element o); the last group of a row is masked: elements past Dh read as 0 and are
// never stored (they belong to the next head).
//   1 out  (N, H, Dh)   f32, read_write
//   3 q    (N, H, Dh)   f32, read
//   4 k    (N, KV, Dh)  f32, read
//   5 v    (N, KV, Dh)  f32, read

@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<storage, read> q: array<f32>;
@group(0) @binding(4) var<storage, read> k: array<f32>;
@group(0) @binding(5) var<storage, read> v: array<f32>;

fn ld_out(o: u32, d: u32) -> vec4<f32> {
  let e = o + 4u * d;
  return mask(d, vec4<f32>(out[e], out[e + 1u], out[e + 2u], out[e + 3u]));
}

fn st_out(o: u32, d: u32, x: vec4<f32>) {
  let e = o + 4u * d;
  let m = in_head(d);
  out[e] = x.x;
  if (m.y) { out[e + 1u] = x.y; }
  if (m.z) { out[e + 2u] = x.z; }
  if (m.w) { out[e + 3u] = x.w; }
}
