/**
 * The only module that talks to `navigator.gpu`: adapter and device with the limits the model
 * needs, a pipeline cache keyed by shader + override constants, content-keyed uniform buffers,
 * cached bind groups, device-memory accounting by category and counted queue round trips.
 *
 * Everything here is synchronous to encode; the only awaits are `read` (one round trip) and
 * `sync` (one round trip). On lavapipe each round trip costs ~11.5 ms, so callers encode a whole
 * step into one `Step` and read back at most once.
 * @module
 */
import { DeviceLost, DeviceOutOfMemory, GpuValidationError, NoAdapterError, ShaderCompileError } from "../errors.ts"
import { loadShader } from "./shaders.ts"

/** What the bytes on the device are for (the CLI prints them by category). */
export type MemoryCategory = "base_f32" | "base_int8" | "base_other" | "adapters" | "activations" | "optimizer"
export const MEMORY_CATEGORIES: readonly MemoryCategory[] = [
  "base_f32",
  "base_int8",
  "base_other",
  "adapters",
  "activations",
  "optimizer",
]

export interface GpuOptions {
  /** "gpu" refuses software adapters, "auto" takes what it gets (prefers a hardware adapter). */
  readonly kind?: "auto" | "gpu"
  /** Storage buffers per stage to request (lavapipe offers 32, default is 8). */
  readonly storageBuffersPerStage?: number
}

/** A compute pipeline request: a WGSL file in `shaders/` (or inline code) + override constants. */
export interface PipelineSpec {
  /** file name in shaders/ (e.g. "rmsnorm.wgsl"), also the cache key when `code` is absent */
  readonly shader: string
  /** shader files prepended to `shader` (shared structs and functions; WGSL has no include) */
  readonly preludes?: readonly string[]
  /** generated WGSL; when given, `shader` only names it in errors and the cache key includes the code */
  readonly code?: string
  readonly entryPoint?: string
  readonly constants?: Readonly<Record<string, number>>
}

interface Tracked {
  readonly category: MemoryCategory
  readonly bytes: number
}

/** Resources bound in order to @binding(0..n) of group 0. */
export type Binding = GPUBuffer | GPUTextureView | {
  readonly buffer: GPUBuffer
  readonly offset: number
  readonly size: number
}

export class GpuContext {
  readonly pipelines = new Map<string, GPUComputePipeline>()
  private readonly uniforms = new Map<string, GPUBuffer>()
  /** command buffers begun and not yet submitted */
  private openSteps = 0
  /** `stepUniform` buffers by their index within a step, with the content last written */
  private readonly uniformSlots: { buffer: GPUBuffer; content: string }[] = []
  /** entries of the uniform and bind-group caches past which they are dropped between steps */
  cacheLimit = 4096
  /** how often the caches were dropped (tests) */
  cacheTrims = 0
  private readonly bindGroups = new Map<string, GPUBindGroup>()
  private readonly ids = new WeakMap<object, number>()
  private nextId = 1
  private readonly tracked = new Map<object, Tracked>()
  private readonly pending: Promise<Error | null>[] = []
  private lostReason: string | null = null
  /** queue round trips (submit + wait) since creation; benchmarks diff it */
  roundTrips = 0
  /** dispatches encoded since creation */
  dispatches = 0

  private constructor(
    readonly adapter: GPUAdapter,
    readonly device: GPUDevice,
    /** e.g. "llvmpipe (LLVM 15.0.6, 256 bits) [software]" */
    readonly description: string,
    readonly isSoftware: boolean,
  ) {
    device.lost.then((info) => {
      this.lostReason = info.message || info.reason || "unknown"
    })
  }

