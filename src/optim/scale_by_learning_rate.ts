/**
 * scaleByLearningRate: multiplies updates by -lr (a number or a schedule).
 *
 * @module
 */

import type { Tensor } from "../tensor.ts";
import { zeros } from "../tensor.ts";
import { treeMap } from "../tree.ts";
import { fround, valuesOf } from "./_ops.ts";
import {
  checkNumber,
  checkState,
  freezeState,
  type GradientTransformation,
  type OptState,
  type Params,
  resolveHyper,
  type Schedule,
  tensorLeaves,
  type Updates,
} from "./transformation.ts";

/** State of {@linkcode scaleByLearningRate}: the step count a schedule reads. */
export interface ScaleByLearningRateState extends OptState {
  readonly kind: "scaleByLearningRate";
  readonly count: number;
}

/**
 * Multiplies updates by `-lr` in float32 (`float32(-lr) * u`, as PyTorch's `p.add_(u, alpha=-lr)`
 * rounds), so that adding them descends. `lr` may be a schedule of the step count (0 first).
 *
 * @param learningRate A number or a {@linkcode Schedule}.
 * @param flipSign Multiply by -lr (default true) or +lr.
 * @returns A transformation counting steps.
 * @example
 * ```ts
 * import { tensor } from "../tensor.ts";
 * import { scaleByLearningRate } from "./scale_by_learning_rate.ts";
 * const tx = scaleByLearningRate(0.5);
 * using g = tensor([2]);
 * const [u] = tx.update([g], tx.init([g]));
 * if ((u as any)[0].toArray()[0] !== -1) throw new Error("not scaled");
 * ```
 */
export function scaleByLearningRate(
  learningRate: number | Schedule,
  flipSign = true,
): GradientTransformation<ScaleByLearningRateState> {
  if (typeof learningRate !== "function") checkNumber(learningRate, "learningRate");
  return {
    init(_params: Params): ScaleByLearningRateState {
      return freezeState({ kind: "scaleByLearningRate", count: 0 });
    },
    update(updates: Updates, state: ScaleByLearningRateState): readonly [Updates, ScaleByLearningRateState] {
      checkState(state, "scaleByLearningRate");
      tensorLeaves(updates, "scaleByLearningRate updates");
      const lr = resolveHyper(learningRate, state.count, "learningRate");
      const factor = fround(flipSign ? -lr : lr);
      const out = treeMap((u: Tensor) => {
        const result = zeros(u.shape);
        const r = result.data as Float32Array;
        const values = valuesOf(u);
        for (let k = 0; k < r.length; k++) r[k] = factor * values[k]!;
        return result;
      }, updates);
      return [out, freezeState({ kind: "scaleByLearningRate", count: state.count + 1 })];
    },
  };
}
