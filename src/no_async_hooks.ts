/**
 * Hides `node:async_hooks` from effect before effect loads.
 *
 * effect@4.1.0 wraps every fiber resumption in an `AsyncResource` whenever
 * `process.getBuiltinModule` exists. Under Deno 2.9.6 that retains about 0.5 KB per
 * suspension (a leak that reached 468 MB after 1M yields) and slows every actor hop 4x.
 * Every entry point loads this file first (`--preload` in deno.json tasks, and a first
 * import in `mod.ts`). Cost: AsyncLocalStorage context does not follow fibers, which
 * only APM agents would notice.
 * @module
 */
// deno-lint-ignore no-explicit-any
const proc = (globalThis as any).process
if (proc?.getBuiltinModule && !proc.__mixloraAsyncHooksHidden) {
  const original = proc.getBuiltinModule.bind(proc)
  proc.getBuiltinModule = (id: string) => id === "node:async_hooks" || id === "async_hooks" ? undefined : original(id)
  proc.__mixloraAsyncHooksHidden = true
}
export {}
