// Next-token choice per row on the device: greedy argmax, or HF-style sampling (temperature → top-k → top-p →
// one draw with a uniform u supplied by the host RNG). For row r with logits x (V) and params (invT, K, topP, u):
//   a = argmax_v x_v (first index on ties), m = x_a
//   invT = 0 (temperature 0) or K = 1:  id = a
//   otherwise z_v = (x_v − m) · invT (≤ 0, z_a = 0) and key(z) is the order-preserving u32 image of an f32:
//     top-k (0 < K < V):  κ_k = the largest key with #{v : key(z_v) ≥ κ_k} ≥ K   (the K largest, ties kept)
//                         (K = 0 or K ≥ V: κ_k = 0, everything kept)
//     top-p (topP < 1):   κ_p = the smallest key ≥ κ_k with Σ_{v : key(z_v) > κ_p} e^{z_v} < topP · Z,
//                         Z = Σ_{v : key(z_v) ≥ κ_k} e^{z_v}   (HF TopP: a token is dropped when the probability mass
//                         strictly above it reaches top_p; tied tokens are kept or dropped together)
//     kept = {v : key(z_v) ≥ κ}, κ = max(κ_k, κ_p);  chunk c = lanes' contiguous ranges of C = ceil(V / WG) tokens,
//     S_c = Σ_{kept v in c} e^{z_v} (in index order), total = Σ_c S_c (in chunk order), target = u · total;
//     id = the first kept v (index order) whose running sum Σ_{c' < c} S_c' + Σ_{kept w ≤ v in c} e^{z_w} > target
//     (the last kept token of the crossing chunk if rounding hides the crossing, the argmax if no chunk crosses).
//   Each threshold is found by bisection over the keys, 32 counting / summing passes over V.
//
// Bindings:
//   0 dims    uniform    Dims {rows, V}
//   1 ids     (rows)     i32, read_write   =
//   2 logits  (rows, V)  f32, read
//   3 params  (rows, 4)  u32, read         [bits(invT), K, bits(topP), bits(u)] (invT = 1/temperature or 0)
// Grid: (rows) workgroups of WG lanes (WG a power of two); lanes stride over V, tree reductions in workgroup memory.
// Reference: src/generate/sampling.ts sampleTokenReference

struct Dims {
  rows: u32,
  V: u32,
}

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read_write> ids: array<i32>;
@group(0) @binding(2) var<storage, read> logits: array<f32>;
@group(0) @binding(3) var<storage, read> params: array<u32>;

override WG: u32 = 64u;

var<workgroup> red_f: array<f32, WG>;
var<workgroup> red_u: array<u32, WG>;
var<workgroup> prm: vec4<u32>;

/** order-preserving map f32 → u32: negative floats flip all bits, non-negative ones set the sign bit */
fn key(x: f32) -> u32 {
  let b = bitcast<u32>(x);
  return select(~b, b | 0x80000000u, (b & 0x80000000u) == 0u);
}

/** Σ over the workgroup's lanes of x (every lane gets the sum) */
fn sum_u(l: u32, x: u32) -> u32 {
  red_u[l] = x;
  workgroupBarrier();
  for (var w = WG / 2u; w > 0u; w >>= 1u) {
    if (l < w) {
      red_u[l] += red_u[l + w];
    }
    workgroupBarrier();
  }
  let r = red_u[0];
  workgroupBarrier();
  return r;
}

