/**
 * CUDA kernel throughput: GB/s (bytes read + written) of the device cast, multi-tensor unscale and
 * global-norm kernels, beside cuMemcpyDtoDAsync of the same bytes (the memory-bandwidth limit),
 * timed with CUDA events around `--iterations` back-to-back launches. Prints "no CUDA device:
 * skipped" (and why) on a machine without an NVIDIA GPU.
 *
 *   bun bench/cuda_bench.ts [--max 67108864] [--iterations 20] [--device 0]
 */

import {
  cudaAlloc,
  cudaAvailability,
  cudaCast,
  cudaCopyToDevice,
  cudaCopyOnDevice,
  cudaDevices,
  cudaFill32,
  cudaFree,
  cudaFusedAdamW,
  cudaGlobalNorm,
  cudaTable,
  cudaTimerStart,
  cudaTimerStop,
  cudaUnscaleCheck,
} from "../src/backend/cuda.ts";
import { CastFlag } from "../src/_ffi.ts";
import { type DtypeName, dtypeInfo } from "../src/mod.ts";
import { adamConstants } from "../src/optim/scale_by_adam.ts";
import { countLabel, flag, formatTable } from "./_harness.ts";

const availability = cudaAvailability();
if (!availability.available) {
  console.log(`no CUDA device: skipped (${availability.reason})`);
  process.exit(0);
}

const maxCount = Number(flag("max", String(1 << 26)));
const iterations = Number(flag("iterations", "20"));
const ordinal = Number(flag("device", "0"));
const counts = [1 << 16, 1 << 20, 1 << 24, 1 << 26].filter((c) => c <= maxCount);
const info = cudaDevices()[ordinal]!;
if (info.name.includes("fake")) {
  console.log("fake CUDA driver (MIXPREC_LIBCUDA): this run checks the script, its timings mean nothing\n");
}

/** Device milliseconds per call of `launch`, after one warm-up call. */
function timeMs(launch: () => void): number {
  launch();
  cudaTimerStart(ordinal);
  for (let i = 0; i < iterations; i++) launch();
  return cudaTimerStop(ordinal) / iterations;
}

function gbPerSecond(bytes: number, ms: number): number {
  return bytes / (ms * 1e6);
}

interface CastCase {
  readonly name: string;
  readonly from: DtypeName;
  readonly to: DtypeName;
  readonly flags?: number;
}

const CASTS: readonly CastCase[] = [
  { name: "f32->bf16", from: "float32", to: "bfloat16" },
  { name: "f32->bf16 SR", from: "float32", to: "bfloat16", flags: CastFlag.stochastic },
  { name: "bf16->f32", from: "bfloat16", to: "float32" },
  { name: "f32->f16", from: "float32", to: "float16" },
  { name: "f32->e4m3", from: "float32", to: "float8_e4m3fn" },
  { name: "f32->e5m2 sat", from: "float32", to: "float8_e5m2", flags: CastFlag.saturate },
];

