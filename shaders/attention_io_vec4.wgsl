// Prelude of attention.wgsl for Dh % 4 == 0 (chosen by src/kernels/attention.ts; the other is
// attention_io_scalar.wgsl): out, q, k, v bound as vec4 arrays, so a group of 4 elements of a head row is ONE
// load or store. On lavapipe every storage access is a per-lane loop whatever its width, so this is 4× fewer
// memory instructions than four f32 accesses. Head rows start at element o = (token · heads + head) · Dh, a
// multiple of 4 here, so group d of the row is vec4 o / 4 + d.
//   1 out  (N, H, Dh)   f32 as vec4, read_write
//   3 q    (N, H, Dh)   f32 as vec4, read
//   4 k    (N, KV, Dh)  f32 as vec4, read
//   5 v    (N, KV, Dh)  f32 as vec4, read

@group(0) @binding(1) var<storage, read_write> out: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> k: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> v: array<vec4<f32>>;

fn ld_out(o: u32, d: u32) -> vec4<f32> {
  return out[(o >> 2u) + d];
}

fn st_out(o: u32, d: u32, x: vec4<f32>) {
  out[(o >> 2u) + d] = x;
}
