/**
 * The row-op families of the CUDA backend: layer and RMS norm, softmax / log-softmax /
 * cross-entropy, embedding, rotary position embedding and attention, forward and backward, as
 * PTX kernels (zig/src/cuda/ops_rows.zig) that add in the CPU kernels' order, so a cuda tensor
 * gets the bits the CPU backend computes. The `mp_cuda_launch_*` exports take device addresses
 * for tensors; what these interfaces pass from the host (labels, ids, positions, inverse
 * frequencies, problem records) is checked and staged to the device by the native library. Outputs
 * and workspaces come from the device's caching allocator; nothing here waits for the device.
 *
 * @module
 */

import { ptr } from "bun:ffi";
import { native } from "../../_ffi.ts";
import { dtypeInfo } from "../../dtype.ts";
import type { Tensor } from "../../tensor.ts";
import { addressOf, cudaOrdinalOf, rowsOf } from "../_args.ts";
import { checkCuda } from "../cuda.ts";
import { type AttentionKernels, attentionProblemRecord, maskArgs, operandAddress } from "../cpu/attention.ts";
import type { EmbeddingKernels } from "../cpu/embedding.ts";
import type { NormKernels } from "../cpu/norm.ts";
import { type RopeKernels, type RopeProblem, ropeProblemRecord } from "../cpu/rope.ts";
import type { SoftmaxKernels } from "../cpu/softmax.ts";

const U64_OUT = new BigUint64Array(1);

function codeOf(t: Tensor): number {
  return dtypeInfo(t.dtype).code;
}

/** A device block from the allocator for the duration of `body` (freed after the launches are queued). */
function withDeviceBlock(ordinal: number, sizeBytes: number, what: string, body: (address: number) => void): void {
  checkCuda(
    native().mp_cuda_alloc(ordinal, sizeBytes, ptr(U64_OUT)),
    `Allocating ${sizeBytes} bytes of ${what} on cuda:${ordinal}`,
  );
  const address = Number(U64_OUT[0]);
  try {
    body(address);
  } finally {
    // Later users of the block are ordered after these launches on the device's one stream.
    checkCuda(native().mp_cuda_free(ordinal, address), `Freeing ${what} on cuda:${ordinal}`);
  }
}

const NormOp = { layer: 0, rms: 1 } as const;

function normForward(
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
  const status = native().mp_cuda_launch_norm_forward(
    cudaOrdinalOf(x),
    op,
    x.address,
    addressOf(weight),
    addressOf(bias),
    out.address,
    addressOf(mean),
    addressOf(rstd),
    rows,
    width,
    codeOf(x),
    eps,
  );
  checkCuda(
    status,
    `norm forward(${op === NormOp.layer ? "layer" : "rms"}, ${x.dtype}, ${rows} x ${width}) on ${x.device}`,
  );
}

function normBackward(
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
  if (width === 0) return;
  const ordinal = cudaOrdinalOf(x);
  let count = 0;
  if (gradWeight !== null || gradBias !== null) {
    checkCuda(native().mp_norm_workspace_count(rows, width, ptr(U64_OUT)), "mp_norm_workspace_count");
    count = Number(U64_OUT[0]);
  }
  const launch = (workspace: number) => {
    const status = native().mp_cuda_launch_norm_backward(
      ordinal,
      op,
      addressOf(x),
      addressOf(weight),
      addressOf(mean),
      addressOf(rstd),
      addressOf(gradOut),
      addressOf(gradX),
      addressOf(gradWeight),
      addressOf(gradBias),
      workspace,
      count,
      rows,
      width,
      codeOf(x),
    );
    checkCuda(
      status,
      `norm backward(${op === NormOp.layer ? "layer" : "rms"}, ${x.dtype}, ${rows} x ${width}) on ${x.device}`,
    );
  };
  if (count === 0) launch(0);
  else withDeviceBlock(ordinal, count * 4, "norm workspace", launch);
}

