/**
 * The main job (`make demo`): trains a tiny character-level transformer with mixprec alone under
 * every precision recipe, then prints a table (loss, accuracy, ratio to fp32, skipped steps, loss
 * scale, step time, memory), writes an SVG plot of the loss curves and loss-scale history, and,
 * with --json FILE, the same results as JSON.
 *
 *   bun bench/train.ts [--recipes fp32,mixed_bf16,...] [--steps 300] [--batch-sizes 16]
 *                      [--seed 0] [--device cpu] [--json results.json] [--svg out/train.svg]
 *
 * Each (recipe, batch size) runs in its own process, so peak memory is the recipe's own.
 *
 * @module
 */

import { mkdirSync } from "node:fs";
import { dirname } from "node:path";
import { importOptional } from "./_optional.ts";
import { type RecipeResult, resultsJson, resultsSvg, resultsTable } from "./_train_report.ts";
import { RECIPES, type RecipeName, runRecipe, type TrainOptions } from "./_train_model.ts";

interface Options {
  readonly recipes: readonly RecipeName[];
  readonly steps: number;
  readonly batchSizes: readonly number[];
  readonly seed: number;
  readonly device: string;
  readonly json: string | null;
  readonly svg: string;
}

function usage(message: string): never {
  console.error(
    `${message}\nUsage: bun bench/train.ts [--recipes ${Object.keys(RECIPES).join(",")}] [--steps N] [--batch-sizes 8,32,128] [--seed N] [--device cpu] [--json FILE] [--svg FILE]`,
  );
  process.exit(2);
}

function parseOptions(argv: readonly string[]): Options {
  const values = new Map<string, string>();
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (!arg.startsWith("--")) usage(`Unexpected argument ${JSON.stringify(arg)}`);
    const value = argv[i + 1];
    if (value === undefined || value.startsWith("--")) usage(`Option ${arg} needs a value`);
    values.set(arg.slice(2), value);
    i++;
  }
  const known = new Set(["recipes", "steps", "batch-sizes", "seed", "device", "json", "svg", "child", "batch"]);
  for (const key of values.keys()) if (!known.has(key)) usage(`Unknown option --${key}`);
  const recipes = (values.get("recipes") ?? Object.keys(RECIPES).join(",")).split(",") as RecipeName[];
  for (const r of recipes) if (!(r in RECIPES)) usage(`Unknown recipe ${JSON.stringify(r)}`);
  const integer = (key: string, fallback: number, min: number) => {
    const n = Number(values.get(key) ?? fallback);
    if (!Number.isInteger(n) || n < min) usage(`--${key} must be an integer >= ${min}, got ${values.get(key)}`);
    return n;
  };
  const batchSizes = (values.get("batch-sizes") ?? "16").split(",").map(Number);
  for (const b of batchSizes) if (!Number.isInteger(b) || b < 1) usage(`--batch-sizes must list positive integers`);
  const device = values.get("device") ?? "cpu";
  return {
    recipes,
    steps: integer("steps", 300, 1),
    batchSizes,
    seed: integer("seed", 0, 0),
    device,
    json: values.get("json") ?? null,
    svg: values.get("svg") ?? "out/train.svg",
  };
}

/** What the demo's progress display needs: cli-progress's SingleBar, or plain lines without it. */
interface Bar {
  update(step: number, payload: { loss: string; scale: string; ms: string }): void;
  stop(): void;
}

let progressModule: Promise<typeof import("cli-progress") | null> | undefined;

/** A progress bar from cli-progress (a devDependency), or a line every tenth of the run without it. */
async function progressBar(label: string, total: number): Promise<Bar> {
  progressModule ??= importOptional(() => import("cli-progress"), ["cli-progress"], "The demo's progress bar");
  const cliProgress = await progressModule;
  if (cliProgress === null) {
    const every = Math.max(1, Math.floor(total / 10));
    return {
      update: (step, p) => {
        if (step % every === 0 || step === total)
          console.error(`${label} ${step}/${total} loss ${p.loss} scale ${p.scale} ${p.ms} ms/step`);
      },
      stop: () => {},
    };
  }
  const bar = new cliProgress.SingleBar({
    format: `${label} |{bar}| {value}/{total} loss {loss} scale {scale} {ms} ms/step`,
    barsize: 24,
    hideCursor: true,
    noTTYOutput: true,
    notTTYSchedule: 5000,
  });
  bar.start(total, 0, { loss: "-", scale: "-", ms: "-" });
  return bar;
}

