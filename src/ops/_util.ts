/**
 * Shared plumbing of the ops: float32 views of tensors, output allocation, dtype casts that record
 * their backward, broadcasting index maps and the raw native matmul call.
 *
 * @module
 */

import { ptr } from "bun:ffi";
import { check, native } from "../_ffi.ts";
import { record, track } from "../autodiff.ts";
import { castInto } from "../cast.ts";
import { type DtypeName, dtypeInfo, type StorageArray } from "../dtype.ts";
import { type Device, isTensor, type Shape, Tensor } from "../tensor.ts";

/** Dtypes the ops compute with. */
export const FLOAT_DTYPES: ReadonlySet<DtypeName> = new Set(["float32", "float16", "bfloat16"]);

/** Throws a TypeError unless `value` is a live float tensor. */
export function checkTensor(value: unknown, op: string, name: string): Tensor {
  if (!isTensor(value)) {
    throw new TypeError(`${op}: ${name} must be a Tensor, got ${value === null ? "null" : typeof value}`);
  }
  if (value.disposed) throw new TypeError(`${op}: ${name} is a disposed tensor: keep it alive until its last use`);
  if (!FLOAT_DTYPES.has(value.dtype)) {
    throw new TypeError(`${op}: ${name} has dtype ${value.dtype}: cast it to float32, float16 or bfloat16 first`);
  }
  return value;
}

/** The values of a tensor as float32: the live storage for float32 (read only!), else a widened copy. */
export function values(t: Tensor): Float32Array {
  if (t.dtype === "float32") return t.data as Float32Array;
  return castInto(t.data, new Float32Array(t.size), t.dtype, "float32");
}

/** A new tensor (owned by the active scope) holding `source` rounded to `dtype`. */
export function fromValues(source: Float32Array, shape: Shape, dtype: DtypeName): Tensor {
  const result = new Tensor(dtype, shape, "cpu", false);
  if (dtype === "float32") (result.data as Float32Array).set(source);
  else if (source.length > 0) castInto(source, result.data, "float32", dtype);
  return track(result);
}

/**
 * A new tensor of `shape` and `dtype` whose float32 values `fill` writes: straight into the
 * storage for float32, through a scratch array and one rounding cast otherwise. `fill` must write
 * every element: the storage is not zeroed first.
 */
export function output(shape: Shape, dtype: DtypeName, fill: (out: Float32Array) => void): Tensor {
  // Not zeroed: every op's `fill` writes every element (none accumulates into its output).
  const result = new Tensor(dtype, shape, "cpu", false);
  if (dtype === "float32") {
    fill(result.data as Float32Array);
  } else {
    const scratch = new Float32Array(result.size);
    fill(scratch);
    if (scratch.length > 0) castInto(scratch, result.data, "float32", dtype);
  }
  return track(result);
}

/** Throws a TypeError unless every tensor lives on the first one's device. */
export function checkSameDevice(op: string, ...tensors: readonly Tensor[]): void {
  const device = tensors[0]?.device;
  for (const t of tensors) {
    if (t.device !== device) {
      throw new TypeError(
        `${op}: ${tensors[0]} and ${t} are on different devices: move them to one device first with .to("${device}")`,
      );
    }
  }
}

/**
 * A new tensor of `shape` and `dtype` on `device` for a kernel to write (not zeroed: the kernel
 * writes every element), owned by the active scope.
 */
export function empty(shape: Shape, dtype: DtypeName, device: Device = "cpu"): Tensor {
  return track(new Tensor(dtype, shape, device, false));
}

/**
 * `x` in `dtype`: `x` itself when it already is, else a rounded copy whose gradient is cast back to
 * x's dtype (the cast autocast inserts in front of an op).
 */
export function toDtype(x: Tensor, dtype: DtypeName): Tensor {
  if (x.dtype === dtype) return x;
  const result = track(x.to(dtype));
  return record(result, [x], (g) => [g.to(x.dtype)]);
}

/** Element count of a shape. */
export function sizeOf(shape: Shape): number {
  let size = 1;
  for (const dim of shape) size *= dim;
  return size;
}

/** Shape text for messages. */
export function shapeText(shape: Shape): string {
  return `[${shape.join(", ")}]`;
}

/** Normalizes a possibly negative axis; throws a RangeError when out of range. */
export function normalizeAxis(axis: number, ndim: number, op: string): number {
  if (!Number.isInteger(axis) || axis < -ndim || axis >= Math.max(ndim, 1)) {
    throw new RangeError(`${op}: axis ${axis} is out of range for ${ndim} dimensions`);
  }
  return axis < 0 ? axis + ndim : axis;
}

