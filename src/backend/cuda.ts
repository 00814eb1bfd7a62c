/**
 * The CUDA backend: devices, device memory, copies and kernel launches over the native library's
 * `mp_cuda_*` exports (zig/src/cuda/driver.zig). libcuda.so.1 is opened at run time, so everything
 * here answers "unavailable, because ..." on a machine without an NVIDIA driver instead of failing
 * to load. Device memory is a number (a u64 device address below 2^53); every call names the
 * device ordinal N of "cuda:N".
 *
 * Work is queued on one stream per device and nothing waits for the device except reading memory
 * back ({@linkcode cudaCopyToHost}), {@linkcode cudaSynchronize}, {@linkcode cudaEmptyCache} and the
 * timer; {@linkcode cudaSyncCount} counts those waits so a test can prove that a step has none.
 *
 * @module
 */

import { ptr } from "bun:ffi";
import { lastError, native, Status } from "../_ffi.ts";
import { dtypeInfo } from "../dtype.ts";
import type { Tensor } from "../tensor.ts";
import {
  type AdamHyper,
  type AdamRowTensors,
  adamHyper,
  adamRows,
  rowOf,
  type SgdHyper,
  type SgdRowTensors,
  sgdHyper,
  sgdRows,
  tensorRows,
} from "./_tables.ts";
import type { Storage } from "./cpu/storage.ts";
import { MixprecError } from "../errors.ts";
import { rowsCuda } from "./cuda/rows.ts";
import { cudaMapKernels } from "./cuda/map.ts";

/** A CUDA device as {@linkcode cudaDevices} lists it. */
export interface CudaDeviceProperties {
  /** "cuda:N". */
  readonly device: `cuda:${number}`;
  /** N. */
  readonly ordinal: number;
  /** The driver's name, e.g. "NVIDIA H100 80GB HBM3". */
  readonly name: string;
  /** Compute capability as "major.minor", e.g. "9.0". */
  readonly computeCapability: string;
  readonly computeMajor: number;
  readonly computeMinor: number;
  /** Device memory in bytes. */
  readonly totalMemoryBytes: number;
  readonly multiprocessorCount: number;
  /** bfloat16 arithmetic in hardware (sm_80 and later). */
  readonly bf16: boolean;
  /** fp8 tensor cores (sm_89 and later). */
  readonly fp8: boolean;
}

/** Whether CUDA can be used here, and why not when it cannot. */
export type CudaAvailability = { readonly available: true } | { readonly available: false; readonly reason: string };

const STATUS_NAMES: Record<number, string> = Object.fromEntries(
  Object.entries(Status).map(([name, code]) => [code, name]),
);
const U32_OUT = new Uint32Array(1);
const U64_OUT = new BigUint64Array(2);
const F32_OUT = new Float32Array(1);

let availability: CudaAvailability | undefined;

/**
 * Whether CUDA is usable: the native library loads, libcuda.so.1 loads and cuInit succeeds. The
 * answer is computed once. Never throws.
 *
 * @returns `{ available: true }` or `{ available: false, reason }` with a sentence naming the fix.
 * @example
 * ```ts
 * import { cudaAvailability } from "./cuda.ts";
 * const status = cudaAvailability();
 * if (!status.available && !status.reason) throw new Error("a reason is always given");
 * ```
 */
export function cudaAvailability(): CudaAvailability {
  if (availability !== undefined) return availability;
  try {
    const code = native().mp_cuda_init();
    availability =
      code === Status.ok ? { available: true } : { available: false, reason: lastError() || statusName(code) };
  } catch (error) {
    availability = { available: false, reason: error instanceof Error ? error.message : String(error) };
  }
  return availability;
}

function statusName(code: number): string {
  return STATUS_NAMES[code] ?? `unknown status ${code}`;
}

/**
 * Throws a MixprecError whose code is the status name and whose message carries the native
 * library's reason (the CUresult name for a failed driver call).
 */
export function checkCuda(code: number, what: string): void {
  if (code === Status.ok) return;
  const reason = lastError();
  throw new MixprecError(statusName(code), `${what} failed: ${reason || statusName(code)}`);
}

/**
 * The number of CUDA devices (0 where CUDA is unavailable). Never throws.
 *
 * @returns The device count.
 * @example
 * ```ts
 * import { cudaDeviceCount } from "./cuda.ts";
 * if (!Number.isInteger(cudaDeviceCount())) throw new Error("a count");
 * ```
 */
