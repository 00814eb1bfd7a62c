/**
 * Element-wise float32 helpers for the composed transforms. Every arithmetic operation is rounded to
 * float32 (`Math.fround`) exactly where the fused kernels round, so composed chains and fused steps
 * give the same bits.
 *
 * @module
 */

import { castInto } from "../cast.ts";
import type { DtypeName } from "../dtype.ts";
import { squirrel5 } from "../_numerics.ts";
import type { Tensor } from "../tensor.ts";

export const fround = Math.fround;

/** The values of a tensor as float32: the live storage for float32, else a widened copy. */
export function valuesOf(t: Tensor): Float32Array {
  return t.dtype === "float32" ? (t.data as Float32Array) : t.toArray();
}

/**
 * Writes float32 `values` into a state tensor of float32 or bfloat16 (nearest even) and returns
 * the stored values as float32 (the same array, rounded, for bfloat16).
 */
export function storeState(target: Tensor, values: Float32Array): Float32Array {
  if (target.dtype === "float32") {
    if (target.data !== values) (target.data as Float32Array).set(values);
    return values;
  }
  castInto(values, target.data, "float32", target.dtype);
  return castInto(target.data, values, target.dtype, "float32");
}

/** Checks a state dtype option. */
export function checkStateDtype(dtype: unknown, name: string): DtypeName {
  if (dtype === "float32" || dtype === "bfloat16") return dtype;
  throw new RangeError(`${name} must be "float32" or "bfloat16", got ${JSON.stringify(dtype)}`);
}

/**
 * The stochastic-rounding seed of leaf `leaf` at step `count` under `seed`: every step and every
 * tensor gets fresh thresholds, reproducibly. The fused kernels take the same seeds.
 */
export function rowSeed(seed: number, count: number, leaf: number): number {
  return squirrel5(leaf >>> 0, squirrel5(count >>> 0, seed >>> 0));
}