export const normCuda: NormKernels = {
  layerNormForward(x, weight, bias, out, mean, rstd, eps) {
    normForward(NormOp.layer, x, weight, bias, out, mean, rstd, eps);
  },
  layerNormBackward(x, weight, mean, rstd, gradOut, gradX, gradWeight, gradBias) {
    normBackward(NormOp.layer, x, weight, mean, rstd, gradOut, gradX, gradWeight, gradBias);
  },
  rmsNormForward(x, weight, out, rstd, eps) {
    normForward(NormOp.rms, x, weight, null, out, null, rstd, eps);
  },
  rmsNormBackward(x, weight, rstd, gradOut, gradX, gradWeight) {
    normBackward(NormOp.rms, x, weight, null, rstd, gradOut, gradX, gradWeight, null);
  },
};

const SoftmaxOp = { softmax: 0, logSoftmax: 1, crossEntropy: 2 } as const;
const SOFTMAX_NAMES = ["softmax", "log-softmax", "cross-entropy"];

function softmaxForward(op: number, x: Tensor, out: Tensor): void {
  const [rows, width] = rowsOf(x);
  if (rows === 0) return;
  const status = native().mp_cuda_launch_softmax_forward(
    cudaOrdinalOf(x),
    op,
    x.address,
    out.address,
    rows,
    width,
    codeOf(x),
    null,
    0,
    0,
    0,
  );
  checkCuda(status, `${SOFTMAX_NAMES[op]}(${x.dtype}, ${rows} x ${width}) on ${x.device}`);
}

function softmaxBackward(op: number, y: Tensor, gradOut: Tensor, gradX: Tensor): void {
  const [rows, width] = rowsOf(y);
  if (rows === 0) return;
  const status = native().mp_cuda_launch_softmax_backward(
    cudaOrdinalOf(y),
    op,
    y.address,
    gradOut.address,
    gradX.address,
    rows,
    width,
    codeOf(y),
    null,
    0,
    0,
  );
  checkCuda(status, `${SOFTMAX_NAMES[op]} backward(${y.dtype}, ${rows} x ${width}) on ${y.device}`);
}

export const softmaxCuda: SoftmaxKernels = {
  softmaxForward(x, out) {
    softmaxForward(SoftmaxOp.softmax, x, out);
  },
  softmaxBackward(y, gradOut, gradX) {
    softmaxBackward(SoftmaxOp.softmax, y, gradOut, gradX);
  },
  logSoftmaxForward(x, out) {
    softmaxForward(SoftmaxOp.logSoftmax, x, out);
  },
  logSoftmaxBackward(y, gradOut, gradX) {
    softmaxBackward(SoftmaxOp.logSoftmax, y, gradOut, gradX);
  },
  crossEntropyForward(logits, labels, ignoreIndex, lse, mean) {
    const [rows, width] = rowsOf(logits);
    const status = native().mp_cuda_launch_softmax_forward(
      cudaOrdinalOf(mean),
      SoftmaxOp.crossEntropy,
      addressOf(logits),
      0,
      rows,
      width,
      codeOf(logits),
      labels.length === 0 ? null : ptr(labels),
      ignoreIndex,
      addressOf(lse),
      mean.address,
    );
    checkCuda(status, `cross-entropy(${logits.dtype}, ${rows} x ${width}) on ${logits.device}`);
  },
  crossEntropyBackward(logits, labels, ignoreIndex, lse, gradMean, gradLogits) {
    const [rows, width] = rowsOf(logits);
    if (rows === 0) return;
    const status = native().mp_cuda_launch_softmax_backward(
      cudaOrdinalOf(logits),
      SoftmaxOp.crossEntropy,
      logits.address,
      gradMean.address,
      gradLogits.address,
      rows,
      width,
      codeOf(logits),
      ptr(labels),
      ignoreIndex,
      lse.address,
    );
    checkCuda(status, `cross-entropy backward(${logits.dtype}, ${rows} x ${width}) on ${logits.device}`);
  },
};

