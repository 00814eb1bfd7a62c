/**
 * Tensor: a contiguous n-dimensional array with a dtype, a shape, a device and native storage
 * (64-byte aligned on the CPU). A tensor owns its storage until `dispose()` (or the end of a
 * `using` block); after that every use throws. A FinalizationRegistry frees storage that was never
 * disposed, as a safety net only: dispose explicitly in loops.
 *
 * @module
 */

import { backendOf, ordinalOf } from "./backend/backend.ts";
import { mappedStorage, type Storage } from "./backend/cpu/storage.ts";
import { requireCuda } from "./backend/cuda.ts";
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

/** Tensors neither disposed nor collected. */
let liveAllocations = 0;

/**
 * Storage nobody disposed, once its tensor is collected: host blocks are freed by their
 * ArrayBuffer's deallocator (the collector sees them), device blocks here.
 */
const registry = new FinalizationRegistry<{ readonly storage: Storage; readonly device: Device } | null>((held) => {
  liveAllocations--;
  if (held !== null) backendOf(held.device).free(ordinalOf(held.device), held.storage);
});

/**
 * The number of tensors whose storage is live (created, not yet disposed or collected). Training
 * loops can check that it stays flat from step to step.
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
  #storage: Storage | undefined;
  /** The view `data` handed out; once it exists the block is freed by the collector, not dispose(). */
  #view: StorageArray | undefined;

  /** @internal Use tensor(), zeros(), ones() or randn(). */
  constructor(dtype: DtypeName, shape: Shape, device: Device, zeroed = true, external?: Storage) {
    this.dtype = dtype;
    this.shape = Object.freeze([...shape]);
    this.size = shapeSize(this.shape);
    this.device = device;
    const sizeBytes = this.size * (dtypeInfo(dtype).bits / 8);
    const backend = backendOf(device);
    if (external !== undefined && external.sizeBytes !== sizeBytes) {
      throw new RangeError(`${sizeBytes} bytes expected for ${dtype} [${shape.join(", ")}], got ${external.sizeBytes}`);
    }
    const storage = external ?? backend.allocate(ordinalOf(device), sizeBytes);
    if (external !== undefined) zeroed = false;
    this.#storage = storage;
    liveAllocations++;
    // Host blocks must not be held here: the registry keeps its held values alive, and a host block
    // is freed when its buffer is collected (callbacks may never run inside a synchronous loop).
    registry.register(this, device === "cpu" ? null : { storage, device }, this);
    // Callers that overwrite every element at once (casts, kernels' outputs) skip the zeroing.
    if (zeroed) backend.zero(this);
  }

  /** Whether `dispose()` was called. */
  get disposed(): boolean {
    return this.#storage === undefined;
  }

  /**
   * The live storage: raw bits in the dtype's storage kind (Float32Array for float32, Uint16Array
   * for 16-bit types, Uint8Array for fp8). The view shares the tensor's memory and keeps it alive:
   * after `dispose()` it still reads the values it had (the memory is freed when the view is
   * collected), never freed memory.
   */
  get data(): StorageArray {
    const storage = this.#storage;
    if (storage === undefined) throw this.#disposedError("data");
    if (storage.buffer === null) {
      throw new TypeError(
        `Cannot read data of ${this.toString()} from the host: its storage is device memory. Call .to("cpu") for a CPU tensor, or .toArray() for its values`,
      );
    }
    this.#view ??= viewOf(this.dtype, storage.buffer, storage.byteOffset ?? 0, this.size);
    return this.#view;
  }

  /** The native address of the storage (for kernels): host memory on "cpu", device memory on "cuda:N". */
  get address(): number {
    if (this.#storage === undefined) throw this.#disposedError("address");
    return this.#storage.address;
  }

  /** The storage size in bytes. */
  get sizeBytes(): number {
    if (this.#storage === undefined) throw this.#disposedError("sizeBytes");
    return this.#storage.sizeBytes;
  }

  /** The number of dimensions. */
  get ndim(): number {
    return this.shape.length;
  }

  /** Values as a new Float32Array (every dtype widens to float32 exactly). */
  toArray(): Float32Array {
    const bits = this.#hostBits();
    if (this.dtype === "float32") return bits === this.#view ? (bits as Float32Array).slice() : (bits as Float32Array);
    return castInto(bits, new Float32Array(this.size), this.dtype, "float32");
  }

  /** A copy of the raw bits. */
  bits(): StorageArray {
    const bits = this.#hostBits();
    return bits === this.#view ? bits.slice() : bits;
  }

  /**
   * The bits on the host: the handed-out view if there is one, else a fresh copy (one wait for a
   * device). Never a view that could outlive the tensor's memory.
   */
  #hostBits(): StorageArray {
    const storage = this.#storage;
    if (storage === undefined) throw this.#disposedError("data");
    if (this.#view !== undefined) return this.#view;
    const host = allocateStorage(this.dtype, this.size);
    backendOf(this.device).read(this, host);
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
      const copy = new Tensor(this.dtype, this.shape, device, false);
      copyStorage(this, copy);
      return copy;
    }
    if (this.#storage === undefined) throw this.#disposedError("data");
    const dtype = canonicalDtype(target);
    const { flags, seed } = castFlags(this.dtype, dtype, options);
    const result = new Tensor(dtype, this.shape, this.device, false);
    if (dtype === this.dtype) backendOf(this.device).copy(this, result);
    else backendOf(this.device).cast(this, result, flags, seed);
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
    if (this.#storage === undefined) throw this.#disposedError("data");
    const result = new Tensor(this.dtype, shape, this.device, false);
    backendOf(this.device).copy(this, result);
    return result;
  }

  /**
   * Frees the storage now. Idempotent; any later use of the tensor throws. A `data` view taken
   * earlier keeps the memory (and the values it had) until the view itself is collected.
   */
  dispose(): void {
    const storage = this.#storage;
    if (storage === undefined) return;
    registry.unregister(this);
    this.#storage = undefined;
    liveAllocations--;
    if (this.#view === undefined && storage.external !== true)
      backendOf(this.device).free(ordinalOf(this.device), storage);
    this.#view = undefined;
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
  if (source.device === target.device) backendOf(source.device).copy(source, target);
  else if (source.device === "cpu") backendOf(target.device).write(target, source.data);
  else backendOf(target.device).write(target, source.bits());
}

function viewOf(dtype: DtypeName, buffer: ArrayBuffer, byteOffset: number, length: number): StorageArray {
  const storage = dtypeInfo(dtype).storage;
  if (storage === "Float32Array") return new Float32Array(buffer, byteOffset, length);
  if (storage === "Uint16Array") return new Uint16Array(buffer, byteOffset, length);
  return new Uint8Array(buffer, byteOffset, length);
}

/**
 * A CPU tensor over bytes it does not own (a private mapping of a checkpoint file): no copy; the
 * bytes stay alive while the tensor or a view of it does, and dispose() only drops them. Null when
 * the bytes are not aligned to the dtype's element size (the caller then copies). @internal
 */
export function tensorOnBytes(dtype: DtypeName, shape: Shape, bytes: Uint8Array): Tensor | null {
  if (bytes.byteOffset % (dtypeInfo(dtype).bits / 8) !== 0) return null;
  return new Tensor(dtype, shape, "cpu", false, mappedStorage(bytes));
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
  // Written through the backend (no view of the storage escapes, so dispose() frees it at once);
  // a device tensor receives its bytes in one copy.
  const result = new Tensor(dtype, shape, device, false);
  let source: StorageArray;
  if (bits !== undefined) source = bits;
  else if (dtype === "float32") source = values!;
  else source = castInto(values!, allocateStorage(dtype, length), "float32", dtype);
  backendOf(device).write(result, source);
  return result;
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
  const dtype = canonicalDtype(options.dtype ?? "float32");
  const size = shapeSize(shape);
  const one = castInto(new Float32Array([value]), allocateStorage(dtype, 1), "float32", dtype);
  const filled = allocateStorage(dtype, size);
  filled.fill(one[0]!);
  return tensor(filled, { dtype, shape });
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
