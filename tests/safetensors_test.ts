/**
 * dtype conversions (against Math.f16round and a brute-force bf16 oracle) and the strict safetensors
 * reader / atomic writer: golden bytes of the reference writer, round trips of every dtype, every malformed
 * header case, reading without loading the file, and atomic writes that fail before, during and after writing.
 */
import assert from "node:assert/strict"
import { join } from "node:path"
import { SafetensorsError } from "../src/errors.ts"
import {
  bf16BitsToF32,
  bf16ToF32Array,
  type DType,
  DTYPE_SIZES,
  f16BitsToF32,
  f32ToBf16Array,
  f32ToBf16Bits,
  f32ToF16Bits,
  toF32,
} from "../src/io/dtype.ts"
import { openSafetensors, type TensorToWrite, writeSafetensors } from "../src/io/safetensors.ts"

/** Deterministic PRNG (mulberry32) so failures reproduce. */
function rng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed)
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

function randomBytes(n: number, seed: number): Uint8Array {
  const r = rng(seed)
  return Uint8Array.from({ length: n }, () => Math.floor(r() * 256))
}

const f32 = new Float32Array(1)
const u32 = new Uint32Array(f32.buffer)
function fromBits(bits: number): number {
  u32[0] = bits
  return f32[0]
}

Deno.test("dtype: F16 widening is exact and narrowing round-trips all 65536 patterns", () => {
  for (let h = 0; h < 65536; h++) {
    const v = f16BitsToF32(h)
    if (Number.isNaN(v)) {
      assert.ok(Number.isNaN(f16BitsToF32(f32ToF16Bits(v))))
      continue
    }
    assert.ok(Object.is(v, Math.f16round(v)), `pattern ${h.toString(16)} → ${v} is not an f16 value`)
    assert.equal(f32ToF16Bits(v), h, `pattern ${h.toString(16)}`)
  }
})

Deno.test("dtype: F32 → F16 matches Math.f16round on 300k random f32 bit patterns", () => {
  const r = rng(1)
  for (let i = 0; i < 300_000; i++) {
    // Bias exponents towards the F16 range so subnormals, ties and overflow are all hit.
    const bits = i % 2
      ? Math.floor(r() * 2 ** 32)
      : (Math.floor(r() * 2) << 31) | ((100 + Math.floor(r() * 50)) << 23) |
        Math.floor(r() * 2 ** 23)
    const x = fromBits(bits >>> 0)
    const got = f16BitsToF32(f32ToF16Bits(x))
    if (Number.isNaN(x)) assert.ok(Number.isNaN(got))
    else assert.ok(Object.is(got, Math.f16round(x)), `x=${x} got ${got} want ${Math.f16round(x)}`)
  }
})

Deno.test("dtype: F16 ties to even, overflow, subnormals, Inf, NaN, signed zero", () => {
  const h = (x: number) => f16BitsToF32(f32ToF16Bits(x))
  assert.equal(h(1 + 2 ** -11), 1) // halfway between 1 and 1 + 2^-10: even is 1
  assert.equal(h(1 + 3 * 2 ** -11), 1 + 2 ** -9) // halfway, odd below → up
  assert.equal(h(65504), 65504)
  assert.equal(h(65519.99), 65504)
  assert.equal(h(65520), Infinity) // halfway to 65536 rounds to even → overflow
  assert.equal(h(2 ** -25), 0) // halfway between 0 and the smallest subnormal 2^-24
  assert.equal(h(3 * 2 ** -25), 2 ** -23) // halfway between 1 and 2 subnormal ulps → 2
  assert.equal(h(2 ** -25 + 2 ** -40), 2 ** -24)
  assert.equal(h(-Infinity), -Infinity)
  assert.ok(Object.is(h(-0), -0))
  assert.ok(Number.isNaN(h(NaN)))
  assert.ok(Number.isNaN(f16BitsToF32(f32ToF16Bits(fromBits(0x7f800001))))) // payload only in low bits
})

