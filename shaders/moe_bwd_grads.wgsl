// MixLoRA backward, expert parameter gradients, accumulated (+=). Each output element is one invocation that
// sums over its expert's token list in order (deterministic compaction from moe_lists.wgsl, no atomics):
//   dB2_e[d, r] += Σ_p s · w[p] · dy[gi, d] · t2[p, r]        dA2_e[r, f] += Σ_p w[p] · u2[p, r] · m2 · h[p, f]
//   dB1_e[f, r] += Σ_p s · dg[p, f] · t1[p, r]                dA1_e[r, d] += Σ_p dt1[p, r] · m1 · x[gi, d]
//   dB3_e[f, r] += Σ_p s · du[p, f] · t3[p, r]                dA3_e[r, d] += Σ_p dt3[p, r] · m3 · x[gi, d]
// (p = list[e, c], i = p / S, gi = row0 + i.) The index space is the concatenation, in this order, of the
// targeted tensors' elements for all experts: [B2, A2] (down), [B1, A1] (gate), [B3, A3] (up); element k of a
// segment is the flat layout's element k after that tensor's expert-0 offset.
// Bindings:
//   0 dims       uniform  Dims (moe_common.wgsl)
//   1 g          gradients f32, read_write  +=
//   2 list       (E, N)   u32, read
//   3 counts     (E)      u32, read
//   4 dy         (·, D)   f32, read        batch-shaped
//   5 x          (·, D)   f32, read        batch-shaped
//   6 t          (3, N, S, R) f32, read    t1, t3, t2
//   7 dts        (3, N, S, R) f32, read    u2, dt1, dt3
//   8 hs         (3, N, S, F) f32, read    h, dg, du
//   9 w          (N, S)   f32, read
// Grid: 1-D over the segment total, folded into 2-D.
// Reference: src/reference/mixlora.ts mixloraBackward (expert grads)

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read_write> g: array<f32>;
@group(0) @binding(2) var<storage, read> list: array<u32>;
@group(0) @binding(3) var<storage, read> counts: array<u32>;
@group(0) @binding(4) var<storage, read> dy: array<f32>;
@group(0) @binding(5) var<storage, read> x: array<f32>;
@group(0) @binding(6) var<storage, read> t: array<f32>;
@group(0) @binding(7) var<storage, read> dts: array<f32>;
@group(0) @binding(8) var<storage, read> hs: array<f32>;
@group(0) @binding(9) var<storage, read> w: array<f32>;

// dB (rows × R per expert): Σ_p s · coef[p] · rowv[p, row] · tr[p, r]. kind 0: down (w·dy, t2); 1 gate (dg, t1); 2 up (du, t3)
fn grad_b(kind: u32, k: u32, rows: u32) -> f32 {
  let per = rows * dims.R;
  let e = k / per;
  let row = (k % per) / dims.R;
  let r = k % dims.R;
  let nsr = dims.N * dims.S * dims.R;
  let nsf = dims.N * dims.S * dims.F;
  var acc = 0.0;
  for (var c = 0u; c < counts[e]; c++) {
    let pr = list[e * dims.N + c];
    if (kind == 0u) {
      let gi = dims.row0 + pr / dims.S;
      acc += w[pr] * dy[gi * dims.D + row] * t[2u * nsr + pr * dims.R + r];
    } else if (kind == 1u) {
      acc += hs[nsf + pr * dims.F + row] * t[pr * dims.R + r];
    } else {
      acc += hs[2u * nsf + pr * dims.F + row] * t[nsr + pr * dims.R + r];
    }
  }
  return dims.scale * acc;
}

// dA (R × cols per expert): Σ_p dt[p, r] · m · in[p, col]. kind 0: down (w·u2, h, m2); 1 gate (dt1, x, m1); 2 up (dt3, x, m3)
fn grad_a(kind: u32, k: u32, cols: u32) -> f32 {
  let per = dims.R * cols;
  let e = k / per;
  let r = (k % per) / cols;
  let col = k % cols;
  let nsr = dims.N * dims.S * dims.R;
  var acc = 0.0;
  for (var c = 0u; c < counts[e]; c++) {
    let pr = list[e * dims.N + c];
    let gi = dims.row0 + pr / dims.S;
    if (kind == 0u) {
      acc += w[pr] * dts[pr * dims.R + r] * (hs[pr * dims.F + col] * expert_mult(e, 2u, gi, col));
    } else {
      acc += dts[kind * nsr + pr * dims.R + r] * (x[gi * dims.D + col] * expert_mult(e, kind - 1u, gi, col));
    }
  }
  return acc;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>) {
  var k = flat_index(wid, nwg, lid);
  let E = dims.E;
  let nB2 = E * dims.D * dims.R;
  let nIn = E * dims.R * dims.D;
  let nOut = E * dims.F * dims.R;
  if (has_down()) {
    if (k < nB2) {
      g[dims.b2 + k] += grad_b(0u, k, dims.D);
      return;
    }
    k -= nB2;
    if (k < E * dims.R * dims.F) {
      g[dims.a2 + k] += grad_a(0u, k, dims.F);
      return;
    }
    k -= E * dims.R * dims.F;
  }
  if (has_gate()) {
    if (k < nOut) {
      g[dims.b1 + k] += grad_b(1u, k, dims.F);
      return;
    }
    k -= nOut;
    if (k < nIn) {
      g[dims.a1 + k] += grad_a(1u, k, dims.D);
      return;
    }
    k -= nIn;
  }
  if (has_up()) {
    if (k < nOut) {
      g[dims.b3 + k] += grad_b(2u, k, dims.F);
      return;
    }
    k -= nOut;
    if (k < nIn) {
      g[dims.a3 + k] += grad_a(2u, k, dims.D);
    }
  }
}
