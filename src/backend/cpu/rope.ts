/**
 * Rotary position embedding kernels of the CPU backend (zig/src/ops/rope.zig): the rotate-half
 * rotation of every head of x [B, T, H, D] on float32, float16 or bfloat16 storage, computed in
 * float32 and rounded once.
 *
 * @module
 */

import { ptr } from "bun:ffi";
import { check, native, Status } from "../../_ffi.ts";
import { dtypeInfo } from "../../dtype.ts";
import type { Tensor } from "../../tensor.ts";

/** One rope call: x [batch, steps, heads, headDim]. */
export interface RopeProblem {
  readonly batch: number;
  readonly steps: number;
  readonly heads: number;
  /** Even: the two halves of each head rotate as pairs (i, i + headDim / 2). */
  readonly headDim: number;
  /** headDim / 2 inverse frequencies: angle_i = float32(position * invFreq[i]). */
  readonly invFreq: Float32Array;
  /** Position of step 0 when `positions` is null. */
  readonly offset: number;
  /** Explicit integer positions, [steps] (shared by every batch element) or [batch, steps]; or null. */
  readonly positions: Int32Array | null;
}

/** Rope kernels. Both tensors live on the backend's device and have the same shape and dtype. */
export interface RopeKernels {
  /** out = x rotated by each position's angles. */
  ropeForward(problem: RopeProblem, x: Tensor, out: Tensor): void;
  /** dx = dOut rotated by the negated angles (the backward pass). */
  ropeBackward(problem: RopeProblem, dOut: Tensor, dx: Tensor): void;
}

/** The op code of the rotate-half form in mp_rope_forward / mp_rope_backward. */
const OP_ROTATE_HALF = 0;
/** rope.Problem: batch, steps, heads, head_dim, offset (i64), flags. */
const PROBLEM = new BigInt64Array(6);

/** The kernel's problem record (rope.Problem) in a reused buffer, read by the call it is passed to. */
export function ropeProblemRecord(problem: RopeProblem) {
  PROBLEM[0] = BigInt(problem.batch);
  PROBLEM[1] = BigInt(problem.steps);
  PROBLEM[2] = BigInt(problem.heads);
  PROBLEM[3] = BigInt(problem.headDim);
  PROBLEM[4] = BigInt(problem.offset);
  const positions = problem.positions;
  PROBLEM[5] = positions === null ? 0n : positions.length === problem.steps ? 1n : 3n;
  return ptr(PROBLEM);
}

function call(
  which: "mp_rope_forward" | "mp_rope_backward",
  problem: RopeProblem,
  source: Tensor,
  target: Tensor,
): void {
  if (source.size === 0) return;
  const positions = problem.positions;
  const status = native()[which](
    OP_ROTATE_HALF,
    dtypeInfo(source.dtype).code,
    ropeProblemRecord(problem),
    source.address,
    target.address,
    ptr(problem.invFreq),
    positions === null || positions.length === 0 ? 0 : ptr(positions),
  );
  if (status !== Status.ok) check(status, `rope${which === "mp_rope_backward" ? " backward" : ""}(${source.dtype})`);
}

export const ropeCpu: RopeKernels = {
  ropeForward(problem, x, out) {
    call("mp_rope_forward", problem, x, out);
  },
  ropeBackward(problem, dOut, dx) {
    call("mp_rope_backward", problem, dOut, dx);
  },
};
