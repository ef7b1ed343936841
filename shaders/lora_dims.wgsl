// Prelude of the generated LoRA kernels (src/kernels/lora_codegen.ts; prepended after lora_common.wgsl by
// src/kernels/lora.ts): the segment table. One dispatch runs one projection's LoRA for up to MAX_SEG adapters of a
// packed batch (SGMV-style: Punica's segmented gather matmul, one segment per adapter). Segment s covers tokens
// [row0, row0 + N) of the batch: x (·, IN) and y / dy / dx (·, OUT or IN) are batch-shaped (row gi = row0 + i); t
// and dt rows t0 + i of the call's (Σ N, R) buffer. Its A (R, IN) sits at element a and B (OUT, R) at element b
// of the bound parameter range (the adapter arena's slab, src/model/adapter_arena.ts), dA at ga and dB at gb of
// the bound gradient range; dropout (on = drop) with seed `seed` and threshold thr, kept values × keep, on the
// call's mask stream. Masks are keyed by mask_key (lora_common.wgsl) of the token's index i in the segment: the
// segment holds whole sequences of T tokens (left = 1: left padding, sequence r's length at lengths[len0 + r],
// len0 = row0 / T), so its masks are the same at any row0 and any T. All segments share IN, OUT and R (the
// kernels are generated per rank).

struct Seg {
  N: u32, row0: u32, a: u32, b: u32,
  ga: u32, gb: u32, t0: u32, drop: u32,
  seed: u32, thr: u32, scale: f32, keep: f32,
  T: u32, left: u32, len0: u32, pad: u32,
}

const MAX_SEG: u32 = 16u;

struct Segs {
  IN: u32, OUT: u32, stream: u32, count: u32,
  s: array<Seg, 16>,
}

override WG: u32 = 8u;

// Flat invocation index of a grid folded into x and y (z = segment · jobs + job).
fn flat_index(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
  return (wid.y * nwg.x + wid.x) * WG + lid.x;
}
