// Prelude of the generated LoRA kernels (src/kernels/lora_codegen.ts; prepended after lora_common.wgsl by
// src/kernels/lora.ts): the uniform struct. One projection's LoRA over tokens [row0, row0 + N) of the packed
// batch: x (·, IN) and y / dy / dx (·, OUT or IN) are batch-shaped (row gi = row0 + i), t and dt (N, R) are local.
// A (R, IN) at element a and B (OUT, R) at element b of the bound parameter range; dA at ga and dB at gb of the
// bound gradient range; dropout (on = drop) of mask stream `stream`, threshold thr, kept values × keep.

struct Dims {
  N: u32, IN: u32, OUT: u32, R: u32,
  row0: u32, a: u32, b: u32, drop: u32,
  seed: u32, stream: u32, thr: u32, ga: u32,
  gb: u32, pad0: u32, pad1: u32, pad2: u32,
  scale: f32, keep: f32,
}

override WG: u32 = 8u;

// Flat invocation index of a grid folded into x and y (z selects the job of a multi-job kernel).
fn flat_index(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
  return (wid.y * nwg.x + wid.x) * WG + lid.x;
}
