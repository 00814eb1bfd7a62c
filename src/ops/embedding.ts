/**
 * Embedding lookup, native (zig/src/ops/embedding.zig): a gather of table rows in the table's
 * dtype, and a backward scatter-add that sums each table row's gradients in token order in float32
 * and rounds once, so the result is the same bits on any thread count. Also seeded dropout: a
 * counter-based mask (the same seed drops the same elements) multiplied in x's dtype by the native
 * mul, as torch rounds `input * noise`.
 *
 * @module
 */

import { record, recording, requiresGrad, track } from "../autodiff.ts";
import { squirrel5 } from "../_numerics.ts";
import { backendOf } from "../backend/backend.ts";
import { type Tensor, tensor } from "../tensor.ts";
import { mul } from "./elementwise.ts";
import { checkTensor, empty, shapeText } from "./_util.ts";

/** Token ids: a flat Int32Array or number[] (with an optional shape), in [0, vocabulary). */
export type Ids = Int32Array | readonly number[];

/**
 * Rows of `table` [V, D] picked by `ids`: the result has shape [...idsShape, D] and the table's
 * dtype (the rows' bits are copied). The backward pass sums each table row's gradients (repeated
 * ids accumulate, in token order) in float32 and rounds once to the table's dtype.
 *
 * @param table The embedding table [V, D].
 * @param ids Indices in [0, V).
 * @param idsShape The ids' shape (default [ids.length]).
 * @returns The gathered rows.
 * @example
 * ```ts
 * import { embedding } from "./embedding.ts";
 * import { tensor } from "../tensor.ts";
 * using table = tensor([[0, 1], [2, 3], [4, 5]]);
 * using rows = embedding(table, [2, 0], [1, 2]);
 * if (rows.shape.join() !== "1,2,2" || rows.toArray().join() !== "4,5,0,1") throw new Error("gather");
 * ```
 */
export function embedding(table: Tensor, ids: Ids, idsShape?: readonly number[]): Tensor {
  checkTensor(table, "embedding", "table");
  if (table.ndim !== 2) throw new TypeError(`embedding: table ${shapeText(table.shape)} must be [vocabulary, dim]`);
  if (!(ids instanceof Int32Array) && !Array.isArray(ids)) {
    throw new TypeError("embedding: ids must be an Int32Array or an array of integers");
  }
  const shape = idsShape ?? [ids.length];
  if (shape.reduce((p, d) => p * d, 1) !== ids.length) {
    throw new RangeError(`embedding: ids shape ${shapeText(shape)} does not hold ${ids.length} ids`);
  }
  const [vocabulary, dim] = table.shape as [number, number];
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i]!;
    if (!Number.isInteger(id) || id < 0 || id >= vocabulary) {
      throw new RangeError(`embedding: id ${id} at position ${i} is outside [0, ${vocabulary})`);
    }
  }
  // A copy: the backward pass reads the ids later, whatever the caller does with its array.
  const kept = Int32Array.from(ids);
  const backend = backendOf(table.device);
  const result = empty([...shape, dim], table.dtype, table.device);
  backend.embeddingForward(table, kept, result);
  return record(result, [table], [], (g) => {
    const gc = g.dtype === table.dtype ? g : g.to(table.dtype);
    const gradTable = empty(table.shape, table.dtype, table.device);
    try {
      backend.embeddingBackward(kept, gc, gradTable);
    } finally {
      if (gc !== g) gc.dispose();
    }
    return [gradTable];
  });
}

/** Options of {@linkcode dropout}. */
export interface DropoutOptions {
  /** Probability of zeroing an element, in [0, 1). */
  readonly rate: number;
  /** Seed, an integer in [0, 2^32): the same seed drops the same elements. */
  readonly seed: number;
}

/**
 * Inverted dropout: each element is zeroed with probability `rate` (decided by a counter-based
 * hash of (seed, index), so a seed always gives the same mask) and the survivors are scaled by
 * 1 / (1 - rate). Rate 0 returns x itself.
 *
 * @param x A tensor.
 * @param options rate and seed.
 * @returns The dropped-out tensor.
 * @example
 * ```ts
 * import { dropout } from "./embedding.ts";
 * import { ones } from "../tensor.ts";
 * using x = ones([1000]);
 * using y = dropout(x, { rate: 0.5, seed: 1 });
 * const kept = y.toArray().filter((v) => v === 2).length;
 * if (kept < 400 || kept > 600) throw new Error("about half survive, scaled by 2");
 * ```
 */
export function dropout(x: Tensor, options: DropoutOptions): Tensor {
  checkTensor(x, "dropout", "x");
  const rate = options?.rate;
  const seed = options?.seed;
  if (typeof rate !== "number" || !(rate >= 0 && rate < 1)) {
    throw new RangeError(`dropout: rate must be in [0, 1), got ${rate}`);
  }
  if (!Number.isInteger(seed) || seed < 0 || seed >= 2 ** 32) {
    throw new RangeError(`dropout: seed must be an integer in [0, 2^32), got ${seed}`);
  }
  if (rate === 0) return x;
  const threshold = Math.floor(rate * 2 ** 32);
  const factor = 1 / (1 - rate);
  const keep = new Float32Array(x.size);
  for (let i = 0; i < keep.length; i++) keep[i] = squirrel5(i, seed) >= threshold ? factor : 0;
  // The noise in x's dtype (1 / (1 - rate) rounded into it) times x, rounded once: torch's
  // input * bernoulli(1 - p).div_(1 - p). mul records the backward, g * noise.
  const noise = tensor(keep, { shape: x.shape, dtype: x.dtype, device: x.device });
  const result = mul(x, noise);
  if (recording() && requiresGrad(x)) track(noise);
  else noise.dispose();
  return result;
}
