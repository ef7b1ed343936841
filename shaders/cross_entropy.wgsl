// Cross-entropy with ignored positions, and its mean over ranges of positions.
//
// Entry `main`: for each local row n < N of a logits chunk holding global positions N0 .. N0+N-1:
//   lse[N0+n]  = log Σ_v exp(logits[n, v])     (online: running max m and Σ exp(x − m), one pass over V)
//   loss[N0+n] = lse − logits[n, target]   if target = targets[N0+n] ≥ 0, else 0 (ignored)
// The chunking lets a caller compute logits a slice of rows at a time (N·V over 128 MiB at large batches).
// Bindings (main):
//   0 dims     uniform  Dims {N, V, N0, S}
//   1 loss     (Ntot)   f32, read_write   =  rows N0 .. N0+N-1
//   2 lse      (Ntot)   f32, read_write   =  rows N0 .. N0+N-1, saved for the backward
//   3 logits   (N, V)   f32, read
//   4 targets  (Ntot)   i32, read         −1 = ignored
// Grid (main): one thread per row, folded into 2-D: n = (wid.y * num_workgroups.x + wid.x) * WG + lid.x.
//
// Entry `mean`: for each of S ranges [start, end) of positions (e.g. the rows of one adapter):
//   out[s] = (Σ_{n : target ≥ 0} loss[n] / max(count, 1), count)
// Bindings (mean):
//   0 dims     uniform  Dims {S}
//   1 out      (S, 2)   f32, read_write   =  (mean, count)
//   2 loss     (Ntot)   f32, read
//   3 targets  (Ntot)   i32, read
//   4 ranges   (S, 2)   u32, read         [start, end) per range
// Grid (mean): one workgroup of MWG threads per range (x = S); strided partial sums, then a tree reduction.
// Reference: src/reference/cross_entropy.ts crossEntropyForward, crossEntropyMean

struct Dims {
  N: u32,
  V: u32,
  N0: u32,
  S: u32,
}

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read_write> loss: array<f32>;
@group(0) @binding(2) var<storage, read_write> lse: array<f32>;
@group(0) @binding(3) var<storage, read> logits: array<f32>;
@group(0) @binding(4) var<storage, read> targets: array<i32>;

override WG: u32 = 64u;

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
) {
  let n = (wid.y * nwg.x + wid.x) * WG + lid.x;
  if (n >= dims.N) {
    return;
  }
  let o = n * dims.V;
  var m = logits[o];
  var s = 1.0;
  for (var v = 1u; v < dims.V; v++) {
    let x = logits[o + v];
    if (x > m) {
      s = s * exp(m - x) + 1.0;
      m = x;
    } else {
      s += exp(x - m);
    }
  }
  let l = m + log(s);
  let g = dims.N0 + n;
  lse[g] = l;
  let t = targets[g];
  loss[g] = select(0.0, l - logits[o + u32(max(t, 0))], t >= 0);
}

@group(0) @binding(1) var<storage, read_write> mean_out: array<f32>;
@group(0) @binding(2) var<storage, read> mean_loss: array<f32>;
@group(0) @binding(3) var<storage, read> mean_targets: array<i32>;
@group(0) @binding(4) var<storage, read> ranges: array<u32>;

const MWG: u32 = 64u;
var<workgroup> part_sum: array<f32, MWG>;
var<workgroup> part_count: array<f32, MWG>;

@compute @workgroup_size(MWG)
fn mean(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let s = wid.x;
  if (s >= dims.S) {
    return;
  }
  let start = ranges[2u * s];
  let end = ranges[2u * s + 1u];
  var sum = 0.0;
  var count = 0.0;
  for (var n = start + lid.x; n < end; n += MWG) {
    if (mean_targets[n] >= 0) {
      sum += mean_loss[n];
      count += 1.0;
    }
  }
  part_sum[lid.x] = sum;
  part_count[lid.x] = count;
  workgroupBarrier();
  for (var w = MWG / 2u; w > 0u; w /= 2u) {
    if (lid.x < w) {
      part_sum[lid.x] += part_sum[lid.x + w];
      part_count[lid.x] += part_count[lid.x + w];
    }
    workgroupBarrier();
  }
  if (lid.x == 0u) {
    mean_out[2u * s] = part_sum[0] / max(part_count[0], 1.0);
    mean_out[2u * s + 1u] = part_count[0];
  }
}