fn sum_f(l: u32, x: f32) -> f32 {
  red_f[l] = x;
  workgroupBarrier();
  for (var w = WG / 2u; w > 0u; w >>= 1u) {
    if (l < w) {
      red_f[l] += red_f[l + w];
    }
    workgroupBarrier();
  }
  let r = red_f[0];
  workgroupBarrier();
  return r;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let r = wid.x;
  let l = lid.x;
  let V = dims.V;
  let o = r * V;
  if (l == 0u) {
    prm = vec4<u32>(params[4u * r], params[4u * r + 1u], params[4u * r + 2u], params[4u * r + 3u]);
  }
  let p = workgroupUniformLoad(&prm);

  // argmax: per lane over v ≡ l (mod WG) in increasing v, then a tree keeping the larger value, lower index on ties
  var best = bitcast<f32>(0xff800000u);
  var bi = 0xffffffffu;
  for (var v = l; v < V; v += WG) {
    let x = logits[o + v];
    if (x > best || bi == 0xffffffffu) {
      best = x;
      bi = v;
    }
  }
  red_f[l] = best;
  red_u[l] = bi;
  workgroupBarrier();
  for (var w = WG / 2u; w > 0u; w >>= 1u) {
    if (l < w) {
      let ov = red_f[l + w];
      let oi = red_u[l + w];
      let cv = red_f[l];
      let ci = red_u[l];
      if (oi != 0xffffffffu && (ci == 0xffffffffu || ov > cv || (ov == cv && oi < ci))) {
        red_f[l] = ov;
        red_u[l] = oi;
      }
    }
    workgroupBarrier();
  }
  let m = red_f[0];
  let a = min(red_u[0], V - 1u);
  workgroupBarrier();
  let invT = bitcast<f32>(p.x);
  let K = p.y;
  if (invT <= 0.0 || K == 1u) {
    if (l == 0u) {
      ids[r] = i32(a);
    }
    return;
  }

  // top-k threshold: the largest key κ with #{key ≥ κ} ≥ K; key(+0) = 0x80000000 is the largest key present
  var kthr = 0u;
  if (K > 0u && K < V) {
    var lo = 0u;
    var hi = 0x80000000u;
    for (var it = 0u; it < 32u; it++) {
      let mid = lo + (hi - lo) / 2u + ((hi - lo) & 1u);
      var c = 0u;
      for (var v = l; v < V; v += WG) {
        c += select(0u, 1u, key((logits[o + v] - m) * invT) >= mid);
      }
      if (sum_u(l, c) >= K) {
        lo = mid;
      } else {
        hi = mid - 1u;
      }
    }
    kthr = lo;
  }

  // top-p threshold: the smallest key κ ≥ κ_k whose mass strictly above is < topP · Z
  var thr = kthr;
  let topP = bitcast<f32>(p.z);
  if (topP < 1.0) {
    var zs = 0.0;
    for (var v = l; v < V; v += WG) {
      let z = (logits[o + v] - m) * invT;
      if (key(z) >= kthr) {
        zs += exp(z);
      }
    }
    let P = topP * sum_f(l, zs);
    var lo = kthr;
    var hi = 0x80000000u;
    for (var it = 0u; it < 32u; it++) {
      let mid = lo + (hi - lo) / 2u;
      var g = 0.0;
      for (var v = l; v < V; v += WG) {
        let z = (logits[o + v] - m) * invT;
        if (key(z) > mid) {
          g += exp(z);
        }
      }
      if (sum_f(l, g) < P) {
        hi = mid;
      } else {
        lo = mid + 1u;
      }
    }
    thr = hi;
  }

  // draw: chunk sums per lane, then lane 0 walks the chunks and the crossing chunk in index order
  let C = (V + WG - 1u) / WG;
  let b0 = min(l * C, V);
  let b1 = min(b0 + C, V);
  var cs = 0.0;
  for (var v = b0; v < b1; v++) {
    let z = (logits[o + v] - m) * invT;
    if (key(z) >= thr) {
      cs += exp(z);
    }
  }
  red_f[l] = cs;
  workgroupBarrier();
  if (l == 0u) {
    var total = 0.0;
    for (var w = 0u; w < WG; w++) {
      total += red_f[w];
    }
    let goal = bitcast<f32>(p.w) * total;
    var acc = 0.0;
    var pick = a;
    var found = false;
    for (var w = 0u; w < WG && !found; w++) {
      if (acc + red_f[w] > goal) {
        found = true;
        let e1 = min(w * C + C, V);
        for (var v = w * C; v < e1; v++) {
          let z = (logits[o + v] - m) * invT;
          if (key(z) >= thr) {
            pick = v;
            acc += exp(z);
            if (acc > goal) {
              break;
            }
          }
        }
      } else {
        acc += red_f[w];
      }
    }
    ids[r] = i32(pick);
  }
}
