/**
 * The row tables and constant blocks of the multi-tensor kernels, encoded once for every backend
 * (the CPU passes them by pointer, CUDA copies them to device memory). Their layouts are the
 * extern structs of zig/src/cpu/unscale.zig (`TensorRow`, 24 bytes) and
 * zig/src/cuda/step_math.zig (`AdamRow`, 72 bytes; `SgdRow`, 56 bytes; `AdamHyper`, 48 bytes;
 * `SgdHyper`, 32 bytes); `make test` checks the sizes on the Zig side.
 *
 * @module
 */

import { dtypeInfo } from "../dtype.ts";
import type { Tensor } from "../tensor.ts";

/** One tensor of a multi-tensor table: address, element count, dtype code. */
export interface TableRow {
  readonly address: number;
  readonly count: number;
  readonly dtypeCode: number;
}

/** `TensorRow` entries: (address, count, dtype code) as three u64 words each. */
export function tensorRows(rows: readonly TableRow[]): BigUint64Array {
  const words = new BigUint64Array(Math.max(rows.length, 1) * 3);
  rows.forEach((row, i) => {
    words[3 * i] = row.count === 0 ? 0n : BigInt(row.address);
    words[3 * i + 1] = BigInt(row.count);
    words[3 * i + 2] = BigInt(row.dtypeCode);
  });
  return words;
}

/** The table row of a tensor. */
export function rowOf(t: Tensor): TableRow {
  return { address: t.size === 0 ? 0 : t.address, count: t.size, dtypeCode: dtypeInfo(t.dtype).code };
}

/** The tensors of one fused AdamW row: gradient, parameter, float32 master (or null), m, v, max v. */
export interface AdamRowTensors {
  readonly grad: Tensor;
  readonly param: Tensor;
  readonly master: Tensor | null;
  readonly m: Tensor;
  readonly v: Tensor;
  readonly vMax: Tensor | null;
  /** Stochastic-rounding seed of this parameter (its counter is the element index). */
  readonly seed: number;
}

/** The constants of one fused AdamW step (float32 each, folded in float64 by the caller). */
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

/** The tensors of one fused SGD row. */
export interface SgdRowTensors {
  readonly grad: Tensor;
  readonly param: Tensor;
  readonly master: Tensor | null;
  readonly buffer: Tensor | null;
  readonly seed: number;
}

/** The constants of one fused SGD step. */
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

const code = (t: Tensor | null): bigint => (t === null ? 0n : BigInt(dtypeInfo(t.dtype).code));
const address = (t: Tensor | null): bigint => (t === null || t.size === 0 ? 0n : BigInt(t.address));

/** `AdamRow` entries (nine u64 words each). */
export function adamRows(rows: readonly AdamRowTensors[]): BigUint64Array {
  const table = new BigUint64Array(Math.max(rows.length, 1) * 9);
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
  return table;
}

/** The `AdamHyper` block. */
export function adamHyper(h: AdamHyper): Float32Array {
  const hyper = new Float32Array(12);
  hyper.set([h.invScale, h.clip, h.oneMinusBeta1, h.beta2, h.oneMinusBeta2, h.stepScale, h.epsHat, h.negLr, h.decay]);
  new Uint32Array(hyper.buffer)[9] = (h.amsgrad ? 1 : 0) | (h.stochastic ? 2 : 0);
  return hyper;
}

/** `SgdRow` entries (seven u64 words each). */
export function sgdRows(rows: readonly SgdRowTensors[]): BigUint64Array {
  const table = new BigUint64Array(Math.max(rows.length, 1) * 7);
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
  return table;
}

/** The `SgdHyper` block. */
export function sgdHyper(h: SgdHyper): Float32Array {
  const hyper = new Float32Array(8);
  hyper.set([h.invScale, h.clip, h.weightDecay, h.momentum, h.oneMinusDampening, h.negLr]);
  new Uint32Array(hyper.buffer)[6] =
    (h.nesterov ? 1 : 0) | (h.stochastic ? 2 : 0) | (h.firstStep ? 4 : 0) | (h.hasMomentum ? 8 : 0);
  return hyper;
}

/** Every tensor of fused rows, for device checks. */
export function rowTensors(rows: readonly (AdamRowTensors | SgdRowTensors)[]): Tensor[] {
  const all: Tensor[] = [];
  for (const row of rows) {
    for (const t of Object.values(row)) if (t !== null && typeof t === "object") all.push(t as Tensor);
  }
  return all;
}