  /** Requests an adapter and a device with the limits of the adapter (binding size, buffers, storage). */
  static async create(opts: GpuOptions = {}): Promise<GpuContext> {
    if (!("gpu" in navigator)) {
      throw new NoAdapterError({ reason: "this Deno has no WebGPU (run with --unstable-webgpu)" })
    }
    const adapter = await navigator.gpu.requestAdapter({ powerPreference: "high-performance" }) ??
      await navigator.gpu.requestAdapter()
    if (!adapter) {
      throw new NoAdapterError({
        reason: "navigator.gpu.requestAdapter() returned null (install mesa-vulkan-drivers for a software adapter)",
      })
    }
    const info = adapter.info
    const isSoftware = info.isFallbackAdapter || /llvmpipe|lavapipe|swiftshader|software/i.test(info.description)
    const description = `${info.description || info.device || info.vendor || "unknown adapter"}${
      isSoftware ? " [software]" : ""
    }`
    if (opts.kind === "gpu" && isSoftware) {
      throw new NoAdapterError({ reason: `--device gpu asked for a hardware GPU but only found ${description}` })
    }
    const lim = adapter.limits
    const requiredLimits: Record<string, number> = {
      maxStorageBufferBindingSize: lim.maxStorageBufferBindingSize,
      maxBufferSize: lim.maxBufferSize,
      maxComputeWorkgroupStorageSize: lim.maxComputeWorkgroupStorageSize,
      maxComputeInvocationsPerWorkgroup: lim.maxComputeInvocationsPerWorkgroup,
      maxComputeWorkgroupSizeX: lim.maxComputeWorkgroupSizeX,
      maxComputeWorkgroupSizeY: lim.maxComputeWorkgroupSizeY,
      maxStorageBuffersPerShaderStage: Math.min(lim.maxStorageBuffersPerShaderStage, opts.storageBuffersPerStage ?? 32),
      maxComputeWorkgroupsPerDimension: lim.maxComputeWorkgroupsPerDimension,
    }
    const requiredFeatures = (["shader-f16", "timestamp-query"] as GPUFeatureName[]).filter((f) =>
      adapter.features.has(f)
    )
    const device = await adapter.requestDevice({ requiredLimits, requiredFeatures })
    return new GpuContext(adapter, device, description, isSoftware)
  }

  get limits(): GPUSupportedLimits {
    return this.device.limits
  }

  /** Throws DeviceLost if the device is gone; call before encoding a step. */
  ensureAlive(): void {
    if (this.lostReason !== null) throw new DeviceLost({ reason: this.lostReason })
  }

  // ---- pipelines -------------------------------------------------------------------------------

  /** Cached compute pipeline; compile errors surface (typed) at the next `read`/`sync`/`checkErrors`. */
  pipeline(spec: PipelineSpec): GPUComputePipeline {
    const constants = spec.constants ?? {}
    const key = `${spec.preludes?.join("+") ?? ""}|${spec.shader}|${spec.entryPoint ?? "main"}|${
      Object.keys(constants).sort().map((k) => `${k}=${constants[k]}`).join(",")
    }|${spec.code ?? ""}`
    const hit = this.pipelines.get(key)
    if (hit) return hit
    const code = [...(spec.preludes ?? []).map(loadShader), spec.code ?? loadShader(spec.shader)].join("\n")
    this.device.pushErrorScope("validation")
    const module = this.device.createShaderModule({ label: spec.shader, code })
    const pipeline = this.device.createComputePipeline({
      label: spec.shader,
      layout: "auto",
      compute: { module, entryPoint: spec.entryPoint ?? "main", constants: constants as Record<string, number> },
    })
    this.pending.push(
      this.device.popErrorScope().then(async (err) => {
        if (!err) return null
        const info = await module.getCompilationInfo()
        const first = info.messages.find((m) => m.type === "error")
        if (first) {
          const lines = code.split("\n")
          return new ShaderCompileError({
            shader: spec.shader,
            lineNumber: first.lineNum,
            line: lines[first.lineNum - 1] ?? "",
            reason: first.message.trim().split("\n")[0],
          })
        }
        return new GpuValidationError({ label: spec.shader, reason: err.message.trim() })
      }),
    )
    this.pipelines.set(key, pipeline)
    return pipeline
  }

  /** Awaits pending pipeline checks; throws the first typed error. No queue round trip. */
  async checkErrors(): Promise<void> {
    if (this.pending.length === 0) return
    const errs = await Promise.all(this.pending.splice(0))
    const first = errs.find((e) => e !== null)
    if (first) throw first
  }

  // ---- memory ----------------------------------------------------------------------------------