const rows: string[][] = [];
const size = (dtype: DtypeName) => dtypeInfo(dtype).bits / 8;
for (const count of counts) {
  // 16 bytes per element: room for the copy limit of the widest kernel (fused AdamW reads 14).
  const source = cudaAlloc(ordinal, count * 16);
  const target = cudaAlloc(ordinal, count * 16);
  // 1.5 everywhere: finite in every dtype, so unscale does the full read-modify-write.
  cudaFill32(ordinal, source, 0x3fc00000, count);
  cudaFill32(ordinal, target, 0x3fc03fc0, count);
  const copyRow = (name: string, bytes: number, readBytes: number, ms: number) => {
    const copyMs = timeMs(() => cudaCopyOnDevice(ordinal, target, source, readBytes));
    const gb = gbPerSecond(bytes, ms);
    const copyGb = gbPerSecond(2 * readBytes, copyMs);
    rows.push([name, countLabel(count), gb.toFixed(1), copyGb.toFixed(1), `${((100 * gb) / copyGb).toFixed(0)}%`]);
  };
  for (const c of CASTS) {
    const from = dtypeInfo(c.from).code;
    const to = dtypeInfo(c.to).code;
    const ms = timeMs(() => cudaCast(ordinal, source, target, count, from, to, c.flags ?? 0, 7));
    copyRow(c.name, count * (size(c.from) + size(c.to)), count * size(c.from), ms);
  }
  const found = cudaAlloc(ordinal, 4);
  const norm = cudaAlloc(ordinal, 4);
  for (const dtype of ["float32", "bfloat16"] as const) {
    // Four tensors in one launch, as a model's gradients would be.
    const quarter = count / 4;
    using table = cudaTable(
      ordinal,
      [0, 1, 2, 3].map((i) => ({
        address: target + i * quarter * size(dtype),
        count: quarter,
        dtypeCode: dtypeInfo(dtype).code,
      })),
    );
    const bytes = count * size(dtype);
    const unscaleMs = timeMs(() => cudaUnscaleCheck(table, { invScale: 1 }, found));
    copyRow(`check ${dtype} (inv 1)`, bytes, bytes, unscaleMs);
    // 0.9999999 shrinks the values only slightly, so repeated runs stay finite and write every element.
    const scaleMs = timeMs(() => cudaUnscaleCheck(table, { invScale: 0.9999999 }, found));
    copyRow(`unscale ${dtype}`, 2 * bytes, bytes, scaleMs);
    const normMs = timeMs(() => cudaGlobalNorm(table, norm));
    copyRow(`global norm ${dtype}`, bytes, bytes, normMs);
  }
  // Fused AdamW, bf16 params and grads with float32 masters and state: 28 bytes per element.
  {
    const [param, grad, master, m, v] = [2, 2, 4, 4, 4].map((bytes) => cudaAlloc(ordinal, count * bytes));
    cudaFill32(ordinal, param!, 0x3f803f80, count / 2);
    cudaFill32(ordinal, grad!, 0x3c003c00, count / 2); // bf16 0.0078125: small, finite
    cudaFill32(ordinal, master!, 0x3f800000, count);
    cudaFill32(ordinal, m!, 0, count);
    cudaFill32(ordinal, v!, 0, count);
    const bf16 = BigInt(dtypeInfo("bfloat16").code);
    const row = new BigUint64Array([
      BigInt(grad!),
      BigInt(param!),
      BigInt(master!),
      BigInt(m!),
      BigInt(v!),
      0n,
      BigInt(count),
      bf16 | (bf16 << 32n),
      BigInt(dtypeInfo("float32").code),
    ]);
    // zig/src/cpu/adamw.zig AdamHyper: inv_scale, clip, 1 - b1, b2, 1 - b2, step_scale, eps_hat,
    // -lr, decay, then flags and padding (u32 zeros).
    const c = adamConstants(0.9, 0.999, 1e-8, 1);
    const hyper = new Float32Array(12);
    hyper.set([1, 1, c.oneMinusBeta1, c.beta2, c.oneMinusBeta2, c.stepScale, c.epsHat, -1e-3, 1 - 1e-5]);
    const [table, constants] = [cudaAlloc(ordinal, 72), cudaAlloc(ordinal, 48)];
    cudaCopyToDevice(ordinal, table, row);
    cudaCopyToDevice(ordinal, constants, hyper);
    const ms = timeMs(() => cudaFusedAdamW(ordinal, table, 1, count, constants, found));
    copyRow("fused AdamW bf16/f32", 28 * count, 14 * count, ms);
    for (const address of [param, grad, master, m, v, table, constants]) cudaFree(ordinal, address!);
  }
  for (const address of [source, target, found, norm]) cudaFree(ordinal, address);
}

console.log(
  `CUDA kernels on ${info.name} (sm_${info.computeMajor}${info.computeMinor}), GB/s of bytes read + written, CUDA events over ${iterations} launches\n`,
);
console.log(formatTable(["kernel", "elements", "kernel GB/s", "memcpy DtoD (limit)", "kernel/copy"], rows));
console.log(
  "\nThe copy column moves the kernel's read bytes (read + write); read-only kernels (check, norm) can exceed it.",
);
