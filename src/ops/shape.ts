/**
 * Shape ops: reshape, transpose, slice and concat. Tensors are contiguous, so each returns a copy
 * made by one native strided copy (bits unchanged, in the input's dtype, on its device); the
 * backward pass moves gradients back the same way.
 *
 * @module
 */

import { record } from "../autodiff.ts";
import { backendOf } from "../backend/backend.ts";
import type { StridedView } from "../backend/cpu/layout.ts";
import type { Shape, Tensor } from "../tensor.ts";
import { checkTensor, empty, normalizeAxis, shapeText, sizeOf } from "./_util.ts";

/** Row-major strides (in elements) of a contiguous shape. */
function contiguousStrides(shape: Shape): number[] {
  const strides = new Array<number>(shape.length);
  let stride = 1;
  for (let d = shape.length - 1; d >= 0; d--) {
    strides[d] = stride;
    stride *= shape[d]!;
  }
  return strides;
}

function contiguous(shape: Shape, offset = 0): StridedView {
  return { offset, strides: contiguousStrides(shape) };
}

/** A new tensor (in the active scope) with x's bits walked through `from` over `shape`. */
function gathered(x: Tensor, from: StridedView, shape: Shape): Tensor {
  const result = empty(shape, x.dtype, x.device);
  backendOf(x.device).stridedCopy(x, from, result, contiguous(shape), shape);
  return result;
}

/**
 * The same elements in another shape; one dimension may be -1 (inferred).
 *
 * @param x A tensor.
 * @param shape The new shape, with at most one -1.
 * @returns A copy with the new shape.
 * @example
 * ```ts
 * import { reshape } from "./shape.ts";
 * import { tensor } from "../tensor.ts";
 * using y = reshape(tensor([1, 2, 3, 4]), [2, -1]);
 * if (y.shape.join() !== "2,2") throw new Error("reshape");
 * ```
 */
export function reshape(x: Tensor, shape: readonly number[]): Tensor {
  checkTensor(x, "reshape", "x");
  const inferred = [...shape];
  const unknown = inferred.indexOf(-1);
  if (unknown >= 0) {
    const known = inferred.reduce((p, d, i) => (i === unknown ? p : p * d), 1);
    inferred[unknown] = known === 0 ? 0 : x.size / known;
  }
  if (inferred.some((d) => !Number.isInteger(d) || d < 0) || sizeOf(inferred) !== x.size) {
    throw new RangeError(`reshape: cannot reshape ${shapeText(x.shape)} to ${shapeText(shape)}: sizes differ`);
  }
  const result = empty(inferred, x.dtype, x.device);
  backendOf(x.device).copy(x, result);
  return record(result, [x], [], (g) => [g.reshape(x.shape)]);
}

/** transpose()'s permutation from its arguments (see there), with clear errors for anything else. */
function transposeOrder(
  ndim: number,
  perm: readonly number[] | number | undefined,
  dim1: number | undefined,
): readonly number[] {
  if (typeof perm === "number") {
    if (typeof dim1 !== "number") {
      throw new TypeError(
        `transpose: got dim0 ${perm} without dim1: pass two dimensions to swap, as transpose(x, 0, 1), or a permutation array`,
      );
    }
    const first = normalizeAxis(perm, ndim, "transpose");
    const second = normalizeAxis(dim1, ndim, "transpose");
    return [...Array(ndim).keys()].map((d) => (d === first ? second : d === second ? first : d));
  }
  if (dim1 !== undefined) {
    throw new TypeError(
      `transpose: dim1 ${String(dim1)} needs a number dim0 before it, got ${perm === undefined ? "undefined" : "an array"}`,
    );
  }
  if (perm === undefined)
    return [...Array(ndim).keys()].map((d) => (d < ndim - 2 ? d : d === ndim - 2 ? ndim - 1 : ndim - 2));
  if (!Array.isArray(perm)) {
    throw new TypeError(
      `transpose: perm must be an array of dimensions or a number (transpose(x, dim0, dim1)), got ${typeof perm}`,
    );
  }
  return perm;
}

/**
 * Permutes dimensions (NumPy's transpose): output dimension i is input dimension perm[i].
 * Without perm, the last two dimensions swap. `transpose(x, dim0, dim1)` swaps two dimensions, as
 * PyTorch's `torch.transpose` (negative dimensions count from the end).
 *
 * @param x A tensor of at least one dimension.
 * @param perm A permutation of [0, ndim), or the first of two dimensions to swap.
 * @param dim1 The second dimension to swap, when perm is a number.
 * @returns The permuted copy.
 * @example
 * ```ts
 * import { transpose } from "./shape.ts";
 * import { tensor } from "../tensor.ts";
 * using y = transpose(tensor([[1, 2, 3], [4, 5, 6]]));
 * if (y.toArray().join() !== "1,4,2,5,3,6") throw new Error("transpose");
 * ```
 */