export function cudaDeviceCount(): number {
  if (!cudaAvailability().available) return 0;
  checkCuda(native().mp_cuda_device_count(ptr(U32_OUT)), "Counting CUDA devices");
  return U32_OUT[0]!;
}

/**
 * Every CUDA device with its capabilities; empty where CUDA is unavailable. Never throws for a
 * missing driver.
 *
 * @returns One entry per device, in ordinal order.
 * @example
 * ```ts
 * import { cudaDevices } from "./cuda.ts";
 * for (const d of cudaDevices()) if (d.fp8 && !d.bf16) throw new Error("fp8 devices also have bf16");
 * ```
 */
export function cudaDevices(): CudaDeviceProperties[] {
  const devices: CudaDeviceProperties[] = [];
  const name = new Uint8Array(256);
  const info = new BigUint64Array(3);
  for (let ordinal = 0; ordinal < cudaDeviceCount(); ordinal++) {
    name.fill(0);
    checkCuda(native().mp_cuda_device_info(ordinal, ptr(name), name.length, ptr(info)), `Reading cuda:${ordinal}`);
    const words = new Uint32Array(info.buffer);
    const [major, minor] = [words[0]!, words[1]!];
    const end = name.indexOf(0);
    devices.push({
      device: `cuda:${ordinal}`,
      ordinal,
      name: new TextDecoder().decode(name.subarray(0, end < 0 ? name.length : end)),
      computeCapability: `${major}.${minor}`,
      computeMajor: major,
      computeMinor: minor,
      totalMemoryBytes: Number(info[1]),
      multiprocessorCount: words[4]!,
      bf16: major >= 8,
      fp8: major > 8 || (major === 8 && minor >= 9),
    });
  }
  return devices;
}

/**
 * The ordinal N of "cuda:N" ("cuda" means "cuda:0"), checking that CUDA is available and that the
 * device exists.
 *
 * @param device "cuda" or "cuda:N".
 * @returns N.
 * @throws {MixprecError} code "cuda_unavailable" with the reason and the fix when CUDA is not there.
 * @throws {RangeError} when N is not a device of this machine.
 * @example
 * ```ts
 * import { cudaAvailability, requireCuda } from "./cuda.ts";
 * if (!cudaAvailability().available) {
 *   let code = "";
 *   try { requireCuda("cuda:0"); } catch (e) { code = (e as { code: string }).code; }
 *   if (code !== "cuda_unavailable") throw new Error("expected cuda_unavailable");
 * }
 * ```
 */
export function requireCuda(device: string): number {
  const match = /^cuda(?::(\d+))?$/.exec(device);
  if (match === null) throw new TypeError(`Unknown device ${JSON.stringify(device)}: use "cpu" or "cuda:N"`);
  const ordinal = Number(match[1] ?? 0);
  const status = cudaAvailability();
  if (!status.available) {
    throw new MixprecError(
      "cuda_unavailable",
      `Device ${device} was asked for but CUDA is unavailable: ${status.reason}`,
    );
  }
  const count = cudaDeviceCount();
  if (ordinal >= count) {
    throw new RangeError(
      `Device ${device} does not exist: this machine has ${count} CUDA device(s), cuda:0 to cuda:${count - 1}`,
    );
  }
  return ordinal;
}

/**
 * Allocates `sizeBytes` of device memory from the caching allocator (a cached block of the same size
 * class when there is one, so no driver call and no wait).
 *
 * @param ordinal The device N of "cuda:N".
 * @param sizeBytes Bytes wanted (rounded up to the size class).
 * @returns The device address.
 * @example
 * ```ts
 * import { cudaAlloc, cudaAvailability, cudaCopyToDevice, cudaCopyToHost, cudaFree } from "./cuda.ts";
 * if (cudaAvailability().available) {
 *   const address = cudaAlloc(0, 8);
 *   cudaCopyToDevice(0, address, new Float32Array([1, 2]));
 *   const back = new Float32Array(2);
 *   cudaCopyToHost(0, back, address);
 *   cudaFree(0, address);
 *   if (back[1] !== 2) throw new Error("round trip failed");
 * }
 * ```
 */
