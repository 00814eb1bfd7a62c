import { describe, expect, test } from "bun:test";
import { mkdirSync, rmSync } from "node:fs";

// The demo (bench/train.ts, `make demo`) end to end on a few steps: it runs, writes the JSON the
// issue specifies, and the same seed gives the same numbers.
const root = new URL("..", import.meta.url).pathname;
const recipes = "fp32,fp16_dynamic,lora_int8_fp32";

async function runDemo(tag: string, seed: number): Promise<{ recipes: Record<string, unknown>[] }> {
  mkdirSync(`${root}.readme-examples`, { recursive: true });
  const json = `${root}.readme-examples/train_${tag}.json`;
  const svg = `${root}.readme-examples/train_${tag}.svg`;
  const child = Bun.spawn(
    [
      process.execPath,
      "bench/train.ts",
      "--recipes",
      recipes,
      "--steps",
      "4",
      "--seed",
      String(seed),
      "--json",
      json,
      "--svg",
      svg,
    ],
    { cwd: root, stdout: "pipe", stderr: "pipe" },
  );
  const [code, stderr] = await Promise.all([child.exited, new Response(child.stderr).text()]);
  if (code !== 0) throw new Error(`bench/train.ts failed:\n${stderr}`);
  const svgText = await Bun.file(svg).text();
  expect(svgText.startsWith("<svg")).toBe(true);
  const result = await Bun.file(json).json();
  rmSync(json);
  rmSync(svg);
  return result;
}

const timing = new Set(["stepMs", "peakRssBytes"]);
const withoutTiming = (r: Record<string, unknown>) =>
  Object.fromEntries(Object.entries(r).filter(([k]) => !timing.has(k)));

describe("bench/train.ts", () => {
  test("writes every field the JSON format names, and the same seed gives the same numbers", async () => {
    const first = await runDemo("a", 3);
    const second = await runDemo("b", 3);
    expect(first.recipes.map((r) => r.name)).toEqual(recipes.split(","));
    for (const r of first.recipes) {
      for (const key of ["name", "finalLoss", "evalLoss", "skippedSteps", "finalScale", "stepMs", "peakRssBytes"]) {
        expect(r).toHaveProperty(key);
      }
      expect(Number.isFinite(r.evalLoss)).toBe(true);
    }
    expect(second.recipes.map(withoutTiming)).toEqual(first.recipes.map(withoutTiming));
    const other = await runDemo("c", 4);
    expect(other.recipes[0]!.finalLoss).not.toBe(first.recipes[0]!.finalLoss);
  }, 120_000);
});
