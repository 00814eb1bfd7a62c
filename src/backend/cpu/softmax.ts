/**
 * Softmax kernels of the CPU backend (zig/src/ops/softmax.zig): softmax and log-softmax over the
 * last axis, forward and backward, and softmax cross-entropy fused with its log-softmax, one row
 * per task with a vector exp.
 *
 * @module
 */

import { ptr } from "bun:ffi";
import { check, native, Status } from "../../_ffi.ts";
import { dtypeInfo } from "../../dtype.ts";
import type { Tensor } from "../../tensor.ts";
import { rowsOf } from "../_args.ts";

/**
 * Softmax-family kernels over the last axis (rows = x.size / width). Inputs, outputs and their
 * gradients share one dtype (float32, float16 or bfloat16) except the float32 side outputs named
 * below. `labels` holds one int32 class index per row, each in [0, width) or equal to
 * `ignoreIndex` (the op checked them).
 */
export interface SoftmaxKernels {
  /** out = softmax(x). */
  softmaxForward(x: Tensor, out: Tensor): void;
  /** gradX = y * (gradOut - sum(gradOut * y)), y the forward's output. */
  softmaxBackward(y: Tensor, gradOut: Tensor, gradX: Tensor): void;
  /** out = x - logsumexp(x). */
  logSoftmaxForward(x: Tensor, out: Tensor): void;
  /** gradX = gradOut - exp(y) * sum(gradOut), y the forward's output. */
  logSoftmaxBackward(y: Tensor, gradOut: Tensor, gradX: Tensor): void;
  /**
   * mean (float32 []) = the mean over kept rows of logsumexp(logits) - logits[label] (NaN when
   * every row is ignored); lse (float32 [rows], or null when no backward follows) keeps each row's
   * logsumexp.
   */
  crossEntropyForward(logits: Tensor, labels: Int32Array, ignoreIndex: number, lse: Tensor | null, mean: Tensor): void;
  /** gradLogits = (softmax(logits) - onehot(label)) * gradMean / kept, zero rows where ignored. */
  crossEntropyBackward(
    logits: Tensor,
    labels: Int32Array,
    ignoreIndex: number,
    lse: Tensor,
    gradMean: Tensor,
    gradLogits: Tensor,
  ): void;
}

const Op = { softmax: 0, logSoftmax: 1, crossEntropy: 2 } as const;
const NAMES = ["softmax", "log-softmax", "cross-entropy"];
const ADDRESS_OUT = new BigUint64Array(1);

function forward(op: number, x: Tensor, out: Tensor): void {
  const [rows, width] = rowsOf(x);
  if (rows === 0) return;
  const status = native().mp_softmax_forward(
    op,
    x.address,
    out.address,
    rows,
    width,
    dtypeInfo(x.dtype).code,
    0,
    0,
    0,
    0,
  );
  if (status !== Status.ok) check(status, `mp_softmax_forward(${NAMES[op]}, ${x.dtype}, ${rows} x ${width})`);
}

function backward(op: number, y: Tensor, gradOut: Tensor, gradX: Tensor): void {
  const [rows, width] = rowsOf(y);
  if (rows === 0) return;
  const status = native().mp_softmax_backward(
    op,
    y.address,
    gradOut.address,
    gradX.address,
    rows,
    width,
    dtypeInfo(y.dtype).code,
    0,
    0,
    0,
  );
  if (status !== Status.ok) check(status, `mp_softmax_backward(${NAMES[op]}, ${y.dtype}, ${rows} x ${width})`);
}

export const softmaxCpu: SoftmaxKernels = {
  softmaxForward(x, out) {
    forward(Op.softmax, x, out);
  },
  softmaxBackward(y, gradOut, gradX) {
    backward(Op.softmax, y, gradOut, gradX);
  },
  logSoftmaxForward(x, out) {
    forward(Op.logSoftmax, x, out);
  },
  logSoftmaxBackward(y, gradOut, gradX) {
    backward(Op.logSoftmax, y, gradOut, gradX);
  },
  crossEntropyForward(logits, labels, ignoreIndex, lse, mean) {
    const [rows, width] = rowsOf(logits);
    const what = `mp_softmax_forward(cross-entropy, ${logits.dtype}, ${rows} x ${width})`;
    if (rows === 0) {
      check(native().mp_softmax_forward(Op.crossEntropy, 0, 0, 0, width, 0, 0, ignoreIndex, 0, mean.address), what);
      return;
    }
    // Per-row losses: native scratch for the duration of the call (the kernel sums them in order).
    const sizeBytes = rows * 4;
    check(native().mp_alloc(sizeBytes, ptr(ADDRESS_OUT)), `allocating ${sizeBytes} bytes of cross-entropy workspace`);
    const losses = Number(ADDRESS_OUT[0]);
    try {
      const status = native().mp_softmax_forward(
        Op.crossEntropy,
        logits.address,
        losses,
        rows,
        width,
        dtypeInfo(logits.dtype).code,
        ptr(labels),
        ignoreIndex,
        lse === null ? 0 : lse.address,
        mean.address,
      );
      check(status, what);
    } finally {
      check(native().mp_free(losses, sizeBytes), "freeing cross-entropy workspace");
    }
  },
  crossEntropyBackward(logits, labels, ignoreIndex, lse, gradMean, gradLogits) {
    const [rows, width] = rowsOf(logits);
    if (rows === 0) return;
    const status = native().mp_softmax_backward(
      Op.crossEntropy,
      logits.address,
      gradMean.address,
      gradLogits.address,
      rows,
      width,
      dtypeInfo(logits.dtype).code,
      ptr(labels),
      ignoreIndex,
      lse.address,
    );
    if (status !== Status.ok) check(status, `mp_softmax_backward(cross-entropy, ${logits.dtype}, ${rows} x ${width})`);
  },
};