export function cudaAlloc(ordinal: number, sizeBytes: number): number {
  checkCuda(
    native().mp_cuda_alloc(ordinal, sizeBytes, ptr(U64_OUT)),
    `Allocating ${sizeBytes} bytes on cuda:${ordinal}`,
  );
  return Number(U64_OUT[0]);
}

/**
 * Returns a block from {@linkcode cudaAlloc} to the cache (no driver call, no wait; later work on
 * the stream may reuse it, which is safe because the device runs the stream in order).
 *
 * @param ordinal The device.
 * @param address An address cudaAlloc returned and that is still live.
 */
export function cudaFree(ordinal: number, address: number): void {
  checkCuda(native().mp_cuda_free(ordinal, address), `Freeing device memory on cuda:${ordinal}`);
}

/**
 * Gives the allocator's cached blocks back to the driver (waits for the device first).
 *
 * @param ordinal The device.
 */
export function cudaEmptyCache(ordinal: number): void {
  checkCuda(native().mp_cuda_empty_cache(ordinal), `Emptying the cache of cuda:${ordinal}`);
}

/**
 * The allocator's bytes: held for live blocks, and held in its cache for reuse.
 *
 * @param ordinal The device.
 * @returns `{ liveBytes, cachedBytes }` (size classes, not requested sizes).
 */
export function cudaMemoryStats(ordinal: number): { liveBytes: number; cachedBytes: number } {
  checkCuda(native().mp_cuda_memory_stats(ordinal, ptr(U64_OUT)), `Reading memory stats of cuda:${ordinal}`);
  return { liveBytes: Number(U64_OUT[0]), cachedBytes: Number(U64_OUT[1]) };
}

/** The bytes of any view (bun:ffi's ptr takes typed arrays, not DataView or ArrayBufferView). */
function bytesOfView(view: ArrayBufferView): Uint8Array {
  return new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
}

/**
 * Copies a host view's bytes to device memory through pinned staging. Returns before the device has
 * them (no wait); `source` may be reused at once, and later work on the stream sees the bytes.
 *
 * @param ordinal The device.
 * @param address The device address to write.
 * @param source Any typed array or DataView.
 */
export function cudaCopyToDevice(ordinal: number, address: number, source: ArrayBufferView): void {
  if (source.byteLength === 0) return;
  checkCuda(
    native().mp_cuda_memcpy_h2d(ordinal, address, ptr(bytesOfView(source)), source.byteLength),
    `Copying to cuda:${ordinal}`,
  );
}

/**
 * Copies device bytes into a host view after all queued work (waits for the device: counted).
 *
 * @param ordinal The device.
 * @param target The host view to fill, `target.byteLength` bytes.
 * @param address The device address to read.
 */
export function cudaCopyToHost(ordinal: number, target: ArrayBufferView, address: number): void {
  if (target.byteLength === 0) return;
  checkCuda(
    native().mp_cuda_memcpy_d2h(ordinal, ptr(bytesOfView(target)), address, target.byteLength),
    `Copying from cuda:${ordinal}`,
  );
}

/**
 * Copies device bytes to device bytes on the stream (no wait).
 *
 * @param ordinal The device.
 * @param target Destination device address.
 * @param source Source device address.
 * @param sizeBytes Bytes to copy.
 */
export function cudaCopyOnDevice(ordinal: number, target: number, source: number, sizeBytes: number): void {
  checkCuda(native().mp_cuda_memcpy_d2d(ordinal, target, source, sizeBytes), `Copying on cuda:${ordinal}`);
}

/**
 * Fills `count` 32-bit words at `address` with `value` on the stream (no wait), e.g. to zero a
 * found-inf flag before a step.
 *
 * @param ordinal The device.
 * @param address A 4-byte aligned device address.
 * @param value The u32 to store.
 * @param count How many words.
 */
export function cudaFill32(ordinal: number, address: number, value: number, count: number): void {
  checkCuda(native().mp_cuda_fill32(ordinal, address, value >>> 0, count), `Filling memory on cuda:${ordinal}`);
}

/**
 * The device cast kernel: mp_cast's arguments on device addresses (no wait). Tensors use it through
 * `t.to(dtype)`.
 *
 * @param ordinal The device.
 * @param source Source device address.
 * @param target Target device address (not overlapping the source).
 * @param count Elements.
 * @param fromCode Source dtype code (dtypeInfo(dtype).code).
 * @param toCode Target dtype code.
 * @param flags CastFlag bits (stochastic, saturate).
 * @param seed Stochastic-rounding seed.
 */
