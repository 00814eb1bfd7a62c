/**
 * One backend per device kind. Ops never branch on where a tensor lives: they ask
 * `backendOf(tensor.device)` and call the kernel it answers with. A backend owns storage
 * (allocate, free, copy, fill, cast) and every op kernel; the CPU backend (backend/cpu.ts) runs
 * the Zig kernels of zig/src/ops/ and zig/src/cpu/ with SIMD and the thread pool, the CUDA backend
 * (backend/cuda.ts) launches the same arithmetic compiled to PTX. Only files in backend/ import
 * the native library's table (src/_ffi.ts).
 *
 * Kernels take tensors whose storage the op has already allocated on the same device (outputs
 * are never zeroed first: every kernel writes every element of its outputs) and return nothing;
 * a kernel that a backend does not have yet throws a MixprecError("not_implemented") that names
 * the op, the device and the fix.
 *
 * @module
 */

import { MixprecError } from "../errors.ts";
import type { Device } from "../tensor.ts";
import { cpuBackend } from "./cpu.ts";
import { cudaBackendOps } from "./cuda.ts";
import { cudaMatmulKernels } from "./cuda_matmul.ts";
import type { AmpKernels } from "./cpu/amp.ts";
import type { AttentionKernels } from "./cpu/attention.ts";
import type { ElementwiseKernels } from "./cpu/elementwise.ts";
import type { EmbeddingKernels } from "./cpu/embedding.ts";
import type { LayoutKernels } from "./cpu/layout.ts";
import type { NormKernels } from "./cpu/norm.ts";
import type { RopeKernels } from "./cpu/rope.ts";
import type { SoftmaxKernels } from "./cpu/softmax.ts";
import type { StorageKernels } from "./cpu/storage.ts";

/** Every kernel a device offers. Each family's interface lives beside its CPU implementation. */
export interface Backend
  extends StorageKernels,
    LayoutKernels,
    AmpKernels,
    ElementwiseKernels,
    NormKernels,
    SoftmaxKernels,
    EmbeddingKernels,
    AttentionKernels,
    RopeKernels {
  /** "cpu" or "cuda". */
  readonly kind: "cpu" | "cuda";
}

/** The device ordinal: -1 for the CPU, N for "cuda:N". */
export function ordinalOf(device: Device): number {
  return device === "cpu" ? -1 : Number(device.slice(5));
}

let cudaBackend: Backend | undefined;

/**
 * The backend that runs kernels on `device`.
 *
 * @param device "cpu" or "cuda:N".
 * @returns The device kind's backend (one object per kind; kernels take the ordinal from their
 * tensors).
 * @example
 * ```ts
 * import { backendOf } from "./backend.ts";
 * if (backendOf("cpu").kind !== "cpu") throw new Error("wrong backend");
 * ```
 */
export function backendOf(device: Device): Backend {
  if (device === "cpu") return cpuBackend;
  cudaBackend ??= withMissingKernels({ ...cudaBackendOps, ...cudaMatmulKernels }, "cuda");
  return cudaBackend;
}

/**
 * A backend whose absent kernels throw a clear error instead of being undefined, so a partial
 * backend (the CUDA one gains kernels op family by op family) fails with the op's name.
 */
function withMissingKernels(partial: Partial<Backend> & { kind: "cpu" | "cuda" }, kind: string): Backend {
  return new Proxy(partial, {
    get(target, name, receiver) {
      const value = Reflect.get(target, name, receiver);
      if (value !== undefined || typeof name !== "string") return value;
      return () => {
        throw new MixprecError(
          "not_implemented",
          `The ${kind} backend has no ${name} kernel yet: move the tensors to the CPU with .to("cpu") for this op`,
        );
      };
    },
  }) as Backend;
}
