/**
 * Generates the demo data of `config/demo.json` deterministically (committed together with its output):
 *
 *   deno run -A config/data/make_demo_data.ts        # rewrites config/data/*.jsonl
 *
 * Three small tasks a tiny LLaMA (D 128, 4 layers, V 512) can pick up in a few hundred steps, each with a train
 * split and a held-out test split that shares no record with it:
 * - category_choice: multiple choice, "Which word is a color / an animal / a number?" with 3 choices (A–C,
 *   each letter one token "▁A" in the default tokenizer), exactly one from the asked category; accuracy-scored.
 * - copy_digits: instruction "Repeat 47193" → "47193" (5 random digits), Alpaca template.
 * - digit_shift: instruction "Add one to each digit." / "Subtract one from each digit." with a 4-digit input,
 *   output the digits ± 1 mod 10; meant for the short template `config/templates/short.json`.
 * All sequences are ≤ 64 tokens with the default tokenizer (about 35, 48 and 36).
 * @module
 */
import { fileURLToPath } from "node:url"
import { Rng } from "../../src/util/rng.ts"

/** Seed of all demo data; each task draws from `Rng.fromSeed(DEMO_DATA_SEED).fork(task)`. */
export const DEMO_DATA_SEED = 20240601
/** Records per split. */
export const DEMO_SIZES = { train: 300, test: 60 } as const

const CATEGORIES: Readonly<Record<string, { question: string; words: readonly string[] }>> = {
  color: {
    question: "Which word is a color?",
    words: ["red", "blue", "green", "yellow", "black", "white", "pink", "brown", "gray", "orange", "purple"],
  },
  animal: {
    question: "Which word is an animal?",
    words: ["cat", "dog", "bird", "fish", "horse", "cow", "lion", "mouse", "sheep", "duck", "frog"],
  },
  number: {
    question: "Which word is a number?",
    words: ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"],
  },
}
/** Distractors only (never asked for). */
const THINGS = ["tree", "house", "car", "book", "cup", "door", "table", "chair", "box", "ball"]

const pick = <T>(rng: Rng, items: readonly T[]): T => items[rng.nextInt(items.length)]

/** Draws `train + test` distinct records (by their JSON text) from `draw`, the first `train` for training. */
function splits(draw: () => Record<string, unknown>): { train: string[]; test: string[] } {
  const seen = new Set<string>()
  const lines: string[] = []
  const total = DEMO_SIZES.train + DEMO_SIZES.test
  for (let tries = 0; lines.length < total; tries++) {
    if (tries > 100 * total) throw new RangeError("make_demo_data: too few distinct records")
    const line = JSON.stringify(draw())
    if (seen.has(line)) continue
    seen.add(line)
    lines.push(line)
  }
  return { train: lines.slice(0, DEMO_SIZES.train), test: lines.slice(DEMO_SIZES.train) }
}

function categoryChoice(rng: Rng): Record<string, unknown> {
  const names = Object.keys(CATEGORIES)
  const asked = pick(rng, names)
  const others = [...names.filter((n) => n !== asked).flatMap((n) => CATEGORIES[n].words), ...THINGS]
  const right = pick(rng, CATEGORIES[asked].words)
  const wrong1 = pick(rng, others)
  let wrong2 = pick(rng, others)
  while (wrong2 === wrong1) wrong2 = pick(rng, others)
  const answer = rng.nextInt(3)
  const choices = [wrong1, wrong2]
  choices.splice(answer, 0, right)
  return { question: CATEGORIES[asked].question, choices, answer: "ABC"[answer] }
}

const digits = (rng: Rng, n: number): string => Array.from({ length: n }, () => String(rng.nextInt(10))).join("")

function copyDigits(rng: Rng): Record<string, unknown> {
  const d = digits(rng, 5)
  return { instruction: `Repeat ${d}`, output: d }
}

function digitShift(rng: Rng): Record<string, unknown> {
  const up = rng.nextInt(2) === 0
  const d = digits(rng, 4)
  const out = Array.from(d, (c) => String((Number(c) + (up ? 1 : 9)) % 10)).join("")
  return { instruction: up ? "Add one to each digit." : "Subtract one from each digit.", input: d, output: out }
}

/** File name (in config/data/) → exact text of every demo data file. */
export function demoDataFiles(): Record<string, string> {
  const root = Rng.fromSeed(DEMO_DATA_SEED)
  const tasks: Record<string, (rng: Rng) => Record<string, unknown>> = {
    category_choice: categoryChoice,
    copy_digits: copyDigits,
    digit_shift: digitShift,
  }
  const files: Record<string, string> = {}
  for (const [name, make] of Object.entries(tasks)) {
    const rng = root.fork(name)
    const { train, test } = splits(() => make(rng))
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
