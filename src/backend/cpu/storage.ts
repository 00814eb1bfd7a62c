/**
 * Storage kernels of the CPU backend: 64-byte aligned host memory from the native allocator, and
 * copies, fills and casts between tensors of one device.
 *
 * @module
 */

import { ptr } from "bun:ffi";
import { check, native } from "../../_ffi.ts";
import { dtypeInfo } from "../../dtype.ts";
import type { Tensor } from "../../tensor.ts";

/** Storage kernels every backend has. Tensors passed in live on the backend's device. */
export interface StorageKernels {
  /** Allocates `sizeBytes` on device `ordinal` (-1: the CPU) and returns the address. */
  allocate(ordinal: number, sizeBytes: number): number;
  /** Frees what `allocate` returned. */
  free(ordinal: number, address: number, sizeBytes: number): void;
  /** Sets every byte of `target`'s storage to zero. */
  zero(target: Tensor): void;
  /** Copies `source`'s bytes into `target` (same dtype and size, same device). */
  copy(source: Tensor, target: Tensor): void;
  /** Casts `source` into `target` (same size, same device): nearest even, or stochastic/saturating by flags. */
  cast(source: Tensor, target: Tensor, flags: number, seed: number): void;
}

const ADDRESS_OUT = new BigUint64Array(1);

export const storageCpu: StorageKernels = {
  allocate(_ordinal, sizeBytes) {
    check(native().mp_alloc(sizeBytes, ptr(ADDRESS_OUT)), `allocating ${sizeBytes} bytes`);
    return Number(ADDRESS_OUT[0]);
  },
  free(_ordinal, address, sizeBytes) {
    check(native().mp_free(address, sizeBytes), "freeing a tensor");
  },
  zero(target) {
    if (target.sizeBytes > 0) check(native().mp_zero(target.address, target.sizeBytes), "zeroing a tensor");
  },
  copy(source, target) {
    if (source.size === 0) return;
    const code = dtypeInfo(source.dtype).code;
    check(native().mp_cast(source.address, target.address, source.size, code, code, 0, 0), "copying a tensor");
  },
  cast(source, target, flags, seed) {
    if (source.size === 0) return;
    const from = dtypeInfo(source.dtype).code;
    const to = dtypeInfo(target.dtype).code;
    check(
      native().mp_cast(source.address, target.address, source.size, from, to, flags, seed),
      `casting ${source.dtype} to ${target.dtype}`,
    );
  },
};
