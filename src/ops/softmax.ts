/**
 * Softmax, log-softmax and fused softmax cross-entropy over the last axis, native
 * (zig/src/ops/softmax.zig): one row per task, the row maximum subtracted first (so logits of
 * +-1e4 give finite results), float32 arithmetic and one rounding into autocast's "softmax" /
 * "log_softmax" / "cross_entropy" dtype (float32 under the mixed policies). A bfloat16 or float16
 * input stays in its dtype; what the backward pass needs is the output (softmax, log-softmax) or
 * the logits and a float32 per-row log-sum-exp (cross-entropy).
 *
 * @module
 */

import { record, requiresGrad } from "../autodiff.ts";
import { backendOf } from "../backend/backend.ts";
import type { Tensor } from "../tensor.ts";
import { autocastDtype } from "./_autocast.ts";
import { checkTensor, empty, shapeText, toDtype } from "./_util.ts";

function rowsOf(x: Tensor, op: string): [rows: number, width: number] {
  if (x.ndim < 1) throw new TypeError(`${op} needs at least one dimension, got a scalar`);
  const width = x.shape[x.ndim - 1]!;
  return [width === 0 ? 0 : x.size / width, width];
}

/** The output gradient in the op's dtype (autodiff passes it in the output's dtype already). */
function inDtype(g: Tensor, dtype: Tensor["dtype"]): Tensor {
  return g.dtype === dtype ? g : g.to(dtype);
}

/**
 * softmax over the last axis.
 *
 * @param x Logits [..., C].
 * @returns Probabilities [..., C] summing to 1 per row.
 * @example
 * ```ts
 * import { softmax } from "./softmax.ts";
 * import { tensor } from "../tensor.ts";
 * using p = softmax(tensor([[0, 0]]));
 * if (p.toArray().join() !== "0.5,0.5") throw new Error("softmax");
 * ```
 */
export function softmax(x: Tensor): Tensor {
  checkTensor(x, "softmax", "x");
  rowsOf(x, "softmax");
  const dtype = autocastDtype("softmax", [x.dtype], x.device);
  const xc = toDtype(x, dtype);
  const backend = backendOf(xc.device);
  const result = empty(xc.shape, dtype, xc.device);
  backend.softmaxForward(xc, result);
  return record(result, [xc], [result], (g) => {
    const gc = inDtype(g, dtype);
    const gradX = empty(xc.shape, dtype, xc.device);
    try {
      backend.softmaxBackward(result, gc, gradX);
    } finally {
      if (gc !== g) gc.dispose();
    }
    return [gradX];
  });
}

/**
 * log(softmax(x)) over the last axis, computed as x - max - log(sum(exp(x - max))).
 *
 * @param x Logits [..., C].
 * @returns Log-probabilities [..., C].
 * @example
 * ```ts
 * import { logSoftmax } from "./softmax.ts";
 * import { tensor } from "../tensor.ts";
 * using y = logSoftmax(tensor([[1e4, -1e4]]));
 * if (y.toArray()[0] !== 0 || y.toArray()[1] !== -2e4) throw new Error("stable log-softmax");
 * ```
 */
export function logSoftmax(x: Tensor): Tensor {
  checkTensor(x, "logSoftmax", "x");
  rowsOf(x, "logSoftmax");
  const dtype = autocastDtype("log_softmax", [x.dtype], x.device);
  const xc = toDtype(x, dtype);
  const backend = backendOf(xc.device);
  const result = empty(xc.shape, dtype, xc.device);
  backend.logSoftmaxForward(xc, result);
  return record(result, [xc], [result], (g) => {
    const gc = inDtype(g, dtype);
    const gradX = empty(xc.shape, dtype, xc.device);
    try {
      backend.logSoftmaxBackward(result, gc, gradX);
    } finally {
      if (gc !== g) gc.dispose();
    }
    return [gradX];
  });
}

/** Class indices: one per row of the logits. */
export type Labels = Int32Array | readonly number[];

