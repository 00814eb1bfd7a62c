/**
 * Soak benchmark: the demo's training loop (bench/_train_model.ts, one recipe) for many steps,
 * sampling the process's RSS and the live tensor count every 5 steps, and reporting their slopes
 * after warm-up (least squares over the samples): bytes and tensors per step. A loop that frees
 * what it makes keeps both near zero; a leak shows as a steady positive slope. It reports numbers
 * and a verdict; it is a benchmark, not a timed test (the default 10,000 steps take minutes).
 *
 *   bun bench/soak_bench.ts [--recipe mixed_bf16] [--steps 10000] [--warmup 1000] [--batch 16]
 *                           [--seed 1] [--json FILE]
 *
 * The loop itself keeps three float curves of `steps` numbers (loss, scale, zero share) for the
 * demo's report: 24 bytes per step that are not a leak, printed beside the slope.
 *
 * @module
 */

import { liveTensorCount } from "../src/mod.ts";
import { flag, formatTable } from "./_harness.ts";
import { RECIPES, type RecipeName, runRecipe } from "./_train_model.ts";

/**
 * RSS growth per step above this (after warm-up) is called growing: 10 MiB over 10,000 steps. The
 * RSS slope is noisy (the collector's sawtooth); the live tensor slope is the exact check.
 */
const FLAT_BYTES_PER_STEP = 1024;

interface Sample {
  readonly step: number;
  readonly rss: number;
  readonly live: number;
}

/** The least-squares slope of y over x. */
export function slope(xs: readonly number[], ys: readonly number[]): number {
  const n = xs.length;
  if (n < 2) return Number.NaN;
  const mx = xs.reduce((a, b) => a + b, 0) / n;
  const my = ys.reduce((a, b) => a + b, 0) / n;
  let sxy = 0;
  let sxx = 0;
  for (let i = 0; i < n; i++) {
    sxy += (xs[i]! - mx) * (ys[i]! - my);
    sxx += (xs[i]! - mx) ** 2;
  }
  return sxx === 0 ? Number.NaN : sxy / sxx;
}

function positiveInteger(name: string, fallback: string): number {
  const value = Number(flag(name, fallback));
  if (!Number.isInteger(value) || value < 1) throw new RangeError(`--${name} must be a positive integer, got ${value}`);
  return value;
}

async function main(): Promise<void> {
  const recipe = flag("recipe", "mixed_bf16");
  if (!(recipe in RECIPES) || RECIPES[recipe as RecipeName].needsBase) {
    const choices = Object.keys(RECIPES).filter((name) => !RECIPES[name as RecipeName].needsBase);
    throw new RangeError(`--recipe must be one of ${choices.join(", ")} (the LoRA recipes need a base), got ${recipe}`);
  }
  const steps = positiveInteger("steps", "10000");
  const warmup = Math.min(positiveInteger("warmup", "1000"), Math.floor(steps / 2));
  const batchSize = positiveInteger("batch", "16");
  const seed = positiveInteger("seed", "1");
  const samples: Sample[] = [];
  const started = performance.now();
  const result = await runRecipe(
    recipe as RecipeName,
    { batchSize, steps, seed, device: "cpu", baseCheckpoint: "" },
    (progress) => samples.push({ step: progress.step, rss: process.memoryUsage.rss(), live: liveTensorCount() }),
  );
  const seconds = (performance.now() - started) / 1000;
  const after = samples.filter((s) => s.step > warmup);
  const bytesPerStep = slope(
    after.map((s) => s.step),
    after.map((s) => s.rss),
  );
  const tensorsPerStep = slope(
    after.map((s) => s.step),
    after.map((s) => s.live),
  );
  const first = after[0]!;
  const last = after[after.length - 1]!;
  const flat = bytesPerStep < FLAT_BYTES_PER_STEP && tensorsPerStep < 0.01;
  console.log(
    `mixprec soak: recipe ${recipe}, batch ${batchSize}, ${steps} steps (${result.stepMs.toFixed(1)} ms/step, ${seconds.toFixed(0)} s), slopes over steps ${warmup + 1}-${steps}\n`,
  );
  console.log(
    formatTable(
      ["measure", `at step ${first.step}`, `at step ${last.step}`, "slope per step"],
      [
        [
          "RSS (MiB)",
          (first.rss / 2 ** 20).toFixed(1),
          (last.rss / 2 ** 20).toFixed(1),
          `${bytesPerStep.toFixed(1)} B`,
        ],
        ["live tensors", String(first.live), String(last.live), tensorsPerStep.toFixed(4)],
      ],
    ),
  );
  console.log(
    `\n${flat ? "flat" : "GROWING"}: RSS ${bytesPerStep.toFixed(1)} bytes/step after warm-up (the demo's own loss curves account for 24), ${flat ? "below" : "above"} ${FLAT_BYTES_PER_STEP} bytes/step; final loss ${result.finalLoss.toFixed(3)}`,
  );
  const json = flag("json", "");
  if (json) {
    await Bun.write(
      json,
      JSON.stringify(
        { recipe, batchSize, steps, warmup, seconds, bytesPerStep, tensorsPerStep, flat, samples },
        null,
        1,
      ),
    );
    console.log(`JSON: ${json}`);
  }
}

if (import.meta.main) await main();
