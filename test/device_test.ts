import { describe, expect, test } from "bun:test";
import { cast } from "../src/cast.ts";
import { cudaCapabilities, type DeviceInfo, devices, registerDeviceProvider } from "../src/mod.ts";
import { inputs, SHAPE } from "./_matmul_worker.ts";

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
    expect(cpu.bf16Native).toBe(cpu.kernels === "avx512bf16");
    if (cpu.f16Native) expect(cpu.features).toContain("f16c");
    expect(cpu.threads).toBeGreaterThanOrEqual(1);
    for (const feature of cpu.features) {
      expect(["avx2", "avx512f", "avx512bf16", "f16c", "fma", "bmi2"]).toContain(feature);
    }
  });

  test("the CPU entry's kernels never need a feature the running CPU lacks", () => {
    const cpu = devices()[0]!;
    if (cpu.kind !== "cpu") throw new Error("the first device is not the CPU");
    expect(["baseline", "avx512", "avx512bf16"]).toContain(cpu.kernels);
    if (cpu.kernels !== "baseline") expect(cpu.features).toContain("avx512f");
    if (cpu.kernels === "avx512bf16") expect(cpu.features).toContain("avx512bf16");
    // A feature is reported only with its prerequisites (zig/src/cpu/dispatch.zig).
    if (cpu.features.includes("avx512f")) expect(cpu.features).toContain("avx2");
    if (cpu.features.includes("avx512bf16")) expect(cpu.features).toContain("avx512f");
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
  test("matmul in a child process gives the same float32 bits with MIXPREC_CPU=baseline and without", () => {
    const chosen = runWorker(undefined);
    const baseline = runWorker("baseline");
    if (chosen.result === null) throw new Error(`worker failed: ${chosen.stderr}`);
    if (baseline.result === null) throw new Error(`worker failed: ${baseline.stderr}`);
    expect(baseline.result.kernels).toBe("baseline");
    expect(["baseline", "avx512", "avx512bf16"]).toContain(chosen.result.kernels);
    // Every path runs the same FMA chain per element of C: float32 inputs give identical bits.
    expect(chosen.result.f32).toEqual(baseline.result.f32);
    if (chosen.result.kernels !== "avx512bf16") {
      // No AVX512-BF16 path here: bfloat16 is widened in registers on both runs, bit for bit.
      expect(chosen.result.bf16).toEqual(baseline.result.bf16);
      return;
    }
    // vdpbf16ps sums pairs in another order: both runs are within k eps sum|a||b| of the exact
    // sum, so they agree within twice that.
    const [m, n, k] = SHAPE;
    const a = new Float32Array(cast(cast(inputs(m * k, 1), "float32", "bfloat16"), "bfloat16", "float32").buffer);
    const b = new Float32Array(cast(cast(inputs(k * n, 2), "float32", "bfloat16"), "bfloat16", "float32").buffer);
    const wide = new Float32Array(new Uint32Array(chosen.result.bf16).buffer);
    const narrow = new Float32Array(new Uint32Array(baseline.result.bf16).buffer);
    let differing = 0;
    for (let i = 0; i < m; i++) {
      for (let j = 0; j < n; j++) {
        let magnitude = 0;
        for (let p = 0; p < k; p++) magnitude += Math.abs(a[i * k + p]! * b[p * n + j]!);
        const bound = 2 * k * 2 ** -23 * magnitude;
        const difference = Math.abs(wide[i * n + j]! - narrow[i * n + j]!);
        expect(difference).toBeLessThanOrEqual(bound);
        if (difference !== 0) differing++;
      }
    }
    console.log(
      `avx512bf16 vs baseline bfloat16 matmul: ${differing} of ${m * n} elements differ, all within the bound`,
    );
  });

  test("an unknown MIXPREC_CPU value is refused with the values it takes", () => {
    const run = runWorker("sse9");
    expect(run.result).toBeNull();
    expect(run.stderr).toContain('MIXPREC_CPU must be one of "baseline"');
  });
});