export function cudaCast(
  ordinal: number,
  source: number,
  target: number,
  count: number,
  fromCode: number,
  toCode: number,
  flags: number,
  seed: number,
): void {
  checkCuda(
    native().mp_cuda_launch_cast(ordinal, source, target, count, fromCode, toCode, flags, seed),
    `Casting on cuda:${ordinal}`,
  );
}

/**
 * Waits until the device has finished everything queued (one counted synchronisation).
 *
 * @param ordinal The device.
 */
export function cudaSynchronize(ordinal: number): void {
  checkCuda(native().mp_cuda_sync(ordinal), `Synchronising cuda:${ordinal}`);
}

/**
 * How many times the library has waited for a device since it was loaded (reads, explicit syncs,
 * cache emptying, timers). Read it before and after a step: equal means the step never waited.
 *
 * @returns The count.
 * @example
 * ```ts
 * import { cudaSyncCount } from "./cuda.ts";
 * if (cudaSyncCount() < 0) throw new Error("a count");
 * ```
 */
export function cudaSyncCount(): number {
  checkCuda(native().mp_cuda_sync_count(ptr(U64_OUT)), "Reading the synchronisation count");
  return Number(U64_OUT[0]);
}

/**
 * Records the timer's start event on the device's stream (for benchmarks).
 *
 * @param ordinal The device.
 */
export function cudaTimerStart(ordinal: number): void {
  checkCuda(native().mp_cuda_timer_start(ordinal), `Starting a timer on cuda:${ordinal}`);
}

/**
 * Records the timer's stop event, waits for it (counted) and returns the device time since the start.
 *
 * @param ordinal The device.
 * @returns Milliseconds between the two events.
 */
export function cudaTimerStop(ordinal: number): number {
  checkCuda(native().mp_cuda_timer_stop(ordinal, ptr(F32_OUT)), `Stopping a timer on cuda:${ordinal}`);
  return F32_OUT[0]!;
}

/** One tensor of a device row table. */
export interface CudaRow {
  /** Device address of the elements. */
  readonly address: number;
  /** Element count. */
  readonly count: number;
  /** Native dtype code (dtypeInfo(dtype).code). */
  readonly dtypeCode: number;
}

/**
 * A table of (address, count, dtype) rows in device memory: what the multi-tensor kernels read, so
 * one launch covers any number of tensors. Build it once for a fixed list of tensors (parameters,
 * gradients) and reuse it every step; dispose it when done.
 */
export interface CudaTable {
  readonly ordinal: number;
  readonly address: number;
  readonly rowCount: number;
  readonly totalCount: number;
  dispose(): void;
  [Symbol.dispose](): void;
}

/**
 * Uploads a row table to device memory (no wait: the copy is queued before any kernel that reads it).
 *
 * @param ordinal The device.
 * @param rows The tensors, each a device address, a count and a dtype code.
 * @returns The table; dispose it when the tensors are gone.
 */
export function cudaTable(ordinal: number, rows: readonly CudaRow[]): CudaTable {
  const words = tensorRows(rows);
  let totalCount = 0;
  for (const row of rows) totalCount += row.count;
  const address = cudaAlloc(ordinal, words.byteLength);
  cudaCopyToDevice(ordinal, address, words);
  let live = true;
  const dispose = () => {
    if (!live) return;
    live = false;
    cudaFree(ordinal, address);
  };
  return { ordinal, address, rowCount: rows.length, totalCount, dispose, [Symbol.dispose]: dispose };
}

/**
 * Multi-tensor unscale and non-finite check on the device, in place. The scale is either a host
 * number (`invScale`) or the device address of the float32 loss scale (`scaleAddress`), in which
 * case the kernel uses float32(1 / float64(scale)) and the host never reads the scale. Sets the
 * device u32 at `foundInfAddress` to 1 when any element is inf or NaN (zero it before). No wait.
 *
 * @param table The gradients, from {@linkcode cudaTable}.
 * @param scale `{ invScale }` (host number) or `{ scaleAddress }` (device float32 loss scale).
 * @param foundInfAddress Device u32 flag, set to 1 when any element is inf or NaN.
 */
