/**
 * Layer norm and RMS norm over the last axis, native (zig/src/ops/norm.zig): per-row statistics in
 * float32 registers, the result rounded once to autocast's "layer_norm" / "rms_norm" dtype. A
 * bfloat16 or float16 input stays in its dtype: the forward keeps only the per-row mean and rstd
 * (float32 [rows], and only when a gradient will be taken), and the backward computes the input,
 * weight and bias gradients in one pass over the rows.
 *
 * @module
 */

import { record, requiresGrad } from "../autodiff.ts";
import { backendOf } from "../backend/backend.ts";
import type { Tensor } from "../tensor.ts";
import { autocastDtype } from "./_autocast.ts";
import { checkTensor, empty, shapeText, toDtype } from "./_util.ts";

function checkAffine(x: Tensor, param: Tensor | null | undefined, op: string, name: string): void {
  if (param == null) return;
  checkTensor(param, op, name);
  const width = x.shape[x.ndim - 1];
  if (param.ndim !== 1 || param.shape[0] !== width) {
    throw new TypeError(`${op}: ${name} ${shapeText(param.shape)} must be [${width}] for x ${shapeText(x.shape)}`);
  }
  if (param.device !== x.device) {
    throw new TypeError(`${op}: ${name} is on ${param.device} but x is on ${x.device}: move both to one device`);
  }
}

function checkEps(eps: unknown, op: string): number {
  if (typeof eps !== "number" || !(eps >= 0) || !Number.isFinite(eps)) {
    throw new RangeError(`${op}: eps must be a finite number >= 0 (e.g. 1e-5), got ${String(eps)}`);
  }
  return eps;
}

/** Row count of x [..., width]. */
function rowCount(x: Tensor): number {
  const width = x.shape[x.ndim - 1]!;
  return width === 0 ? 0 : x.size / width;
}

/** The output gradient in the op's dtype (autodiff passes it in the output's dtype already). */
function inDtype(g: Tensor, dtype: Tensor["dtype"]): Tensor {
  return g.dtype === dtype ? g : g.to(dtype);
}

/**
 * Layer normalization over the last axis: (x - mean) / sqrt(var + eps) * weight + bias.
 *
 * @param x Input [..., D].
 * @param weight Scale [D] or null.
 * @param bias Shift [D] or null.
 * @param eps Added to the variance (default 1e-5).
 * @returns Normalized [..., D].
 * @example
 * ```ts
 * import { layerNorm } from "./norm.ts";
 * import { tensor } from "../tensor.ts";
 * using y = layerNorm(tensor([[1, 3]]), null, null, 0);
 * if (y.toArray().join() !== "-1,1") throw new Error("layer norm");
 * ```
 */
export function layerNorm(x: Tensor, weight?: Tensor | null, bias?: Tensor | null, eps = 1e-5): Tensor {
  checkTensor(x, "layerNorm", "x");
  if (x.ndim < 1) throw new TypeError("layerNorm needs at least one dimension");
  checkAffine(x, weight, "layerNorm", "weight");
  checkAffine(x, bias, "layerNorm", "bias");
  checkEps(eps, "layerNorm");
  const dtypes = [x.dtype, ...(weight != null ? [weight.dtype] : []), ...(bias != null ? [bias.dtype] : [])];
  const dtype = autocastDtype("layer_norm", dtypes, x.device);
  const xc = toDtype(x, dtype);
  const wc = weight != null ? toDtype(weight, dtype) : null;
  const bc = bias != null ? toDtype(bias, dtype) : null;
  const inputs = [xc, ...(wc !== null ? [wc] : []), ...(bc !== null ? [bc] : [])];
  const rows = rowCount(xc);
  const backend = backendOf(xc.device);
  // Statistics are kept only for a backward pass; inference writes none.
  const keep = inputs.some(requiresGrad);
  const mean = keep ? empty([rows], "float32", xc.device) : null;
  const rstd = keep ? empty([rows], "float32", xc.device) : null;
  const result = empty(xc.shape, dtype, xc.device);
  backend.layerNormForward(xc, wc, bc, result, mean, rstd, eps);
  // Of the bias the backward pass reads only the shape.
  const saved = [xc, ...(wc !== null ? [wc] : []), ...(mean !== null && rstd !== null ? [mean, rstd] : [])];
  return record(result, inputs, saved, (g) => {
    const gc = inDtype(g, dtype);
    const gradX = empty(xc.shape, dtype, xc.device);
    const gradW = wc !== null ? empty(wc.shape, dtype, xc.device) : null;
    const gradB = bc !== null ? empty(bc.shape, dtype, xc.device) : null;
    try {
      backend.layerNormBackward(xc, wc, mean!, rstd!, gc, gradX, gradW, gradB);
    } finally {
      if (gc !== g) gc.dispose();
    }
    const grads: Tensor[] = [gradX];
    if (gradW !== null) grads.push(gradW);
    if (gradB !== null) grads.push(gradB);
    return grads;
  });
}

/**
 * RMS normalization over the last axis: x / sqrt(mean(x^2) + eps) * weight.
 *
 * @param x Input [..., D].
 * @param weight Scale [D] or null.
 * @param eps Added to the mean square (default 1e-6).
 * @returns Normalized [..., D].
 * @example
 * ```ts
 * import { rmsNorm } from "./norm.ts";
 * import { tensor } from "../tensor.ts";
 * using y = rmsNorm(tensor([[3, 4]]), null, 0);
 * const rms = Math.sqrt(12.5);
 * if (Math.abs(y.toArray()[0]! - 3 / rms) > 1e-6) throw new Error("rms norm");
 * ```
 */
export function rmsNorm(x: Tensor, weight?: Tensor | null, eps = 1e-6): Tensor {
  checkTensor(x, "rmsNorm", "x");
  if (x.ndim < 1) throw new TypeError("rmsNorm needs at least one dimension");
  checkAffine(x, weight, "rmsNorm", "weight");
  checkEps(eps, "rmsNorm");
  const dtype = autocastDtype("rms_norm", weight != null ? [x.dtype, weight.dtype] : [x.dtype], x.device);
  const xc = toDtype(x, dtype);
  const wc = weight != null ? toDtype(weight, dtype) : null;
  const inputs = wc !== null ? [xc, wc] : [xc];
  const backend = backendOf(xc.device);
  const rstd = inputs.some(requiresGrad) ? empty([rowCount(xc)], "float32", xc.device) : null;
  const result = empty(xc.shape, dtype, xc.device);
  backend.rmsNormForward(xc, wc, result, rstd, eps);
  return record(result, inputs, rstd !== null ? [...inputs, rstd] : inputs, (g) => {
    const gc = inDtype(g, dtype);
    const gradX = empty(xc.shape, dtype, xc.device);
    const gradW = wc !== null ? empty(wc.shape, dtype, xc.device) : null;
    try {
      backend.rmsNormBackward(xc, wc, rstd!, gc, gradX, gradW);
    } finally {
      if (gc !== g) gc.dispose();
    }
    return gradW !== null ? [gradX, gradW] : [gradX];
  });
}
