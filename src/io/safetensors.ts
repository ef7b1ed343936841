/**
 * Strict safetensors reader and atomic writer (spec §5).
 *
 * Layout: `u64 LE header length N` · `N bytes of UTF-8 JSON` · data section. The JSON maps tensor names to
 * `{dtype, shape, data_offsets: [begin, end]}` (offsets relative to the data section) plus an optional
 * `__metadata__` string → string map.
 *
 * The reader reads only the length and the header when opening; tensors are read one at a time, on demand.
 * It refuses everything the reference Rust implementation refuses (header over 100 MB or past the file end,
 * bad UTF-8 / JSON, unknown dtype, bad shape or offsets, size ≠ shape × dtype size, overlaps, gaps, trailing
 * bytes), with a `SafetensorsError` naming the file and the tensor.
 *
 * The writer produces the same bytes as the python `safetensors` library: tensors laid out by descending
 * dtype size (its `Dtype` enum order) then name, header keys in that order after `__metadata__`, compact JSON
 * padded with spaces to a multiple of 8 bytes. It streams tensor by tensor into a temporary file that is
 * renamed into place, so readers never see a half-written file.
 * @module
 */
import { SafetensorsError } from "../errors.ts"
import {
  type DType,
  DTYPE_RANK,
  DTYPE_SIZES,
  f32ToBf16Array,
  f32ToF16Array,
  isDType,
  isFloatDType,
  toF32,
} from "./dtype.ts"

/** Largest header the reader accepts, like the reference implementation (100 MB). */
export const MAX_HEADER_BYTES = 100_000_000

/** Where one tensor lives. `begin` / `end` are absolute byte offsets in the file. */
export interface SafetensorsTensorInfo {
  readonly dtype: DType
  readonly shape: readonly number[]
  readonly begin: number
  readonly end: number
}

/** An open safetensors file whose header has been validated. */
export interface SafetensorsFile extends Disposable {
  readonly path: string
  readonly metadata: Readonly<Record<string, string>>
  /** In data-offset order, so iterating reads the file front to back. */
  readonly tensors: ReadonlyMap<string, SafetensorsTensorInfo>
  /** The tensor's raw little-endian bytes, read from disk now. */
  readRaw(name: string): Promise<Uint8Array<ArrayBuffer>>
  /** The tensor as f32 (F32, F16 and BF16 only; other dtypes → SafetensorsError). */
  readF32(name: string): Promise<Float32Array<ArrayBuffer>>
  /** Releases the file handle; later reads fail. Idempotent. */
  close(): void
}

function errText(e: unknown): string {
  return e instanceof Error ? e.message : String(e)
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v)
}

function isCount(v: unknown): v is number {
  return Number.isSafeInteger(v) && (v as number) >= 0
}

/** Element count × element size, in BigInt so that absurd shapes cannot overflow silently. */
function byteSize(shape: readonly number[], dtype: DType): bigint {
  return shape.reduce((acc, d) => acc * BigInt(d), 1n) * BigInt(DTYPE_SIZES[dtype])
}

/** Reads exactly `length` bytes at `position`. */
async function readAt(file: Deno.FsFile, position: number, length: number): Promise<Uint8Array<ArrayBuffer>> {
  const out = new Uint8Array(length)
  if (length === 0) return out
  await file.seek(position, Deno.SeekMode.Start)
  let done = 0
  while (done < length) {
    const n = await file.read(out.subarray(done))
    if (n === null) {
      throw new Error(`unexpected end of file at byte ${position + done} (file changed since it was opened?)`)
    }
    done += n
  }
  return out
}

interface ParsedHeader {
  metadata: Record<string, string>
  tensors: Map<string, SafetensorsTensorInfo>
}

/**
 * Validates a decoded header. `dataStart` is 8 + N and `dataLength` the size of the data section;
 * the result has absolute offsets, sorted by position.
 */
