/**
 * Multi-tensor unscale and non-finite check: PyTorch's `_amp_foreach_non_finite_check_and_unscale_`
 * for float32, float16 and bfloat16 gradients alike, in one native call for the whole list.
 *
 * @module
 */

import { ptr } from "bun:ffi";
import { check, native } from "./_ffi.ts";
import { cudaAlloc, cudaCopyToHost, cudaFill32, cudaFree, cudaTable, cudaUnscaleCheck } from "./backend/cuda.ts";
import {
  canonicalDtype,
  describeKind,
  type Dtype,
  type DtypeName,
  dtypeInfo,
  isStorageOf,
  type StorageArray,
} from "./dtype.ts";
import { Tensor } from "./tensor.ts";

/** A gradient given as raw storage and its dtype. */
export interface GradientRow {
  readonly data: StorageArray;
  readonly dtype: Dtype;
}

const UNSCALABLE: ReadonlySet<DtypeName> = new Set(["float32", "float16", "bfloat16"]);
const FOUND_OUT = new Uint32Array(1);

/**
 * Builds the native table of (address, count, dtype) rows, 24 bytes each.
 * @internal
 */
export function gradientTable(grads: readonly (Tensor | GradientRow)[], what: string): BigUint64Array {
  if (!Array.isArray(grads)) {
    throw new TypeError(`${what} takes a list of tensors or { data, dtype } rows, got ${describeKind(grads)}`);
  }
  const table = new BigUint64Array(grads.length * 3);
  grads.forEach((grad, i) => {
    let data: StorageArray;
    let dtype: DtypeName;
    if (grad instanceof Tensor) {
      data = grad.data;
      dtype = grad.dtype;
    } else if (typeof grad === "object" && grad !== null && "data" in grad && "dtype" in grad) {
      dtype = canonicalDtype(grad.dtype);
      if (!isStorageOf(grad.data, dtype)) {
        throw new TypeError(
          `Gradient ${i} has a ${describeKind(grad.data)} for dtype ${dtype}: pass a ${dtypeInfo(dtype).storage}`,
        );
      }
      data = grad.data;
    } else {
      throw new TypeError(`Gradient ${i} is a ${describeKind(grad)}: pass a Tensor or { data, dtype }`);
    }
    if (!UNSCALABLE.has(dtype)) {
      throw new TypeError(`Gradient ${i} has dtype ${dtype}: gradients are float32, float16 or bfloat16`);
    }
    table[3 * i] = data.length === 0 ? 0n : BigInt(ptr(data));
    table[3 * i + 1] = BigInt(data.length);
    table[3 * i + 2] = BigInt(dtypeInfo(dtype).code);
  });
  return table;
}

/**
 * Multiplies every element of every gradient by `invScale` in float32 arithmetic (skipped when
 * invScale is 1), stores it back in the gradient's own dtype (nearest even), and reports whether
 * any element was inf or NaN. One native call for the whole list, whatever its length and dtypes.
 *
 * @param grads Tensors or { data, dtype } rows of float32, float16 or bfloat16.
 * @param invScale The inverse loss scale (rounded to float32).
 * @returns true when any element was inf or NaN (the step must be skipped).
 * @example
 * ```ts
 * import { unscaleAndCheck } from "./unscale.ts";
 * const g = new Float32Array([1024, 2048]);
 * const found = unscaleAndCheck([{ data: g, dtype: "float32" }], 1 / 1024);
 * if (found || g[1] !== 2) throw new Error("wrong unscale");
 * ```
 */
export function unscaleAndCheck(grads: readonly (Tensor | GradientRow)[], invScale: number): boolean {
  if (typeof invScale !== "number" || Number.isNaN(invScale)) {
    throw new TypeError(`invScale must be a number, got ${String(invScale)}: pass 1 / lossScale`);
  }
  if (Array.isArray(grads) && grads.some((grad) => grad instanceof Tensor && grad.device !== "cpu")) {
    return unscaleOnDevice(grads, invScale);
  }
  const table = gradientTable(grads, "unscaleAndCheck");
  if (grads.length === 0) return false;
  check(native().mp_unscale_check(ptr(table), grads.length, Math.fround(invScale), ptr(FOUND_OUT)), "unscaleAndCheck");
  return FOUND_OUT[0] !== 0;
}

/**
 * unscaleAndCheck for CUDA tensors: one kernel launch over a device row table, then one read of the
 * found-inf flag (the boolean result needs it). A training step that must not wait keeps the flag
 * on the device instead (src/backend/cuda.ts cudaUnscaleCheck).
 */
function unscaleOnDevice(grads: readonly (Tensor | GradientRow)[], invScale: number): boolean {
  const first = grads[0] as Tensor;
  grads.forEach((grad, i) => {
    if (!(grad instanceof Tensor) || grad.device !== first.device) {
      const where = grad instanceof Tensor ? grad.device : "the host";
      throw new TypeError(
        `Gradient ${i} is on ${where} but gradient 0 is on ${first.device}: unscale the gradients of one device per call`,
      );
    }
    if (!UNSCALABLE.has(grad.dtype)) {
      throw new TypeError(`Gradient ${i} has dtype ${grad.dtype}: gradients are float32, float16 or bfloat16`);
    }
  });
  const tensors = grads as readonly Tensor[];
  const ordinal = Number(first.device.slice(5));
  using table = cudaTable(
    ordinal,
    tensors.map((t) => ({ address: t.address, count: t.size, dtypeCode: dtypeInfo(t.dtype).code })),
  );
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
}
