/**
 * Parameter initializers from a counter-based hash of (seed, index), so a seed gives the same
 * parameters on every machine: uniform(-bound, bound) and normal(0, std).
 *
 * @module
 */

import { squirrel5 } from "../_numerics.ts";
import type { DtypeName } from "../dtype.ts";
import { type Shape, shapeSize, type Tensor, tensor } from "../tensor.ts";

/** Checks a seed (an integer in [0, 2^32)). */
export function checkSeed(seed: unknown, what: string): number {
  if (!Number.isInteger(seed) || (seed as number) < 0 || (seed as number) >= 2 ** 32) {
    throw new RangeError(`${what}: seed must be an integer in [0, 2^32), got ${String(seed)}: pass { seed: 0 }`);
  }
  return seed as number;
}

/** Uniform values in [-bound, bound), rounded to dtype. */
export function uniform(shape: Shape, bound: number, seed: number, dtype: DtypeName): Tensor {
  const size = shapeSize(shape);
  const values = new Float32Array(size);
  for (let i = 0; i < size; i++) values[i] = (squirrel5(i, seed) / 2 ** 32) * 2 * bound - bound;
  return tensor(values, { shape, dtype });
}

/** Float32 values of a layer's fill: every element `value`. */
export function filled(shape: Shape, value: number, dtype: DtypeName): Tensor {
  return tensor(new Float32Array(shapeSize(shape)).fill(value), { shape, dtype });
}

/** Mixes a layer seed with a sub-parameter index, so sibling parameters differ. */
export function subSeed(seed: number, index: number): number {
  return squirrel5(index + 0x9e37, seed);
}
