/**
 * Element types of safetensors files and conversions between the float formats.
 *
 * Bit layouts (sign | exponent | mantissa):
 * - F32  1 | 8 | 23, bias 127
 * - F16  1 | 5 | 10, bias 15 (max finite 65504, smallest subnormal 2^-24)
 * - BF16 1 | 8 | 7 — the top 16 bits of an F32
 *
 * Narrowing (F32 → F16 / BF16) rounds to nearest, ties to even (what torch `.to(torch.float16 / bfloat16)`
 * does); overflow gives ±Inf, Inf stays Inf, NaN stays NaN (quiet). Widening is exact.
 * All multi-byte data is little-endian, as safetensors requires.
 * @module
 */

/** The dtypes this runtime reads and writes. */
export type DType = "F32" | "F16" | "BF16" | "I8" | "I32" | "I64" | "U8"

/** Bytes per element. */
export const DTYPE_SIZES: Readonly<Record<DType, number>> = { F32: 4, F16: 2, BF16: 2, I8: 1, I32: 4, I64: 8, U8: 1 }

/**
 * Rank of each dtype in the reference implementation's `Dtype` enum (U8 < I8 < F16 < BF16 < I32 < F32 < I64).
 * The python/Rust writer lays tensors out by descending rank, then by name, which keeps every tensor aligned.
 */
export const DTYPE_RANK: Readonly<Record<DType, number>> = { U8: 0, I8: 1, F16: 2, BF16: 3, I32: 4, F32: 5, I64: 6 }

/** True when `s` names a supported dtype. */
export function isDType(s: unknown): s is DType {
  return typeof s === "string" && Object.hasOwn(DTYPE_SIZES, s)
}

/** True for the dtypes `toF32` converts (F32, F16, BF16). */
export function isFloatDType(d: DType): d is "F32" | "F16" | "BF16" {
  return d === "F32" || d === "F16" || d === "BF16"
}

/** Bytes per element of `d`. */
export function dtypeSize(d: DType): number {
  return DTYPE_SIZES[d]
}

/** Typed-array views assume the host is little-endian, like every platform Deno ships for. */
const HOST_LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1

const scratchF32 = new Float32Array(1)
const scratchU32 = new Uint32Array(scratchF32.buffer)

/** The IEEE bits of `x` rounded to f32. */
function f32Bits(x: number): number {
  scratchF32[0] = x
  return scratchU32[0]
}

/** F16 bits → f32 value (exact). */
export function f16BitsToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1
  const exp = (h >>> 10) & 0x1f
  const man = h & 0x3ff
  if (exp === 0) return sign * man * 2 ** -24 // zero or subnormal: man · 2^-24
  if (exp === 0x1f) return man === 0 ? sign * Infinity : NaN
  return sign * (1024 + man) * 2 ** (exp - 25) // (1 + man/2^10) · 2^(exp-15)
}

/**
 * f32 value → F16 bits, round to nearest even. `x` is first rounded to f32 (the input is meant to be an f32).
 * Same algorithm as numpy's `npy_floatbits_to_halfbits` with ties-to-even.
 */
export function f32ToF16Bits(x: number): number {
  const f = f32Bits(x)
  const sign = (f >>> 16) & 0x8000
  const fexp = f & 0x7f800000
  const fman = f & 0x007fffff
  if (fexp >= 0x47800000) {
    // |x| ≥ 2^16, Inf or NaN. NaN keeps its top mantissa bits and at least one set bit (else it would read as Inf).
    if (fexp === 0x7f800000 && fman !== 0) return sign | 0x7c00 | (fman >>> 13) | 0x200
    return sign | 0x7c00
  }
  if (fexp <= 0x38000000) {
    // |x| ≤ 2^-14: the result is an F16 subnormal or zero. Below 2^-25 it rounds to (signed) zero.
    if (fexp < 0x33000000) return sign
    const e = fexp >>> 23 // 102..112
    let m = (0x00800000 + fman) >>> (113 - e) // mantissa with the implicit bit, aligned so that >>13 gives F16 bits
    // Round half to even: add half an ulp unless the kept part is even and the dropped part is exactly one half
    // (the bits lost by the shift above are checked in the original mantissa).
    if ((m & 0x3fff) !== 0x1000 || (fman & ((1 << (113 - e)) - 1)) !== 0) m += 0x1000
    return sign | (m >>> 13) // a carry into bit 10 correctly yields the smallest normal
  }
  const hexp = (fexp - 0x38000000) >>> 13 // rebias 127 → 15, already shifted into place
  let m = fman
  if ((m & 0x3fff) !== 0x1000) m += 0x1000
  // A mantissa carry increments the exponent; reaching 0x7c00 is the correct overflow to Inf.
  return sign | (hexp + (m >>> 13))
}

