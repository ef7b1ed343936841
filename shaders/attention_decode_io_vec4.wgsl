// Prelude of attention_decode.wgsl for Dh % 4 == 0 (chosen by src/kernels/attention_decode.ts; the other is
// attention_decode_io_scalar.wgsl): the head-row tensors bound as vec4 arrays, so a group of 4 elements of a head
// row is ONE load or store (on lavapipe every storage access is a per-lane loop whatever its width: 4× fewer
// memory instructions than four f32 accesses). Head rows start at element o, a multiple of Dh and so of 4 here:
// group d of the row is vec4 o / 4 + d.
//   scores: 2 q (rows, H, Dh) vec4, read      3 kc (slots, KV, maxLen, Dh) vec4, read
//   mix:    1 out (rows, H, Dh) vec4, read_write   3 vc (slots, KV, maxLen, Dh) vec4, read

@group(0) @binding(2) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> kc: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> out: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> vc: array<vec4<f32>>;

// elements 4d .. 4d+3 of the head row starting at element o
fn ld_q(o: u32, d: u32) -> vec4<f32> {
  return q[(o >> 2u) + d];
}

fn ld_kc(o: u32, d: u32) -> vec4<f32> {
  return kc[(o >> 2u) + d];
}

fn ld_vc(o: u32, d: u32) -> vec4<f32> {
  return vc[(o >> 2u) + d];
}

fn st_out(o: u32, d: u32, x: vec4<f32>) {
  out[(o >> 2u) + d] = x;
}
