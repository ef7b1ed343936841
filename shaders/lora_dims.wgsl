// Prelude of the shaders/lora_*.wgsl kernels (prepended after lora_common.wgsl by src/kernels/lora.ts): the
// uniform struct. One projection's LoRA over tokens [row0, row0 + N) of the packed batch: x (·, IN) and
// y / dy (·, OUT) are batch-shaped (row gi = row0 + i), t and dt (N, R) are local. A (R, IN) at element a and
// B (OUT, R) at element b of the bound parameter (or gradient) range; dropout mask stream `stream`.

struct Dims {
  N: u32, IN: u32, OUT: u32, R: u32,
  row0: u32, a: u32, b: u32, drop: u32,
  seed: u32, stream: u32, thr: u32, pad0: u32,
  scale: f32, keep: f32,
}

override WG: u32 = 64u;

fn flat_index(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
  return (wid.y * nwg.x + wid.x) * WG + lid.x;
}

fn mult(i: u32, k: u32) -> f32 {
  return drop_mult(dims.drop, dims.seed, dims.stream, dims.thr, dims.keep, dims.row0 + i, k);
}