function parseHeader(path: string, headerBytes: Uint8Array, dataStart: number, dataLength: number): ParsedHeader {
  const fail = (tensor: string, reason: string) => new SafetensorsError({ file: path, tensor, reason })
  let text: string
  try {
    // ignoreBOM keeps a byte-order mark in the text, so that JSON.parse refuses it like serde does.
    text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(headerBytes)
  } catch {
    throw fail("", "header is not valid UTF-8")
  }
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch (e) {
    throw fail("", `header is not valid JSON (${errText(e)})`)
  }
  if (!isRecord(json)) throw fail("", "header is not a JSON object")

  const metadata: Record<string, string> = {}
  const entries: { name: string; info: SafetensorsTensorInfo; offsets: [number, number] }[] = []
  for (const [name, entry] of Object.entries(json)) {
    if (name === "__metadata__") {
      if (!isRecord(entry)) throw fail("", "__metadata__ is not a JSON object")
      for (const [k, v] of Object.entries(entry)) {
        if (typeof v !== "string") throw fail("", `__metadata__ value of "${k}" is not a string`)
        metadata[k] = v
      }
      continue
    }
    if (!isRecord(entry)) throw fail(name, "entry is not a JSON object")
    if (!("dtype" in entry) || !("shape" in entry) || !("data_offsets" in entry)) {
      throw fail(name, "entry needs dtype, shape and data_offsets")
    }
    const { dtype, shape, data_offsets: offsets } = entry
    if (!isDType(dtype)) throw fail(name, `unknown dtype ${JSON.stringify(dtype)}`)
    if (!Array.isArray(shape) || !shape.every(isCount)) throw fail(name, "shape is not a list of non-negative integers")
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isCount)) {
      throw fail(name, "data_offsets is not a pair of non-negative integers")
    }
    const [begin, end] = offsets as [number, number]
    if (begin > end) throw fail(name, `data_offsets [${begin}, ${end}] end before they begin`)
    if (end > dataLength) {
      throw fail(name, `data_offsets [${begin}, ${end}] run past the end of the data section (${dataLength} bytes)`)
    }
    const need = byteSize(shape, dtype)
    if (BigInt(end - begin) !== need) {
      throw fail(
        name,
        `data_offsets [${begin}, ${end}] hold ${end - begin} bytes but shape [${shape}] of ${dtype} needs ${need}`,
      )
    }
    const info = { dtype, shape: Object.freeze([...shape]), begin: dataStart + begin, end: dataStart + end }
    entries.push({ name, info, offsets: [begin, end] })
  }

  // Tensors must tile the data section exactly: sorted by (begin, end), each starts where the previous ended.
  entries.sort((a, b) => a.offsets[0] - b.offsets[0] || a.offsets[1] - b.offsets[1])
  let covered = 0
  let previous: (typeof entries)[number] | undefined
  for (const e of entries) {
    const [begin, end] = e.offsets
    if (begin < covered && previous) {
      throw fail(
        e.name,
        `data_offsets [${begin}, ${end}] overlap tensor "${previous.name}" [${previous.offsets[0]}, ${
          previous.offsets[1]
        }]`,
      )
    }
    if (begin > covered) throw fail(e.name, `gap: data bytes [${covered}, ${begin}) before it belong to no tensor`)
    covered = end
    previous = e
  }
  if (covered !== dataLength) {
    throw fail("", `data section has ${dataLength - covered} trailing bytes that belong to no tensor`)
  }
  return { metadata, tensors: new Map(entries.map((e) => [e.name, e.info])) }
}

/**
 * Opens `path` and validates its header, reading only the first 8 + N bytes.
 * Every problem (including a missing file) is a `SafetensorsError` naming the file and, where there is one,
 * the tensor. The caller must `close()` the result (or hold it with `using`).
 */
export async function openSafetensors(path: string): Promise<SafetensorsFile> {
  let file: Deno.FsFile
  try {
    file = await Deno.open(path, { read: true })
  } catch (e) {
    throw new SafetensorsError({ file: path, tensor: "", reason: `cannot open (${errText(e)})` })
  }
  try {
    const stat = await file.stat()
    if (!stat.isFile) throw new SafetensorsError({ file: path, tensor: "", reason: "not a regular file" })
    const size = stat.size
    const fail = (reason: string) => new SafetensorsError({ file: path, tensor: "", reason })
    if (size < 8) throw fail(`truncated: ${size} bytes, shorter than the 8-byte header length`)
    const lengthBytes = await readAt(file, 0, 8)
    const n = new DataView(lengthBytes.buffer).getBigUint64(0, true)
    if (n > BigInt(MAX_HEADER_BYTES)) {
      throw fail(`header length ${n} is over the 100 MB limit (${MAX_HEADER_BYTES} bytes)`)
    }
    const headerLength = Number(n)
    if (8 + headerLength > size) {
      throw fail(`header length ${headerLength} runs past the end of the file (${size} bytes)`)
    }
    const header = parseHeader(path, await readAt(file, 8, headerLength), 8 + headerLength, size - 8 - headerLength)
    return new SafetensorsReader(path, file, header)
  } catch (e) {
    file.close()
    if (e instanceof SafetensorsError) throw e
    throw new SafetensorsError({ file: path, tensor: "", reason: `read failed (${errText(e)})` })
  }
}

