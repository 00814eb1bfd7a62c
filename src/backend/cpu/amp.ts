/**
 * Multi-tensor kernels of the CPU backend: unscale-and-check, the sum of squares for clipping, and
 * the fused AdamW / SGD steps (zig/src/cpu/{unscale,sum_squares,adamw,sgd}.zig), each one native
 * call over a row table however many tensors there are.
 *
 * @module
 */

import { ptr } from "bun:ffi";
import { check, native } from "../../_ffi.ts";
import type { Tensor } from "../../tensor.ts";
import {
  type AdamHyper,
  type AdamRowTensors,
  adamHyper,
  adamRows,
  rowOf,
  type SgdHyper,
  type SgdRowTensors,
  sgdHyper,
  sgdRows,
  type TableRow,
  tensorRows,
} from "../_tables.ts";

export interface AmpKernels {
  /** Multiplies every gradient by invScale in place; true when any element is inf or NaN. */
  unscaleCheck(grads: readonly Tensor[], invScale: number): boolean;
  /** The float64 sum of squares of every gradient times invScale, and whether any is inf or NaN. */
  sumSquares(grads: readonly Tensor[], invScale: number): { sum: number; foundInf: boolean };
  /** One fused AdamW step; false (nothing written) when `foundInf` is set. */
  fusedAdamW(rows: readonly AdamRowTensors[], hyper: AdamHyper, foundInf: Uint32Array | null): boolean;
  /** One fused SGD step; false (nothing written) when `foundInf` is set. */
  fusedSgd(rows: readonly SgdRowTensors[], hyper: SgdHyper, foundInf: Uint32Array | null): boolean;
}

const FOUND_OUT = new Uint32Array(1);
const SUM_OUT = new Float64Array(1);
const APPLIED_OUT = new Uint32Array(1);

/**
 * Unscale-and-check over host rows (tensors or raw arrays the caller has validated); the
 * microbenchmark surface `unscaleAndCheck([{ data, dtype }])` lands here.
 */
export function unscaleCheckRows(rows: readonly TableRow[], invScale: number): boolean {
  if (rows.length === 0) return false;
  const table = tensorRows(rows);
  check(native().mp_unscale_check(ptr(table), rows.length, Math.fround(invScale), ptr(FOUND_OUT)), "unscaleAndCheck");
  return FOUND_OUT[0] !== 0;
}

export const ampCpu: AmpKernels = {
  unscaleCheck(grads, invScale) {
    return unscaleCheckRows(grads.map(rowOf), invScale);
  },
  sumSquares(grads, invScale) {
    if (grads.length === 0) return { sum: 0, foundInf: false };
    const table = tensorRows(grads.map(rowOf));
    check(
      native().mp_sum_squares(ptr(table), grads.length, Math.fround(invScale), ptr(SUM_OUT), ptr(FOUND_OUT)),
      "sumSquares",
    );
    return { sum: SUM_OUT[0]!, foundInf: FOUND_OUT[0] !== 0 };
  },
  fusedAdamW(rows, hyper, foundInf) {
    check(
      native().mp_fused_adamw(
        rows.length === 0 ? null : ptr(adamRows(rows)),
        rows.length,
        ptr(adamHyper(hyper)),
        foundInf === null ? null : ptr(foundInf),
        ptr(APPLIED_OUT),
      ),
      "fusedAdamW step",
    );
    return APPLIED_OUT[0] !== 0;
  },
  fusedSgd(rows, hyper, foundInf) {
    check(
      native().mp_fused_sgd(
        rows.length === 0 ? null : ptr(sgdRows(rows)),
        rows.length,
        ptr(sgdHyper(hyper)),
        foundInf === null ? null : ptr(foundInf),
        ptr(APPLIED_OUT),
      ),
      "fusedSgd step",
    );
    return APPLIED_OUT[0] !== 0;
  },
};
