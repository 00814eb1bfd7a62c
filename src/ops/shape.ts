/**
 * Shape ops: reshape, transpose, slice and concat. Tensors are contiguous, so each returns a copy
 * (bits copied unchanged, in the input's dtype); the backward pass moves gradients back the same way.
 *
 * @module
 */

import { record } from "../autodiff.ts";
import type { StorageArray } from "../dtype.ts";
import { type Shape, Tensor } from "../tensor.ts";
import { track } from "../autodiff.ts";
import { checkTensor, normalizeAxis, shapeText, sizeOf } from "./_util.ts";

function blank(shape: Shape, like: Tensor): Tensor {
  return track(new Tensor(like.dtype, shape, "cpu"));
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
  const result = blank(inferred, x);
  result.data.set(x.data);
  return record(result, [x], (g) => [g.reshape(x.shape)]);
}

function permuteInto(source: StorageArray, target: StorageArray, shape: Shape, perm: readonly number[]): void {
  const ndim = shape.length;
  const inStrides = new Array<number>(ndim);
  let stride = 1;
  for (let d = ndim - 1; d >= 0; d--) {
    inStrides[d] = stride;
    stride *= shape[d]!;
  }
  const outShape = perm.map((p) => shape[p]!);
  const walk = perm.map((p) => inStrides[p]!);
  const size = target.length;
  const counter = new Array<number>(ndim).fill(0);
  let index = 0;
  for (let i = 0; i < size; i++) {
    target[i] = source[index]!;
    for (let d = ndim - 1; d >= 0; d--) {
      counter[d]!++;
      index += walk[d]!;
      if (counter[d]! < outShape[d]!) break;
      index -= walk[d]! * counter[d]!;
      counter[d] = 0;
    }
  }
}

/**
 * Permutes dimensions (NumPy's transpose): output dimension i is input dimension perm[i].
 * Without perm, the last two dimensions swap.
 *
 * @param x A tensor of at least one dimension.
 * @param perm A permutation of [0, ndim).
 * @returns The permuted copy.
 * @example
 * ```ts
 * import { transpose } from "./shape.ts";
 * import { tensor } from "../tensor.ts";
 * using y = transpose(tensor([[1, 2, 3], [4, 5, 6]]));
 * if (y.toArray().join() !== "1,4,2,5,3,6") throw new Error("transpose");
 * ```
 */
export function transpose(x: Tensor, perm?: readonly number[]): Tensor {
  checkTensor(x, "transpose", "x");
  const ndim = x.ndim;
  const order = perm ?? [...Array(ndim).keys()].map((d) => (d < ndim - 2 ? d : d === ndim - 2 ? ndim - 1 : ndim - 2));
  const normalized = order.map((axis) => normalizeAxis(axis, ndim, "transpose"));
  if (normalized.length !== ndim || new Set(normalized).size !== ndim) {
    throw new RangeError(`transpose: perm [${order.join(", ")}] is not a permutation of ${ndim} dimensions`);
  }
  const outShape = normalized.map((p) => x.shape[p]!);
  const result = blank(outShape, x);
  permuteInto(x.data, result.data, x.shape, normalized);
  const inverse = new Array<number>(ndim);
  normalized.forEach((p, i) => {
    inverse[p] = i;
  });
  return record(result, [x], (g) => {
    const back = new Tensor(g.dtype, x.shape, "cpu");
    permuteInto(g.data, back.data, outShape, inverse);
    return [back];
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
  const result = blank(outShape, x);
  const copy = (source: StorageArray, target: StorageArray, forward: boolean) => {
    // Walk output rows (all dims but the last) and copy contiguous runs.
    const inner = outShape[ndim - 1] ?? 1;
    const rows = inner === 0 ? 0 : sizeOf(outShape) / inner;
    const counter = new Array<number>(Math.max(ndim - 1, 0)).fill(0);
    for (let r = 0; r < rows; r++) {
      let inIndex = 0;
      for (let d = 0; d < ndim - 1; d++) inIndex = (inIndex + counter[d]! + lo[d]!) * x.shape[d + 1]!;
      inIndex += ndim > 0 ? lo[ndim - 1]! : 0;
      const outIndex = r * inner;
      if (forward) target.set(source.subarray(inIndex, inIndex + inner), outIndex);
      else target.set(source.subarray(outIndex, outIndex + inner), inIndex);
      for (let d = ndim - 2; d >= 0; d--) {
        counter[d]!++;
        if (counter[d]! < outShape[d]!) break;
        counter[d] = 0;
      }
    }
  };
  if (ndim === 0) result.data.set(x.data);
  else copy(x.data, result.data, true);
  return record(result, [x], (g) => {
    const back = new Tensor(g.dtype, x.shape, "cpu");
    if (ndim === 0) back.data.set(g.data);
    else copy(g.data, back.data, false);
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
      x.dtype === first.dtype && x.ndim === first.ndim && x.shape.every((d, i) => i === ax || d === first.shape[i]);
    if (!same) {
      throw new TypeError(
        `concat: ${x} does not fit ${first} along axis ${ax}: same dtype, rank and other dimensions needed (cast with ops.toDtype)`,
      );
    }
  }
  const outer = sizeOf(first.shape.slice(0, ax));
  const inner = sizeOf(first.shape.slice(ax + 1));
  const widths = xs.map((x) => x.shape[ax]! * inner);
  const total = widths.reduce((p, w) => p + w, 0);
  const outShape = [...first.shape];
  outShape[ax] = xs.reduce((p, x) => p + x.shape[ax]!, 0);
  const result = blank(outShape, first);
  for (let o = 0; o < outer; o++) {
    let offset = o * total;
    xs.forEach((x, i) => {
      result.data.set(x.data.subarray(o * widths[i]!, (o + 1) * widths[i]!), offset);
      offset += widths[i]!;
    });
  }
  return record(result, [...xs], (g) =>
    xs.map((x, i) => {
      const back = new Tensor(g.dtype, x.shape, "cpu");
      const before = widths.slice(0, i).reduce((p, w) => p + w, 0);
      for (let o = 0; o < outer; o++) {
        const start = o * total + before;
        back.data.set(g.data.subarray(start, start + widths[i]!), o * widths[i]!);
      }
      return back;
    }),
  );
}
