/**
 * The devices this process can compute on, with the precision capabilities code chooses by.
 *
 * `cpu` is always there: it supports bfloat16 everywhere (matmuls on AVX512-BF16 dot products
 * where the CPU has them, widened to float32 in registers otherwise) and fp8 (emulated). The
 * native library is built for x86-64-v3 and picks wider matmul kernels at run time from what the
 * running CPU and OS allow; `MIXPREC_CPU=baseline` (or `avx512`) caps that choice. CUDA devices (`cuda:N`) are added by the CUDA backend
 * through {@linkcode registerDeviceProvider}; their bf16 support needs compute capability 8.0+
 * (sm_80) and their fp8 support 8.9+ (sm_89).
 *
 * @module
 */

import { cpuInfoFlags, setThreadCount } from "./backend/cpu/info.ts";
import { cudaDevices } from "./backend/cuda.ts";

/** The CPU entry of {@linkcode devices}. */
export interface CpuDeviceInfo {
  readonly name: "cpu";
  readonly kind: "cpu";
  /** bfloat16 is always supported on the CPU. */
  readonly bf16: true;
  /**
   * Whether the CPU has bfloat16 arithmetic (`kernels` is "avx512bf16" or "amx"). On "amx"
   * bfloat16 x bfloat16 matmuls run on the AMX tile unit (`tdpbf16ps`, float32 accumulation);
   * elsewhere bfloat16 is widened to float32 in registers.
   */
  readonly bf16Native: boolean;
  /** Whether float16 conversion runs on F16C instructions. */
  readonly f16Native: boolean;
  /** fp8 is supported, always emulated. */
  readonly fp8: true;
  readonly fp8Native: false;
  /** Threads a kernel call uses. */
  readonly threads: number;
  /**
   * ISA features of the running CPU that its OS enables (cpuid and XCR0): any of "avx2",
   * "avx512f", "avx512bf16", "f16c", "fma", "bmi2", "amx_bf16" (AMX-TILE and AMX-BF16, with Linux
   * granting this process the tile state).
   */
  readonly features: readonly string[];
  /**
   * The matmul kernels the library chose for this CPU: "baseline" (what the library was built
   * for, x86-64-v3 by default), "avx512" (x86-64-v4), "avx512bf16" (x86-64-v4 + AVX512-BF16) or
   * "amx" (those plus AMX-BF16 for bfloat16 matmuls).
   */
  readonly kernels: CpuKernels;
}

/** The kernel paths of {@linkcode CpuDeviceInfo.kernels}, narrowest first. */
export type CpuKernels = "baseline" | "avx512" | "avx512bf16" | "amx";

/** A CUDA entry of {@linkcode devices} (added by the CUDA backend). */
export interface CudaDeviceInfo {
  /** "cuda:0", "cuda:1", ... */
  readonly name: `cuda:${number}`;
  readonly kind: "cuda";
  /** [major, minor], e.g. [8, 0] for an A100, [9, 0] for an H100. */
  readonly computeCapability: readonly [number, number];
  /** Whether bfloat16 arithmetic is supported (compute capability 8.0+). */
  readonly bf16: boolean;
  /** Whether fp8 tensor-core arithmetic is supported (compute capability 8.9+). */
  readonly fp8: boolean;
  /** Total device memory. */
  readonly memoryBytes: number;
  /** The product name the driver reports, e.g. "NVIDIA H100 80GB HBM3". */
  readonly model: string;
}

/** Any entry of {@linkcode devices}. */
export type DeviceInfo = CpuDeviceInfo | CudaDeviceInfo;

/**
 * bf16 needs sm_80+, fp8 sm_89+ (the rule CUDA entries and validatePrecisionConfig share).
 *
 * @param computeCapability [major, minor].
 * @returns Whether the GPU has bfloat16 and fp8.
 * @example
 * ```ts
 * import { cudaCapabilities } from "./device.ts";
 * const t4 = cudaCapabilities([7, 5]);
 * if (t4.bf16 || !cudaCapabilities([8, 9]).fp8) throw new Error("wrong capabilities");
 * ```
 */
export function cudaCapabilities(computeCapability: readonly [number, number]): { bf16: boolean; fp8: boolean } {
  const [major, minor] = computeCapability;
  return { bf16: major >= 8, fp8: major > 8 || (major === 8 && minor >= 9) };
}

