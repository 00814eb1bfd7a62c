/**
 * Reductions: sum and mean over axes, accumulated in float64 and rounded once to autocast's
 * "sum" / "mean" dtype.
 *
 * @module
 */

import { record } from "../autodiff.ts";
import type { Tensor } from "../tensor.ts";
import { autocastDtype } from "./_autocast.ts";
import { checkTensor, fromValues, normalizeAxis, output, toDtype, values } from "./_util.ts";

/** Options of {@linkcode sum} and {@linkcode mean}. */
export interface ReduceOptions {
  /** Axes to reduce (default: all). Negative axes count from the end. */
  readonly axis?: number | readonly number[];
  /** Keep reduced axes as size 1 (default false). */
  readonly keepDims?: boolean;
}

interface Plan {
  readonly outShape: number[];
  readonly map: Int32Array | null; // input index -> output index (null: everything -> 0)
  readonly count: number; // elements summed per output
}

function plan(shape: readonly number[], options: ReduceOptions, op: string): Plan {
  const ndim = shape.length;
  const axes = new Set<number>();
  if (options.axis === undefined) for (let d = 0; d < ndim; d++) axes.add(d);
  else {
    const list = typeof options.axis === "number" ? [options.axis] : options.axis;
    if (!Array.isArray(list)) throw new TypeError(`${op}: axis must be a number or an array of numbers`);
    for (const axis of list) axes.add(normalizeAxis(axis, ndim, op));
  }
  const outShape: number[] = [];
  let count = 1;
  for (let d = 0; d < ndim; d++) {
    if (axes.has(d)) {
      count *= shape[d]!;
      if (options.keepDims) outShape.push(1);
    } else outShape.push(shape[d]!);
  }
  if (axes.size === ndim) return { outShape, map: null, count };
  // Output strides over the kept axes, walked with an odometer over the input.
  const strides = new Array<number>(ndim).fill(0);
  let stride = 1;
  for (let d = ndim - 1; d >= 0; d--) {
    if (!axes.has(d)) {
      strides[d] = stride;
      stride *= shape[d]!;
    }
  }
  const size = shape.reduce((x, y) => x * y, 1);
  const map = new Int32Array(size);
  const counter = new Array<number>(ndim).fill(0);
  let index = 0;
  for (let i = 0; i < size; i++) {
    map[i] = index;
    for (let d = ndim - 1; d >= 0; d--) {
      counter[d]!++;
      index += strides[d]!;
      if (counter[d]! < shape[d]!) break;
      index -= strides[d]! * counter[d]!;
      counter[d] = 0;
    }
  }
  return { outShape, map, count };
}

function reduce(op: "sum" | "mean", x: Tensor, options: ReduceOptions): Tensor {
  checkTensor(x, op, "x");
  const p = plan(x.shape, options, op);
  const dtype = autocastDtype(op, [x.dtype]);
  const xc = toDtype(x, dtype);
  const factor = op === "mean" ? 1 / p.count : 1;
  const xv = values(xc);
  const result = output(p.outShape, dtype, (out) => {
    const sums = new Float64Array(out.length);
    if (p.map === null) {
      let total = 0;
      for (let i = 0; i < xv.length; i++) total += xv[i]!;
      if (sums.length > 0) sums[0] = total;
    } else {
      const map = p.map;
      for (let i = 0; i < xv.length; i++) sums[map[i]!]! += xv[i]!;
    }
    for (let i = 0; i < out.length; i++) out[i] = sums[i]! * factor;
  });
  return record(result, [xc], (g) => {
    const gv = values(g);
    const d = new Float32Array(xc.size);
    if (p.map === null) d.fill(gv[0]! * factor);
    else {
      const map = p.map;
      for (let i = 0; i < d.length; i++) d[i] = gv[map[i]!]! * factor;
    }
    return [fromValues(d, xc.shape, dtype)];
  });
}

/**
 * Sum over axes (all by default), accumulated in float64.
 *
 * @param x A tensor.
 * @param options axis, keepDims.
 * @returns The sums.
 * @example
 * ```ts
 * import { sum } from "./reduce.ts";
 * import { tensor } from "../tensor.ts";
 * using s = sum(tensor([[1, 2], [3, 4]]), { axis: 0 });
 * if (s.toArray().join() !== "4,6") throw new Error("column sums");
 * ```
 */
export function sum(x: Tensor, options: ReduceOptions = {}): Tensor {
  return reduce("sum", x, options);
}

/**
 * Mean over axes (all by default).
 *
 * @param x A tensor.
 * @param options axis, keepDims.
 * @returns The means.
 * @example
 * ```ts
 * import { mean } from "./reduce.ts";
 * import { tensor } from "../tensor.ts";
 * using m = mean(tensor([[1, 2], [3, 4]]), { axis: -1 });
 * if (m.toArray().join() !== "1.5,3.5") throw new Error("row means");
 * ```
 */
export function mean(x: Tensor, options: ReduceOptions = {}): Tensor {
  return reduce("mean", x, options);
}
