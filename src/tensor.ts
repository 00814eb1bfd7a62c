/**
 * Tensor: a contiguous n-dimensional array with a dtype, a shape, a device and native storage
 * (64-byte aligned on the CPU). A tensor owns its storage until `dispose()` (or the end of a
 * `using` block); after that every use throws. A FinalizationRegistry frees storage that was never
 * disposed, as a safety net only: dispose explicitly in loops.
 *
 * @module
 */

import { ptr, toArrayBuffer } from "bun:ffi";
import { check, native } from "./_ffi.ts";
import {
  cudaAlloc,
  cudaCast,
  cudaCopyOnDevice,
  cudaCopyToDevice,
  cudaCopyToHost,
  cudaFill32,
  cudaFree,
  requireCuda,
} from "./backend/cuda.ts";
import { type CastOptions, castFlags, castInto } from "./cast.ts";
import {
  allocateStorage,
  canonicalDtype,
  describeKind,
  type Dtype,
  type DtypeName,
  dtypeInfo,
  isStorageOf,
  type StorageArray,
} from "./dtype.ts";
import { squirrel5 } from "./_numerics.ts";

/** Where a tensor lives: "cpu" or "cuda:N". */
export type Device = "cpu" | `cuda:${number}`;

/** A tensor's shape: non-negative integer dimensions. */
export type Shape = readonly number[];

/** Native storage: host memory (ordinal -1) or device memory of cuda:ordinal. */
interface Allocation {
  readonly address: number;
  readonly sizeBytes: number;
  readonly ordinal: number;
}

/** Native allocations owned by tensors that are neither disposed nor collected. */
let liveAllocations = 0;

const registry = new FinalizationRegistry<Allocation>((allocation) => {
  liveAllocations--;
  if (allocation.ordinal < 0) native().mp_free(allocation.address, allocation.sizeBytes);
  else cudaFree(allocation.ordinal, allocation.address);
});

/**
 * The number of tensors whose native storage is live (created, not yet disposed or collected).
 * Training loops can check that it stays flat from step to step.
 *
 * @returns The live count.
 * @example
 * ```ts
 * import { liveTensorCount, zeros } from "./tensor.ts";
 * const before = liveTensorCount();
 * zeros([4]).dispose();
 * if (liveTensorCount() !== before) throw new Error("leaked");
 * ```
 */
export function liveTensorCount(): number {
  return liveAllocations;
}

const ADDRESS_OUT = new BigUint64Array(1);

function allocate(sizeBytes: number): number {
  check(native().mp_alloc(sizeBytes, ptr(ADDRESS_OUT)), `allocating ${sizeBytes} bytes`);
  return Number(ADDRESS_OUT[0]);
}

/** Validates a shape and returns its element count. */
export function shapeSize(shape: unknown): number {
  if (!Array.isArray(shape)) throw new TypeError(`Shape must be an array of integers, got ${describeKind(shape)}`);
  let size = 1;
  for (const dim of shape) {
    if (!Number.isInteger(dim) || dim < 0) {
      throw new RangeError(`Shape [${shape.join(", ")}] has dimension ${dim}: dimensions are non-negative integers`);
    }
    size *= dim;
  }
  if (size > Number.MAX_SAFE_INTEGER) throw new RangeError(`Shape [${shape.join(", ")}] is too large`);
  return size;
}

/** "cpu", or "cuda:N" for "cuda" / "cuda:N" after checking that the device is there. */
function checkDevice(device: unknown): Device {
  if (device === "cpu") return "cpu";
  if (typeof device === "string" && /^cuda(:\d+)?$/.test(device)) return `cuda:${requireCuda(device)}`;
  throw new TypeError(`Unknown device ${JSON.stringify(device)}: use "cpu" or "cuda:N"`);
}

function ordinalOf(device: Device): number {
  return device === "cpu" ? -1 : Number(device.slice(5));
}

/**
 * A contiguous tensor. Create one with {@linkcode tensor}, {@linkcode zeros}, {@linkcode ones} or
 * {@linkcode randn}.
 */
export class Tensor {
  /** The element dtype. */
  readonly dtype: DtypeName;
  /** The dimensions. */
  readonly shape: Shape;
  /** The element count. */
  readonly size: number;
  /** Where the storage lives. */
  readonly device: Device;
  #allocation: Allocation | undefined;
  #view: StorageArray | undefined;

