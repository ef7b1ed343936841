// Fused optimizer step over ONE adapter's flat parameter buffer (torch semantics, f32), then g = 0.
//
// Entry points (one dispatch per adapter per optimizer step):
//   adamw         p ← p·decay; m ← m + w1·(g − m); v ← v·β2 + w2·g²; p ← p − step_size · m / (√v / bc2_sqrt + ε)
//   sgd_momentum  g' = g + wd·p; b ← (first ? g' : μ·b + g'); p ← p − lr·b
//   sgd           g' = g + wd·p; p ← p − lr·g'
// Step-dependent scalars (lr of this step, bias corrections) live in the uniform, written by the host every
// step (src/reference/optimizer.ts adamwScalars / sgdScalars), so one pipeline serves every adapter and step.
//
// Bindings (count = number of f32 parameters; arrays are vec4 views, ⌈count/4⌉ quads, lanes ≥ count untouched):
//   0 u  uniform  Params
//   1 p  (count)  f32, read_write   updated in place
//   2 g  (count)  f32, read_write   read, then = 0
//   3 m  (count)  f32, read_write   AdamW exp_avg / SGD momentum buffer, updated in place
//   4 v  (count)  f32, read_write   AdamW exp_avg_sq, updated in place
// Grid: 1-D over quads, folded into 2-D (gx ≤ 65535): q = (wid.y * num_workgroups.x + wid.x) * WG + lid.x.
// Reference: src/reference/optimizer.ts adamwStep / sgdStep (same operation order, each result rounded to f32).

struct Params {
  count: u32,
  // SGD: 1 on the first step (the momentum buffer becomes g, as torch clones it)
  first: u32,
  lr: f32,
  wd: f32,
  momentum: f32,
  // AdamW: 1 − lr·wd
  decay: f32,
  // AdamW: lr / (1 − β1^t)
  step_size: f32,
  // AdamW: √(1 − β2^t)
  bc2_sqrt: f32,
  // AdamW: 1 − β1
  w1: f32,
  beta2: f32,
  // AdamW: 1 − β2
  w2: f32,
  eps: f32,
}

@group(0) @binding(0) var<uniform> u: Params;
@group(0) @binding(1) var<storage, read_write> p: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> g: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> m: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> v: array<vec4<f32>>;

override WG: u32 = 64u;

fn quad_index(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
  return (wid.y * nwg.x + wid.x) * WG + lid.x;
}

// Lanes of quad q that hold parameters (the last quad may be partial).
fn live(q: u32) -> vec4<bool> {
  let base = q * 4u;
  return vec4<u32>(base, base + 1u, base + 2u, base + 3u) < vec4<u32>(u.count);
}

@compute @workgroup_size(WG)
fn adamw(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
) {
  let q = quad_index(wid, nwg, lid);
  if (q * 4u >= u.count) {
    return;
  }
  let ok = live(q);
  let gq = g[q];
  let p0 = p[q];
  let m0 = m[q];
  let v0 = v[q];
  let pd = p0 * u.decay;
  let m1 = m0 + u.w1 * (gq - m0);
  let v1 = v0 * u.beta2 + u.w2 * (gq * gq);
  let denom = sqrt(v1) / u.bc2_sqrt + u.eps;
  let p1 = pd - u.step_size * (m1 / denom);
  p[q] = select(p0, p1, ok);
  m[q] = select(m0, m1, ok);
  v[q] = select(v0, v1, ok);
  g[q] = select(gq, vec4<f32>(0.0), ok);
}

@compute @workgroup_size(WG)
fn sgd_momentum(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
) {
  let q = quad_index(wid, nwg, lid);
  if (q * 4u >= u.count) {
    return;
  }
  let ok = live(q);
  let gq = g[q];
  let p0 = p[q];
  let b0 = m[q];
  let gd = gq + u.wd * p0;
  let b1 = select(u.momentum * b0 + gd, gd, u.first != 0u);
  let p1 = p0 - u.lr * b1;
  p[q] = select(p0, p1, ok);
  m[q] = select(b0, b1, ok);
  g[q] = select(gq, vec4<f32>(0.0), ok);
}

@compute @workgroup_size(WG)
fn sgd(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
) {
  let q = quad_index(wid, nwg, lid);
  if (q * 4u >= u.count) {
    return;
  }
  let ok = live(q);
  let gq = g[q];
  let p0 = p[q];
  let p1 = p0 - u.lr * (gq + u.wd * p0);
  p[q] = select(p0, p1, ok);
  g[q] = select(gq, vec4<f32>(0.0), ok);
}