export function cudaUnscaleCheck(
  table: CudaTable,
  scale: { readonly invScale: number } | { readonly scaleAddress: number },
  foundInfAddress: number,
): void {
  const invScale = "invScale" in scale ? Math.fround(scale.invScale) : 1;
  const scaleAddress = "scaleAddress" in scale ? scale.scaleAddress : 0;
  checkCuda(
    native().mp_cuda_launch_unscale_check(
      table.ordinal,
      table.address,
      table.rowCount,
      table.totalCount,
      invScale,
      scaleAddress,
      foundInfAddress,
    ),
    `Unscaling on cuda:${table.ordinal}`,
  );
}

/** Dynamic loss-scale hyperparameters (PyTorch GradScaler's names and defaults). */
export interface ScaleUpdateOptions {
  readonly growthFactor?: number;
  readonly backoffFactor?: number;
  readonly growthInterval?: number;
}

/**
 * PyTorch's `_amp_update_scale_` on the device: `stateAddress` holds { scale: float32, tracker:
 * int32 } (8 bytes) and `foundInfAddress` the u32 flag the unscale set. No wait.
 *
 * @param ordinal The device.
 * @param stateAddress Device { scale: float32, tracker: int32 }, updated in place.
 * @param foundInfAddress Device u32 flag from {@linkcode cudaUnscaleCheck}.
 * @param options growthFactor (2), backoffFactor (0.5), growthInterval (2000).
 * @example
 * ```ts
 * import { cudaAlloc, cudaAvailability, cudaCopyToDevice, cudaCopyToHost, cudaFill32, cudaUpdateScale } from "./cuda.ts";
 * if (cudaAvailability().available) {
 *   const state = cudaAlloc(0, 8);
 *   const found = cudaAlloc(0, 4);
 *   cudaCopyToDevice(0, state, new Float32Array([65536, 0]));
 *   cudaFill32(0, found, 1, 1); // an overflow: back off
 *   cudaUpdateScale(0, state, found);
 *   const back = new Float32Array(1);
 *   cudaCopyToHost(0, back, state);
 *   if (back[0] !== 32768) throw new Error("no backoff");
 * }
 * ```
 */
export function cudaUpdateScale(
  ordinal: number,
  stateAddress: number,
  foundInfAddress: number,
  options: ScaleUpdateOptions = {},
): void {
  const growthFactor = options.growthFactor ?? 2;
  const backoffFactor = options.backoffFactor ?? 0.5;
  const growthInterval = options.growthInterval ?? 2000;
  if (!Number.isInteger(growthInterval) || growthInterval < 1 || growthInterval > 2 ** 31 - 1) {
    throw new RangeError(`growthInterval ${growthInterval} is not a positive int32: pass e.g. 2000`);
  }
  checkCuda(
    native().mp_cuda_launch_update_scale(
      ordinal,
      stateAddress,
      foundInfAddress,
      growthFactor,
      backoffFactor,
      growthInterval,
    ),
    `Updating the loss scale on cuda:${ordinal}`,
  );
}

/**
 * Multiplies every element of a table's tensors in float32 by `factor` (a number) or by the device
 * float32 at `factorAddress` (loss scaling by a device-resident scale), stored back nearest even.
 * No wait.
 *
 * @param table The tensors, from {@linkcode cudaTable}.
 * @param by `{ factor }` (host number) or `{ factorAddress }` (device float32).
 */
export function cudaScale(
  table: CudaTable,
  by: { readonly factor: number } | { readonly factorAddress: number },
): void {
  const factor = "factor" in by ? Math.fround(by.factor) : 1;
  const factorAddress = "factorAddress" in by ? by.factorAddress : 0;
  checkCuda(
    native().mp_cuda_launch_scale(
      table.ordinal,
      table.address,
      table.rowCount,
      table.totalCount,
      factor,
      factorAddress,
    ),
    `Scaling on cuda:${table.ordinal}`,
  );
}

/**
 * PyTorch's clip_grad_norm_ on the device, after {@linkcode cudaGlobalNorm}: multiplies the table's
 * tensors by float32(maxNorm / (norm + 1e-6)) when that is below 1, reading the norm from device
 * address `normAddress`. No wait.
 *
 * @param table The tensors, from {@linkcode cudaTable}.
 * @param maxNorm The largest global norm to keep (positive).
 * @param normAddress Device float32 norm from {@linkcode cudaGlobalNorm} over the same table.
 */