Deno.test("dtype: F32 → BF16 is round-to-nearest-even (brute-force oracle), Inf/NaN preserved", () => {
  const r = rng(2)
  const src = new Float32Array(100_000)
  const bits = new Uint32Array(src.buffer)
  for (let i = 0; i < src.length; i++) bits[i] = Math.floor(r() * 2 ** 32)
  bits[0] = 0x3f808000 // 1 + 2^-8: tie → 1
  bits[1] = 0x3f818000 // 1 + 3·2^-8: tie → 1 + 2^-6
  bits[2] = 0x7f7fffff // max f32 → Inf
  const out = f32ToBf16Array(src)
  for (let i = 0; i < src.length; i++) {
    const x = src[i]
    assert.equal(out[i], f32ToBf16Bits(x))
    if (Number.isNaN(x)) {
      assert.ok(Number.isNaN(bf16BitsToF32(out[i])), `NaN ${bits[i].toString(16)} lost`)
      continue
    }
    const lo = bits[i] >>> 16 // truncation: toward zero
    const a = bf16BitsToF32(lo)
    // Next away from zero; past the largest finite bf16 it is Inf, which IEEE rounding treats as ±2^128.
    const next = bf16BitsToF32(lo + 1)
    const b = Number.isFinite(next) ? next : Math.sign(next) * 2 ** 128
    const da = Math.abs(x - a)
    const db = Math.abs(b - x)
    const want = da < db ? lo : db < da ? lo + 1 : lo % 2 === 0 ? lo : lo + 1
    assert.equal(out[i], want & 0xffff, `x=${x}`)
  }
  assert.deepEqual(Array.from(bf16ToF32Array(out.subarray(0, 3))), [1, 1 + 2 ** -6, Infinity])
  assert.equal(bf16BitsToF32(f32ToBf16Bits(-Infinity)), -Infinity)
  assert.ok(Number.isNaN(bf16BitsToF32(f32ToBf16Bits(fromBits(0x7f800001)))))
})

Deno.test("dtype: toF32 reads little-endian bytes at any offset and refuses integer dtypes", () => {
  const values = new Float32Array([1.5, -2, 3.25])
  const bytes = new Uint8Array(13)
  bytes.set(new Uint8Array(values.buffer), 1) // offset 1: not aligned
  assert.deepEqual(toF32("F32", bytes.subarray(1)), values)
  const halves = new Uint8Array(7)
  halves.set(new Uint8Array(f32ToBf16Array(values).buffer), 1)
  assert.deepEqual(toF32("BF16", halves.subarray(1)), values)
  assert.throws(() => toF32("I32", new Uint8Array(4)), RangeError)
  assert.throws(() => toF32("F16", new Uint8Array(3)), RangeError)
})

/** Files under `dir` this process holds open (Linux /proc; Deno's sanitizer does not report leaked files). */
function openFilesUnder(dir: string): string[] {
  const out: string[] = []
  for (const fd of Deno.readDirSync("/proc/self/fd")) {
    try {
      const target = Deno.readLinkSync(`/proc/self/fd/${fd.name}`)
      if (target.startsWith(dir)) out.push(target)
    } catch { /* the descriptor of the directory listing itself is gone by now */ }
  }
  return out
}

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "safetensors_test_" })
  try {
    await fn(dir)
  } finally {
    await Deno.remove(dir, { recursive: true })
  }
}

const text = (s: string) => new TextEncoder().encode(s)
function u64(n: number | bigint): Uint8Array {
  const b = new Uint8Array(8)
  new DataView(b.buffer).setBigUint64(0, BigInt(n), true)
  return b
}
function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0))
  let o = 0
  for (const p of parts) out.set(p, (o += p.length) - p.length)
  return out
}

Deno.test("safetensors: writer output equals the reference implementation's bytes", async () => {
  await withDir(async (dir) => {
    const p = join(dir, "a.safetensors")
    const values = new Float32Array([0, 1, 2, 3, 4, 5])
    // The reference's test vectors: a 64-byte header needs no padding, a 57-byte one gets 7 spaces.
    await writeSafetensors(p, { "attn.0": { dtype: "F32", shape: [1, 2, 3], data: values } })
    const h1 = `{"attn.0":{"dtype":"F32","shape":[1,2,3],"data_offsets":[0,24]}}`
    assert.equal(h1.length, 64)
    assert.deepEqual(await Deno.readFile(p), concat(u64(64), text(h1), new Uint8Array(values.buffer)))
    await writeSafetensors(p, { attn0: { dtype: "F32", shape: [1, 1, 2, 3], data: values } })
    const h2 = `{"attn0":{"dtype":"F32","shape":[1,1,2,3],"data_offsets":[0,24]}}`
    assert.deepEqual(
      await Deno.readFile(p),
      concat(u64(72), text(h2 + " ".repeat(72 - h2.length)), new Uint8Array(values.buffer)),
    )
    await writeSafetensors(p, [], { framework: "pt" })
    assert.deepEqual(await Deno.readFile(p), concat(u64(40), text(`{"__metadata__":{"framework":"pt"}}     `)))
    await writeSafetensors(p, [])
    assert.deepEqual(await Deno.readFile(p), concat(u64(8), text("{}      ")))
  })
})

