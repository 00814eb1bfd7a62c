/**
 * Reductions: sum and mean over axes, native (zig/src/ops/elementwise.zig's map kernel): each
 * output accumulates its terms in float64 in a fixed order (the same bits on any thread count)
 * and is rounded once to autocast's "sum" / "mean" dtype. The backward pass is a native broadcast
 * copy; bfloat16 and float16 tensors are never widened to float32 copies.
 *
 * @module
 */

import { record } from "../autodiff.ts";
import { backendOf } from "../backend/backend.ts";
import { MapOp } from "../backend/cpu/elementwise.ts";
import type { Tensor } from "../tensor.ts";
import { autocastDtype } from "./_autocast.ts";
import { mapSpace } from "./_map.ts";
import { checkTensor, empty, normalizeAxis, toDtype } from "./_util.ts";

/** Options of {@linkcode sum} and {@linkcode mean}. */
export interface ReduceOptions {
  /** Axes to reduce (default: all). Negative axes count from the end. */
  readonly axis?: number | readonly number[];
  /** Keep reduced axes as size 1 (default false). */
  readonly keepDims?: boolean;
}

interface Plan {
  readonly outShape: number[];
  readonly reduced: boolean[]; // per input dimension: summed over
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
  return { outShape, reduced: shape.map((_, d) => axes.has(d)), count };
}

/** Row-major strides of `shape`, or of its kept dimensions only (0 on the reduced ones). */
function stridesOf(shape: readonly number[], skip: readonly boolean[] | null): number[] {
  const strides = new Array<number>(shape.length).fill(0);
  let stride = 1;
  for (let d = shape.length - 1; d >= 0; d--) {
    if (skip?.[d]) continue;
    strides[d] = stride;
    stride *= shape[d]!;
  }
  return strides;
}

/** The axes of `sum(x, 1)` / `sum(x, [0, 1])` (torch.sum's dim) as options; refuses what is neither. */
function optionsOf(op: string, options: ReduceOptions | number | readonly number[]): ReduceOptions {
  if (typeof options === "number" || Array.isArray(options)) return { axis: options as number | readonly number[] };
  if (options === null || typeof options !== "object") {
    throw new TypeError(`${op}: expected an axis, an array of axes or { axis, keepDims }, got ${String(options)}`);
  }
  for (const key of Object.keys(options)) {
    if (key !== "axis" && key !== "keepDims") {
      throw new TypeError(
        `${op}: unknown option ${JSON.stringify(key)}: use { axis, keepDims }${key === "dim" || key === "keepdim" ? " (PyTorch's dim and keepdim)" : ""}`,
      );
    }
  }
  return options as ReduceOptions;
}

function reduce(op: "sum" | "mean", x: Tensor, given: ReduceOptions | number | readonly number[]): Tensor {
  checkTensor(x, op, "x");
  const options = optionsOf(op, given);
  const p = plan(x.shape, options, op);
  const dtype = autocastDtype(op, [x.dtype], x.device);
  const xc = toDtype(x, dtype);
  const factor = op === "mean" ? Math.fround(1 / p.count) : 1;
  const backend = backendOf(xc.device);
  const result = empty(p.outShape, dtype, xc.device);
  if (p.count === 0) {
    // Nothing summed: sums are 0, means NaN (0 / 0), as NumPy.
    const kept = p.outShape.filter((d) => d !== 1);
    const space = { keptShape: kept, keptStrides: [[]], reducedShape: [], reducedStrides: [[]] };
    if (result.size > 0) backend.elementwiseMap(MapOp.copy, result, [op === "sum" ? 0 : Number.NaN], space, 1);
  } else {
    const space = mapSpace(op, xc.shape, p.reduced, [stridesOf(xc.shape, null)]);
    backend.elementwiseMap(MapOp.copy, result, [xc], space, factor);
  }
  return record(result, [xc], [], (g) => {
    // The broadcast copy: every input element receives its output's gradient times the factor.
    const dx = empty(xc.shape, dtype, xc.device);
    const space = mapSpace(
      `${op} backward`,
      xc.shape,
      xc.shape.map(() => false),
      [stridesOf(xc.shape, p.reduced)],
    );
    backendOf(dx.device).elementwiseMap(MapOp.copy, dx, [g], space, factor);
    return [dx];
  });
}

/**
 * Sum over axes (all by default), accumulated in float64 in a fixed order.
 *
 * @param x A tensor.
 * @param options axis, keepDims; or the axis or axes alone, as torch.sum's dim (`sum(x, [0, 1])`).
 * @returns The sums.
 * @example
 * ```ts
 * import { sum } from "./reduce.ts";
 * import { tensor } from "../tensor.ts";
 * using s = sum(tensor([[1, 2], [3, 4]]), { axis: 0 });
 * if (s.toArray().join() !== "4,6") throw new Error("column sums");
 * ```
 */
export function sum(x: Tensor, options: ReduceOptions | number | readonly number[] = {}): Tensor {
  return reduce("sum", x, options);
}

/**
 * Mean over axes (all by default).
 *
 * @param x A tensor.
 * @param options axis, keepDims; or the axis or axes alone (`mean(x, -1)`).
 * @returns The means.
 * @example
 * ```ts
 * import { mean } from "./reduce.ts";
 * import { tensor } from "../tensor.ts";
 * using m = mean(tensor([[1, 2], [3, 4]]), { axis: -1 });
 * if (m.toArray().join() !== "1.5,3.5") throw new Error("row means");
 * ```
 */
export function mean(x: Tensor, options: ReduceOptions | number | readonly number[] = {}): Tensor {
  return reduce("mean", x, options);
}
