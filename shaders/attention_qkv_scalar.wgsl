// Prelude shared by attention_io_scalar.wgsl and attention_backward_io_scalar.wgsl (prepended after them by
// src/kernels/attention.ts): group d (elements 4d .. 4d+3) of the q, k or v head row starting at element o,
// with q, k, v as those preludes bind them (f32 arrays, the last group of a row masked by attention_mask4.wgsl).

fn ld_q(o: u32, d: u32) -> vec4<f32> {
  let e = o + 4u * d;
  return mask(d, vec4<f32>(q[e], q[e + 1u], q[e + 2u], q[e + 3u]));
}

fn ld_k(o: u32, d: u32) -> vec4<f32> {
  let e = o + 4u * d;
  return mask(d, vec4<f32>(k[e], k[e + 1u], k[e + 2u], k[e + 3u]));
}

fn ld_v(o: u32, d: u32) -> vec4<f32> {
  let e = o + 4u * d;
  return mask(d, vec4<f32>(v[e], v[e + 1u], v[e + 2u], v[e + 3u]));
}