export const embeddingCuda: EmbeddingKernels = {
  embeddingForward(table, ids, out) {
    const [vocabulary, dim] = table.shape as [number, number];
    if (ids.length === 0 || dim === 0) return;
    const status = native().mp_cuda_launch_embedding_forward(
      cudaOrdinalOf(table),
      table.address,
      ptr(ids),
      out.address,
      vocabulary,
      dim,
      ids.length,
      codeOf(table),
    );
    checkCuda(status, `embedding(${table.dtype}, ${vocabulary} x ${dim}, ${ids.length} ids) on ${table.device}`);
  },
  embeddingBackward(ids, gradOut, gradTable) {
    const [vocabulary, dim] = gradTable.shape as [number, number];
    if (vocabulary === 0 || dim === 0) return;
    const status = native().mp_cuda_launch_embedding_backward(
      cudaOrdinalOf(gradTable),
      ids.length === 0 ? null : ptr(ids),
      ids.length === 0 ? 0 : gradOut.address,
      gradTable.address,
      vocabulary,
      dim,
      ids.length,
      codeOf(gradTable),
    );
    checkCuda(
      status,
      `embedding backward(${gradTable.dtype}, ${vocabulary} x ${dim}, ${ids.length} ids) on ${gradTable.device}`,
    );
  },
};

/** The op code of the rotate-half form. */
const ROPE_ROTATE_HALF = 0;
function rope(
  which: "mp_cuda_launch_rope_forward" | "mp_cuda_launch_rope_backward",
  problem: RopeProblem,
  source: Tensor,
  target: Tensor,
): void {
  if (source.size === 0) return;
  const positions = problem.positions;
  const status = native()[which](
    cudaOrdinalOf(source),
    ROPE_ROTATE_HALF,
    codeOf(source),
    ropeProblemRecord(problem),
    source.address,
    target.address,
    problem.invFreq.length === 0 ? null : ptr(problem.invFreq),
    positions === null || positions.length === 0 ? null : ptr(positions),
  );
  checkCuda(
    status,
    `rope${which === "mp_cuda_launch_rope_backward" ? " backward" : ""}(${source.dtype}) on ${source.device}`,
  );
}

export const ropeCuda: RopeKernels = {
  ropeForward(problem, x, out) {
    rope("mp_cuda_launch_rope_forward", problem, x, out);
  },
  ropeBackward(problem, dOut, dx) {
    rope("mp_cuda_launch_rope_backward", problem, dOut, dx);
  },
};

/** The op code of scaled dot-product attention. */
const ATTENTION_SDPA = 0;
export const attentionCuda: AttentionKernels = {
  attentionForward(problem, q, k, v, mask, out, lse) {
    const [maskAddress, maskCode] = maskArgs(mask);
    const status = native().mp_cuda_launch_attention_forward(
      cudaOrdinalOf(q.tensor),
      ATTENTION_SDPA,
      codeOf(q.tensor),
      attentionProblemRecord(problem, q, k, v),
      problem.scale,
      operandAddress(q),
      operandAddress(k),
      operandAddress(v),
      maskAddress,
      maskCode,
      out.address,
      lse.address,
    );
    checkCuda(status, `attention(${q.tensor.dtype}) on ${q.tensor.device}`);
  },
  attentionBackward(problem, q, k, v, mask, out, lse, dOut, dq, dk, dv) {
    if (dq.stride !== q.stride || dk.stride !== k.stride || dv.stride !== v.stride) {
      throw new TypeError("attentionBackward: dq, dk and dv must have the strides of q, k and v");
    }
    const [maskAddress, maskCode] = maskArgs(mask);
    const status = native().mp_cuda_launch_attention_backward(
      cudaOrdinalOf(q.tensor),
      ATTENTION_SDPA,
      codeOf(q.tensor),
      attentionProblemRecord(problem, q, k, v),
      problem.scale,
      operandAddress(q),
      operandAddress(k),
      operandAddress(v),
      maskAddress,
      maskCode,
      out.address,
      lse.address,
      dOut.address,
      operandAddress(dq),
      operandAddress(dk),
      operandAddress(dv),
    );
    checkCuda(status, `attention backward(${q.tensor.dtype}) on ${q.tensor.device}`);
  },
};

/** Every row-op kernel of the CUDA backend, spread into its backend object. */
export const rowsCuda = Object.freeze({
  ...normCuda,
  ...softmaxCuda,
  ...embeddingCuda,
  ...ropeCuda,
  ...attentionCuda,
});