// mp_cpu_info's bits (zig/src/ffi.zig): 0..5 the running CPU's features, 6 F16C in use, 8..15
// threads, 16..19 the kernel path, 20 AMX-BF16.
const FEATURE_BITS: readonly (readonly [number, string])[] = [
  [1, "avx2"],
  [2, "avx512f"],
  [4, "avx512bf16"],
  [8, "f16c"],
  [16, "fma"],
  [32, "bmi2"],
  [1 << 20, "amx_bf16"],
];
const F16C_IN_USE = 64;
const KERNELS: readonly CpuKernels[] = ["baseline", "avx512", "avx512bf16", "amx"];

/**
 * The CPU entry, from the native library's `mp_cpu_info`.
 *
 * @returns The CPU's precision capabilities, threads, ISA features and chosen kernels.
 * @example
 * ```ts
 * import { cpuDevice } from "./device.ts";
 * const cpu = cpuDevice();
 * if (cpu.bf16Native && !cpu.features.includes("avx512bf16")) throw new Error("inconsistent");
 * ```
 */
export function cpuDevice(): CpuDeviceInfo {
  const flags = cpuInfoFlags();
  const features = FEATURE_BITS.filter(([bit]) => (flags & bit) !== 0).map(([, name]) => name);
  const kernels = KERNELS[((flags >>> 16) & 0xf) - 1] ?? "baseline";
  return Object.freeze({
    name: "cpu" as const,
    kind: "cpu" as const,
    bf16: true as const,
    bf16Native: kernels === "avx512bf16" || kernels === "amx",
    f16Native: (flags & F16C_IN_USE) !== 0,
    fp8: true as const,
    fp8Native: false as const,
    threads: (flags >>> 8) & 0xff,
    features: Object.freeze(features),
    kernels,
  });
}

/**
 * The `cuda:N` entries from the CUDA backend (src/backend/cuda.ts): empty, without throwing, where
 * libcuda.so.1 or a device is missing.
 */
export function cudaDeviceEntries(): CudaDeviceInfo[] {
  return cudaDevices().map((d) => {
    const computeCapability = Object.freeze([d.computeMajor, d.computeMinor] as const);
    return Object.freeze({
      name: d.device,
      kind: "cuda" as const,
      computeCapability,
      ...cudaCapabilities(computeCapability),
      memoryBytes: d.totalMemoryBytes,
      model: d.name,
    });
  });
}

const providers: (() => readonly DeviceInfo[])[] = [cudaDeviceEntries];

/**
 * Adds a source of device entries (the CUDA backend registers one that lists `cuda:N`). A
 * provider that throws is skipped, so a broken driver never hides the CPU.
 *
 * @param provider Returns the devices it knows, each with a unique name.
 * @returns A function that removes the provider again.
 * @example
 * ```ts
 * import { devices, registerDeviceProvider } from "./device.ts";
 * const remove = registerDeviceProvider(() => []);
 * remove();
 * if (devices()[0]!.name !== "cpu") throw new Error("the CPU comes first");
 * ```
 */
export function registerDeviceProvider(provider: () => readonly DeviceInfo[]): () => void {
  if (typeof provider !== "function") throw new TypeError("registerDeviceProvider takes a function");
  providers.push(provider);
  return () => {
    const index = providers.indexOf(provider);
    if (index >= 0) providers.splice(index, 1);
  };
}

/**
 * Lists the devices this process can use, CPU first.
 *
 * @returns The CPU entry and any CUDA entries, with their precision capabilities.
 * @example
 * ```ts
 * import { devices } from "./device.ts";
 * const cpu = devices()[0]!;
 * if (cpu.name !== "cpu" || !cpu.bf16 || typeof cpu.threads !== "number") throw new Error("no cpu entry");
 * ```
 */
export function devices(): DeviceInfo[] {
  const list: DeviceInfo[] = [cpuDevice()];
  for (const provider of providers) {
    let found: readonly DeviceInfo[];
    try {
      found = provider();
    } catch {
      continue;
    }
    for (const device of found) if (!list.some((d) => d.name === device.name)) list.push(device);
  }
  return list;
}

/**
 * Sets how many CPU threads every kernel may use (0 restores the default: one per CPU, at most
 * 16). Results do not depend on it: every kernel gives the same bits on any thread count.
 *
 * @param count An integer in [0, 16].
 * @example
 * ```ts
 * import { cpuDevice, setThreads } from "./device.ts";
 * setThreads(1);
 * if (cpuDevice().threads !== 1) throw new Error("not set");
 * setThreads(0);
 * ```
 */
export function setThreads(count: number): void {
  if (!Number.isInteger(count) || count < 0 || count > 16) {
    throw new RangeError(`setThreads: count must be an integer in [0, 16] (0: one per CPU), got ${count}`);
  }
  setThreadCount(count);
}
