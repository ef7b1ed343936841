/**
 * Plain reference for the token embedding gather (oracle of shaders/embedding.wgsl).
 * @module
 */

/** x (N, D) = embed (V, D) [tokens (N)]: row n of x is row tokens[n] of the table. */
export function embeddingForward(
  embed: Float32Array,
  tokens: Int32Array,
  dims: { N: number; D: number; V: number },
): Float32Array {
  const { N, D, V } = dims
  const x = new Float32Array(N * D)
  for (let n = 0; n < N; n++) {
    const id = tokens[n]
    if (id < 0 || id >= V) throw new RangeError(`embeddingForward: token ${id} at ${n} not in [0, ${V})`)
    x.set(embed.subarray(id * D, id * D + D), n * D)
  }
  return x
}
