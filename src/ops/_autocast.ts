/**
 * The one place ops ask which dtype to compute in. Until the AMP helper's src/autocast.ts lands,
 * this shim implements its contract's default: no autocast policy, so an op computes in the widest
 * of its input dtypes (float32 when float16 meets bfloat16, as PyTorch promotes).
 *
 * @module
 */

import type { DtypeName } from "../dtype.ts";

const RANK: Readonly<Record<string, number>> = {
  float8_e4m3fn: 0,
  float8_e5m2: 0,
  float16: 1,
  bfloat16: 1,
  float32: 2,
};

/** The dtype op `op` computes in for inputs of `inputDtypes`. */
export function autocastDtype(op: string, inputDtypes: readonly DtypeName[]): DtypeName {
  void op;
  let widest: DtypeName = inputDtypes[0] ?? "float32";
  for (const dtype of inputDtypes) {
    if (dtype === widest) continue;
    if (RANK[dtype]! > RANK[widest]! || RANK[dtype] === RANK[widest])
      widest = RANK[dtype] === RANK[widest] ? "float32" : dtype;
  }
  return widest;
}
