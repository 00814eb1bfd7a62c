/**
 * Storage kernels of the CPU backend: tensor blocks from the native allocator
 * (zig/src/cpu/host_memory.zig), each owned from birth by an ArrayBuffer whose deallocator frees
 * it when the buffer is collected, plus copies, fills and casts between tensors of one device.
 *
 * @module
 */

import { type Pointer, ptr, toArrayBuffer } from "bun:ffi";
import { check, native } from "../../_ffi.ts";
import { dtypeInfo } from "../../dtype.ts";
import type { Tensor } from "../../tensor.ts";

/** A block of tensor storage. */
export interface Storage {
  /** The address kernels use (host memory on the CPU, device memory on CUDA). */
  readonly address: number;
  readonly sizeBytes: number;
  /**
   * On the CPU, the ArrayBuffer that owns the block: views of it keep the memory alive after the
   * tensor is gone. null for device memory.
   */
  readonly buffer: ArrayBuffer | null;
  /** The backend's handle for freeing (the host block's cell; 0 on devices and for mapped bytes). */
  readonly handle: number;
  /** Where the tensor starts in `buffer` (0 except for {@linkcode mappedStorage}). */
  readonly byteOffset?: number;
  /** Memory the tensor does not own (a mapped file): dispose() drops it, never frees it. */
  readonly external?: boolean;
}

/**
 * Storage over bytes the tensor does not own: a private (copy-on-write) mapping of a checkpoint,
 * so loading a weight whose dtype already matches copies nothing. The bytes' buffer stays alive as
 * long as the tensor or a view of it does; writes (an optimizer step) touch private pages only.
 * The caller checks alignment to the element size.
 */
export function mappedStorage(bytes: Uint8Array): Storage {
  return {
    address: bytes.byteLength === 0 ? 0 : ptr(bytes),
    sizeBytes: bytes.byteLength,
    buffer: bytes.buffer as ArrayBuffer,
    handle: 0,
    byteOffset: bytes.byteOffset,
    external: true,
  };
}

/** Storage kernels every backend has. Tensors passed in live on the backend's device. */
export interface StorageKernels {
  /** Allocates `sizeBytes` on device `ordinal` (-1: the CPU). Not zeroed. */
  allocate(ordinal: number, sizeBytes: number): Storage;
  /** Frees a block now. The caller guarantees nothing will read it again. */
  free(ordinal: number, storage: Storage): void;
  /** Sets every byte of `target`'s storage to zero. */
  zero(target: Tensor): void;
  /** Copies `source`'s bytes into `target` (same dtype and size, same device). */
  copy(source: Tensor, target: Tensor): void;
  /** Casts `source` into `target` (same size, same device): nearest even, or stochastic/saturating by flags. */
  cast(source: Tensor, target: Tensor, flags: number, seed: number): void;
  /** Copies host bytes (`source.byteLength` of them) into `target`'s storage. */
  write(target: Tensor, source: ArrayBufferView): void;
  /** Copies `source`'s bytes into a host view (`target.byteLength` of them), after all queued work. */
  read(source: Tensor, target: ArrayBufferView): void;
}

const PAIR_OUT = new BigUint64Array(3);
let releaseCallback: number | undefined;

function release(): number {
  if (releaseCallback === undefined) {
    check(native().mp_host_release_callback(ptr(PAIR_OUT)), "mp_host_release_callback");
    releaseCallback = Number(PAIR_OUT[0]);
  }
  return releaseCallback;
}

/**
 * Disposed blocks kept whole, ArrayBuffer and all, for the next tensor of the same byte size: a
 * training step allocates the same shapes every step, and wrapping a fresh block in an
 * ArrayBuffer with a deallocator (bun:ffi `toArrayBuffer`, which also reports the memory to the
 * collector) cost more than many small kernels (1-7 us a tensor; 7% of a LLaMA-sized step). At
 * most 64 blocks of a size and MIXPREC_HOST_CACHE_MB (default 1024; 0 turns it off) MiB in all;
 * past that, blocks go back to the native allocator, whose own cache of blocks of 64 KiB and more
 * is bounded by the same number.
 */
const kept = new Map<number, Storage[]>();
const KEPT_PER_SIZE = 64;
let keptBlocks = 0;
let keptBytes = 0;
let keptLimit: number | undefined;

/** MIXPREC_HOST_CACHE_MB in bytes, read as the native allocator reads it (a decimal integer). */
function keptLimitBytes(): number {
  if (keptLimit === undefined) {
    const text = process.env.MIXPREC_HOST_CACHE_MB;
    keptLimit = text !== undefined && /^[0-9]+$/.test(text) ? Number(text) * 2 ** 20 : 1024 * 2 ** 20;
  }
  return keptLimit;
}

