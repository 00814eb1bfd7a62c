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

const F32_SCRATCH = new Float32Array(1);
const U32_SCRATCH = new Uint32Array(F32_SCRATCH.buffer);

/**
 * The float32 fused multiply-add `a * b + c` rounded once (IEEE fmaf), for float32 inputs: the
 * product is exact in float64, the sum is made exact as hi + lo (Knuth's TwoSum), and hi is
 * rounded to float32 with lo breaking the tie when hi lies exactly halfway between two floats.
 * @internal
 */
export function fmaf(a: number, b: number, c: number): number {
  const p = a * b; // exact: 24 + 24 bits fit in 53
  const hi = p + c;
  const t = hi - p;
  const lo = p - (hi - t) + (c - t);
  const r = Math.fround(hi);
  if (lo === 0 || !Number.isFinite(r) || r === hi) return r;
  // hi is not a float32: round it toward lo's side if hi is exactly a midpoint.
  F32_SCRATCH[0] = r;
  const bits = U32_SCRATCH[0]!;
  U32_SCRATCH[0] = r === 0 ? 1 : hi > r === r > 0 ? bits + 1 : bits - 1; // the neighbour on hi's side
  const neighbour = r === 0 ? (hi > 0 ? F32_SCRATCH[0]! : -F32_SCRATCH[0]!) : F32_SCRATCH[0]!;
  const midpoint = (r + neighbour) / 2; // exact in float64
  if (hi !== midpoint) return r;
  // A tie in float64 that is not a tie in the exact sum: lo says which side the exact value is on.
  return lo > 0 === neighbour > r ? neighbour : r;
}

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
