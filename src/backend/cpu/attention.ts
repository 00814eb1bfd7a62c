/**
 * Attention kernels of the CPU backend: scaled dot-product attention tiled with an online softmax
 * (zig/src/ops/attention.zig), forward and backward, on float32, float16 or bfloat16 storage.
 *
 * @module
 */

import { ptr } from "bun:ffi";
import { check, native, Status } from "../../_ffi.ts";
import { dtypeInfo } from "../../dtype.ts";
import type { Tensor } from "../../tensor.ts";

/** Shapes of one attention call: q [B, T, Hq, D], k and v [B, S, Hkv, D]. */
export interface AttentionProblem {
  readonly batch: number;
  readonly stepsQ: number;
  readonly stepsKv: number;
  readonly headsQ: number;
  /** Divides headsQ: query head h reads key/value head h / (headsQ / headsKv). */
  readonly headsKv: number;
  readonly headDim: number;
  /** Key j is visible to query i only when j <= i + S - T. */
  readonly causal: boolean;
  /** The score multiplier (usually 1 / sqrt(headDim)). */
  readonly scale: number;
}

/**
 * An operand inside a tensor's storage: element `offset` is head 0 of position 0 of batch 0, and
 * `stride` elements separate consecutive positions (the batch stride is steps * stride), so q, k
 * and v can be views into one packed projection. Heads are contiguous within a position.
 */
export interface AttentionOperand {
  readonly tensor: Tensor;
  readonly offset: number;
  readonly stride: number;
}

/** Attention kernels. Every tensor lives on the backend's device and has the same dtype (mask aside). */
export interface AttentionKernels {
  /**
   * Writes out [B, T, Hq, D] (contiguous, the dtype of q) and lse [B, Hq, T] (float32, the log-sum-exp
   * of each row's scaled scores; -inf for a row that sees no key, whose output is 0). `mask` is null
   * or a [B, S] tensor of a float dtype: keys whose value is 0 are padding.
   */
  attentionForward(
    problem: AttentionProblem,
    q: AttentionOperand,
    k: AttentionOperand,
    v: AttentionOperand,
    mask: Tensor | null,
    out: Tensor,
    lse: Tensor,
  ): void;
  /**
   * Writes every element of dq, dk and dv (laid out as q, k and v: same strides) from the forward's
   * inputs, out and lse, and dOut (out's shape and dtype). Bit-identical on any thread count.
   */
  attentionBackward(
    problem: AttentionProblem,
    q: AttentionOperand,
    k: AttentionOperand,
    v: AttentionOperand,
    mask: Tensor | null,
    out: Tensor,
    lse: Tensor,
    dOut: Tensor,
    dq: AttentionOperand,
    dk: AttentionOperand,
    dv: AttentionOperand,
  ): void;
}

/** The op code of scaled dot-product attention in mp_attention_forward / mp_attention_backward. */
const OP_SDPA = 0;
/** attention.Problem: 11 u64 values. */
const PROBLEM = new BigUint64Array(11);

/**
 * The kernel's problem record (attention.Problem) in a reused buffer, read by the call it is passed
 * to (the CPU's and the device's exports alike); out's row stride is Hq * D.
 */
export function attentionProblemRecord(
  problem: AttentionProblem,
  q: AttentionOperand,
  k: AttentionOperand,
  v: AttentionOperand,
) {
  PROBLEM[0] = BigInt(problem.batch);
  PROBLEM[1] = BigInt(problem.stepsQ);
  PROBLEM[2] = BigInt(problem.stepsKv);
  PROBLEM[3] = BigInt(problem.headsQ);
  PROBLEM[4] = BigInt(problem.headsKv);
  PROBLEM[5] = BigInt(problem.headDim);
  PROBLEM[6] = BigInt(q.stride);
  PROBLEM[7] = BigInt(k.stride);
  PROBLEM[8] = BigInt(v.stride);
  PROBLEM[9] = BigInt(problem.headsQ * problem.headDim);
  PROBLEM[10] = problem.causal ? 1n : 0n;
  return ptr(PROBLEM);
}

/** The (host or device) address of an operand's first element. */
export function operandAddress(operand: AttentionOperand): number {
  return operand.tensor.address + operand.offset * (dtypeInfo(operand.tensor.dtype).bits / 8);
}

/** The mask's address and dtype code, or (0, 0) without a mask. */
export function maskArgs(mask: Tensor | null): [number, number] {
  return mask === null ? [0, 0] : [mask.address, dtypeInfo(mask.dtype).code];
}

export const attentionCpu: AttentionKernels = {
  attentionForward(problem, q, k, v, mask, out, lse) {
    const [maskAddress, maskCode] = maskArgs(mask);
    const status = native().mp_attention_forward(
      OP_SDPA,
      dtypeInfo(q.tensor.dtype).code,
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
    if (status !== Status.ok) check(status, `attention(${q.tensor.dtype})`);
  },
  attentionBackward(problem, q, k, v, mask, out, lse, dOut, dq, dk, dv) {
    if (dq.stride !== q.stride || dk.stride !== k.stride || dv.stride !== v.stride) {
      throw new TypeError("attentionBackward: dq, dk and dv must have the strides of q, k and v");
    }
    const [maskAddress, maskCode] = maskArgs(mask);
    const status = native().mp_attention_backward(
      OP_SDPA,
      dtypeInfo(q.tensor.dtype).code,
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
    if (status !== Status.ok) check(status, `attention backward(${q.tensor.dtype})`);
  },
};
