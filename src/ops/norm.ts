/**
 * Layer norm and RMS norm over the last axis, with statistics in float64 per row and the result
 * rounded once to autocast's "layer_norm" / "rms_norm" dtype.
 *
 * @module
 */

import { record } from "../autodiff.ts";
import type { Tensor } from "../tensor.ts";
import { autocastDtype } from "./_autocast.ts";
import { checkTensor, fromValues, output, shapeText, toDtype, values } from "./_util.ts";

function checkAffine(x: Tensor, param: Tensor | null | undefined, op: string, name: string): void {
  if (param == null) return;
  checkTensor(param, op, name);
  const width = x.shape[x.ndim - 1];
  if (param.ndim !== 1 || param.shape[0] !== width) {
    throw new TypeError(`${op}: ${name} ${shapeText(param.shape)} must be [${width}] for x ${shapeText(x.shape)}`);
  }
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
  const dtypes = [x.dtype, ...(weight != null ? [weight.dtype] : []), ...(bias != null ? [bias.dtype] : [])];
  const dtype = autocastDtype("layer_norm", dtypes);
  const xc = toDtype(x, dtype);
  const wc = weight != null ? toDtype(weight, dtype) : null;
  const bc = bias != null ? toDtype(bias, dtype) : null;
  const width = xc.shape[xc.ndim - 1]!;
  const rows = width === 0 ? 0 : xc.size / width;
  const xv = values(xc);
  const wv = wc !== null ? values(wc) : null;
  const bv = bc !== null ? values(bc) : null;
  const normalized = new Float32Array(xc.size);
  const rstd = new Float32Array(rows);
  for (let r = 0; r < rows; r++) {
    const base = r * width;
    let mean = 0;
    for (let j = 0; j < width; j++) mean += xv[base + j]!;
    mean /= width;
    let variance = 0;
    for (let j = 0; j < width; j++) variance += (xv[base + j]! - mean) ** 2;
    variance /= width;
    const s = 1 / Math.sqrt(variance + eps);
    rstd[r] = s;
    for (let j = 0; j < width; j++) normalized[base + j] = (xv[base + j]! - mean) * s;
  }
  const result = output(xc.shape, dtype, (out) => {
    for (let r = 0; r < rows; r++) {
      const base = r * width;
      for (let j = 0; j < width; j++) {
        out[base + j] = normalized[base + j]! * (wv !== null ? wv[j]! : 1) + (bv !== null ? bv[j]! : 0);
      }
    }
  });
  const inputs = [xc, ...(wc !== null ? [wc] : []), ...(bc !== null ? [bc] : [])];
  return record(result, inputs, (g) => {
    const gv = values(g);
    const w = wv ?? new Float32Array(width).fill(1);
    // Weight and bias gradients accumulate in float64 in the same pass over the rows.
    const dw = new Float64Array(width);
    const db = new Float64Array(width);
    const gradX = output(xc.shape, dtype, (d) => {
      for (let r = 0; r < rows; r++) {
        const base = r * width;
        let meanD = 0;
        let meanDX = 0;
        for (let j = 0; j < width; j++) {
          const gj = gv[base + j]!;
          const nj = normalized[base + j]!;
          const dn = gj * w[j]!;
          meanD += dn;
          meanDX += dn * nj;
          dw[j]! += gj * nj;
          db[j]! += gj;
        }
        meanD /= width;
        meanDX /= width;
        const s = rstd[r]!;
        for (let j = 0; j < width; j++) {
          d[base + j] = s * (gv[base + j]! * w[j]! - meanD - normalized[base + j]! * meanDX);
        }
      }
    });
    const grads: Tensor[] = [gradX];
    if (wc !== null) grads.push(fromValues(Float32Array.from(dw), wc.shape, dtype));
    if (bc !== null) grads.push(fromValues(Float32Array.from(db), bc.shape, dtype));
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
  const dtype = autocastDtype("rms_norm", weight != null ? [x.dtype, weight.dtype] : [x.dtype]);
  const xc = toDtype(x, dtype);
  const wc = weight != null ? toDtype(weight, dtype) : null;
  const width = xc.shape[xc.ndim - 1]!;
  const rows = width === 0 ? 0 : xc.size / width;
  const xv = values(xc);
  const wv = wc !== null ? values(wc) : null;
  const normalized = new Float32Array(xc.size);
  const rrms = new Float32Array(rows);
  for (let r = 0; r < rows; r++) {
    const base = r * width;
    let square = 0;
    for (let j = 0; j < width; j++) square += xv[base + j]! * xv[base + j]!;
    const s = 1 / Math.sqrt(square / width + eps);
    rrms[r] = s;
    for (let j = 0; j < width; j++) normalized[base + j] = xv[base + j]! * s;
  }
  const result = output(xc.shape, dtype, (out) => {
    for (let i = 0; i < out.length; i++) out[i] = normalized[i]! * (wv !== null ? wv[i % width]! : 1);
  });
  return record(result, wc !== null ? [xc, wc] : [xc], (g) => {
    const gv = values(g);
    const w = wv ?? new Float32Array(width).fill(1);
    const dw = new Float64Array(width);
    const gradX = output(xc.shape, dtype, (d) => {
      for (let r = 0; r < rows; r++) {
        const base = r * width;
        let meanDX = 0;
        for (let j = 0; j < width; j++) {
          const gj = gv[base + j]!;
          const nj = normalized[base + j]!;
          meanDX += gj * w[j]! * nj;
          dw[j]! += gj * nj;
        }
        meanDX /= width;
        const s = rrms[r]!;
        for (let j = 0; j < width; j++) d[base + j] = s * (gv[base + j]! * w[j]! - normalized[base + j]! * meanDX);
      }
    });
    const grads: Tensor[] = [gradX];
    if (wc !== null) grads.push(fromValues(Float32Array.from(dw), wc.shape, dtype));
    return grads;
  });
}
