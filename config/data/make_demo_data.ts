/**
 * Generates the demo data of `config/demo.json` deterministically (committed together with its output):
 *
 *   deno run -A config/data/make_demo_data.ts        # rewrites config/data/*.jsonl
 *
 * Three small tasks whose answer is computed from the prompt itself, so adapters on the embedded model (random
 * weights: it knows no English and no digit order) can learn them in a few hundred steps. Each has a train
 * split and a held-out test split that shares no record with it:
 * - category_choice: multiple choice, "Most digits of 31795 are" / A. low / B. mid / C. high, where low =
 *   1–3, mid = 4–6, high = 7–9 and the answer is the category holding the strict plurality of the 5 digits
 *   (draws with a tie are redrawn). Each choice letter is one token ("▁A"). The answer depends on the bag of
 *   digits only, so one attention head that reads every digit and a readout per category solve it; the choices
 *   contain no digits. Accuracy-scored.
 * - copy_digits: "Repeat 4719" → "4719" (4 random digits) with the short template: attention back a fixed
 *   distance (input digit k sits 9 tokens before output digit k).
 * - digit_shift: "Add one to each digit." with a 3-digit input, output each digit + 1 mod 10 (9 → 0): the same
 *   copy plus a per-token map for the FFN experts. Short template too.
 * Lengths with the default tokenizer (BOS and EOS included): 46, 24 and 34 tokens (`cutoff_len` 64).
 * Why not word knowledge ("which word is a color?"): with random base weights every word is an arbitrary
 * token sequence, so such a task is a memorisation problem the demo's step budget cannot solve.
 * @module
 */
import { fileURLToPath } from "node:url"
import { Rng } from "../../src/util/rng.ts"

/** Seed of all demo data; each task draws from `Rng.fromSeed(DEMO_DATA_SEED).fork(task)`. */
export const DEMO_DATA_SEED = 20240601
/** Records per split and task (train sizes × `num_epochs` of config/demo.json set the training time). */
export const DEMO_SIZES = {
  category_choice: { train: 400, test: 100 },
  copy_digits: { train: 600, test: 60 },
  digit_shift: { train: 500, test: 60 },
} as const

type Task = keyof typeof DEMO_SIZES

/** Draws `train + test` distinct records (by their JSON text) from `draw`, the first `train` for training. */
function splits(draw: () => Record<string, unknown>, size: { train: number; test: number }) {
  const seen = new Set<string>()
  const lines: string[] = []
  const total = size.train + size.test
  for (let tries = 0; lines.length < total; tries++) {
    if (tries > 100 * total) throw new RangeError("make_demo_data: too few distinct records")
    const line = JSON.stringify(draw())
    if (seen.has(line)) continue
    seen.add(line)
    lines.push(line)
  }
  return { train: lines.slice(0, size.train), test: lines.slice(size.train) }
}

const digits = (rng: Rng, n: number): string => Array.from({ length: n }, () => String(rng.nextInt(10))).join("")

/** Category of a digit 1..9: 0 = low (1–3), 1 = mid (4–6), 2 = high (7–9). */
const category = (d: number): number => Math.floor((d - 1) / 3)

function categoryChoice(rng: Rng): Record<string, unknown> {
  for (;;) {
    const ds = Array.from({ length: 5 }, () => 1 + rng.nextInt(9))
    const counts = [0, 0, 0]
    for (const d of ds) counts[category(d)]++
    const most = Math.max(...counts)
    if (counts.filter((c) => c === most).length > 1) continue // no strict plurality: redraw
    return {
      question: `Most digits of ${ds.join("")} are`,
      choices: ["low", "mid", "high"],
      answer: "ABC"[counts.indexOf(most)],
    }
  }
}

function copyDigits(rng: Rng): Record<string, unknown> {
  const d = digits(rng, 4)
  return { instruction: `Repeat ${d}`, output: d }
}

function digitShift(rng: Rng): Record<string, unknown> {
  const d = digits(rng, 3)
  const out = Array.from(d, (c) => String((Number(c) + 1) % 10)).join("")
  return { instruction: "Add one to each digit.", input: d, output: out }
}

/** File name (in config/data/) → exact text of every demo data file. */
export function demoDataFiles(): Record<string, string> {
  const root = Rng.fromSeed(DEMO_DATA_SEED)
  const tasks: Record<Task, (rng: Rng) => Record<string, unknown>> = {
    category_choice: categoryChoice,
    copy_digits: copyDigits,
    digit_shift: digitShift,
  }
  const files: Record<string, string> = {}
  for (const [name, make] of Object.entries(tasks) as [Task, (rng: Rng) => Record<string, unknown>][]) {
    const rng = root.fork(name)
    const { train, test } = splits(() => make(rng), DEMO_SIZES[name])
    files[`${name}_train.jsonl`] = train.join("\n") + "\n"
    files[`${name}_test.jsonl`] = test.join("\n") + "\n"
  }
  return files
}

if (import.meta.main) {
  const dir = fileURLToPath(new URL(".", import.meta.url))
  for (const [name, text] of Object.entries(demoDataFiles())) {
    await Deno.writeTextFile(`${dir}${name}`, text)
    console.log(`wrote ${dir}${name} (${text.split("\n").length - 1} records)`)
  }
}