/** One tensor of every dtype, plus a scalar and an empty tensor, with random contents. */
function everyDtype(): TensorToWrite[] {
  const r = rng(3)
  const raw = (n: number) => randomBytes(n, Math.floor(r() * 1e9))
  return [
    { name: "u8", dtype: "U8", shape: [3, 5], data: raw(15) },
    { name: "f32", dtype: "F32", shape: [2, 3], data: new Float32Array(raw(24).buffer) }, // random bits, NaNs too
    { name: "i8", dtype: "I8", shape: [7], data: new Int8Array(raw(7).buffer) },
    { name: "f16", dtype: "F16", shape: [5], data: new Uint16Array(raw(10).buffer) },
    { name: "bf16", dtype: "BF16", shape: [1, 3], data: new Uint16Array(raw(6).buffer) },
    { name: "i32", dtype: "I32", shape: [3], data: new Int32Array(raw(12).buffer) },
    { name: "i64", dtype: "I64", shape: [2, 1], data: new BigInt64Array(raw(16).buffer) },
    { name: "scalar", dtype: "F32", shape: [], data: new Float32Array([7.5]) },
    { name: "empty", dtype: "F16", shape: [0, 4], data: new Uint16Array(0) },
    { name: "0", dtype: "U8", shape: [1], data: new Uint8Array([9]) }, // integer-like name keeps its place
  ]
}

const bytesOf = (d: ArrayBufferView) => new Uint8Array(d.buffer, d.byteOffset, d.byteLength)

Deno.test("safetensors: every dtype round-trips byte-identically, aligned, in reference order", async () => {
  await withDir(async (dir) => {
    const p = join(dir, "all.safetensors")
    const tensors = everyDtype()
    await writeSafetensors(p, tensors, { format: "pt", b: "x" })
    using f = await openSafetensors(p)
    assert.deepEqual(f.metadata, { format: "pt", b: "x" })
    assert.deepEqual([...f.tensors.keys()], ["i64", "f32", "scalar", "i32", "bf16", "empty", "f16", "i8", "0", "u8"])
    for (const t of tensors) {
      const info = f.tensors.get(t.name)!
      assert.equal(info.dtype, t.dtype)
      assert.deepEqual(info.shape, t.shape)
      assert.equal(info.begin % DTYPE_SIZES[t.dtype], 0, `${t.name} is not aligned`)
      assert.deepEqual(await f.readRaw(t.name), bytesOf(t.data), t.name)
    }
    // Writing back what was read reproduces the file exactly.
    const again = join(dir, "again.safetensors")
    const reread = await Promise.all(
      [...f.tensors].map(async ([name, i]) => ({ name, dtype: i.dtype, shape: i.shape, data: await f.readRaw(name) })),
    )
    await writeSafetensors(again, reread, f.metadata)
    assert.deepEqual(await Deno.readFile(again), await Deno.readFile(p))
    // Float dtypes convert to f32; others refuse.
    assert.deepEqual(await f.readF32("f16"), toF32("F16", bytesOf(tensors[3].data)))
    assert.deepEqual(await f.readF32("bf16"), toF32("BF16", bytesOf(tensors[4].data)))
    assert.deepEqual(await f.readF32("scalar"), new Float32Array([7.5]))
    await assert.rejects(f.readF32("i32"), (e) => e instanceof SafetensorsError && e.tensor === "i32")
    await assert.rejects(f.readRaw("nope"), (e) => e instanceof SafetensorsError && e.tensor === "nope")
  })
})

Deno.test("safetensors: Float32Array is narrowed to F16 / BF16 on write", async () => {
  await withDir(async (dir) => {
    const p = join(dir, "n.safetensors")
    const v = new Float32Array([1, 1 + 2 ** -11, -3.140625, 65520])
    await writeSafetensors(p, [
      { name: "h", dtype: "F16", shape: [4], data: v },
      { name: "b", dtype: "BF16", shape: [2, 2], data: v },
    ])
    using f = await openSafetensors(p)
    assert.deepEqual(await f.readF32("h"), new Float32Array([1, 1, -3.140625, Infinity]))
    assert.deepEqual(await f.readF32("b"), new Float32Array([1, 1, -3.140625, 65536]))
  })
})

