/**
 * setToZero: replaces every update by zeros (freezes parameters inside multiTransform).
 *
 * @module
 */

import type { Tensor } from "../tensor.ts";
import { zeros } from "../tensor.ts";
import { treeMap } from "../tree.ts";
import {
  checkState,
  freezeState,
  type GradientTransformation,
  type OptState,
  type Params,
  type Updates,
} from "./transformation.ts";

/** State of {@linkcode setToZero}. */
export interface SetToZeroState extends OptState {
  readonly kind: "setToZero";
}

/**
 * Zero updates of the updates' shapes (float32), keeping no state: the frozen group of a
 * {@linkcode multiTransform}, e.g. the base weights under LoRA.
 *
 * @returns A stateless transformation.
 * @example
 * ```ts
 * import { tensor } from "../tensor.ts";
 * import { setToZero } from "./set_to_zero.ts";
 * const tx = setToZero();
 * using g = tensor([5, 6]);
 * const [u] = tx.update([g], tx.init([g]));
 * if ((u as any)[0].toArray().join() !== "0,0") throw new Error("not zero");
 * ```
 */
export function setToZero(): GradientTransformation<SetToZeroState> {
  return {
    init(_params: Params): SetToZeroState {
      return freezeState({ kind: "setToZero" });
    },
    update(updates: Updates, state: SetToZeroState) {
      checkState(state, "setToZero");
      return [treeMap((u: Tensor) => zeros(u.shape), updates), state] as const;
    },
  };
}