class SafetensorsReader implements SafetensorsFile {
  readonly metadata: Readonly<Record<string, string>>
  readonly tensors: ReadonlyMap<string, SafetensorsTensorInfo>
  #file: Deno.FsFile | undefined
  /** seek + read pairs must not interleave, so reads run one after another. */
  #queue: Promise<unknown> = Promise.resolve()

  constructor(readonly path: string, file: Deno.FsFile, header: ParsedHeader) {
    this.#file = file
    this.metadata = Object.freeze(header.metadata)
    this.tensors = header.tensors
  }

  #info(name: string): SafetensorsTensorInfo {
    const info = this.tensors.get(name)
    if (!info) throw new SafetensorsError({ file: this.path, tensor: name, reason: "no such tensor in this file" })
    return info
  }

  readRaw(name: string): Promise<Uint8Array<ArrayBuffer>> {
    let info: SafetensorsTensorInfo
    try {
      info = this.#info(name)
    } catch (e) {
      return Promise.reject(e)
    }
    const run = async () => {
      if (!this.#file) throw new SafetensorsError({ file: this.path, tensor: name, reason: "file is closed" })
      try {
        return await readAt(this.#file, info.begin, info.end - info.begin)
      } catch (e) {
        throw new SafetensorsError({ file: this.path, tensor: name, reason: `read failed (${errText(e)})` })
      }
    }
    const result = this.#queue.then(run, run)
    this.#queue = result.catch(() => undefined)
    return result
  }

  async readF32(name: string): Promise<Float32Array<ArrayBuffer>> {
    const { dtype } = this.#info(name)
    if (!isFloatDType(dtype)) {
      throw new SafetensorsError({ file: this.path, tensor: name, reason: `dtype ${dtype} is not F32, F16 or BF16` })
    }
    return toF32(dtype, await this.readRaw(name))
  }

  close(): void {
    this.#file?.close()
    this.#file = undefined
  }

  [Symbol.dispose](): void {
    this.close()
  }
}

/** Tensor data the writer accepts; see `TensorToWrite.data`. */
export type TensorData = Uint8Array | Uint16Array | Float32Array | Int8Array | Int32Array | BigInt64Array

/** One tensor for `writeSafetensors`. */
export interface TensorToWrite {
  readonly name: string
  readonly dtype: DType
  readonly shape: readonly number[]
  /**
   * Uint8Array: raw little-endian bytes of any dtype. Float32Array: F32, or F16 / BF16 (converted, round to
   * nearest even). Uint16Array: F16 / BF16 bit patterns. Int8Array: I8. Int32Array: I32. BigInt64Array: I64.
   */
  readonly data: TensorData
}

/** Which typed arrays may carry which dtype (Uint8Array carries any). */
function accepts(data: TensorData, dtype: DType): boolean {
  if (data instanceof Uint8Array) return true
  if (data instanceof Float32Array) return isFloatDType(dtype)
  if (data instanceof Uint16Array) return dtype === "F16" || dtype === "BF16"
  if (data instanceof Int8Array) return dtype === "I8"
  if (data instanceof Int32Array) return dtype === "I32"
  return data instanceof BigInt64Array && dtype === "I64"
}

/** The little-endian bytes of a validated tensor (a conversion happens only for Float32Array → F16 / BF16). */
function encode(t: TensorToWrite): Uint8Array {
  let data: ArrayBufferView = t.data
  if (t.data instanceof Float32Array && t.dtype === "F16") data = f32ToF16Array(t.data)
  if (t.data instanceof Float32Array && t.dtype === "BF16") data = f32ToBf16Array(t.data)
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
}

const utf8 = new TextEncoder()

/** Byte-wise UTF-8 order, like Rust's `String` ordering used by the reference writer. */
function compareUtf8(a: string, b: string): number {
  const x = utf8.encode(a)
  const y = utf8.encode(b)
  for (let i = 0; i < Math.min(x.length, y.length); i++) if (x[i] !== y[i]) return x[i] - y[i]
  return x.length - y.length
}

async function writeAll(file: Deno.FsFile, bytes: Uint8Array): Promise<void> {
  let done = 0
  while (done < bytes.length) done += await file.write(bytes.subarray(done))
}

/** Validates the tensors and returns them in file order with the header bytes (padded). */
function prepare(
  path: string,
  tensors: readonly TensorToWrite[],
  metadata: Readonly<Record<string, string>> | undefined,
): { ordered: TensorToWrite[]; header: Uint8Array } {
  const seen = new Set<string>()
  for (const t of tensors) {
    const fail = (reason: string) => new SafetensorsError({ file: path, tensor: String(t.name), reason })
    if (typeof t.name !== "string" || t.name === "__metadata__") throw fail("invalid tensor name")
    if (seen.has(t.name)) throw fail("duplicate tensor name")
    seen.add(t.name)
    if (!isDType(t.dtype)) throw fail(`unknown dtype ${JSON.stringify(t.dtype)}`)
    if (!Array.isArray(t.shape) || !t.shape.every(isCount)) throw fail("shape is not a list of non-negative integers")
    if (!accepts(t.data, t.dtype)) throw fail(`a ${t.data?.constructor?.name} cannot be written as ${t.dtype}`)
    const need = byteSize(t.shape, t.dtype)
    const have = t.data instanceof Uint8Array
      ? BigInt(t.data.byteLength)
      : BigInt(t.data.length) * BigInt(DTYPE_SIZES[t.dtype])
    if (have !== need) throw fail(`data has ${have} bytes as ${t.dtype} but shape [${t.shape}] needs ${need}`)
  }
  for (const [k, v] of Object.entries(metadata ?? {})) {
    if (typeof v !== "string") {
      throw new SafetensorsError({ file: path, tensor: "", reason: `metadata "${k}" is not a string` })
    }
  }

  const ordered = [...tensors].sort((a, b) => DTYPE_RANK[b.dtype] - DTYPE_RANK[a.dtype] || compareUtf8(a.name, b.name))
  // JSON text is assembled by hand: a JS object would move integer-like keys ("0", "12") to the front.
  const parts: string[] = []
  if (metadata) {
    const keys = Object.keys(metadata).sort(compareUtf8)
    parts.push(`"__metadata__":{${keys.map((k) => `${JSON.stringify(k)}:${JSON.stringify(metadata[k])}`).join(",")}}`)
  }
  let offset = 0
  for (const t of ordered) {
    const size = Number(byteSize(t.shape, t.dtype))
    const entry = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + size] }
    parts.push(`${JSON.stringify(t.name)}:${JSON.stringify(entry)}`)
    offset += size
  }
  const json = utf8.encode(`{${parts.join(",")}}`)
  const n = Math.ceil(json.length / 8) * 8 // pad with spaces so that the data section starts 8-aligned
  const header = new Uint8Array(8 + n).fill(0x20, 8 + json.length)
  new DataView(header.buffer).setBigUint64(0, BigInt(n), true)
  header.set(json, 8)
  return { ordered, header }
}

