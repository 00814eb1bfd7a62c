/**
 * addDecayedWeights: adds `weightDecay * p` to the updates (L2 regularisation in the gradient).
 *
 * @module
 */

import type { Tensor } from "../tensor.ts";
import { zeros } from "../tensor.ts";
import { treeMap } from "../tree.ts";
import { fround, valuesOf } from "./_ops.ts";
import {
  checkLeavesMatch,
  checkNumber,
  checkState,
  freezeState,
  type GradientTransformation,
  type OptState,
  type Params,
  requireParams,
  tensorLeaves,
  type Updates,
} from "./transformation.ts";

/** State of {@linkcode addDecayedWeights} (none beyond its kind). */
export interface AddDecayedWeightsState extends OptState {
  readonly kind: "addDecayedWeights";
}

/**
 * Adds `weightDecay * p` to each update in float32: `u + float32(wd * p)`. Placed before the
 * scaling, this is PyTorch's coupled `weight_decay` of SGD and Adam (`grad.add(p, alpha=wd)`);
 * for AdamW's decoupled decay use {@linkcode decoupledWeightDecay}, which `adamw` does.
 *
 * @param weightDecay The coefficient (>= 0).
 * @returns A stateless transformation that needs the params.
 * @example
 * ```ts
 * import { tensor } from "../tensor.ts";
 * import { addDecayedWeights } from "./add_decayed_weights.ts";
 * const tx = addDecayedWeights(0.5);
 * using g = tensor([1]);
 * using p = tensor([4]);
 * const [u] = tx.update([g], tx.init([p]), [p]);
 * if ((u as any)[0].toArray()[0] !== 3) throw new Error("not decayed");
 * ```
 */
export function addDecayedWeights(weightDecay: number): GradientTransformation<AddDecayedWeightsState> {
  const wd = fround(checkNumber(weightDecay, "weightDecay", { min: 0 }));
  return {
    init(_params: Params): AddDecayedWeightsState {
      return freezeState({ kind: "addDecayedWeights" });
    },
    update(updates: Updates, state: AddDecayedWeightsState, params?: Params) {
      checkState(state, "addDecayedWeights");
      const p = requireParams(params, "addDecayedWeights");
      checkLeavesMatch(
        tensorLeaves(updates, "addDecayedWeights updates"),
        p,
        "addDecayedWeights: updates and params differ",
        "pass the params the updates are for",
      );
      let leaf = 0;
      const out = treeMap((u: Tensor) => {
        const pv = valuesOf(p[leaf++]!);
        const result = zeros(u.shape);
        const r = result.data as Float32Array;
        const uv = valuesOf(u);
        for (let k = 0; k < r.length; k++) r[k] = uv[k]! + fround(wd * pv[k]!);
        return result;
      }, updates);
      return [out, state] as const;
    },
  };
}