export function cudaClipByNorm(table: CudaTable, maxNorm: number, normAddress: number): void {
  if (typeof maxNorm !== "number" || !(maxNorm > 0)) {
    throw new RangeError(`maxNorm must be a positive number, got ${maxNorm}: pass e.g. 1.0`);
  }
  checkCuda(
    native().mp_cuda_launch_clip_by_norm(
      table.ordinal,
      table.address,
      table.rowCount,
      table.totalCount,
      Math.fround(maxNorm),
      normAddress,
    ),
    `Clipping on cuda:${table.ordinal}`,
  );
}

/**
 * One fused AdamW step on the device: the CPU's mp_fused_adamw arithmetic (zig/src/cpu/adamw.zig)
 * over a device copy of its row table and constants. With `foundInfAddress`, the kernel reads the
 * device flag and skips the step when it is set, so a step with loss scaling never waits for the
 * device. No wait.
 *
 * @param ordinal The device.
 * @param tableAddress Device copy of `rowCount` 72-byte AdamRow rows holding device addresses.
 * @param rowCount Rows.
 * @param totalCount Elements in all rows.
 * @param hyperAddress Device copy of the 48-byte AdamHyper.
 * @param foundInfAddress Device u32 flag from {@linkcode cudaUnscaleCheck}, or 0 to always step.
 */
export function cudaFusedAdamW(
  ordinal: number,
  tableAddress: number,
  rowCount: number,
  totalCount: number,
  hyperAddress: number,
  foundInfAddress: number,
): void {
  checkCuda(
    native().mp_cuda_launch_fused_adamw(ordinal, tableAddress, rowCount, totalCount, hyperAddress, foundInfAddress),
    `Fused AdamW on cuda:${ordinal}`,
  );
}

/**
 * One fused SGD step on the device (the CPU's mp_fused_sgd arithmetic, zig/src/cpu/sgd.zig) over
 * a device copy of its 56-byte SgdRow table and 32-byte SgdHyper; skipped on the device when the
 * flag at `foundInfAddress` (if not 0) is set. No wait.
 *
 * @param ordinal The device.
 * @param tableAddress Device copy of `rowCount` SgdRow rows holding device addresses.
 * @param rowCount Rows.
 * @param totalCount Elements in all rows.
 * @param hyperAddress Device copy of the SgdHyper.
 * @param foundInfAddress Device u32 flag, or 0 to always step.
 */
export function cudaFusedSgd(
  ordinal: number,
  tableAddress: number,
  rowCount: number,
  totalCount: number,
  hyperAddress: number,
  foundInfAddress: number,
): void {
  checkCuda(
    native().mp_cuda_launch_fused_sgd(ordinal, tableAddress, rowCount, totalCount, hyperAddress, foundInfAddress),
    `Fused SGD on cuda:${ordinal}`,
  );
}

const SUM_F64_OUT = new Float64Array(1);

/**
 * The optimizers' pre-check on the device: the float64 sum of float64(float32(x * invScale))^2 over
 * a table's tensors and whether any element is inf or NaN (zig/src/cpu/sum_squares.zig's rule).
 * Returns host values, so it waits for the device (counted).
 *
 * @param table The tensors, from {@linkcode cudaTable}.
 * @param invScale Multiplies every element in float32 first (1: none).
 * @returns `{ sum, foundInf }`.
 */
export function cudaSumSquares(table: CudaTable, invScale = 1): { sum: number; foundInf: boolean } {
  checkCuda(
    native().mp_cuda_sum_squares(
      table.ordinal,
      table.address,
      table.rowCount,
      table.totalCount,
      Math.fround(invScale),
      ptr(SUM_F64_OUT),
      ptr(U32_OUT),
    ),
    `Summing squares on cuda:${table.ordinal}`,
  );
  return { sum: SUM_F64_OUT[0]!, foundInf: U32_OUT[0] !== 0 };
}

/**
 * The global L2 norm of a table's tensors, written as a float32 to device address `normAddress`
 * (two launches, a fixed summation order on a given device, no wait).
 *
 * @param table The tensors, from {@linkcode cudaTable}.
 * @param normAddress Device float32 to write the norm to.
 */