export function transpose(x: Tensor, perm?: readonly number[] | number, dim1?: number): Tensor {
  checkTensor(x, "transpose", "x");
  const ndim = x.ndim;
  const order = transposeOrder(ndim, perm, dim1);
  const normalized = order.map((axis) => normalizeAxis(axis, ndim, "transpose"));
  if (normalized.length !== ndim || new Set(normalized).size !== ndim) {
    throw new RangeError(`transpose: perm [${order.join(", ")}] is not a permutation of ${ndim} dimensions`);
  }
  const outShape = normalized.map((p) => x.shape[p]!);
  const inStrides = contiguousStrides(x.shape);
  const result = gathered(x, { offset: 0, strides: normalized.map((p) => inStrides[p]!) }, outShape);
  const inverse = new Array<number>(ndim);
  normalized.forEach((p, i) => {
    inverse[p] = i;
  });
  return record(result, [x], [], (g) => {
    const outStrides = contiguousStrides(outShape);
    return [gathered(g, { offset: 0, strides: inverse.map((p) => outStrides[p]!) }, x.shape)];
  });
}

/**
 * The block [starts, ends) of every dimension (ends exclusive, negative values count from the end).
 *
 * @param x A tensor.
 * @param starts Start per dimension.
 * @param ends End per dimension (exclusive).
 * @returns The block, a copy.
 * @example
 * ```ts
 * import { slice } from "./shape.ts";
 * import { tensor } from "../tensor.ts";
 * using y = slice(tensor([[1, 2, 3], [4, 5, 6]]), [0, 1], [2, 3]);
 * if (y.toArray().join() !== "2,3,5,6") throw new Error("slice");
 * ```
 */
export function slice(x: Tensor, starts: readonly number[], ends: readonly number[]): Tensor {
  checkTensor(x, "slice", "x");
  const ndim = x.ndim;
  if (starts.length !== ndim || ends.length !== ndim) {
    throw new TypeError(`slice: give ${ndim} starts and ${ndim} ends for shape ${shapeText(x.shape)}`);
  }
  const lo = starts.map((s, d) => (s < 0 ? s + x.shape[d]! : s));
  const hi = ends.map((e, d) => (e < 0 ? e + x.shape[d]! : e));
  for (let d = 0; d < ndim; d++) {
    if (!Number.isInteger(lo[d]) || !Number.isInteger(hi[d]) || lo[d]! < 0 || hi[d]! > x.shape[d]! || lo[d]! > hi[d]!) {
      throw new RangeError(
        `slice: [${starts[d]}, ${ends[d]}) is out of range for dimension ${d} of size ${x.shape[d]}`,
      );
    }
  }
  const outShape = lo.map((l, d) => hi[d]! - l);
  const inStrides = contiguousStrides(x.shape);
  const window: StridedView = { offset: lo.reduce((p, l, d) => p + l * inStrides[d]!, 0), strides: inStrides };
  const result = gathered(x, window, outShape);
  return record(result, [x], [], (g) => {
    const backend = backendOf(g.device);
    const back = empty(x.shape, g.dtype, g.device);
    backend.zero(back);
    backend.stridedCopy(g, contiguous(outShape), back, window, outShape);
    return [back];
  });
}

/**
 * Joins tensors of one dtype along an axis; the other dimensions must agree.
 *
 * @param xs Tensors of the same dtype and rank.
 * @param axis The axis to join on (default 0).
 * @returns The concatenation.
 * @example
 * ```ts
 * import { concat } from "./shape.ts";
 * import { tensor } from "../tensor.ts";
 * using y = concat([tensor([[1], [2]]), tensor([[3], [4]])], 1);
 * if (y.toArray().join() !== "1,3,2,4") throw new Error("concat");
 * ```
 */
export function concat(xs: readonly Tensor[], axis = 0): Tensor {
  if (!Array.isArray(xs) || xs.length === 0) throw new TypeError("concat takes a non-empty array of tensors");
  xs.forEach((x, i) => checkTensor(x, "concat", `xs[${i}]`));
  const first = xs[0]!;
  const ax = normalizeAxis(axis, first.ndim, "concat");
  for (const x of xs) {
    const same =
      x.dtype === first.dtype &&
      x.ndim === first.ndim &&
      x.shape.every((d: number, i: number) => i === ax || d === first.shape[i]);
    if (!same) {
      throw new TypeError(
        `concat: ${x} does not fit ${first} along axis ${ax}: same dtype, rank and other dimensions needed (cast with ops.toDtype)`,
      );
    }
  }
  for (const x of xs) {
    if (x.device !== first.device) {
      throw new TypeError(`concat: ${x} is not on ${first.device} like ${first}: move it there first with .to()`);
    }
  }
  const outShape = [...first.shape];
  outShape[ax] = xs.reduce((p, x) => p + x.shape[ax]!, 0);
  const outStrides = contiguousStrides(outShape);
  const backend = backendOf(first.device);
  const result = empty(outShape, first.dtype, first.device);
  // Each input's region of the result: its offset along the axis, the result's strides.
  const regions: StridedView[] = [];
  let start = 0;
  for (const x of xs) {
    regions.push({ offset: start * outStrides[ax]!, strides: outStrides });
    backend.stridedCopy(x, contiguous(x.shape), result, regions[regions.length - 1]!, x.shape);
    start += x.shape[ax]!;
  }
  return record(result, [...xs], [], (g) =>
    xs.map((x, i) => {
      const back = empty(x.shape, g.dtype, g.device);
      backendOf(g.device).stridedCopy(g, regions[i]!, back, contiguous(x.shape), x.shape);
      return back;
    }),
  );
}