  /** @internal Use tensor(), zeros(), ones() or randn(). */
  constructor(dtype: DtypeName, shape: Shape, device: Device, zeroed = true) {
    this.dtype = dtype;
    this.shape = Object.freeze([...shape]);
    this.size = shapeSize(this.shape);
    this.device = device;
    const sizeBytes = this.size * (dtypeInfo(dtype).bits / 8);
    const ordinal = ordinalOf(device);
    if (ordinal >= 0) {
      // Device storage: zeroed on the stream; the host never maps it.
      const address = cudaAlloc(ordinal, sizeBytes);
      cudaFill32(ordinal, address, 0, Math.ceil(sizeBytes / 4));
      this.#allocation = { address, sizeBytes, ordinal };
      liveAllocations++;
      registry.register(this, this.#allocation, this);
      return;
    }
    const address = allocate(sizeBytes);
    this.#allocation = { address, sizeBytes, ordinal };
    liveAllocations++;
    const buffer = toArrayBuffer(address, 0, Math.max(sizeBytes, 1));
    const view = allocateViewOf(dtype, buffer, this.size);
    // Callers that overwrite every element at once (casts, kernels' outputs) skip the zeroing.
    if (zeroed) view.fill(0);
    this.#view = view;
    registry.register(this, this.#allocation, this);
  }

  /** Whether `dispose()` was called. */
  get disposed(): boolean {
    return this.#allocation === undefined;
  }

  /**
   * The live storage: raw bits in the dtype's storage kind (Float32Array for float32, Uint16Array
   * for 16-bit types, Uint8Array for fp8). Valid until the tensor is disposed; do not keep it.
   */
  get data(): StorageArray {
    if (this.#view === undefined) {
      if (this.#allocation === undefined) throw this.#disposedError("data");
      throw new TypeError(
        `Cannot read data of ${this.toString()} from the host: its storage is device memory. Call .to("cpu") for a CPU tensor, or .toArray() for its values`,
      );
    }
    return this.#view;
  }

  /** The native address of the storage (for kernels): host memory on "cpu", device memory on "cuda:N". */
  get address(): number {
    if (this.#allocation === undefined) throw this.#disposedError("address");
    return this.#allocation.address;
  }

  /** The storage size in bytes. */
  get sizeBytes(): number {
    if (this.#allocation === undefined) throw this.#disposedError("sizeBytes");
    return this.#allocation.sizeBytes;
  }

  /** The number of dimensions. */
  get ndim(): number {
    return this.shape.length;
  }

  /** Values as a new Float32Array (every dtype widens to float32 exactly). */
  toArray(): Float32Array {
    const data = this.#hostBits();
    if (this.dtype === "float32") return (data as Float32Array).slice();
    return castInto(data, new Float32Array(this.size), this.dtype, "float32");
  }

  /** A copy of the raw bits. */
  bits(): StorageArray {
    return this.device === "cpu" ? this.data.slice() : this.#hostBits();
  }

  /** The storage view on the CPU; a fresh host copy (one wait for the device) on CUDA. */
  #hostBits(): StorageArray {
    const allocation = this.#allocation;
    if (allocation === undefined) throw this.#disposedError("data");
    if (allocation.ordinal < 0) return this.data;
    const host = allocateStorage(this.dtype, this.size);
    cudaCopyToHost(allocation.ordinal, host, allocation.address);
    return host;
  }

  /**
   * A new tensor of another dtype (cast with `options`; nearest-even by default) or on another
   * device. The result is always a new tensor that the caller owns, even for the same dtype.
   *
   * @param target A dtype name or alias, or a device.
   * @param options Cast options when `target` is a dtype.
   */
  to(target: Dtype | Device, options: CastOptions = {}): Tensor {
    if (typeof target === "string" && (target === "cpu" || target.startsWith("cuda"))) {
      const device = checkDevice(target);
      const copy = new Tensor(this.dtype, this.shape, device);
      copyStorage(this, copy);
      return copy;
    }
    const dtype = canonicalDtype(target);
    if (this.device !== "cpu" && dtype !== this.dtype) {
      const { flags, seed } = castFlags(this.dtype, dtype, options);
      const result = new Tensor(dtype, this.shape, this.device);
      const from = dtypeInfo(this.dtype).code;
      cudaCast(
        ordinalOf(this.device),
        this.address,
        result.address,
        this.size,
        from,
        dtypeInfo(dtype).code,
        flags,
        seed,
      );
      return result;
    }
    const result = new Tensor(dtype, this.shape, this.device, this.device !== "cpu");
    if (dtype === this.dtype) copyStorage(this, result);
    else castInto(this.data, result.data, this.dtype, dtype, options);
    return result;
  }

  /** A new tensor with the same storage bytes copied, same dtype. */
  clone(): Tensor {
    return this.to(this.dtype);
  }

  /** A new tensor with the same elements and another shape of the same size (a copy). */
  reshape(shape: Shape): Tensor {
    if (shapeSize(shape) !== this.size) {
      throw new RangeError(
        `Cannot reshape [${this.shape.join(", ")}] (${this.size} elements) to [${shape.join(", ")}]: sizes differ`,
      );
    }
    const result = new Tensor(this.dtype, shape, this.device);
    copyStorage(this, result);
    return result;
  }

  /** Frees the storage now. Idempotent; any later use of the tensor throws. */
  dispose(): void {
    if (this.#allocation === undefined) return;
    registry.unregister(this);
    const { address, sizeBytes, ordinal } = this.#allocation;
    this.#allocation = undefined;
    this.#view = undefined;
    liveAllocations--;
    if (ordinal >= 0) cudaFree(ordinal, address);
    else check(native().mp_free(address, sizeBytes), "freeing a tensor");
  }

  /** For `using t = tensor(...)`. */
  [Symbol.dispose](): void {
    this.dispose();
  }

  /** A short description, e.g. `Tensor(bfloat16, [2, 3], cpu)`. */
  toString(): string {
    return `Tensor(${this.dtype}, [${this.shape.join(", ")}], ${this.device}${this.disposed ? ", disposed" : ""})`;
  }

  #disposedError(what: string): Error {
    return new TypeError(
      `Cannot read ${what} of a disposed ${this.toString()}: keep the tensor alive until its last use`,
    );
  }
}

/** Copies the storage bytes of `source` into `target` (same dtype and size), across devices too. */
function copyStorage(source: Tensor, target: Tensor): void {
  const from = ordinalOf(source.device);
  const to = ordinalOf(target.device);
  if (from < 0 && to < 0) target.data.set(source.data);
  else if (from < 0) cudaCopyToDevice(to, target.address, source.data);
  else if (to < 0) cudaCopyToHost(from, target.data, source.address);
  else if (from === to) cudaCopyOnDevice(to, target.address, source.address, source.sizeBytes);
  else cudaCopyToDevice(to, target.address, source.bits());
}

function allocateViewOf(dtype: DtypeName, buffer: ArrayBuffer, length: number): StorageArray {
  const storage = dtypeInfo(dtype).storage;
  if (storage === "Float32Array") return new Float32Array(buffer, 0, length);
  if (storage === "Uint16Array") return new Uint16Array(buffer, 0, length);
  return new Uint8Array(buffer, 0, length);
}

/** Options for creating tensors. */
export interface TensorOptions {
  /** Element dtype (default float32). */
  readonly dtype?: Dtype;
  /** Shape; inferred from nested arrays or a flat typed array when omitted. */
  readonly shape?: Shape;
  /** Device (default "cpu"). */
  readonly device?: Device;
}

function inferShape(data: unknown): number[] {
  const shape: number[] = [];
  let level: unknown = data;
  while (Array.isArray(level)) {
    shape.push(level.length);
    level = level[0];
  }
  return shape;
}

function flatten(data: unknown, shape: number[], depth: number, out: number[]): void {
  if (depth === shape.length) {
    if (typeof data !== "number") throw new TypeError(`Tensor data must hold numbers, found ${describeKind(data)}`);
    out.push(data);
    return;
  }
  if (!Array.isArray(data) || data.length !== shape[depth]) {
    throw new RangeError(`Tensor data is ragged at depth ${depth}: every row must have ${shape[depth]} entries`);
  }
  for (const item of data) flatten(item, shape, depth + 1, out);
}

/**
 * Creates a tensor from values or raw bits.
 *
 * Numbers, nested number arrays and Float32Array hold values, rounded to `dtype` (nearest even).
 * A Uint16Array or Uint8Array holds raw bits of `dtype` and must match its storage kind.
 *
 * @param data Values (number, nested arrays, Float32Array) or raw bits.
 * @param options dtype (default float32), shape (inferred when omitted), device (default cpu).
 * @returns A new tensor the caller owns.
 * @example
 * ```ts
 * import { tensor } from "./tensor.ts";
 * using t = tensor([[1, 2], [3, 4]], { dtype: "bf16" });
 * if (t.shape.join() !== "2,2" || t.toArray()[3] !== 4) throw new Error("wrong tensor");
 * ```
 */
export function tensor(data: number | readonly unknown[] | StorageArray, options: TensorOptions = {}): Tensor {
  const dtype = canonicalDtype(options.dtype ?? "float32");
  const device = checkDevice(options.device ?? "cpu");
  let values: Float32Array | undefined;
  let bits: StorageArray | undefined;
  let inferred: number[];
  if (typeof data === "number") {
    values = new Float32Array([data]);
    inferred = [];
  } else if (data instanceof Float32Array) {
    values = data;
    inferred = [data.length];
  } else if (data instanceof Uint16Array || data instanceof Uint8Array) {
    if (!isStorageOf(data, dtype)) {
      throw new TypeError(
        `A ${describeKind(data)} of bits does not fit dtype ${dtype}: pass a ${dtypeInfo(dtype).storage}, or a Float32Array of values`,
      );
    }
    bits = data;
    inferred = [data.length];
  } else if (Array.isArray(data)) {
    inferred = inferShape(data);
    const flat: number[] = [];
    flatten(data, inferred, 0, flat);
    values = new Float32Array(flat);
  } else {
    throw new TypeError(
      `Cannot make a tensor from ${describeKind(data)}: pass numbers, nested arrays or a typed array`,
    );
  }
  const shape = options.shape ?? inferred;
  const length = (values ?? bits)!.length;
  if (shapeSize(shape) !== length) {
    throw new RangeError(`Shape [${shape.join(", ")}] holds ${shapeSize(shape)} elements but the data has ${length}`);
  }
  const result = new Tensor(dtype, shape, "cpu");
  if (bits !== undefined) result.data.set(bits);
  else if (dtype === "float32") result.data.set(values!);
  else castInto(values!, result.data, "float32", dtype);
  if (device === "cpu") return result;
  // Device tensors are filled on the host and copied over once.
  using host = result;
  return host.to(device);
}

/** Options for filled tensors. */
export interface FillOptions {
  readonly dtype?: Dtype;
  readonly device?: Device;
}

/**
 * A tensor of zeros.
 *
 * @param shape Dimensions.
 * @param options dtype (default float32) and device.
 * @returns A new tensor.
 * @example
 * ```ts
 * import { zeros } from "./tensor.ts";
 * using z = zeros([3], { dtype: "f16" });
 * if (z.toArray().some((x) => x !== 0)) throw new Error("not zero");
 * ```
 */
export function zeros(shape: Shape, options: FillOptions = {}): Tensor {
  return new Tensor(canonicalDtype(options.dtype ?? "float32"), shape, checkDevice(options.device ?? "cpu"));
}

/**
 * A tensor filled with one value (rounded to the dtype).
 *
 * @param shape Dimensions.
 * @param value The fill value.
 * @param options dtype and device.
 * @returns A new tensor.
 */
export function full(shape: Shape, value: number, options: FillOptions = {}): Tensor {
  const device = checkDevice(options.device ?? "cpu");
  if (device !== "cpu") {
    using host = full(shape, value, { dtype: options.dtype });
    return host.to(device);
  }
  const result = zeros(shape, options);
  const one = castInto(new Float32Array([value]), allocateStorage(result.dtype, 1), "float32", result.dtype);
  result.data.fill(one[0]!);
  return result;
}

/**
 * A tensor of ones.
 *
 * @param shape Dimensions.
 * @param options dtype and device.
 * @returns A new tensor.
 * @example
 * ```ts
 * import { ones } from "./tensor.ts";
 * using o = ones([2], { dtype: "bf16" });
 * if (o.data[0] !== 0x3f80) throw new Error("one is 0x3F80 in bfloat16");
 * ```
 */
export function ones(shape: Shape, options: FillOptions = {}): Tensor {
  return full(shape, 1, options);
}

/** Options of {@linkcode randn}. */
export interface RandnOptions extends FillOptions {
  /** Seed, an integer in [0, 2^32). The same seed gives the same values. */
  readonly seed: number;
  /** Mean (default 0) and standard deviation (default 1). */
  readonly mean?: number;
  readonly std?: number;
}

/**
 * Normally distributed values from a counter-based hash of (seed, index): Box-Muller over two
 * SquirrelNoise5 draws per element, computed in float64 and rounded to the dtype.
 *
 * @param shape Dimensions.
 * @param options seed (required), dtype, mean, std, device.
 * @returns A new tensor.
 * @example
 * ```ts
 * import { randn } from "./tensor.ts";
 * using a = randn([4], { seed: 1 });
 * using b = randn([4], { seed: 1 });
 * if (a.toArray().join() !== b.toArray().join()) throw new Error("not deterministic");
 * ```
 */
export function randn(shape: Shape, options: RandnOptions): Tensor {
  const seed = options?.seed;
  if (!Number.isInteger(seed) || seed < 0 || seed >= 2 ** 32) {
    throw new RangeError(`randn needs a seed that is an integer in [0, 2^32), got ${seed}: pass { seed: 0 }`);
  }
  const mean = options.mean ?? 0;
  const std = options.std ?? 1;
  const size = shapeSize(shape);
  const values = new Float32Array(size);
  for (let i = 0; i < size; i++) {
    const u1 = (squirrel5(2 * i, seed) + 1) / 4294967297;
    const u2 = squirrel5(2 * i + 1, seed) / 4294967296;
    values[i] = mean + std * Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2);
  }
  return tensor(values, { dtype: options.dtype ?? "float32", shape, device: options.device ?? "cpu" });
}

/** Whether a value is a Tensor. */
export function isTensor(value: unknown): value is Tensor {
  return value instanceof Tensor;
}
