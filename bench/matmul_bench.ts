/**
 * Matmul throughput: GFLOP/s of the native kernel (zig/src/cpu/matmul.zig) for float32 and
 * bfloat16 inputs at square sizes 256 to 2048 and at tall-skinny training shapes, beside the
 * machine's measured float32 FMA peak (mp_peak_fma: independent vector FMA chains on every thread)
 * and, when torch imports, torch.matmul at the same shapes in the same run.
 *
 *   bun bench/matmul_bench.ts [--max 2048] [--budget-ms 400] [--threads N]
 *
 * Shapes are M x N x K: C[M, N] = A[M, K] B[K, N], both row-major (torch's a @ b). `make bench`
 * runs it with one thread (the kernel against torch core for core, which a busy machine disturbs
 * least) and with every thread.
 */

import { ptr } from "bun:ffi";
import { check, native } from "../src/_ffi.ts";
import { cast } from "../src/cast.ts";
import type { DtypeName, StorageArray } from "../src/dtype.ts";
import { matmulInto } from "../src/backend/cpu/layout.ts";
import { measure } from "mitata";
import { flag, formatTable, peakFmaGflops } from "./_harness.ts";

const maxDim = Number(flag("max", "2048"));
const budgetMs = Number(flag("budget-ms", "400"));
const threads = Number(flag("threads", String(navigator.hardwareConcurrency)));
check(native().mp_set_threads(threads), "mp_set_threads");

const SHAPES: readonly (readonly [number, number, number])[] = [
  [256, 256, 256],
  [512, 512, 512],
  [1024, 1024, 1024],
  [2048, 2048, 2048],
  [8192, 256, 256],
  [4096, 1024, 256],
  [8192, 768, 256],
].filter(([m, n, k]) => Math.max(m, n, k) <= Math.max(maxDim, 8192) && Math.min(m, n, k) <= maxDim) as never;
const DTYPES: readonly DtypeName[] = ["float32", "bfloat16"];

function torchResults(): Record<string, number> | null {
  const probe = Bun.spawnSync(["python3", "-c", "import torch"], { stderr: "pipe" });
  if (probe.exitCode !== 0) return null;
  const script = new URL("./compare_torch_matmul.py", import.meta.url).pathname;
  const run = Bun.spawnSync(
    [
      "python3",
      script,
      "--shapes",
      SHAPES.map((s) => s.join(",")).join(";"),
      "--dtypes",
      DTYPES.join(","),
      "--threads",
      String(threads),
      "--budget-ms",
      String(budgetMs),
    ],
    { stderr: "pipe" },
  );
  if (run.exitCode !== 0) {
    console.log(`torch comparison failed: ${run.stderr.toString().trim().split("\n").pop()}`);
    return null;
  }
  return JSON.parse(run.stdout.toString());
}

function inputs(dtype: DtypeName, count: number, seed: number): StorageArray {
  const values = new Float32Array(count);
  for (let i = 0; i < count; i++) values[i] = Math.sin(i * 0.37 + seed) * 0.5;
  return dtype === "float32" ? values : cast(values, "float32", dtype);
}

/**
 * The fastest call of `fn` in about `ms` of calls (mitata's min). On a machine shared with other
 * work, interference only ever slows a call down, so the minimum is the kernel's own speed; torch
 * is timed the same way.
 */
async function bestNs(fn: () => unknown, ms: number): Promise<number> {
  const stats = await measure(fn, { min_cpu_time: ms * 1e6, min_samples: 5, max_samples: 10_000 });
  return (stats as { min: number }).min;
}

const peak = peakFmaGflops(threads);
const torch = torchResults();
const rows: string[][] = [];
for (const [m, n, k] of SHAPES) {
  const c = new Float32Array(m * n);
  for (const dtype of DTYPES) {
    const a = inputs(dtype, m * k, 1);
    const b = inputs(dtype, k * n, 2);
    const flops = 2 * m * n * k;
    const ns = await bestNs(() => matmulInto(a, dtype, b, dtype, c, 1, m, n, k, 0), budgetMs);
    const gflops = flops / ns;
    const torchGflops = torch?.[`${m}x${n}x${k} ${dtype}`];
    rows.push([
      `${m}x${n}x${k}`,
      dtype,
      gflops.toFixed(1),
      `${((100 * gflops) / peak).toFixed(0)}%`,
      torchGflops === undefined ? "-" : torchGflops.toFixed(1),
      torchGflops === undefined ? "-" : (gflops / torchGflops).toFixed(2),
    ]);
  }
}

console.log(`## matmul (${threads} threads), GFLOP/s of the fastest call\n`);
console.log(`float32 FMA peak (mp_peak_fma, ${threads} threads): ${peak.toFixed(1)} GFLOP/s`);
const [load1] = (
  await Bun.file("/proc/loadavg")
    .text()
    .catch(() => "? ")
).split(" ");
console.log(
  `load average when the run ended: ${load1} on ${navigator.hardwareConcurrency} CPUs (other work slows both columns)`,
);
console.log(
  torch === null
    ? "torch is not installed (pip install torch==2.13.0 adds the comparison column)"
    : `torch ${torch.torch} CPU matmul, ${torch.threads} threads, in the same run`,
);
console.log(
  "bfloat16 uses AVX512-BF16 dot products where the CPU has them (each instruction does twice the float32 FMA's work, so its % of the float32 peak can exceed 100%)\n",
);
console.log(formatTable(["M x N x K", "dtype", "mixprec", "% of f32 peak", "torch", "mixprec / torch"], rows));
