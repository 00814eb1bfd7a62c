/**
 * Small argument helpers shared by the CPU and CUDA kernel wrappers of the backend.
 *
 * @module
 */

import type { Tensor } from "../tensor.ts";

/** A tensor viewed as rows over its last axis: [rows, width] (0 rows when the width is 0). */
export function rowsOf(x: Tensor): [rows: number, width: number] {
  const width = x.shape[x.ndim - 1]!;
  return [width === 0 ? 0 : x.size / width, width];
}

/** A kernel's address argument: 0 for an absent or empty tensor. */
export function addressOf(t: Tensor | null): number {
  return t === null || t.size === 0 ? 0 : t.address;
}

/** N of a tensor on "cuda:N". */
export function cudaOrdinalOf(t: Tensor): number {
  return Number(t.device.slice(5));
}
