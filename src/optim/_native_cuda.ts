/**
 * The fused optimizers on CUDA tensors: the row table and constants that src/optim/_native.ts
 * builds for the CPU kernel, copied to the device and run by the device kernel
 * (zig/src/cuda/kernels.zig mp_fused_adamw_kernel, the CPU's arithmetic element for element).
 *
 * @module
 */

import {
  cudaAlloc,
  cudaCopyToDevice,
  cudaFree,
  cudaFusedAdamW,
  cudaFusedSgd,
  cudaSumSquares,
  cudaTable,
} from "../backend/cuda.ts";
import { dtypeInfo } from "../dtype.ts";
import type { Tensor } from "../tensor.ts";

/** The tensors of one fused row (src/optim/_native.ts AdamRowTensors or SgdRowTensors). */
interface RowTensors {
  readonly grad: Tensor;
  readonly param: Tensor;
  readonly master: Tensor | null;
  readonly m?: Tensor;
  readonly v?: Tensor;
  readonly vMax?: Tensor | null;
  readonly buffer?: Tensor | null;
}

/**
 * Throws TypeError unless every tensor of every row is on `device` (a kernel must never see
 * another device's addresses).
 * @internal
 */
export function checkOneDevice(rows: readonly RowTensors[], device: string): void {
  for (const row of rows) {
    for (const t of [row.grad, row.param, row.master, row.m, row.v, row.vMax, row.buffer]) {
      if (t !== null && t !== undefined && t.device !== device) {
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
  rows: readonly RowTensors[],
  table: BigUint64Array,
  hyper: Float32Array,
  foundInf: Uint32Array | null,
): boolean {
  return fusedStepOnDevice(device, rows, table, hyper, foundInf, cudaFusedAdamW);
}

/**
 * fusedAdamWOnDevice for the fused SGD step (56-byte rows, 32-byte constants).
 * @internal
 */
export function fusedSgdOnDevice(
  device: string,
  rows: readonly RowTensors[],
  table: BigUint64Array,
  hyper: Float32Array,
  foundInf: Uint32Array | null,
): boolean {
  return fusedStepOnDevice(device, rows, table, hyper, foundInf, cudaFusedSgd);
}

function fusedStepOnDevice(
  device: string,
  rows: readonly RowTensors[],
  table: BigUint64Array,
  hyper: Float32Array,
  foundInf: Uint32Array | null,
  launch: typeof cudaFusedAdamW,
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
    launch(ordinal, tableAddress, rows.length, totalCount, hyperAddress, 0);
  } finally {
    // Freed blocks are reused only by later work on the same stream, after this kernel.
    cudaFree(ordinal, tableAddress);
    cudaFree(ordinal, hyperAddress);
  }
  return true;
}

/**
 * sumSquares for CUDA tensors (all on one device): the same rule on the device, read back (one wait).
 * The float64 total is summed in another order than on the CPU, so it may differ in the last bits.
 * @internal
 */
export function sumSquaresOnDevice(tensors: readonly Tensor[], invScale: number): { sum: number; foundInf: boolean } {
  const device = tensors[0]!.device;
  tensors.forEach((t, i) => {
    if (t.device !== device) {
      throw new TypeError(
        `Gradient ${i} is on ${t.device} but gradient 0 is on ${device}: sum one device's gradients per call`,
      );
    }
    if (t.dtype !== "float32" && t.dtype !== "float16" && t.dtype !== "bfloat16") {
      throw new TypeError(`Gradient ${i} has dtype ${t.dtype}: gradients are float32, float16 or bfloat16`);
    }
  });
  using table = cudaTable(
    Number(device.slice(5)),
    tensors.map((t) => ({ address: t.address, count: t.size, dtypeCode: dtypeInfo(t.dtype).code })),
  );
  return cudaSumSquares(table, invScale);
}
