import { describe, expect, test } from "bun:test";
import { mkdirSync, rmSync } from "node:fs";

// bench/step_bench.ts end to end on the smallest options (batch 1, one sample per median, no
// torch): every model builds and trains in fp32 and mixed bf16, each memory child reports, and
// the JSON holds every field the tables print. Timings are not checked: only that they exist.
const root = new URL("..", import.meta.url).pathname;
const configs = ["demo", "mid", "llama"];

describe("bench/step_bench.ts", () => {
  test("runs every model for one step and writes the step, memory and per-op fields", async () => {
    mkdirSync(`${root}.readme-examples`, { recursive: true });
    const json = `${root}.readme-examples/step_bench.json`;
    const child = Bun.spawn(
      [
        process.execPath,
        "bench/step_bench.ts",
        "--configs",
        configs.join(","),
        "--iterations",
        "1",
        "--no-torch",
        "--batch",
        "1",
        "--memory-batch",
        "1",
        "--memory-steps",
        "1",
        "--op-batch",
        "1",
        "--json",
        json,
      ],
      { cwd: root, stdout: "pipe", stderr: "pipe" },
    );
    const [code, stdout, stderr] = await Promise.all([
      child.exited,
      new Response(child.stdout).text(),
      new Response(child.stderr).text(),
    ]);
    if (code !== 0) throw new Error(`bench/step_bench.ts failed:\n${stderr}`);
    expect(stdout).toContain("## One training step");
    expect(stdout).toContain("torch columns skipped: --no-torch");
    const result = await Bun.file(json).json();
    rmSync(json);
    expect(result.steps.map((r: { config: string }) => r.config)).toEqual(configs);
    for (const r of result.steps) {
      for (const key of ["oursFp32Ms", "oursBf16Ms", "bf16OverFp32", "fp32Target", "bf16Target"]) {
        expect(Number.isFinite(r[key])).toBe(true);
      }
      expect(r.torchFp32Ms).toBeNull();
      // Freshly initialised: the loss is near ln(vocabulary) (ln 25 = 3.2, ln 256 = 5.5).
      for (const loss of [r.oursFp32Loss, r.oursBf16Loss]) {
        expect(loss).toBeGreaterThan(2.5);
        expect(loss).toBeLessThan(8);
      }
    }
    expect(result.memory.map((r: { config: string }) => r.config)).toEqual(configs);
    for (const r of result.memory) {
      expect(Number.isFinite(r.oursFp32MiB)).toBe(true);
      expect(Number.isFinite(r.oursBf16MiB)).toBe(true);
    }
    const ops = new Set(result.ops.map((r: { op: string }) => r.op.split(" ")[0]));
    for (const op of ["linear", "layerNorm", "gelu", "crossEntropy", "causalSelfAttention", "embedding", "add"]) {
      expect(ops.has(op)).toBe(true);
    }
    for (const r of result.ops) {
      expect(Number.isFinite(r.limitMs)).toBe(true);
      if (r.pass === "forward") expect(Number.isFinite(r.ms)).toBe(true);
    }
    expect(result.machine.fmaPeakGflops).toBeGreaterThan(0);
  }, 300_000);
});