/** Runs one recipe in a child process, showing its progress; returns its result. */
async function runChild(
  name: RecipeName,
  batchSize: number,
  options: Options,
  baseCheckpoint: string,
): Promise<RecipeResult> {
  const args = [
    process.execPath,
    import.meta.path,
    "--child",
    name,
    "--batch",
    String(batchSize),
    "--steps",
    String(options.steps),
    "--seed",
    String(options.seed),
    "--device",
    options.device,
    "--base",
    baseCheckpoint,
  ];
  const child = Bun.spawn(args, { stdout: "pipe", stderr: "inherit" });
  const bar = await progressBar(`${name.padEnd(15)} b${String(batchSize).padEnd(4)}`, options.steps);
  let result: RecipeResult | undefined;
  const decoder = new TextDecoder();
  let pending = "";
  for await (const chunk of child.stdout) {
    pending += decoder.decode(chunk, { stream: true });
    let newline = pending.indexOf("\n");
    while (newline >= 0) {
      const line = pending.slice(0, newline);
      pending = pending.slice(newline + 1);
      newline = pending.indexOf("\n");
      if (!line.startsWith("{")) continue;
      const message = JSON.parse(line);
      if (message.progress) {
        const p = message.progress;
        bar.update(p.step, {
          loss: p.loss.toFixed(3),
          scale: p.scale === 1 ? "1" : p.scale.toExponential(1),
          ms: p.ms.toFixed(1),
        });
      } else if (message.result) {
        result = message.result;
      }
    }
  }
  bar.stop();
  const code = await child.exited;
  if (code !== 0 || result === undefined)
    throw new Error(`Recipe ${name} (batch ${batchSize}) failed with exit code ${code}`);
  return result;
}

async function childMain(argv: readonly string[]): Promise<void> {
  const get = (key: string) => argv[argv.indexOf(`--${key}`) + 1]!;
  const train: TrainOptions = {
    batchSize: Number(get("batch")),
    steps: Number(get("steps")),
    seed: Number(get("seed")),
    device: get("device"),
    baseCheckpoint: get("base"),
  };
  const result = await runRecipe(get("child") as RecipeName, train, (progress) =>
    console.log(JSON.stringify({ progress })),
  );
  console.log(JSON.stringify({ result }));
}

async function main(): Promise<void> {
  const argv = Bun.argv.slice(2);
  if (argv.includes("--child")) return childMain(argv);
  const options = parseOptions(argv);
  if (options.device !== "cpu") {
    console.log(
      `Device ${options.device} requested: recipes will fail with the library's message if it is not available.`,
    );
  }
  const baseCheckpoint = `${process.env.TMPDIR ?? "/tmp"}/mixprec-demo-base-${options.seed}-${process.pid}.safetensors`;
  const needsBase = options.recipes.some((r) => RECIPES[r].needsBase);
  const ordered = [...options.recipes];
  // The LoRA recipes fine-tune the fp32 model: train it first (its row is reported when asked for).
  if (needsBase && !ordered.includes("fp32")) ordered.unshift("fp32");
  ordered.sort((a, b) => Number(RECIPES[a].needsBase) - Number(RECIPES[b].needsBase));
  const results: RecipeResult[] = [];
  const started = performance.now();
  for (const batchSize of options.batchSizes) {
    for (const name of ordered) {
      const result = await runChild(name, batchSize, options, baseCheckpoint);
      if (options.recipes.includes(name)) results.push(result);
    }
  }
  const seconds = (performance.now() - started) / 1000;
  console.log(
    `\nmixprec training demo: ${options.steps} steps per recipe, seed ${options.seed}, ${navigator.hardwareConcurrency} CPUs, ${seconds.toFixed(0)} s\n`,
  );
  console.log(resultsTable(results));
  for (const r of results) if (r.note) console.log(`- ${r.name}: ${r.note}`);
  const svg = await resultsSvg(results);
  if (svg !== null) {
    mkdirSync(dirname(options.svg), { recursive: true });
    await Bun.write(options.svg, svg);
    console.log(`\nPlot: ${options.svg}`);
  }
  if (options.json) {
    await Bun.write(options.json, resultsJson(results, { ...options }));
    console.log(`JSON: ${options.json}`);
  }
  await Bun.file(baseCheckpoint)
    .delete()
    .catch(() => {});
}

await main();