/** Options of {@linkcode crossEntropy}. */
export interface CrossEntropyOptions {
  /**
   * Rows whose label equals this contribute nothing, and the mean is over the other rows (default
   * -100, as PyTorch). When every row is ignored the loss is NaN (0 / 0, as PyTorch's mean
   * reduction) and the gradient is zero.
   */
  readonly ignoreIndex?: number;
}

function describeKind(value: unknown): string {
  if (value === null) return "null";
  if (typeof value !== "object") return typeof value;
  return (value as object).constructor?.name ?? "an object";
}

/**
 * Mean softmax cross-entropy of logits [..., C] against integer labels (one per row), fused with
 * its log-softmax: the forward keeps each row's log-sum-exp (float32), and the backward writes
 * (softmax - onehot) * g / kept straight into the gradient, in the logits' dtype. Rows labelled
 * `ignoreIndex` (default -100) are skipped and the mean is over the kept rows (NaN when none is
 * kept, as PyTorch). Returned as a float32 scalar (autocast "cross_entropy").
 *
 * @param logits Logits [..., C].
 * @param labels One class index in [0, C) per row, or ignoreIndex (Int32Array or number[]).
 * @param options ignoreIndex.
 * @returns The mean loss, shape [].
 * @example
 * ```ts
 * import { crossEntropy } from "./softmax.ts";
 * import { tensor } from "../tensor.ts";
 * using loss = crossEntropy(tensor([[0, 0], [5, 1]]), [1, -100]);
 * if (Math.abs(loss.toArray()[0]! - Math.LN2) > 1e-7) throw new Error("log 2, the second row ignored");
 * ```
 */
export function crossEntropy(logits: Tensor, labels: Labels, options: CrossEntropyOptions = {}): Tensor {
  checkTensor(logits, "crossEntropy", "logits");
  const [rows, width] = rowsOf(logits, "crossEntropy");
  const ignoreIndex = options?.ignoreIndex ?? -100;
  if (!Number.isInteger(ignoreIndex) || ignoreIndex < -(2 ** 31) || ignoreIndex >= 2 ** 31) {
    throw new RangeError(`crossEntropy: ignoreIndex must be a 32-bit integer (default -100), got ${ignoreIndex}`);
  }
  if (!Array.isArray(labels) && !(labels instanceof Int32Array)) {
    const kind = describeKind(labels);
    const fix = ArrayBuffer.isView(labels) ? ": convert it with Int32Array.from(labels)" : "";
    throw new TypeError(
      `crossEntropy: labels must be an Int32Array or an array of integers (one class index per row), got ${kind}${fix}`,
    );
  }
  if (labels.length !== rows) {
    throw new TypeError(
      `crossEntropy: logits ${shapeText(logits.shape)} have ${rows} rows, so pass ${rows} labels (one per row), got ${labels.length}`,
    );
  }
  // A copy: the backward pass reads the labels later, whatever the caller does with its array.
  const kept = new Int32Array(rows);
  for (let r = 0; r < rows; r++) {
    const label = labels[r]!;
    if (!Number.isInteger(label) || (label !== ignoreIndex && (label < 0 || label >= width))) {
      throw new RangeError(
        `crossEntropy: label ${label} at row ${r} is not a class index in [0, ${width}) nor the ignoreIndex ${ignoreIndex}`,
      );
    }
    kept[r] = label;
  }
  const dtype = autocastDtype("cross_entropy", [logits.dtype], logits.device);
  const xc = toDtype(logits, dtype);
  const backend = backendOf(xc.device);
  const lse = requiresGrad(xc) ? empty([rows], "float32", xc.device) : null;
  const result = empty([], "float32", xc.device);
  backend.crossEntropyForward(xc, kept, ignoreIndex, lse, result);
  return record(result, [xc], lse !== null ? [xc, lse] : [xc], (g) => {
    const gc = inDtype(g, "float32");
    const gradX = empty(xc.shape, dtype, xc.device);
    try {
      backend.crossEntropyBackward(xc, kept, ignoreIndex, lse!, gc, gradX);
    } finally {
      if (gc !== g) gc.dispose();
    }
    return [gradX];
  });
}