  /** A tracked buffer; out-of-memory and over-limit sizes become DeviceOutOfMemory. */
  buffer(opts: { label: string; size: number; usage: GPUBufferUsageFlags; category: MemoryCategory }): GPUBuffer {
    const size = Math.max(16, Math.ceil(opts.size / 16) * 16)
    if (size > this.limits.maxBufferSize) {
      throw new DeviceOutOfMemory({
        label: opts.label,
        bytes: size,
        reason: `over maxBufferSize ${this.limits.maxBufferSize}`,
      })
    }
    let buf: GPUBuffer
    try {
      buf = this.device.createBuffer({ label: opts.label, size, usage: opts.usage })
    } catch (e) {
      throw new DeviceOutOfMemory({ label: opts.label, bytes: size, reason: String(e) })
    }
    this.tracked.set(buf, { category: opts.category, bytes: size })
    return buf
  }

  /** A storage buffer holding `data` (copied now). */
  upload(
    label: string,
    data: ArrayBufferView,
    category: MemoryCategory,
    extraUsage: GPUBufferUsageFlags = 0,
  ): GPUBuffer {
    const buf = this.buffer({
      label,
      size: data.byteLength,
      usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC | extraUsage,
      category,
    })
    this.write(buf, data)
    return buf
  }

  /** Queue a host → device copy (no round trip; ordered before the next submit). */
  write(buf: GPUBuffer, data: ArrayBufferView, offset = 0): void {
    // writeBuffer needs a multiple of 4 bytes; pad the tail with zeros
    const bytes = new Uint8Array(data.buffer as ArrayBuffer, data.byteOffset, data.byteLength)
    if (bytes.byteLength % 4 === 0) this.device.queue.writeBuffer(buf, offset, bytes)
    else {
      const padded = new Uint8Array(Math.ceil(bytes.byteLength / 4) * 4)
      padded.set(bytes)
      this.device.queue.writeBuffer(buf, offset, padded)
    }
  }

  /** A tracked texture (weights read with textureLoad are fastest on lavapipe). */
  texture(opts: {
    label: string
    width: number
    height: number
    format: GPUTextureFormat
    bytesPerTexel: number
    category: MemoryCategory
  }): GPUTexture {
    const max = this.limits.maxTextureDimension2D
    if (opts.width > max || opts.height > max) {
      throw new DeviceOutOfMemory({
        label: opts.label,
        bytes: opts.width * opts.height * opts.bytesPerTexel,
        reason: `texture ${opts.width}x${opts.height} is over maxTextureDimension2D ${max}`,
      })
    }
    const tex = this.device.createTexture({
      label: opts.label,
      size: { width: opts.width, height: opts.height },
      format: opts.format,
      usage: GPUTextureUsage.TEXTURE_BINDING | GPUTextureUsage.COPY_DST,
    })
    this.tracked.set(tex, { category: opts.category, bytes: opts.width * opts.height * opts.bytesPerTexel })
    return tex
  }

  /** Frees a buffer or texture and its accounting. */
  release(res: GPUBuffer | GPUTexture): void {
    if (this.tracked.delete(res)) res.destroy()
  }

  /** Bytes on the device by category. */
  memory(): Record<MemoryCategory, number> {
    const out = Object.fromEntries(MEMORY_CATEGORIES.map((c) => [c, 0])) as Record<MemoryCategory, number>
    for (const t of this.tracked.values()) out[t.category] += t.bytes
    return out
  }

  // ---- uniforms and bind groups ----------------------------------------------------------------

  /**
   * A uniform buffer holding these 32-bit words, cached by content: shapes of a model are few, so
   * every launch of the same shape shares one buffer and its bind group stays cached too.
   */
  uniform(words: readonly number[] | Uint32Array, floats?: readonly number[]): GPUBuffer {
    const u = new Uint32Array(Math.max(4, Math.ceil((words.length + (floats?.length ?? 0)) / 4) * 4))
    u.set(words)
    if (floats) new Float32Array(u.buffer).set(floats, words.length)
    const key = Array.from(u).join(",")
    let buf = this.uniforms.get(key)
    if (!buf) {
      buf = this.device.createBuffer({
        label: "uniform",
        size: u.byteLength,
        usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
      })
      this.device.queue.writeBuffer(buf, 0, u)
      this.uniforms.set(key, buf)
    }
    return buf
  }