/** NumPy broadcasting of two shapes; throws a TypeError naming both when they do not broadcast. */
export function broadcastShapes(a: Shape, b: Shape, op: string): number[] {
  const ndim = Math.max(a.length, b.length);
  const out: number[] = [];
  for (let i = 0; i < ndim; i++) {
    const da = a[a.length - ndim + i] ?? 1;
    const db = b[b.length - ndim + i] ?? 1;
    if (da !== db && da !== 1 && db !== 1) {
      throw new TypeError(
        `${op}: shapes ${shapeText(a)} and ${shapeText(b)} do not broadcast (dimension ${i}: ${da} vs ${db})`,
      );
    }
    out.push(da === 1 ? db : da);
  }
  return out;
}

/**
 * How an input of `inShape` is read for each element of `outShape` under broadcasting:
 * "same" (index i), "scalar" (index 0), a period p (index i % p: the input is a suffix of the
 * output), or an explicit index map.
 */
export type Broadcast =
  | { kind: "same" }
  | { kind: "scalar" }
  | { kind: "period"; period: number }
  | {
      kind: "map";
      map: Int32Array;
    };

export function broadcastPlan(inShape: Shape, outShape: Shape): Broadcast {
  const inSize = sizeOf(inShape);
  const outSize = sizeOf(outShape);
  if (inSize === outSize) return { kind: "same" };
  if (inSize === 1) return { kind: "scalar" };
  // Suffix: every leading input dim (after padding) is 1 and the rest equal the output's.
  const offset = outShape.length - inShape.length;
  let firstReal = 0;
  while (firstReal < inShape.length && inShape[firstReal] === 1) firstReal++;
  let suffix = true;
  for (let i = firstReal; i < inShape.length; i++) if (inShape[i] !== outShape[offset + i]) suffix = false;
  if (suffix) return { kind: "period", period: inSize };
  const ndim = outShape.length;
  const strides = new Array<number>(ndim).fill(0);
  let stride = 1;
  for (let i = inShape.length - 1; i >= 0; i--) {
    strides[offset + i] = inShape[i] === 1 ? 0 : stride;
    stride *= inShape[i]!;
  }
  const map = new Int32Array(outSize);
  const counter = new Array<number>(ndim).fill(0);
  let index = 0;
  for (let i = 0; i < outSize; i++) {
    map[i] = index;
    for (let d = ndim - 1; d >= 0; d--) {
      counter[d]!++;
      index += strides[d]!;
      if (counter[d]! < outShape[d]!) break;
      index -= strides[d]! * counter[d]!;
      counter[d] = 0;
    }
  }
  return { kind: "map", map };
}

/** Reads input element for output index i under a plan. */
export function gather(plan: Broadcast, source: Float32Array, outSize: number): Float32Array {
  if (plan.kind === "same") return source;
  const out = new Float32Array(outSize);
  if (plan.kind === "scalar") out.fill(source[0]!);
  else if (plan.kind === "period") {
    const p = plan.period;
    for (let i = 0; i < outSize; i++) out[i] = source[i % p]!;
  } else {
    const map = plan.map;
    for (let i = 0; i < outSize; i++) out[i] = source[map[i]!]!;
  }
  return out;
}

/** Sums an output-shaped gradient back to the input's size under a plan (float64 accumulation). */
export function reduceTo(plan: Broadcast, grad: Float32Array, inSize: number): Float32Array {
  if (plan.kind === "same") return grad;
  const sums = new Float64Array(inSize);
  if (plan.kind === "scalar") {
    let total = 0;
    for (let i = 0; i < grad.length; i++) total += grad[i]!;
    sums[0] = total;
  } else if (plan.kind === "period") {
    const p = plan.period;
    for (let i = 0; i < grad.length; i++) sums[i % p]! += grad[i]!;
  } else {
    const map = plan.map;
    for (let i = 0; i < grad.length; i++) sums[map[i]!]! += grad[i]!;
  }
  return Float32Array.from(sums);
}

/** Flags of mp_matmul (zig/src/cpu/matmul.zig). */
export const MatmulFlag = Object.freeze({
  transA: 1,
  transB: 2,
  accumulate: 4,
  noBf16Dot: 8,
  broadcastB: 16,
} as const);

function addressOf(data: StorageArray): number {
  return data.length === 0 ? 0 : ptr(data);
}

/**
 * C (float32, batch x m x n) = op(A) op(B) in one native call; A and B are raw storage of their
 * dtypes (float32, float16 or bfloat16). See mp_matmul for the layout and flags.
 */
export function matmulInto(
  a: StorageArray,
  aDtype: DtypeName,
  b: StorageArray,
  bDtype: DtypeName,
  c: Float32Array,
  batch: number,
  m: number,
  n: number,
  k: number,
  flags: number,
): Float32Array {
  const status = native().mp_matmul(
    addressOf(a),
    addressOf(b),
    addressOf(c),
    batch,
    m,
    n,
    k,
    dtypeInfo(aDtype).code,
    dtypeInfo(bDtype).code,
    flags,
  );
  check(status, `mp_matmul(${aDtype} x ${bDtype}, ${batch} x ${m} x ${n} x ${k})`);
  return c;
}
