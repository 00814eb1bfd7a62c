/**
 * Shared plumbing of the ops: argument checks, output allocation on the inputs' device, dtype casts
 * that record their backward, axes and broadcast shapes. No kernel runs here: ops call their
 * device's backend (src/backend/backend.ts).
 *
 * @module
 */

import { record, track } from "../autodiff.ts";
import type { DtypeName } from "../dtype.ts";
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
  return record(result, [x], [], (g) => [g.to(x.dtype)]);
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