  /**
   * A uniform buffer for content that changes from step to step (e.g. per-step dropout seeds in a segment table):
   * the k-th such uniform of a step reuses the k-th buffer of the previous steps, rewritten through the queue, so
   * that no buffer or bind group is created per step. Safe because queue writes are ordered after the command
   * buffers submitted before them; while another command buffer is being recorded its slots could be rewritten
   * under it, so then this falls back to the content cache (`uniform`).
   */
  stepUniform(step: Step, words: Uint32Array<ArrayBuffer>): GPUBuffer {
    if (this.openSteps > 1) return this.uniform(words)
    const k = step.nextUniformSlot()
    const size = Math.max(16, Math.ceil(words.byteLength / 16) * 16)
    let slot = this.uniformSlots[k]
    if (!slot || slot.buffer.size < size) {
      slot?.buffer.destroy()
      const buffer = this.device.createBuffer({
        label: `step uniform ${k}`,
        size,
        usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
      })
      this.uniformSlots[k] = slot = { buffer, content: "" }
    }
    const key = words.join(",")
    if (slot.content !== key) {
      this.device.queue.writeBuffer(slot.buffer, 0, words)
      slot.content = key
    }
    return slot.buffer
  }

  private idOf(o: object): number {
    let id = this.ids.get(o)
    if (id === undefined) this.ids.set(o, id = this.nextId++)
    return id
  }

  /** Bind group 0 of `pipeline` with `bindings` at @binding(0..n), cached by resource identity. */
  bindGroup(pipeline: GPUComputePipeline, bindings: readonly Binding[]): GPUBindGroup {
    const key = [
      this.idOf(pipeline),
      ...bindings.map((b) =>
        "buffer" in b && !(b instanceof GPUBuffer) ? `${this.idOf(b.buffer)}@${b.offset}+${b.size}` : this.idOf(b)
      ),
    ].join(",")
    let bg = this.bindGroups.get(key)
    if (!bg) {
      bg = this.device.createBindGroup({
        layout: pipeline.getBindGroupLayout(0),
        entries: bindings.map((b, binding) =>
          b instanceof GPUBuffer
            ? { binding, resource: { buffer: b } }
            : "buffer" in b
            ? { binding, resource: { buffer: b.buffer, offset: b.offset, size: b.size } }
            : { binding, resource: b }
        ),
      })
      this.bindGroups.set(key, bg)
    }
    return bg
  }

  /** Drops cached bind groups (call after releasing buffers they referenced). */
  forgetBindGroups(): void {
    this.bindGroups.clear()
  }

  // ---- encoding, submission, readback ----------------------------------------------------------

  /** Starts a command buffer; kernels append dispatches to its single compute pass. */
  begin(label = "step"): Step {
    this.ensureAlive()
    if (this.openSteps === 0) this.trimCaches()
    this.openSteps++
    return new Step(this, this.device.createCommandEncoder({ label }), () => this.openSteps--)
  }

  /**
   * Uniforms hold per-batch values (row ranges, segment tables), so over a long run their content cache would
   * grow with every new batch composition. Past `cacheLimit` entries the uniform and bind-group caches start
   * over; only between steps (no command buffer being recorded may reference them; submitted work keeps its
   * buffers alive until it completes, WebGPU's destroy() rule).
   */
  private trimCaches(): void {
    if (this.uniforms.size <= this.cacheLimit && this.bindGroups.size <= this.cacheLimit) return
    for (const u of this.uniforms.values()) u.destroy()
    this.uniforms.clear()
    this.bindGroups.clear()
    this.cacheTrims++
  }

  /** Submit-and-wait: one round trip. */
  async sync(): Promise<void> {
    await this.checkErrors()
    this.roundTrips++
    await this.device.queue.onSubmittedWorkDone()
    this.ensureAlive()
  }

