import { describe, expect, test } from "bun:test";
import { cudaCapabilities, type DeviceInfo, devices, registerDeviceProvider } from "../src/mod.ts";
import { SHAPE } from "./_matmul_worker.ts";

const WORKER = new URL("./_matmul_worker.ts", import.meta.url).pathname;

interface WorkerResult {
  kernels: string;
  f32: number[];
  bf16: number[];
}

/** Runs test/_matmul_worker.ts with MIXPREC_CPU set to `cap` (or unset) and parses its output. */
function runWorker(cap: string | undefined): { result: WorkerResult | null; stderr: string } {
  const env = { ...process.env };
  delete env.MIXPREC_CPU;
  if (cap !== undefined) env.MIXPREC_CPU = cap;
  const child = Bun.spawnSync([process.execPath, WORKER], { env, stdout: "pipe", stderr: "pipe" });
  const stderr = child.stderr.toString();
  if (child.exitCode !== 0) return { result: null, stderr };
  return { result: JSON.parse(child.stdout.toString()) as WorkerResult, stderr };
}

describe("devices()", () => {
  test("lists the CPU first with its bf16 and fp8 support and its threads", () => {
    const cpu = devices()[0]!;
    expect(cpu.name).toBe("cpu");
    if (cpu.kind !== "cpu") throw new Error("the first device is not the CPU");
    expect(cpu.bf16).toBe(true);
    expect(cpu.fp8).toBe(true);
    expect(cpu.fp8Native).toBe(false);
    expect(typeof cpu.bf16Native).toBe("boolean");
    expect(cpu.bf16Native).toBe(cpu.kernels === "avx512bf16" || cpu.kernels === "amx");
    if (cpu.f16Native) expect(cpu.features).toContain("f16c");
    expect(cpu.threads).toBeGreaterThanOrEqual(1);
    for (const feature of cpu.features) {
      expect(["avx2", "avx512f", "avx512bf16", "f16c", "fma", "bmi2", "amx_bf16"]).toContain(feature);
    }
  });

  test("the CPU entry's kernels never need a feature the running CPU lacks", () => {
    const cpu = devices()[0]!;
    if (cpu.kind !== "cpu") throw new Error("the first device is not the CPU");
    expect(["baseline", "avx512", "avx512bf16", "amx"]).toContain(cpu.kernels);
    if (cpu.kernels !== "baseline") expect(cpu.features).toContain("avx512f");
    if (cpu.kernels === "avx512bf16" || cpu.kernels === "amx") expect(cpu.features).toContain("avx512bf16");
    if (cpu.kernels === "amx") expect(cpu.features).toContain("amx_bf16");
    // A feature is reported only with its prerequisites (zig/src/cpu/dispatch.zig).
    if (cpu.features.includes("avx512f")) expect(cpu.features).toContain("avx2");
    if (cpu.features.includes("avx512bf16")) expect(cpu.features).toContain("avx512f");
    if (cpu.features.includes("amx_bf16")) expect(cpu.features).toContain("avx512bf16");
  });

  test("providers add CUDA entries, and a failing provider never hides the CPU", () => {
    const fake: DeviceInfo = {
      name: "cuda:3",
      kind: "cuda",
      computeCapability: [7, 5],
      ...cudaCapabilities([7, 5]),
      memoryBytes: 16e9,
      model: "simulated T4",
    };
    const removeFake = registerDeviceProvider(() => [fake]);
    const removeBroken = registerDeviceProvider(() => {
      throw new Error("driver gone");
    });
    try {
      const list = devices();
      expect(list[0]!.name).toBe("cpu");
      expect(list.find((d) => d.name === "cuda:3")).toEqual(fake);
    } finally {
      removeFake();
      removeBroken();
    }
    expect(devices().some((d) => d.name === "cuda:3")).toBe(false);
  });
});

describe("cudaCapabilities()", () => {
  test("bf16 starts at sm_80 and fp8 at sm_89", () => {
    expect(cudaCapabilities([7, 5])).toEqual({ bf16: false, fp8: false });
    expect(cudaCapabilities([8, 0])).toEqual({ bf16: true, fp8: false });
    expect(cudaCapabilities([8, 6])).toEqual({ bf16: true, fp8: false });
    expect(cudaCapabilities([8, 9])).toEqual({ bf16: true, fp8: true });
    expect(cudaCapabilities([9, 0])).toEqual({ bf16: true, fp8: true });
  });
});

describe("MIXPREC_CPU", () => {
  test("matmul in a child process gives the same float32 (and, but for AMX, bfloat16) bits with MIXPREC_CPU=baseline and without", () => {
    const chosen = runWorker(undefined);
    const baseline = runWorker("baseline");
    if (chosen.result === null) throw new Error(`worker failed: ${chosen.stderr}`);
    if (baseline.result === null) throw new Error(`worker failed: ${baseline.stderr}`);
    expect(baseline.result.kernels).toBe("baseline");
    expect(["baseline", "avx512", "avx512bf16", "amx"]).toContain(chosen.result.kernels);
    // Every path runs the same FMA chain per element of C, and bfloat16 widens to float32 on every
    // path but AMX (and the opt-in bf16Dot flag; test/ops/matmul_test.ts bounds that one).
    expect(chosen.result.f32).toEqual(baseline.result.f32);
    if (chosen.result.kernels !== "amx") {
      expect(chosen.result.bf16).toEqual(baseline.result.bf16);
      return;
    }
    // AMX sums bfloat16 products on the tile unit in its own order: the bits differ in the last
    // places, within k * eps(float32) * sum|a||b| <= k^2 eps of the widened result (|a|, |b| <= 1)...
    const k = SHAPE[2];
    const bound = 2 * k * k * 2 ** -24;
    const values = (bits: number[]) => new Float32Array(new Uint32Array(bits).buffer);
    const amx = values(chosen.result.bf16);
    const widened = values(baseline.result.bf16);
    let worst = 0;
    for (let i = 0; i < amx.length; i++) worst = Math.max(worst, Math.abs(amx[i]! - widened[i]!));
    expect(worst).toBeLessThanOrEqual(bound);
    // ...capping at avx512bf16 gives the widened bits back, and AMX gives one answer run after run.
    const capped = runWorker("avx512bf16");
    if (capped.result === null) throw new Error(`worker failed: ${capped.stderr}`);
    expect(capped.result.kernels).toBe("avx512bf16");
    expect(capped.result.bf16).toEqual(baseline.result.bf16);
    const again = runWorker("amx");
    if (again.result === null) throw new Error(`worker failed: ${again.stderr}`);
    expect(again.result.bf16).toEqual(chosen.result.bf16);
  });

  test("an unknown MIXPREC_CPU value is refused with the values it takes", () => {
    const run = runWorker("sse9");
    expect(run.result).toBeNull();
    expect(run.stderr).toContain('MIXPREC_CPU must be one of "baseline"');
  });
});
