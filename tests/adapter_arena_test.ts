/**
 * The adapter arena (src/model/adapter_arena.ts): first-fit blocks in shared slabs, 64-float alignment, merging of
 * freed neighbours, slabs freed with their last block, and the size of a slab opened by a large adapter.
 */
import assert from "node:assert/strict"
import { GpuContext } from "../src/gpu/context.ts"
import { AdapterArena, SLAB_ADAPTERS } from "../src/model/adapter_arena.ts"

const ctx = await GpuContext.create()

Deno.test("arena: first fit, alignment, reuse of freed blocks, merging, slabs freed with their last block", () => {
  const before = ctx.memory().adapters
  const arena = new AdapterArena(ctx, 1024)
  const a = arena.alloc("a", 100), b = arena.alloc("b", 64), c = arena.alloc("c", 300)
  assert.deepEqual([a.offset, a.length, b.offset, b.length, c.offset, c.length], [0, 128, 128, 64, 192, 320])
  assert.ok(a.slab === b.slab && b.slab === c.slab)
  assert.equal(arena.usedBytes(), (128 + 64 + 320) * 8)
  assert.equal(ctx.memory().adapters - before, 2 * 1024 * 4)
  // a and b freed: their ranges merge, so a block of 192 fits where they were
  arena.release(a)
  arena.release(b)
  const d = arena.alloc("d", 150)
  assert.equal(d.slab, c.slab)
  assert.equal(d.offset, 0)
  // no room left in the first slab for 600 floats: a second slab opens
  const e = arena.alloc("e", 600)
  assert.notEqual(e.slab, c.slab)
  assert.equal(arena.slabs.length, 2)
  // releasing everything of a slab destroys it (and its bytes leave the accounting)
  arena.release(e)
  assert.equal(arena.slabs.length, 1)
  arena.release(c)
  arena.release(d)
  assert.equal(arena.slabs.length, 0)
  assert.equal(arena.usedBytes(), 0)
  assert.equal(ctx.memory().adapters, before)
})

Deno.test("arena: a large adapter opens a slab with room for SLAB_ADAPTERS of its size, within the binding limit", () => {
  const arena = new AdapterArena(ctx, 1024)
  const big = 5000
  const blocks = Array.from({ length: SLAB_ADAPTERS }, (_, i) => arena.alloc(`big${i}`, big))
  assert.equal(arena.slabs.length, 1, "the slab opened by the first holds them all")
  assert.equal(arena.slabs[0].capacity, SLAB_ADAPTERS * Math.ceil(big / 64) * 64)
  const bindable = Math.min(ctx.limits.maxStorageBufferBindingSize, ctx.limits.maxBufferSize) / 4
  assert.ok(arena.capacityFor(bindable * 2) === bindable * 2, "an adapter over the limit gets a slab of its own size")
  assert.ok(arena.capacityFor(bindable / 2) <= bindable, "slabs stay bindable")
  for (const b of blocks) arena.release(b)
  assert.equal(arena.slabs.length, 0)
})