export function cudaGlobalNorm(table: CudaTable, normAddress: number): void {
  checkCuda(
    native().mp_cuda_launch_global_norm(table.ordinal, table.address, table.rowCount, table.totalCount, normAddress),
    `Computing a global norm on cuda:${table.ordinal}`,
  );
}

function ordinalOfTensor(t: Tensor): number {
  return Number(t.device.slice(5));
}

/**
 * The kernels the CUDA backend has so far (src/backend/backend.ts wraps them so that a kernel it
 * lacks throws a MixprecError naming the op).
 */
export const cudaBackendOps = Object.freeze({
  kind: "cuda" as const,
  // Norm, softmax / cross-entropy, embedding, rope and attention (src/backend/cuda/rows.ts).
  ...rowsCuda,
  // The elementwise family and the strided copy (src/backend/cuda/map.ts).
  ...cudaMapKernels,
  allocate(ordinal: number, sizeBytes: number): Storage {
    return { address: cudaAlloc(ordinal, sizeBytes), sizeBytes, buffer: null, handle: 0 };
  },
  free(ordinal: number, storage: Storage): void {
    cudaFree(ordinal, storage.address);
  },
  zero(target: Tensor): void {
    cudaFill32(ordinalOfTensor(target), target.address, 0, Math.ceil(target.sizeBytes / 4));
  },
  copy(source: Tensor, target: Tensor): void {
    if (source.sizeBytes > 0)
      cudaCopyOnDevice(ordinalOfTensor(source), target.address, source.address, source.sizeBytes);
  },
  cast(source: Tensor, target: Tensor, flags: number, seed: number): void {
    const from = dtypeInfo(source.dtype).code;
    const to = dtypeInfo(target.dtype).code;
    cudaCast(ordinalOfTensor(source), source.address, target.address, source.size, from, to, flags, seed);
  },
  write(target: Tensor, source: ArrayBufferView): void {
    cudaCopyToDevice(ordinalOfTensor(target), target.address, source);
  },
  read(source: Tensor, target: ArrayBufferView): void {
    cudaCopyToHost(ordinalOfTensor(source), target, source.address);
  },
  unscaleCheck(grads: readonly Tensor[], invScale: number): boolean {
    if (grads.length === 0) return false;
    const ordinal = ordinalOfTensor(grads[0]!);
    using table = cudaTable(ordinal, grads.map(rowOf));
    const found = cudaAlloc(ordinal, 4);
    try {
      cudaFill32(ordinal, found, 0, 1);
      cudaUnscaleCheck(table, { invScale }, found);
      const flag = new Uint32Array(1);
      cudaCopyToHost(ordinal, flag, found);
      return flag[0] !== 0;
    } finally {
      cudaFree(ordinal, found);
    }
  },
  sumSquares(grads: readonly Tensor[], invScale: number): { sum: number; foundInf: boolean } {
    if (grads.length === 0) return { sum: 0, foundInf: false };
    using table = cudaTable(ordinalOfTensor(grads[0]!), grads.map(rowOf));
    return cudaSumSquares(table, invScale);
  },
  fusedAdamW(rows: readonly AdamRowTensors[], hyper: AdamHyper, foundInf: Uint32Array | null): boolean {
    return fusedStepOnDevice(rows, adamRows(rows), adamHyper(hyper), foundInf, cudaFusedAdamW);
  },
  fusedSgd(rows: readonly SgdRowTensors[], hyper: SgdHyper, foundInf: Uint32Array | null): boolean {
    return fusedStepOnDevice(rows, sgdRows(rows), sgdHyper(hyper), foundInf, cudaFusedSgd);
  },
});

/** Copies a fused step's table and constants to the device and launches it (no wait). */
function fusedStepOnDevice(
  rows: readonly (AdamRowTensors | SgdRowTensors)[],
  table: BigUint64Array,
  hyper: Float32Array,
  foundInf: Uint32Array | null,
  launch: typeof cudaFusedAdamW,
): boolean {
  if (foundInf !== null && foundInf[0] !== 0) return false;
  let totalCount = 0;
  for (const row of rows) totalCount += row.param.size;
  if (totalCount === 0) return true;
  const ordinal = ordinalOfTensor(rows[0]!.param);
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