/**
 * Live host tensor blocks and their bytes (blocks leave when disposed, or when the garbage
 * collector frees a tensor, or a view of its data, nobody disposed), and `cachedBytes`: disposed
 * blocks kept to reuse for the next tensor of that size (a training step allocates the same shapes
 * every step; reuse saves wrapping a new block for JavaScript and a page fault per 4 KiB). At most
 * MIXPREC_HOST_CACHE_MB (default 1024) MiB are kept at each of two levels (blocks still wrapped
 * for JavaScript, and the native allocator's blocks of 64 KiB and more);
 * {@linkcode emptyHostCache} returns them all to the system.
 */
export function hostMemoryStats(): { blocks: number; bytes: number; cachedBytes: number } {
  check(native().mp_host_stats(ptr(PAIR_OUT)), "mp_host_stats");
  return {
    blocks: Number(PAIR_OUT[0]) - keptBlocks,
    bytes: Number(PAIR_OUT[1]) - keptBytes,
    cachedBytes: Number(PAIR_OUT[2]) + keptBytes,
  };
}

/**
 * Frees the host blocks the allocator keeps for reuse (torch.cuda.empty_cache for host memory),
 * e.g. after training and before a long evaluation with other shapes.
 *
 * @returns The bytes released.
 * @example
 * ```ts
 * import { emptyHostCache, hostMemoryStats } from "./storage.ts";
 * emptyHostCache();
 * if (hostMemoryStats().cachedBytes !== 0) throw new Error("cache not empty");
 * ```
 */
export function emptyHostCache(): number {
  const before = hostMemoryStats().cachedBytes;
  for (const list of kept.values()) {
    for (const storage of list) check(native().mp_host_free(storage.handle), "freeing a kept block");
  }
  kept.clear();
  keptBlocks = 0;
  keptBytes = 0;
  check(native().mp_host_empty_cache(ptr(PAIR_OUT)), "mp_host_empty_cache");
  return before - hostMemoryStats().cachedBytes;
}

function bytesOf(view: ArrayBufferView): Uint8Array {
  return new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
}

export const storageCpu: StorageKernels = {
  allocate(_ordinal, sizeBytes) {
    const reused = kept.get(sizeBytes)?.pop();
    if (reused !== undefined) {
      keptBlocks--;
      keptBytes -= sizeBytes;
      return reused;
    }
    check(native().mp_host_alloc(sizeBytes, ptr(PAIR_OUT)), `allocating ${sizeBytes} bytes`);
    const address = Number(PAIR_OUT[0]);
    const handle = Number(PAIR_OUT[1]);
    // The buffer owns the block from now on: its deallocator frees it (once) when collected.
    const buffer = toArrayBuffer(address, 0, Math.max(sizeBytes, 1), handle, release());
    return { address, sizeBytes, buffer, handle };
  },
  free(_ordinal, storage) {
    // The caller guarantees nothing reads the block again (no view of it left the tensor), so the
    // block and its ArrayBuffer can serve the next tensor of this size.
    const size = storage.sizeBytes;
    let list = kept.get(size);
    if (storage.buffer !== null && keptBytes + size <= keptLimitBytes() && (list?.length ?? 0) < KEPT_PER_SIZE) {
      if (list === undefined) kept.set(size, (list = []));
      list.push(storage);
      keptBlocks++;
      keptBytes += size;
      return;
    }
    check(native().mp_host_free(storage.handle), "freeing a tensor");
  },
  zero(target) {
    if (target.sizeBytes > 0) check(native().mp_zero(target.address, target.sizeBytes), "zeroing a tensor");
  },
  copy(source, target) {
    if (source.size === 0) return;
    const code = dtypeInfo(source.dtype).code;
    check(
      native().mp_cast(source.address as Pointer, target.address as Pointer, source.size, code, code, 0, 0),
      "copying a tensor",
    );
  },
  cast(source, target, flags, seed) {
    if (source.size === 0) return;
    const from = dtypeInfo(source.dtype).code;
    const to = dtypeInfo(target.dtype).code;
    check(
      native().mp_cast(source.address as Pointer, target.address as Pointer, source.size, from, to, flags, seed),
      `casting ${source.dtype} to ${target.dtype}`,
    );
  },
  write(target, source) {
    if (source.byteLength === 0) return;
    new Uint8Array(toArrayBuffer(target.address, 0, source.byteLength)).set(bytesOf(source));
  },
  read(source, target) {
    if (target.byteLength === 0) return;
    bytesOf(target).set(new Uint8Array(toArrayBuffer(source.address, 0, target.byteLength)));
  },
};