/** BF16 bits → f32 value (exact: BF16 is the upper half of an F32). */
export function bf16BitsToF32(h: number): number {
  scratchU32[0] = (h & 0xffff) << 16
  return scratchF32[0]
}

/** f32 value → BF16 bits, round to nearest even; NaN stays a quiet NaN with its sign. */
export function f32ToBf16Bits(x: number): number {
  return bf16FromBits(f32Bits(x))
}

function bf16FromBits(f: number): number {
  if ((f & 0x7fffffff) > 0x7f800000) return (f >>> 16) | 0x0040
  // Adding 0x7fff plus the lowest kept bit rounds half to even; a carry into the exponent gives Inf correctly.
  return ((f + 0x7fff + ((f >>> 16) & 1)) >>> 16) & 0xffff
}

let f16Table: Float32Array | undefined

/** All 65536 F16 values as f32, built on first use (256 KiB). */
function f16ToF32Table(): Float32Array {
  if (!f16Table) {
    f16Table = new Float32Array(65536)
    for (let h = 0; h < 65536; h++) f16Table[h] = f16BitsToF32(h)
  }
  return f16Table
}

/** F16 bit patterns → f32 values. */
export function f16ToF32Array(src: Uint16Array): Float32Array<ArrayBuffer> {
  const table = f16ToF32Table()
  const out = new Float32Array(src.length)
  for (let i = 0; i < src.length; i++) out[i] = table[src[i]]
  return out
}

/** f32 values → F16 bit patterns (round to nearest even). */
export function f32ToF16Array(src: Float32Array): Uint16Array<ArrayBuffer> {
  const out = new Uint16Array(src.length)
  for (let i = 0; i < src.length; i++) out[i] = f32ToF16Bits(src[i])
  return out
}

/** BF16 bit patterns → f32 values. */
export function bf16ToF32Array(src: Uint16Array): Float32Array<ArrayBuffer> {
  const out = new Float32Array(src.length)
  const bits = new Uint32Array(out.buffer)
  for (let i = 0; i < src.length; i++) bits[i] = src[i] << 16
  return out
}

/** f32 values → BF16 bit patterns (round to nearest even). */
export function f32ToBf16Array(src: Float32Array): Uint16Array<ArrayBuffer> {
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length)
  const out = new Uint16Array(src.length)
  for (let i = 0; i < src.length; i++) out[i] = bf16FromBits(bits[i])
  return out
}

/** A copy of `bytes` in a fresh buffer (offset 0, so every element size is aligned). */
function copied(bytes: Uint8Array): ArrayBuffer {
  return bytes.slice().buffer
}

/**
 * Little-endian F32 / F16 / BF16 bytes → Float32Array.
 * For F32 the result is a view of `bytes` when its offset is 4-aligned (no copy of large tensors), else a copy;
 * F16 / BF16 always produce a new array.
 * Throws RangeError for other dtypes or a byte length that is not a whole number of elements.
 */
export function toF32(dtype: DType, bytes: Uint8Array<ArrayBuffer>): Float32Array<ArrayBuffer>
export function toF32(dtype: DType, bytes: Uint8Array): Float32Array
export function toF32(dtype: DType, bytes: Uint8Array): Float32Array {
  if (!isFloatDType(dtype)) throw new RangeError(`toF32: ${dtype} is not a float dtype`)
  if (!HOST_LITTLE_ENDIAN) throw new RangeError("toF32: typed-array views need a little-endian host")
  const size = DTYPE_SIZES[dtype]
  if (bytes.byteLength % size !== 0) {
    throw new RangeError(`toF32: ${bytes.byteLength} bytes is not a whole number of ${dtype} elements`)
  }
  const n = bytes.byteLength / size
  if (dtype === "F32") {
    return bytes.byteOffset % 4 === 0
      ? new Float32Array(bytes.buffer, bytes.byteOffset, n)
      : new Float32Array(copied(bytes))
  }
  const halves = bytes.byteOffset % 2 === 0
    ? new Uint16Array(bytes.buffer, bytes.byteOffset, n)
    : new Uint16Array(copied(bytes))
  return dtype === "F16" ? f16ToF32Array(halves) : bf16ToF32Array(halves)
}
