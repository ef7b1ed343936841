// Backward of cross_entropy.wgsl: the gradient of L = Σ_n gscale[n] · loss[n] with respect to the logits.
//
// Entry `grad_scale`: for each of S ranges [start, end) of positions (one adapter's micro-batch, spec §3: its loss
// is the mean over its predicted positions), with count = #{n in range : target ≥ 0}:
//   gscale[n] = factor[s] / max(count, 1)  if target[n] ≥ 0,  else 0        (positions outside every range: untouched)
// factor[s] (e.g. 1 / gradient-accumulation steps) comes in the uniform.
// Bindings (grad_scale):
//   0 sd       uniform  ScaleDims {S, factor[S] packed in vec4s}
//   1 gscale   (Ntot)   f32, read_write   =  positions inside the ranges
//   2 targets  (Ntot)   i32, read
//   3 ranges   (S, 2)   u32, read         [start, end) per range
// Grid (grad_scale): one workgroup of MWG threads per range (x = S); strided counts, a tree reduction, strided writes.
//
// Entries `main` and `inplace`: for each local row n < N of a logits chunk holding positions N0 .. N0+N−1 and
// column v (the same chunking as the forward), with t = targets[N0+n]:
//   dlogits[n, v] = (exp(logits[n, v] − lse[N0+n]) − [v = t]) · gscale[N0+n]   if t ≥ 0, else 0
// Bindings (main):
//   0 dims     uniform   Dims {N, V, N0, chunks}
//   1 dlogits  (N, V)    f32, read_write   =
//   2 logits   (N, V)    f32, read
//   3 lse      (Ntot)    f32, read         saved by the forward
//   4 targets  (Ntot)    i32, read         −1 = ignored
//   5 gscale   (Ntot)    f32, read         from grad_scale (or the host)
// Bindings (inplace, the logits chunk becomes its gradient): 1 logits (N, V) read_write =, 2 lse, 3 targets, 4 gscale.
// Grid (main, inplace): one thread per (row, chunk of CH columns), chunks = ceil(V / CH), flat index folded into 2-D:
//   idx = (wid.y * num_workgroups.x + wid.x) * WG + lid.x;  n = idx / chunks,  columns (idx % chunks) · CH + 0..CH−1.
//   A thread loads its row's lse, target and scale once for CH columns.
// Reference: src/reference/cross_entropy.ts crossEntropyGradScale, crossEntropyBackward

struct Dims {
  N: u32,
  V: u32,
  N0: u32,
  chunks: u32,
}

struct ScaleDims {
  S: u32,
  pad0: u32,
  pad1: u32,
  pad2: u32,
  factor: array<vec4<f32>, 256>,
}

override WG: u32 = 64u;
override CH: u32 = 64u;

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read_write> dlogits: array<f32>;
@group(0) @binding(2) var<storage, read> logits: array<f32>;
@group(0) @binding(3) var<storage, read> lse: array<f32>;
@group(0) @binding(4) var<storage, read> targets: array<i32>;
@group(0) @binding(5) var<storage, read> gscale: array<f32>;

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
) {
  let idx = (wid.y * nwg.x + wid.x) * WG + lid.x;
  if (idx >= dims.N * dims.chunks) {
    return;
  }
  let n = idx / dims.chunks;
  let v0 = (idx % dims.chunks) * CH;
  let v1 = min(v0 + CH, dims.V);
  let o = n * dims.V;
  let g = dims.N0 + n;
  let t = targets[g];
  if (t < 0) {
    for (var v = v0; v < v1; v++) {
      dlogits[o + v] = 0.0;
    }
    return;
  }
  let l = lse[g];
  let s = gscale[g];
  for (var v = v0; v < v1; v++) {
    let p = exp(logits[o + v] - l);
    dlogits[o + v] = select(p, p - 1.0, v == u32(t)) * s;
  }
}

@group(0) @binding(1) var<storage, read_write> ip_logits: array<f32>;
@group(0) @binding(2) var<storage, read> ip_lse: array<f32>;
@group(0) @binding(3) var<storage, read> ip_targets: array<i32>;
@group(0) @binding(4) var<storage, read> ip_gscale: array<f32>;

@compute @workgroup_size(WG)
fn inplace(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
) {
  let idx = (wid.y * nwg.x + wid.x) * WG + lid.x;
  if (idx >= dims.N * dims.chunks) {
    return;
  }
  let n = idx / dims.chunks;
  let v0 = (idx % dims.chunks) * CH;
  let v1 = min(v0 + CH, dims.V);
  let o = n * dims.V;
  let g = dims.N0 + n;
  let t = ip_targets[g];
  if (t < 0) {
    for (var v = v0; v < v1; v++) {
      ip_logits[o + v] = 0.0;
    }
    return;
  }
  let l = ip_lse[g];
  let s = ip_gscale[g];
  for (var v = v0; v < v1; v++) {
    let p = exp(ip_logits[o + v] - l);
    ip_logits[o + v] = select(p, p - 1.0, v == u32(t)) * s;
  }
}

@group(0) @binding(0) var<uniform> sd: ScaleDims;
@group(0) @binding(1) var<storage, read_write> gs_out: array<f32>;
@group(0) @binding(2) var<storage, read> gs_targets: array<i32>;
@group(0) @binding(3) var<storage, read> ranges: array<u32>;

const MWG: u32 = 64u;
var<workgroup> part_count: array<f32, MWG>;

@compute @workgroup_size(MWG)
fn grad_scale(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let s = wid.x;
  if (s >= sd.S) {
    return;
  }
  let start = ranges[2u * s];
  let end = ranges[2u * s + 1u];
  var count = 0.0;
  for (var n = start + lid.x; n < end; n += MWG) {
    if (gs_targets[n] >= 0) {
      count += 1.0;
    }
  }
  part_count[lid.x] = count;
  workgroupBarrier();
  for (var w = MWG / 2u; w > 0u; w /= 2u) {
    if (lid.x < w) {
      part_count[lid.x] += part_count[lid.x + w];
    }
    workgroupBarrier();
  }
  let scale = sd.factor[s / 4u][s % 4u] / max(part_count[0], 1.0);
  for (var n = start + lid.x; n < end; n += MWG) {
    gs_out[n] = select(0.0, scale, gs_targets[n] >= 0);
  }
}