  /** Copies `buffers` (whole or [offset, size]) to the host in one submission: one round trip. */
  async read(
    sources: readonly (GPUBuffer | { buffer: GPUBuffer; offset: number; size: number })[],
    step?: Step,
  ): Promise<ArrayBuffer[]> {
    const s = step ?? this.begin("read")
    const parts = sources.map((src) => src instanceof GPUBuffer ? { buffer: src, offset: 0, size: src.size } : src)
    const total = parts.reduce((n, p) => n + Math.ceil(p.size / 4) * 4, 0)
    const staging = this.device.createBuffer({
      label: "readback",
      size: Math.max(4, total),
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    })
    let at = 0
    const enc = s.endPass()
    for (const p of parts) {
      const size = Math.ceil(p.size / 4) * 4
      enc.copyBufferToBuffer(p.buffer, p.offset, staging, at, size)
      at += size
    }
    s.submit()
    await this.checkErrors()
    this.roundTrips++
    try {
      await staging.mapAsync(GPUMapMode.READ)
    } catch (e) {
      this.ensureAlive()
      throw new GpuValidationError({ label: "readback", reason: String(e) })
    }
    const all = staging.getMappedRange().slice(0)
    staging.unmap()
    staging.destroy()
    at = 0
    return parts.map((p) => {
      const out = all.slice(at, at + p.size)
      at += Math.ceil(p.size / 4) * 4
      return out
    })
  }

  /** Reads one f32 buffer (tests and reports). */
  async readF32(buffer: GPUBuffer, length?: number): Promise<Float32Array> {
    const [b] = await this.read([{ buffer, offset: 0, size: (length ?? buffer.size / 4) * 4 }])
    return new Float32Array(b)
  }

  destroy(): void {
    for (const res of this.tracked.keys()) (res as GPUBuffer).destroy()
    this.tracked.clear()
    for (const u of this.uniforms.values()) u.destroy()
    this.uniforms.clear()
    for (const u of this.uniformSlots) u.buffer.destroy()
    this.uniformSlots.length = 0
    this.bindGroups.clear()
    this.pipelines.clear()
    this.device.destroy()
  }
}

/**
 * One command buffer being recorded. All dispatches share one compute pass (thousands of passes
 * make every later submit slow on Vulkan); copies close the pass and the next dispatch reopens it.
 */
export class Step {
  private pass: GPUComputePassEncoder | null = null
  private submitted = false
  private uniformSlot = 0

  constructor(readonly ctx: GpuContext, readonly encoder: GPUCommandEncoder, private readonly onSubmit = () => {}) {}

  /** Records `pipeline` over `groups` workgroups with `bindings` at @binding(0..n). */
  dispatch(
    pipeline: GPUComputePipeline,
    bindings: readonly Binding[],
    groups: readonly [number, number?, number?],
  ): void {
    const [x, y = 1, z = 1] = groups
    if (x === 0 || y === 0 || z === 0) return
    const max = this.ctx.limits.maxComputeWorkgroupsPerDimension
    if (x > max || y > max || z > max) {
      throw new GpuValidationError({
        label: pipeline.label,
        reason: `dispatch ${x}x${y}x${z} over ${max} per dimension`,
      })
    }
    if (!this.pass) this.pass = this.encoder.beginComputePass()
    this.pass.setPipeline(pipeline)
    this.pass.setBindGroup(0, this.ctx.bindGroup(pipeline, bindings))
    this.pass.dispatchWorkgroups(x, y, z)
    this.ctx.dispatches++
  }

  /** Index of this step's next `GpuContext.stepUniform`. */
  nextUniformSlot(): number {
    return this.uniformSlot++
  }

  /** Closes the compute pass (if open) so that copies can be recorded; returns the encoder. */
  endPass(): GPUCommandEncoder {
    if (this.pass) {
      this.pass.end()
      this.pass = null
    }
    return this.encoder
  }

  /** Buffer-to-buffer copy inside this command buffer. */
  copy(src: GPUBuffer, srcOffset: number, dst: GPUBuffer, dstOffset: number, size: number): void {
    this.endPass().copyBufferToBuffer(src, srcOffset, dst, dstOffset, size)
  }

  /** Submits the command buffer (no wait). */
  submit(): void {
    if (this.submitted) return
    this.submitted = true
    this.onSubmit()
    this.ctx.device.queue.submit([this.endPass().finish()])
  }
}
