// Prelude shared by attention_io_vec4.wgsl and attention_backward_io_vec4.wgsl (prepended after them by
// src/kernels/attention.ts): group d (elements 4d .. 4d+3) of the q, k or v head row starting at element o,
// with q, k, v as those preludes bind them (vec4 arrays).

fn ld_q(o: u32, d: u32) -> vec4<f32> {
  return q[(o >> 2u) + d];
}

fn ld_k(o: u32, d: u32) -> vec4<f32> {
  return k[(o >> 2u) + d];
}

fn ld_v(o: u32, d: u32) -> vec4<f32> {
  return v[(o >> 2u) + d];
}
