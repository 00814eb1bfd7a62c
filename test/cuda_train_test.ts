/**
 * The demo's training loop (bench/train.ts) on cuda:0, end to end: parameters, batches, every op of
 * the forward and backward pass, the GradScaler and fusedAdamW on the device, against the same run
 * on the CPU. It runs where CUDA is available, the fake driver and fake cuBLAS included
 * (MIXPREC_LIBCUDA / MIXPREC_LIBCUBLAS: `make test-cuda-fake`), where each kernel is its CPU twin,
 * so equal results prove the plumbing; on a GPU they prove the kernels. Otherwise it is skipped
 * with one line saying why.
 */

import { describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { cudaAvailability } from "../src/backend/cuda.ts";

const availability = cudaAvailability();
const gpu = availability.available && (process.env.MIXPREC_DEVICE ?? "") !== "cpu";
if (!gpu) {
  const why = availability.available ? "MIXPREC_DEVICE=cpu" : availability.reason;
  console.log(`CUDA training test skipped (${why}); it runs where CUDA (or the fake driver) is available`);
}

const TRAIN = new URL("../bench/train.ts", import.meta.url).pathname;

interface Recipe {
  readonly name: string;
  readonly evalLoss: number;
  readonly skippedSteps: number;
  readonly finalScale: number;
  readonly lossCurve: readonly number[];
}

function train(device: string, dir: string): Recipe[] {
  const json = join(dir, `${device.replace(":", "")}.json`);
  const run = Bun.spawnSync(
    [
      process.execPath,
      TRAIN,
      "--device",
      device,
      "--steps",
      "12",
      "--recipes",
      "fp32,mixed_bf16,fp16_dynamic",
      "--json",
      json,
      "--svg",
      join(dir, "plot.svg"),
    ],
    { stdout: "pipe", stderr: "pipe", env: process.env },
  );
  if (run.exitCode !== 0) throw new Error(`train.ts --device ${device} failed: ${run.stderr.toString()}`);
  return (JSON.parse(readFileSync(json, "utf8")) as { recipes: Recipe[] }).recipes;
}

describe.skipIf(!gpu)("bench/train.ts on cuda:0", () => {
  test("trains fp32, mixed bf16 and fp16 with dynamic scaling on the device with the CPU's results", () => {
    const dir = mkdtempSync(join(tmpdir(), "mixprec-cuda-train-"));
    try {
      const cpu = train("cpu", dir);
      const cuda = train("cuda:0", dir);
      expect(cuda.map((r) => r.name)).toEqual(["fp32", "mixed_bf16", "fp16_dynamic"]);
      for (let i = 0; i < cpu.length; i++) {
        expect(cpu[i]!.lossCurve.length).toBe(12);
        expect(Number.isFinite(cpu[i]!.evalLoss)).toBe(true);
        expect(cuda[i]!.lossCurve).toEqual(cpu[i]!.lossCurve);
        expect(cuda[i]!.evalLoss).toBe(cpu[i]!.evalLoss);
        expect(cuda[i]!.skippedSteps).toBe(cpu[i]!.skippedSteps);
        expect(cuda[i]!.finalScale).toBe(cpu[i]!.finalScale);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 300_000);
});
