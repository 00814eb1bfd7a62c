/**
 * Multi-tensor unscale and non-finite check: PyTorch's `_amp_foreach_non_finite_check_and_unscale_`
 * for float32, float16 and bfloat16 gradients alike, in one native call for the whole list.
 *
 * @module
 */

import { ptr } from "bun:ffi";
import { type TableRow, tensorRows } from "./backend/_tables.ts";
import { backendOf } from "./backend/backend.ts";
import { unscaleCheckRows } from "./backend/cpu/amp.ts";
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

/** Native codes of the dtypes a gradient may have (zig/src/numerics.zig `Dtype`). */
const UNSCALABLE_CODES: Readonly<Partial<Record<DtypeName, number>>> = Object.freeze({
  float32: dtypeInfo("float32").code,
  float16: dtypeInfo("float16").code,
  bfloat16: dtypeInfo("bfloat16").code,
});

/**
 * Builds the native table of (address, count, dtype) rows, 24 bytes each. Written through 32-bit
 * words (little-endian, as every supported target is) so no BigInt is made per row: with 1,000
 * small gradients the table is most of a call's cost.
 * @internal
 */
export function gradientTable(grads: readonly (Tensor | GradientRow)[], what: string): BigUint64Array {
  return tensorRows(hostRows(grads, what));
}

/** Validated host rows of gradients given as CPU tensors or `{ data, dtype }`. */
function hostRows(grads: readonly (Tensor | GradientRow)[], what: string): TableRow[] {
  if (!Array.isArray(grads)) {
    throw new TypeError(`${what} takes a list of tensors or { data, dtype } rows, got ${describeKind(grads)}`);
  }
  const rows: TableRow[] = [];
  for (let i = 0; i < grads.length; i++) {
    const grad = grads[i];
    let address: number;
    let count: number;
    let dtype: DtypeName;
    if (grad instanceof Tensor) {
      if (grad.device !== "cpu") {
        // A host kernel must never see a device address.
        throw new TypeError(`Gradient ${i} is on ${grad.device}: ${what} builds a host table; move it with .to("cpu")`);
      }
      dtype = grad.dtype;
      count = grad.size;
      address = count === 0 ? 0 : grad.address;
    } else if (typeof grad === "object" && grad !== null && "data" in grad && "dtype" in grad) {
      dtype = canonicalDtype(grad.dtype);
      if (!isStorageOf(grad.data, dtype)) {
        throw new TypeError(
          `Gradient ${i} has a ${describeKind(grad.data)} for dtype ${dtype}: pass a ${dtypeInfo(dtype).storage}`,
        );
      }
      count = grad.data.length;
      address = count === 0 ? 0 : ptr(grad.data);
    } else {
      throw new TypeError(`Gradient ${i} is a ${describeKind(grad)}: pass a Tensor or { data, dtype }`);
    }
    const code = UNSCALABLE_CODES[dtype];
    if (code === undefined) {
      throw new TypeError(`Gradient ${i} has dtype ${dtype}: gradients are float32, float16 or bfloat16`);
    }
    rows.push({ address, count, dtypeCode: code });
  }
  return rows;
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
  return unscaleCheckRows(hostRows(grads, "unscaleAndCheck"), invScale);
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
    if (UNSCALABLE_CODES[grad.dtype] === undefined) {
      throw new TypeError(`Gradient ${i} has dtype ${grad.dtype}: gradients are float32, float16 or bfloat16`);
    }
  });
  return backendOf(first.device).unscaleCheck(grads as readonly Tensor[], invScale);
}
