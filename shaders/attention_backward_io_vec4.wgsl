// Prelude of attention_backward.wgsl for Dh % 4 == 0 (chosen by src/kernels/attention.ts; the other is
// attention_backward_io_scalar.wgsl): the head-row tensors bound as vec4 arrays, so a group of 4 elements of a
// head row is ONE load or store (on lavapipe every storage access is a per-lane loop whatever its width: 4× fewer
// memory instructions than four f32 accesses). Head rows start at element o = (token · heads + head) · Dh, a
// multiple of 4 here, so group d of the row is vec4 o / 4 + d.
// Entries dq_main / dkdv:                          entry delta:
//   1 q     (N, H, Dh)   vec4, read                  2 d_dout  (N, H, Dh)  vec4, read
//   2 k     (N, KV, Dh)  vec4, read                  3 d_out   (N, H, Dh)  vec4, read
//   3 v     (N, KV, Dh)  vec4, read
//   4 dout  (N, H, Dh)   vec4, read
//   7 dq    (N, H, Dh)   vec4, read_write (dq_main)
//   7 dk, 8 dv (N, KV, Dh) vec4, read_write (dkdv)

@group(0) @binding(1) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> k: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> v: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> dout: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> dq: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> dk: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> dv: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> d_dout: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> d_out: array<vec4<f32>>;

fn ld_do(o: u32, d: u32) -> vec4<f32> {
  return dout[(o >> 2u) + d];
}

fn ld_delta_do(o: u32, d: u32) -> vec4<f32> {
  return d_dout[(o >> 2u) + d];
}

fn ld_delta_out(o: u32, d: u32) -> vec4<f32> {
  return d_out[(o >> 2u) + d];
}

// accumulator rows: x is stored (acc = false) or added (acc = true)
fn acc_dq(o: u32, d: u32, x: vec4<f32>, acc: bool) {
  let e = (o >> 2u) + d;
  var y = x;
  if (acc) {
    y += dq[e];
  }
  dq[e] = y;
}

fn acc_dk(o: u32, d: u32, x: vec4<f32>, acc: bool) {
  let e = (o >> 2u) + d;
  var y = x;
  if (acc) {
    y += dk[e];
  }
  dk[e] = y;
}

fn acc_dv(o: u32, d: u32, x: vec4<f32>, acc: bool) {
  let e = (o >> 2u) + d;
  var y = x;
  if (acc) {
    y += dv[e];
  }
  dv[e] = y;
}
