// Token embedding gather: x[n, :] = embed[tokens[n] - V0, :] for the tokens inside this chunk of the table.
//
// A table over maxStorageBufferBindingSize (128 MiB, e.g. 32000 × 4096 f32) is bound in chunks of Vc rows
// starting at vocabulary row V0, one dispatch per chunk; each dispatch writes exactly the rows whose token
// falls in [V0, V0 + Vc), so the chunks together write every row once. Pad positions hold a valid token id
// (BatchDescriptor) and so get a finite (don't-care) row.
//
// Bindings:
//   0 dims    uniform   Dims
//   1 x       (N, D)    f32, read_write   =  (rows of other chunks untouched)
//   2 tokens  (N)       i32, read
//   3 embed   (Vc, D)   f32, read         rows V0 .. V0+Vc-1 of embed_tokens
// Grid: one workgroup per token n = wid.y * num_workgroups.x + wid.x (2-D so that N may pass 65535);
//       WG threads stride over D.
// Reference: src/reference/embedding.ts embeddingForward

struct Dims {
  N: u32,
  D: u32,
  V0: u32,
  Vc: u32,
}

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> tokens: array<i32>;
@group(0) @binding(3) var<storage, read> embed: array<f32>;

override WG: u32 = 64u;

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
) {
  let n = wid.y * nwg.x + wid.x;
  if (n >= dims.N) {
    return;
  }
  // row of this chunk; tokens outside the chunk wrap to a huge u32 and are skipped
  let row = u32(tokens[n] - i32(dims.V0));
  if (row >= dims.Vc) {
    return;
  }
  let D = dims.D;
  for (var d = lid.x; d < D; d += WG) {
    x[n * D + d] = embed[row * D + d];
  }
}
