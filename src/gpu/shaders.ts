/**
 * Reads WGSL files from `shaders/` once. Kernels keep their WGSL in real files (bindings at the top,
 * tunables as `override` constants); only unrolled register-tile kernels are generated in code.
 * @module
 */
const cache = new Map<string, string>()
const dir = new URL("../../shaders/", import.meta.url)

/** The source of `shaders/<name>`. */
export function loadShader(name: string): string {
  let code = cache.get(name)
  if (code === undefined) {
    code = Deno.readTextFileSync(new URL(name, dir))
    cache.set(name, code)
  }
  return code
}
