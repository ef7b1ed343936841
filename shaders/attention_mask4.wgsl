// Prelude of the scalar-layout attention preludes (attention_io_scalar, attention_backward_io_scalar,
// attention_decode_io_scalar .wgsl, prepended before them by src/kernels/attention.ts / attention_decode.ts): a head
// row of Dh elements is read in groups of 4; the last group of a row is masked when Dh % 4 != 0.

/** which of the 4 elements of group d of a head are inside Dh */
fn in_head(d: u32) -> vec4<bool> {
  return vec4<u32>(4u * d) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(dims.Dh);
}

/** x with the elements of group d past Dh set to 0 */
fn mask(d: u32, x: vec4<f32>) -> vec4<f32> {
  return select(vec4<f32>(0.0), x, in_head(d));
}