/** A file with a hand-made header (string or object) and `dataLength` data bytes. */
async function craft(path: string, header: string | object, dataLength: number, declared?: number | bigint) {
  const h = text(typeof header === "string" ? header : JSON.stringify(header))
  await Deno.writeFile(path, concat(u64(declared ?? h.length), h, new Uint8Array(dataLength)))
}

function rejectsWith(path: string, tensor: string, reason: RegExp) {
  return (e: unknown) => {
    assert.ok(e instanceof SafetensorsError, `not a SafetensorsError: ${e}`)
    assert.equal(e.file, path)
    assert.equal(e.tensor, tensor)
    assert.match(e.reason, reason)
    assert.ok(e.message.includes(path) && e.message.includes(tensor), e.message)
    return true
  }
}

Deno.test("safetensors: each malformed file is refused naming the file and the tensor", async () => {
  await withDir(async (dir) => {
    const p = join(dir, "bad.safetensors")
    const F32x2 = { dtype: "F32", shape: [2], data_offsets: [0, 8] }
    const cases: [string, () => Promise<void>, string, RegExp][] = [
      ["truncated", () => Deno.writeFile(p, new Uint8Array(5)), "", /truncated/],
      ["length past end", () => craft(p, "{}", 0, 1000), "", /past the end of the file/],
      ["length over 100 MB", () => craft(p, "{}", 0, 100_000_001), "", /100 MB/],
      ["length 100 MB exactly is allowed but past end", () => craft(p, "{}", 0, 100_000_000), "", /past the end/],
      ["length ≥ 2^63", () => craft(p, "{}", 0, 2n ** 64n - 1n), "", /100 MB/],
      ["invalid JSON", () => craft(p, `{"a":{"dtype":`, 0), "", /not valid JSON/],
      ["invalid UTF-8", () => Deno.writeFile(p, concat(u64(1), new Uint8Array([0xff]))), "", /UTF-8/],
      ["not an object", () => craft(p, "[1,2]", 0), "", /not a JSON object/],
      ["metadata not strings", () => craft(p, { __metadata__: { a: 1 } }, 0), "", /__metadata__/],
      ["unknown dtype", () => craft(p, { w: { ...F32x2, dtype: "F8_E4M3" } }, 8), "w", /unknown dtype "F8_E4M3"/],
      ["missing field", () => craft(p, { w: { dtype: "F32", shape: [2] } }, 8), "w", /data_offsets/],
      ["negative shape", () => craft(p, { w: { ...F32x2, shape: [-2] } }, 8), "w", /shape/],
      ["fractional shape", () => craft(p, { w: { ...F32x2, shape: [1.5] } }, 8), "w", /shape/],
      ["offsets reversed", () => craft(p, { w: { ...F32x2, data_offsets: [8, 0] } }, 8), "w", /end before/],
      ["offsets not a pair", () => craft(p, { w: { ...F32x2, data_offsets: [0] } }, 8), "w", /pair/],
      [
        "offsets out of range",
        () => craft(p, { w: { ...F32x2, data_offsets: [8, 16] } }, 8),
        "w",
        /past the end of the data/,
      ],
      ["size ≠ shape × dtype", () => craft(p, { w: { ...F32x2, shape: [3] } }, 8), "w", /needs 12/],
      [
        "overlap",
        () => craft(p, { a: F32x2, b: { ...F32x2, data_offsets: [4, 12] } }, 12),
        "b",
        /overlap tensor "a"/,
      ],
      ["gap", () => craft(p, { a: F32x2, b: { ...F32x2, data_offsets: [12, 20] } }, 20), "b", /gap/],
      ["trailing bytes", () => craft(p, { a: F32x2 }, 12), "", /4 trailing bytes/],
    ]
    for (const [label, make, tensor, reason] of cases) {
      await make()
      await assert.rejects(openSafetensors(p), rejectsWith(p, tensor, reason), label)
      assert.deepEqual(openFilesUnder(dir), [], `${label}: the refused file was left open`)
    }
    await assert.rejects(
      openSafetensors(join(dir, "missing.safetensors")),
      rejectsWith(join(dir, "missing.safetensors"), "", /cannot open/),
    )
  })
})

