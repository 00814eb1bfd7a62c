/**
 * The fused optimizers on CUDA tensors: the row table and constants that src/optim/_native.ts
 * builds for the CPU kernel, copied to the device and run by the device kernel
 * (zig/src/cuda/kernels.zig mp_fused_adamw_kernel, the CPU's arithmetic element for element).
 *
 * @module
 */

import { cudaAlloc, cudaCopyToDevice, cudaFree, cudaFusedAdamW } from "../backend/cuda.ts";
import type { Tensor } from "../tensor.ts";

/** The tensors of one fused AdamW row (src/optim/_native.ts AdamRowTensors). */
interface AdamRowTensors {
  readonly grad: Tensor;
  readonly param: Tensor;
  readonly master: Tensor | null;
  readonly m: Tensor;
  readonly v: Tensor;
  readonly vMax: Tensor | null;
}

/**
 * Throws TypeError unless every tensor of every row is on `device` (a kernel must never see
 * another device's addresses).
 * @internal
 */
export function checkOneDevice(rows: readonly AdamRowTensors[], device: string): void {
  for (const row of rows) {
    for (const t of [row.grad, row.param, row.master, row.m, row.v, row.vMax]) {
      if (t !== null && t.device !== device) {
        throw new TypeError(
          `A fused step has tensors on ${device} and on ${t.device}: keep parameters, gradients, masters and optimizer state on one device`,
        );
      }
    }
  }
}

/**
 * Runs a fused AdamW step on `device` with the host-built `table` (72-byte rows of device
 * addresses) and `hyper` (48 bytes). A host `foundInf` flag that is set skips the step here, as on
 * the CPU; nothing waits for the device.
 * @internal
 */
export function fusedAdamWOnDevice(
  device: string,
  rows: readonly AdamRowTensors[],
  table: BigUint64Array,
  hyper: Float32Array,
  foundInf: Uint32Array | null,
): boolean {
  checkOneDevice(rows, device);
  let totalCount = 0;
  for (const row of rows) totalCount += row.param.size;
  if (foundInf !== null && foundInf[0] !== 0) return false;
  if (totalCount === 0) return true;
  const ordinal = Number(device.slice(5));
  const tableAddress = cudaAlloc(ordinal, table.byteLength);
  const hyperAddress = cudaAlloc(ordinal, hyper.byteLength);
  try {
    cudaCopyToDevice(ordinal, tableAddress, table);
    cudaCopyToDevice(ordinal, hyperAddress, hyper);
    cudaFusedAdamW(ordinal, tableAddress, rows.length, totalCount, hyperAddress, 0);
  } finally {
    // Freed blocks are reused only by later work on the same stream, after this kernel.
    cudaFree(ordinal, tableAddress);
    cudaFree(ordinal, hyperAddress);
  }
  return true;
}
