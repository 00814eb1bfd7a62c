/**
 * Normalization kernels of the CPU backend: layer norm and RMS norm over the last axis
 * (zig/src/ops/norm.zig), forward with float32 per-row statistics and backward with the weight and
 * bias gradients summed in the same pass over the rows, in a fixed block order.
 *
 * @module
 */

import { ptr } from "bun:ffi";
import { check, native, Status } from "../../_ffi.ts";
import { dtypeInfo } from "../../dtype.ts";
import type { Tensor } from "../../tensor.ts";
import { addressOf, rowsOf } from "../_args.ts";

/**
 * Norm kernels. `x`, `weight`, `bias`, `out` and every gradient share one dtype (float32, float16
 * or bfloat16); `mean` and `rstd` are float32 [rows] (rows = x.size / width, width the last
 * dimension). A null statistic is not written (inference needs none); a null gradient is not
 * computed.
 */
export interface NormKernels {
  /** out = (x - mean) * rstd * weight + bias per row of x; weight and bias may be null. */
  layerNormForward(
    x: Tensor,
    weight: Tensor | null,
    bias: Tensor | null,
    out: Tensor,
    mean: Tensor | null,
    rstd: Tensor | null,
    eps: number,
  ): void;
  /** gradX, and gradWeight / gradBias (when not null) from the forward's mean and rstd. */
  layerNormBackward(
    x: Tensor,
    weight: Tensor | null,
    mean: Tensor,
    rstd: Tensor,
    gradOut: Tensor,
    gradX: Tensor,
    gradWeight: Tensor | null,
    gradBias: Tensor | null,
  ): void;
  /** out = x * rstd * weight per row of x, rstd = 1 / sqrt(mean(x^2) + eps); weight may be null. */
  rmsNormForward(x: Tensor, weight: Tensor | null, out: Tensor, rstd: Tensor | null, eps: number): void;
  /** gradX, and gradWeight (when not null) from the forward's rstd. */
  rmsNormBackward(
    x: Tensor,
    weight: Tensor | null,
    rstd: Tensor,
    gradOut: Tensor,
    gradX: Tensor,
    gradWeight: Tensor | null,
  ): void;
}

const Op = { layer: 0, rms: 1 } as const;
const COUNT_OUT = new BigUint64Array(1);
const ADDRESS_OUT = new BigUint64Array(1);

function forward(
  op: number,
  x: Tensor,
  weight: Tensor | null,
  bias: Tensor | null,
  out: Tensor,
  mean: Tensor | null,
  rstd: Tensor | null,
  eps: number,
): void {
  const [rows, width] = rowsOf(x);
  if (rows === 0) return;
  const status = native().mp_norm_forward(
    op,
    x.address,
    addressOf(weight),
    addressOf(bias),
    out.address,
    addressOf(mean),
    addressOf(rstd),
    rows,
    width,
    dtypeInfo(x.dtype).code,
    eps,
  );
  if (status !== Status.ok)
    check(status, `mp_norm_forward(${op === Op.layer ? "layer" : "rms"}, ${x.dtype}, ${rows} x ${width})`);
}

function backward(
  op: number,
  x: Tensor,
  weight: Tensor | null,
  mean: Tensor | null,
  rstd: Tensor,
  gradOut: Tensor,
  gradX: Tensor,
  gradWeight: Tensor | null,
  gradBias: Tensor | null,
): void {
  const [rows, width] = rowsOf(x);
  if (rows === 0) {
    // No rows: the weight and bias gradients are sums over nothing.
    for (const g of [gradWeight, gradBias]) {
      if (g !== null && g.sizeBytes > 0) check(native().mp_zero(g.address, g.sizeBytes), "zeroing a gradient");
    }
    return;
  }
  let count = 0;
  if (gradWeight !== null || gradBias !== null) {
    check(native().mp_norm_workspace_count(rows, width, ptr(COUNT_OUT)), "mp_norm_workspace_count");
    count = Number(COUNT_OUT[0]);
  }
  // The per-block partial sums live in native scratch memory for the duration of the call.
  const sizeBytes = count * 4;
  let workspace = 0;
  if (count > 0) {
    check(native().mp_alloc(sizeBytes, ptr(ADDRESS_OUT)), `allocating ${sizeBytes} bytes of norm workspace`);
    workspace = Number(ADDRESS_OUT[0]);
  }
  try {
    const status = native().mp_norm_backward(
      op,
      x.address,
      addressOf(weight),
      addressOf(mean),
      rstd.address,
      gradOut.address,
      gradX.address,
      addressOf(gradWeight),
      addressOf(gradBias),
      workspace,
      count,
      rows,
      width,
      dtypeInfo(x.dtype).code,
    );
    if (status !== Status.ok)
      check(status, `mp_norm_backward(${op === Op.layer ? "layer" : "rms"}, ${x.dtype}, ${rows} x ${width})`);
  } finally {
    if (workspace !== 0) check(native().mp_free(workspace, sizeBytes), "freeing norm workspace");
  }
}

export const normCpu: NormKernels = {
  layerNormForward(x, weight, bias, out, mean, rstd, eps) {
    forward(Op.layer, x, weight, bias, out, mean, rstd, eps);
  },
  layerNormBackward(x, weight, mean, rstd, gradOut, gradX, gradWeight, gradBias) {
    backward(Op.layer, x, weight, mean, rstd, gradOut, gradX, gradWeight, gradBias);
  },
  rmsNormForward(x, weight, out, rstd, eps) {
    forward(Op.rms, x, weight, null, out, null, rstd, eps);
  },
  rmsNormBackward(x, weight, rstd, gradOut, gradX, gradWeight) {
    backward(Op.rms, x, weight, null, rstd, gradOut, gradX, gradWeight, null);
  },
};
