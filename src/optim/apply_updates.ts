/**
 * applyUpdates: adds updates to parameters in place, for parameters of any float dtype.
 *
 * @module
 */

import { noteOptimizerStep } from "../_leak_check.ts";
import { castInto } from "../cast.ts";
import type { Tensor } from "../tensor.ts";
import { valuesOf } from "./_ops.ts";
import { checkLeavesMatch, type Params, tensorLeaves, type Updates } from "./transformation.ts";

/** Options of {@linkcode applyUpdates}. */
export interface ApplyUpdatesOptions {
  /** How float16 / bfloat16 results are rounded: "nearest" (default, ties to even) or "stochastic". */
  readonly rounding?: "nearest" | "stochastic";
  /** Seed of stochastic rounding (vary it per step, e.g. seed + step). Default 0. */
  readonly seed?: number;
}

/**
 * Adds `updates` to `params` in place: each element becomes `float32(p + u)`, computed in float32
 * and rounded back to the parameter's dtype (nearest even unless `rounding: "stochastic"`). The
 * updates are read, not disposed.
 *
 * @param params The parameters (float32, float16 or bfloat16 tensors), written in place.
 * @param updates Float32 updates (any float dtype is accepted) with the params' structure.
 * @param options Rounding of low-precision parameters.
 * @returns `params`, for chaining.
 * @example
 * ```ts
 * import { tensor } from "../tensor.ts";
 * import { applyUpdates } from "./apply_updates.ts";
 * using p = tensor([1, 2], { dtype: "bf16" });
 * using u = tensor([0.5, -1]);
 * applyUpdates([p], [u]);
 * if (p.toArray().join() !== "1.5,1") throw new Error("not applied");
 * ```
 */
export function applyUpdates(params: Params, updates: Updates, options: ApplyUpdatesOptions = {}): Params {
  noteOptimizerStep();
  const p = tensorLeaves(params, "applyUpdates params");
  const u = tensorLeaves(updates, "applyUpdates updates");
  checkLeavesMatch(p, u, "applyUpdates: the updates do not match the params", "pass the updates made for these params");
  const stochastic = options.rounding === "stochastic";
  if (options.rounding !== undefined && options.rounding !== "nearest" && !stochastic) {
    throw new RangeError(`rounding must be "nearest" or "stochastic", got ${JSON.stringify(options.rounding)}`);
  }
  for (let i = 0; i < p.length; i++) addInto(p[i]!, valuesOf(u[i]!), stochastic, options.seed ?? 0);
  return params;
}

function addInto(param: Tensor, update: Float32Array, stochastic: boolean, seed: number): void {
  if (param.dtype === "float32") {
    const data = param.data as Float32Array;
    for (let i = 0; i < data.length; i++) data[i] = data[i]! + update[i]!;
    return;
  }
  if (param.dtype !== "float16" && param.dtype !== "bfloat16") {
    throw new TypeError(
      `applyUpdates cannot update a ${param.dtype} parameter: parameters are float32, float16 or bfloat16`,
    );
  }
  const values = param.toArray();
  for (let i = 0; i < values.length; i++) values[i] = values[i]! + update[i]!;
  castInto(values, param.data, "float32", param.dtype, stochastic ? { rounding: "stochastic", seed } : {});
}