/**
 * Writes `tensors` to `path` atomically: everything goes to `path.tmp-<random>`, is synced, then renamed over
 * `path`. On any failure the temporary file is removed, an existing `path` is left as it was, and a
 * `SafetensorsError` names the file and the tensor being written. `metadata` becomes `__metadata__`.
 */
export async function writeSafetensors(
  path: string,
  tensors: readonly TensorToWrite[] | Readonly<Record<string, Omit<TensorToWrite, "name">>>,
  metadata?: Readonly<Record<string, string>>,
): Promise<void> {
  const list = Array.isArray(tensors)
    ? tensors as readonly TensorToWrite[]
    : Object.entries(tensors).map(([name, t]) => ({ name, ...t }))
  const { ordered, header } = prepare(path, list, metadata)
  const suffix = Array.from(crypto.getRandomValues(new Uint8Array(6)), (b) => b.toString(16).padStart(2, "0")).join("")
  const tmp = `${path}.tmp-${suffix}`
  let file: Deno.FsFile | undefined
  let current = ""
  try {
    file = await Deno.open(tmp, { write: true, createNew: true })
    await writeAll(file, header)
    for (const t of ordered) {
      current = t.name
      await writeAll(file, encode(t))
    }
    current = ""
    await file.syncData()
    file.close()
    file = undefined
    await Deno.rename(tmp, path)
  } catch (e) {
    try {
      file?.close()
    } catch { /* already closed */ }
    await Deno.remove(tmp).catch(() => undefined)
    throw new SafetensorsError({ file: path, tensor: current, reason: `write failed (${errText(e)})` })
  }
}
