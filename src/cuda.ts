/**
 * mixprec's advanced CUDA surface, the `mixprec/cuda` subpath: device discovery with reasons, raw
 * device memory, row tables and the kernels of a training step called one by one on device
 * addresses. Most code never needs it: tensors on "cuda:N" run every op, GradScaler and the fused
 * optimizers on the device through the main entry (`mixprec`). Use this module to measure
 * (`cudaSyncCount`, timers, memory stats), to build a custom step out of the multi-tensor kernels,
 * or to ask why CUDA is unavailable (`cudaAvailability`).
 *
 * Raw addresses are numbers (device addresses below 2^53) that nothing checks: a wrong address or
 * size is undefined behaviour on the device, as in the CUDA driver API itself.
 *
 * @example
 * ```ts
 * import { cudaAvailability, cudaSyncCount } from "mixprec/cuda";
 * if (cudaAvailability().available && cudaSyncCount() < 0) throw new Error("a count");
 * ```
 *
 * @module
 */

export {
  type CudaAvailability,
  cudaAlloc,
  cudaAvailability,
  cudaClipByNorm,
  cudaCopyToDevice,
  cudaCopyToHost,
  type CudaDeviceProperties,
  cudaDeviceCount,
  cudaDevices,
  cudaEmptyCache,
  cudaFill32,
  cudaFree,
  cudaFusedAdamW,
  cudaFusedSgd,
  cudaGlobalNorm,
  cudaMemoryStats,
  type CudaRow,
  cudaScale,
  cudaSumSquares,
  cudaSynchronize,
  cudaSyncCount,
  type CudaTable,
  cudaTable,
  cudaTimerStart,
  cudaTimerStop,
  cudaUnscaleCheck,
  cudaUpdateScale,
  type ScaleUpdateOptions,
} from "./backend/cuda.ts";
