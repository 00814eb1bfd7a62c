/**
 * The optimizers' native calls: the multi-tensor sum of squares and the fused AdamW / SGD steps
 * (zig/src/cpu/{sum_squares,adamw,sgd}.zig). Tables are built here; layouts mirror the Zig
 * extern structs.
 *
 * @module
 */

import { ptr } from "bun:ffi";
import { check, native } from "../_ffi.ts";
import { dtypeInfo } from "../dtype.ts";
import type { Tensor } from "../tensor.ts";
import { gradientTable } from "../unscale.ts";
import { checkOneDevice, fusedAdamWOnDevice, fusedSgdOnDevice, sumSquaresOnDevice } from "./_native_cuda.ts";

const SUM_OUT = new Float64Array(1);
const FOUND_OUT = new Uint32Array(1);
const APPLIED_OUT = new Uint32Array(1);

/**
 * Sum over all elements of `float32(x * invScale)^2` (float64 accumulation) and whether any
 * element was inf or NaN: one native call over the whole list, reading each gradient once.
 */
export function sumSquares(tensors: readonly Tensor[], invScale = 1): { sum: number; foundInf: boolean } {
  if (tensors.length === 0) return { sum: 0, foundInf: false };
  if (tensors[0]!.device !== "cpu") return sumSquaresOnDevice(tensors, invScale);
  const table = gradientTable(tensors, "sumSquares");
  check(
    native().mp_sum_squares(ptr(table), tensors.length, Math.fround(invScale), ptr(SUM_OUT), ptr(FOUND_OUT)),
    "sumSquares",
  );
  return { sum: SUM_OUT[0]!, foundInf: FOUND_OUT[0] !== 0 };
}

const code = (t: Tensor | null): bigint => (t === null ? 0n : BigInt(dtypeInfo(t.dtype).code));
const address = (t: Tensor | null): bigint => (t === null || t.size === 0 ? 0n : BigInt(t.address));

/** One fused AdamW row: the tensors of one parameter. */
export interface AdamRowTensors {
  readonly grad: Tensor;
  readonly param: Tensor;
  readonly master: Tensor | null;
  readonly m: Tensor;
  readonly v: Tensor;
  readonly vMax: Tensor | null;
  readonly seed: number;
}

/** The float32 constants of a fused AdamW step (see zig/src/cpu/adamw.zig AdamHyper). */
export interface AdamHyper {
  readonly invScale: number;
  readonly clip: number;
  readonly oneMinusBeta1: number;
  readonly beta2: number;
  readonly oneMinusBeta2: number;
  readonly stepScale: number;
  readonly epsHat: number;
  readonly negLr: number;
  readonly decay: number;
  readonly amsgrad: boolean;
  readonly stochastic: boolean;
}

/** Runs mp_fused_adamw; returns false when `foundInf` (a flag the kernel reads) was set. */
export function fusedAdamWStep(rows: readonly AdamRowTensors[], h: AdamHyper, foundInf: Uint32Array | null): boolean {
  const table = new BigUint64Array(rows.length * 9);
  rows.forEach((row, i) => {
    const o = i * 9;
    table[o] = address(row.grad);
    table[o + 1] = address(row.param);
    table[o + 2] = address(row.master);
    table[o + 3] = address(row.m);
    table[o + 4] = address(row.v);
    table[o + 5] = address(row.vMax);
    table[o + 6] = BigInt(row.param.size);
    table[o + 7] = code(row.grad) | (code(row.param) << 32n);
    table[o + 8] = code(row.m) | (BigInt(row.seed >>> 0) << 32n);
  });
  const hyper = new Float32Array(12);
  hyper.set([h.invScale, h.clip, h.oneMinusBeta1, h.beta2, h.oneMinusBeta2, h.stepScale, h.epsHat, h.negLr, h.decay]);
  new Uint32Array(hyper.buffer)[9] = (h.amsgrad ? 1 : 0) | (h.stochastic ? 2 : 0);
  // CUDA tensors: the same table and constants, run by the device kernel (src/optim/_native_cuda.ts).
  const device = rows[0]?.param.device ?? "cpu";
  if (device !== "cpu") return fusedAdamWOnDevice(device, rows, table, hyper, foundInf);
  checkOneDevice(rows, "cpu");
  check(
    native().mp_fused_adamw(
      rows.length === 0 ? null : ptr(table),
      rows.length,
      ptr(hyper),
      foundInf === null ? null : ptr(foundInf),
      ptr(APPLIED_OUT),
    ),
    "fusedAdamW step",
  );
  return APPLIED_OUT[0] !== 0;
}

/** One fused SGD row. */
export interface SgdRowTensors {
  readonly grad: Tensor;
  readonly param: Tensor;
  readonly master: Tensor | null;
  readonly buffer: Tensor | null;
  readonly seed: number;
}

/** The float32 constants of a fused SGD step (see zig/src/cpu/sgd.zig SgdHyper). */
export interface SgdHyper {
  readonly invScale: number;
  readonly clip: number;
  readonly weightDecay: number;
  readonly momentum: number;
  readonly oneMinusDampening: number;
  readonly negLr: number;
  readonly nesterov: boolean;
  readonly stochastic: boolean;
  readonly firstStep: boolean;
  readonly hasMomentum: boolean;
}

/** Runs mp_fused_sgd; returns false when `foundInf` was set. */
export function fusedSgdStep(rows: readonly SgdRowTensors[], h: SgdHyper, foundInf: Uint32Array | null): boolean {
  const table = new BigUint64Array(rows.length * 7);
  rows.forEach((row, i) => {
    const o = i * 7;
    table[o] = address(row.grad);
    table[o + 1] = address(row.param);
    table[o + 2] = address(row.master);
    table[o + 3] = address(row.buffer);
    table[o + 4] = BigInt(row.param.size);
    table[o + 5] = code(row.grad) | (code(row.param) << 32n);
    table[o + 6] = (row.buffer === null ? 0n : code(row.buffer)) | (BigInt(row.seed >>> 0) << 32n);
  });
  const hyper = new Float32Array(8);
  hyper.set([h.invScale, h.clip, h.weightDecay, h.momentum, h.oneMinusDampening, h.negLr]);
  new Uint32Array(hyper.buffer)[6] =
    (h.nesterov ? 1 : 0) | (h.stochastic ? 2 : 0) | (h.firstStep ? 4 : 0) | (h.hasMomentum ? 8 : 0);
  // CUDA tensors: the same table and constants, run by the device kernel (src/optim/_native_cuda.ts).
  const device = rows[0]?.param.device ?? "cpu";
  if (device !== "cpu") return fusedSgdOnDevice(device, rows, table, hyper, foundInf);
  checkOneDevice(rows, "cpu");
  check(
    native().mp_fused_sgd(
      rows.length === 0 ? null : ptr(table),
      rows.length,
      ptr(hyper),
      foundInf === null ? null : ptr(foundInf),
      ptr(APPLIED_OUT),
    ),
    "fusedSgd step",
  );
  return APPLIED_OUT[0] !== 0;
}
