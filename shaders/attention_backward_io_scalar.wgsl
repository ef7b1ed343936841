// Prelude of attention_backward.wgsl for Dh % 4 != 0 (chosen by src/kernels/attention.ts; the other is
// attention_backward_io_vec4.wgsl): the head-row tensors bound as f32 arrays and accessed in groups of 4
// (D4 = ceil(Dh / 4) groups per head row starting at element o); the last group of a row is masked: elements past
// Dh read as 0 and are never stored (they belong to the next head).
// Entries dq_main / dkdv:                          entry delta:
//   1 q     (N, H, Dh)   f32, read                   2 d_dout  (N, H, Dh)  f32, read
//   2 k     (N, KV, Dh)  f32, read                   3 d_out   (N, H, Dh)  f32, read
//   3 v     (N, KV, Dh)  f32, read
//   4 dout  (N, H, Dh)   f32, read
//   7 dq    (N, H, Dh)   f32, read_write (dq_main)
//   7 dk, 8 dv (N, KV, Dh) f32, read_write (dkdv)

@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read> dout: array<f32>;
@group(0) @binding(7) var<storage, read_write> dq: array<f32>;
@group(0) @binding(7) var<storage, read_write> dk: array<f32>;
@group(0) @binding(8) var<storage, read_write> dv: array<f32>;
@group(0) @binding(2) var<storage, read> d_dout: array<f32>;
@group(0) @binding(3) var<storage, read> d_out: array<f32>;

fn ld_do(o: u32, d: u32) -> vec4<f32> {
  let e = o + 4u * d;
  return mask(d, vec4<f32>(dout[e], dout[e + 1u], dout[e + 2u], dout[e + 3u]));
}

fn ld_delta_do(o: u32, d: u32) -> vec4<f32> {
  let e = o + 4u * d;
  return mask(d, vec4<f32>(d_dout[e], d_dout[e + 1u], d_dout[e + 2u], d_dout[e + 3u]));
}

fn ld_delta_out(o: u32, d: u32) -> vec4<f32> {
  let e = o + 4u * d;
  return mask(d, vec4<f32>(d_out[e], d_out[e + 1u], d_out[e + 2u], d_out[e + 3u]));
}

// accumulator rows: x is stored (acc = false) or added (acc = true); the masked tail is neither read nor written
fn acc_dq(o: u32, d: u32, x: vec4<f32>, acc: bool) {
  let e = o + 4u * d;
  let m = in_head(d);
  var y = x;
  if (acc) {
    y += mask(d, vec4<f32>(dq[e], dq[e + 1u], dq[e + 2u], dq[e + 3u]));
  }
  dq[e] = y.x;
  if (m.y) { dq[e + 1u] = y.y; }
  if (m.z) { dq[e + 2u] = y.z; }
  if (m.w) { dq[e + 3u] = y.w; }
}

fn acc_dk(o: u32, d: u32, x: vec4<f32>, acc: bool) {
  let e = o + 4u * d;
  let m = in_head(d);
  var y = x;
  if (acc) {
    y += mask(d, vec4<f32>(dk[e], dk[e + 1u], dk[e + 2u], dk[e + 3u]));
  }
  dk[e] = y.x;
  if (m.y) { dk[e + 1u] = y.y; }
  if (m.z) { dk[e + 2u] = y.z; }
  if (m.w) { dk[e + 3u] = y.w; }
}

fn acc_dv(o: u32, d: u32, x: vec4<f32>, acc: bool) {
  let e = o + 4u * d;
  let m = in_head(d);
  var y = x;
  if (acc) {
    y += mask(d, vec4<f32>(dv[e], dv[e + 1u], dv[e + 2u], dv[e + 3u]));
  }
  dv[e] = y.x;
  if (m.y) { dv[e + 1u] = y.y; }
  if (m.z) { dv[e + 2u] = y.z; }
  if (m.w) { dv[e + 3u] = y.w; }
}
