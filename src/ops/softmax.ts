/**
 * Softmax, log-softmax and fused softmax cross-entropy over the last axis. They run in autocast's
 * "softmax" / "log_softmax" / "cross_entropy" dtype (float32 under the mixed policies) and subtract
 * the row maximum first, so logits of +-1e4 give finite results.
 *
 * @module
 */

import { record } from "../autodiff.ts";
import type { Tensor } from "../tensor.ts";
import { autocastDtype } from "./_autocast.ts";
import { checkTensor, fromValues, output, shapeText, toDtype, values } from "./_util.ts";

function rowsOf(x: Tensor, op: string): [rows: number, width: number] {
  if (x.ndim < 1) throw new TypeError(`${op} needs at least one dimension, got a scalar`);
  const width = x.shape[x.ndim - 1]!;
  return [width === 0 ? 0 : x.size / width, width];
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
  const dtype = autocastDtype("softmax", [x.dtype]);
  const xc = toDtype(x, dtype);
  const [rows, width] = rowsOf(xc, "softmax");
  const xv = values(xc);
  const result = output(xc.shape, dtype, (out) => {
    for (let r = 0; r < rows; r++) {
      const base = r * width;
      let max = -Infinity;
      for (let j = 0; j < width; j++) max = Math.max(max, xv[base + j]!);
      let total = 0;
      for (let j = 0; j < width; j++) {
        const e = Math.exp(xv[base + j]! - max);
        out[base + j] = e;
        total += e;
      }
      const inv = 1 / total;
      for (let j = 0; j < width; j++) out[base + j]! *= inv;
    }
  });
  return record(result, [xc], (g) => {
    const gv = values(g);
    const yv = values(result);
    const d = new Float32Array(xc.size);
    for (let r = 0; r < rows; r++) {
      const base = r * width;
      let dot = 0;
      for (let j = 0; j < width; j++) dot += gv[base + j]! * yv[base + j]!;
      for (let j = 0; j < width; j++) d[base + j] = yv[base + j]! * (gv[base + j]! - dot);
    }
    return [fromValues(d, xc.shape, dtype)];
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
  const dtype = autocastDtype("log_softmax", [x.dtype]);
  const xc = toDtype(x, dtype);
  const [rows, width] = rowsOf(xc, "logSoftmax");
  const xv = values(xc);
  const result = output(xc.shape, dtype, (out) => {
    for (let r = 0; r < rows; r++) {
      const base = r * width;
      let max = -Infinity;
      for (let j = 0; j < width; j++) max = Math.max(max, xv[base + j]!);
      let total = 0;
      for (let j = 0; j < width; j++) total += Math.exp(xv[base + j]! - max);
      const lse = max + Math.log(total);
      for (let j = 0; j < width; j++) out[base + j] = xv[base + j]! - lse;
    }
  });
  return record(result, [xc], (g) => {
    const gv = values(g);
    const yv = values(result);
    const d = new Float32Array(xc.size);
    for (let r = 0; r < rows; r++) {
      const base = r * width;
      let total = 0;
      for (let j = 0; j < width; j++) total += gv[base + j]!;
      for (let j = 0; j < width; j++) d[base + j] = gv[base + j]! - Math.exp(yv[base + j]!) * total;
    }
    return [fromValues(d, xc.shape, dtype)];
  });
}

/** Class indices: one per row of the logits. */
export type Labels = Int32Array | readonly number[];

/**
 * Mean softmax cross-entropy of logits [..., C] against integer labels (one per row), fused: the
 * forward keeps the softmax for the backward pass, whose gradient is (softmax - onehot) / rows.
 * Computed in float64 per row and returned as a float32 scalar (autocast "cross_entropy").
 *
 * @param logits Logits [..., C].
 * @param labels One class index in [0, C) per row.
 * @returns The mean loss, shape [].
 * @example
 * ```ts
 * import { crossEntropy } from "./softmax.ts";
 * import { tensor } from "../tensor.ts";
 * using loss = crossEntropy(tensor([[0, 0]]), [1]);
 * if (Math.abs(loss.toArray()[0]! - Math.LN2) > 1e-7) throw new Error("log 2");
 * ```
 */
export function crossEntropy(logits: Tensor, labels: Labels): Tensor {
  checkTensor(logits, "crossEntropy", "logits");
  const dtype = autocastDtype("cross_entropy", [logits.dtype]);
  const xc = toDtype(logits, dtype);
  const [rows, width] = rowsOf(xc, "crossEntropy");
  if ((!Array.isArray(labels) && !(labels instanceof Int32Array)) || labels.length !== rows) {
    throw new TypeError(
      `crossEntropy: logits ${shapeText(logits.shape)} have ${rows} rows, so pass ${rows} labels (Int32Array or number[]), got ${labels?.length ?? typeof labels}`,
    );
  }
  for (let r = 0; r < rows; r++) {
    const label = labels[r]!;
    if (!Number.isInteger(label) || label < 0 || label >= width) {
      throw new RangeError(`crossEntropy: label ${label} at row ${r} is not a class index in [0, ${width})`);
    }
  }
  const xv = values(xc);
  const probs = new Float32Array(xc.size);
  let total = 0;
  for (let r = 0; r < rows; r++) {
    const base = r * width;
    let max = -Infinity;
    for (let j = 0; j < width; j++) max = Math.max(max, xv[base + j]!);
    let sum = 0;
    for (let j = 0; j < width; j++) {
      const e = Math.exp(xv[base + j]! - max);
      probs[base + j] = e;
      sum += e;
    }
    const inv = 1 / sum;
    for (let j = 0; j < width; j++) probs[base + j]! *= inv;
    total += max + Math.log(sum) - xv[base + labels[r]!]!;
  }
  const loss = rows === 0 ? Number.NaN : total / rows;
  const result = fromValues(new Float32Array([loss]), [], "float32");
  return record(result, [xc], (g) => {
    const factor = values(g)[0]! / rows;
    const d = new Float32Array(xc.size);
    for (let r = 0; r < rows; r++) {
      const base = r * width;
      for (let j = 0; j < width; j++) d[base + j] = probs[base + j]! * factor;
      d[base + labels[r]!]! -= factor;
    }
    return [fromValues(d, xc.shape, dtype)];
  });
}
