/**
 * The optimizers' multi-tensor calls: the sum of squares and the fused AdamW / SGD steps, run by
 * the backend of the tensors' device (src/backend/; the tables are encoded once in
 * src/backend/_tables.ts).
 *
 * @module
 */

import type { AdamHyper, AdamRowTensors, SgdHyper, SgdRowTensors } from "../backend/_tables.ts";
import { rowTensors } from "../backend/_tables.ts";
import { backendOf } from "../backend/backend.ts";
import type { Tensor } from "../tensor.ts";

export type { AdamHyper, AdamRowTensors, SgdHyper, SgdRowTensors };

/**
 * The float64 sum of squares of `tensors * invScale` and whether any element is inf or NaN, in
 * one native pass over every tensor (for clipByGlobalNorm and the fused optimizers' pre-check).
 *
 * @param tensors float32, float16 or bfloat16 tensors, all on one device.
 * @param invScale Multiplies every element first (1 / loss scale; default 1).
 * @returns `{ sum, foundInf }`.
 */
export function sumSquares(tensors: readonly Tensor[], invScale = 1): { sum: number; foundInf: boolean } {
  if (tensors.length === 0) return { sum: 0, foundInf: false };
  const device = tensors[0]!.device;
  tensors.forEach((t, i) => {
    if (t.device !== device) {
      throw new TypeError(
        `Gradient ${i} is on ${t.device} but gradient 0 is on ${device}: sum one device's gradients per call`,
      );
    }
    if (t.dtype !== "float32" && t.dtype !== "float16" && t.dtype !== "bfloat16") {
      throw new TypeError(`Gradient ${i} has dtype ${t.dtype}: gradients are float32, float16 or bfloat16`);
    }
  });
  return backendOf(device).sumSquares(tensors, invScale);
}

/** Throws unless every tensor of every row lives on `device`. */
function checkOneDevice(rows: readonly (AdamRowTensors | SgdRowTensors)[], device: string): void {
  for (const t of rowTensors(rows)) {
    if (t.device !== device) {
      throw new TypeError(
        `A fused step has tensors on ${device} and on ${t.device}: keep parameters, gradients, masters and optimizer state on one device`,
      );
    }
  }
}

/**
 * One fused AdamW step over rows of tensors (one native call, or one launch on a device).
 *
 * @param rows The tensors of each parameter.
 * @param h The step's constants.
 * @param foundInf A set flag skips the step (nothing is written).
 * @returns Whether the step was applied.
 */
export function fusedAdamWStep(rows: readonly AdamRowTensors[], h: AdamHyper, foundInf: Uint32Array | null): boolean {
  const device = rows[0]?.param.device ?? "cpu";
  checkOneDevice(rows, device);
  return backendOf(device).fusedAdamW(rows, h, foundInf);
}

/**
 * One fused SGD step over rows of tensors.
 *
 * @param rows The tensors of each parameter.
 * @param h The step's constants.
 * @param foundInf A set flag skips the step.
 * @returns Whether the step was applied.
 */
export function fusedSgdStep(rows: readonly SgdRowTensors[], h: SgdHyper, foundInf: Uint32Array | null): boolean {
  const device = rows[0]?.param.device ?? "cpu";
  checkOneDevice(rows, device);
  return backendOf(device).fusedSgd(rows, h, foundInf);
}