Deno.test("safetensors: opening reads only the header (3 GB sparse file)", async () => {
  await withDir(async (dir) => {
    const p = join(dir, "big.safetensors")
    const big = 3_000_000_000
    const header = text(JSON.stringify({
      big: { dtype: "U8", shape: [big], data_offsets: [0, big] },
      small: { dtype: "F32", shape: [2], data_offsets: [big, big + 8] },
    }))
    {
      using file = await Deno.open(p, { write: true, create: true })
      await file.write(concat(u64(header.length), header))
      await file.seek(8 + header.length + big, Deno.SeekMode.Start)
      await file.write(new Uint8Array(new Float32Array([1.25, -8]).buffer)) // the gap before stays sparse
    }
    const rss = Deno.memoryUsage().rss
    using f = await openSafetensors(p)
    assert.deepEqual(await f.readF32("small"), new Float32Array([1.25, -8]))
    assert.ok(Deno.memoryUsage().rss - rss < 200e6, "the reader loaded more than the header")
  })
})

Deno.test("safetensors: a refused write leaves the existing file untouched and no temporary file", async () => {
  await withDir(async (dir) => {
    const p = join(dir, "keep.safetensors")
    await writeSafetensors(p, { a: { dtype: "F32", shape: [2], data: new Float32Array([1, 2]) } })
    const before = await Deno.readFile(p)
    const bad: [TensorToWrite[], string, RegExp][] = [
      [[{ name: "a", dtype: "F32", shape: [3], data: new Float32Array(2) }], "a", /needs 12/],
      [[{ name: "x", dtype: "Q8" as DType, shape: [1], data: new Uint8Array(1) }], "x", /unknown dtype/],
      [[{ name: "i", dtype: "I32", shape: [1], data: new Float32Array(1) }], "i", /cannot be written as I32/],
      [
        [{ name: "d", dtype: "U8", shape: [1], data: new Uint8Array(1) }, {
          name: "d",
          dtype: "U8",
          shape: [1],
          data: new Uint8Array(1),
        }],
        "d",
        /duplicate/,
      ],
    ]
    for (const [tensors, tensor, reason] of bad) {
      await assert.rejects(writeSafetensors(p, tensors), rejectsWith(p, tensor, reason))
    }
    assert.deepEqual(await Deno.readFile(p), before)
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["keep.safetensors"])
  })
})

Deno.test("safetensors: a write that fails after the data is written (rename) removes the temporary file", async () => {
  await withDir(async (dir) => {
    const target = join(dir, "occupied")
    await Deno.mkdir(target)
    await Deno.writeTextFile(join(target, "inside"), "x") // rename cannot replace a non-empty directory
    await assert.rejects(
      writeSafetensors(target, { a: { dtype: "U8", shape: [1], data: new Uint8Array([1]) } }),
      rejectsWith(target, "", /write failed/),
    )
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["occupied"])
    assert.equal(await Deno.readTextFile(join(target, "inside")), "x")
  })
})

Deno.test("safetensors: a write that fails midway (file size limit) keeps the old file and removes the temporary", async () => {
  await withDir(async (dir) => {
    const p = join(dir, "out.safetensors")
    await Deno.writeTextFile(p, "old contents")
    const script = join(dir, "write.ts")
    const module = new URL("../src/io/safetensors.ts", import.meta.url).href
    await Deno.writeTextFile(
      script,
      `import { writeSafetensors } from ${JSON.stringify(module)}
try {
  await writeSafetensors(${
        JSON.stringify(p)
      }, [{ name: "big", dtype: "F32", shape: [262144], data: new Float32Array(262144) }])
  console.log("written")
} catch (e) { console.log(JSON.stringify({ tensor: e.tensor, reason: e.reason })) }`,
    )
    // RLIMIT_FSIZE of 64 KiB makes the 1 MiB write fail with EFBIG; SIGXFSZ is ignored so the process survives.
    const config = new URL("../deno.json", import.meta.url).pathname
    const out = await new Deno.Command("bash", {
      args: ["-c", `trap '' XFSZ; ulimit -f 64; exec "$0" run -A --config "$1" "$2"`, Deno.execPath(), config, script],
      stdout: "piped",
      stderr: "piped",
    }).output()
    const stdout = new TextDecoder().decode(out.stdout).trim()
    assert.ok(out.success, new TextDecoder().decode(out.stderr))
    const { tensor, reason } = JSON.parse(stdout)
    assert.equal(tensor, "big")
    assert.match(reason, /write failed.*(too large|os error 27)/i)
    assert.equal(await Deno.readTextFile(p), "old contents")
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name).sort(), ["out.safetensors", "write.ts"])
  })
})
