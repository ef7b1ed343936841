/**
 * Bad input through the real CLI: each case exits non-zero with exactly one stderr line naming the file
 * and the tensor or key, and no stack trace.
 */
import assert from "node:assert/strict"
import { writeSafetensors } from "../src/io/safetensors.ts"
import { DEFAULT_MODEL_CONFIG, ensureDefaultModel } from "../src/model/default_model.ts"

const INFO = new URL("../src/cli/info.ts", import.meta.url).pathname
const PRELOAD = new URL("../src/no_async_hooks.ts", import.meta.url).pathname

async function runInfo(dir: string): Promise<{ code: number; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--preload", PRELOAD, INFO, "--base_model", dir, "--device", "cpu"],
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output()
  return { code: out.code, stderr: new TextDecoder().decode(out.stderr) }
}

/** A copy of the default model dir with `mutate` applied. */
async function brokenModel(mutate: (dir: string) => Promise<void>): Promise<string> {
  const src = await ensureDefaultModel()
  const dir = await Deno.makeTempDir({ prefix: "mixlora-bad-" })
  for (const f of ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]) {
    await Deno.copyFile(`${src}/${f}`, `${dir}/${f}`)
  }
  await mutate(dir)
  return dir
}

const le64 = (n: number) => {
  const b = new Uint8Array(8)
  new DataView(b.buffer).setBigUint64(0, BigInt(n), true)
  return b
}
const rawFile = (header: unknown, data = new Uint8Array(0)) => {
  const h = new TextEncoder().encode(typeof header === "string" ? header : JSON.stringify(header))
  return new Uint8Array([...le64(h.length), ...h, ...data])
}
const WEIGHT = "model.embed_tokens.weight"

const cases: [string, (dir: string) => Promise<void>, RegExp][] = [
  ["truncated file", (d) => Deno.writeFile(`${d}/model.safetensors`, new Uint8Array([1, 2, 3])), /model\.safetensors/],
  [
    "header length beyond the file",
    (d) => Deno.writeFile(`${d}/model.safetensors`, new Uint8Array([...le64(5000), 123, 125])),
    /model\.safetensors/,
  ],
  [
    "header over 100 MB",
    (d) => Deno.writeFile(`${d}/model.safetensors`, new Uint8Array([...le64(200_000_000), 123, 125])),
    /model\.safetensors.*100/,
  ],
  ["invalid JSON", (d) => Deno.writeFile(`${d}/model.safetensors`, rawFile("{not json")), /model\.safetensors/],
  [
    "unknown dtype",
    (d) =>
      Deno.writeFile(
        `${d}/model.safetensors`,
        rawFile({ [WEIGHT]: { dtype: "F12", shape: [1], data_offsets: [0, 4] } }, new Uint8Array(4)),
      ),
    /model\.safetensors.*model\.embed_tokens\.weight/,
  ],
  [
    "offsets out of range",
    (d) =>
      Deno.writeFile(
        `${d}/model.safetensors`,
        rawFile({ [WEIGHT]: { dtype: "F32", shape: [2], data_offsets: [0, 8] } }, new Uint8Array(4)),
      ),
    /model\.safetensors.*model\.embed_tokens\.weight/,
  ],
  [
    "overlapping offsets",
    (d) =>
      Deno.writeFile(
        `${d}/model.safetensors`,
        rawFile({
          [WEIGHT]: { dtype: "F32", shape: [2], data_offsets: [0, 8] },
          "model.norm.weight": { dtype: "F32", shape: [2], data_offsets: [4, 12] },
        }, new Uint8Array(12)),
      ),
    /model\.safetensors.*(model\.embed_tokens\.weight|model\.norm\.weight)/,
  ],
  [
    "shape x dtype size mismatch",
    (d) =>
      Deno.writeFile(
        `${d}/model.safetensors`,
        rawFile({ [WEIGHT]: { dtype: "F32", shape: [3], data_offsets: [0, 8] } }, new Uint8Array(8)),
      ),
    /model\.safetensors.*model\.embed_tokens\.weight/,
  ],
  [
    "tensor with the wrong shape for the config",
    (d) =>
      writeSafetensors(`${d}/model.safetensors`, [{
        name: WEIGHT,
        dtype: "F32",
        shape: [2, 2],
        data: new Float32Array(4),
      }]),
    /model\.safetensors.*model\.embed_tokens\.weight/,
  ],
  [
    "config.json missing a required field",
    async (d) => {
      const { hidden_size: _, ...rest } = DEFAULT_MODEL_CONFIG as Record<string, unknown>
      await Deno.writeTextFile(`${d}/config.json`, JSON.stringify(rest))
    },
    /config\.json.*hidden_size/,
  ],
  [
    "unsupported architecture",
    (d) =>
      Deno.writeTextFile(
        `${d}/config.json`,
        JSON.stringify({ ...DEFAULT_MODEL_CONFIG, architectures: ["GPT2LMHeadModel"], model_type: "gpt2" }),
      ),
    /config\.json.*architectures/,
  ],
]

for (const [name, mutate, pattern] of cases) {
  Deno.test(`cli: ${name} → one line naming file and tensor/key, exit 1`, async () => {
    const dir = await brokenModel(mutate)
    try {
      const { code, stderr } = await runInfo(dir)
      const lines = stderr.trim().split("\n").filter((l) => l.trim() !== "")
      assert.equal(code, 1, stderr)
      assert.equal(lines.length, 1, `expected one line, got:\n${stderr}`)
      assert.match(lines[0], /^error: /)
      assert.match(lines[0], pattern)
      assert.doesNotMatch(stderr, /^\s+at\s|Stack backtrace/m)
    } finally {
      await Deno.remove(dir, { recursive: true })
    }
  })
}
