/**
 * applyIfFinite: skips a step whose updates hold inf or NaN, leaving the inner state untouched.
 *
 * @module
 */

import type { Tensor } from "../tensor.ts";
import { zeros } from "../tensor.ts";
import { treeMap } from "../tree.ts";
import { sumSquares } from "./_native.ts";
import {
  checkNumber,
  checkState,
  freezeState,
  type GradientTransformation,
  type OptState,
  type Params,
  tensorLeaves,
  type Updates,
} from "./transformation.ts";

/** State of {@linkcode applyIfFinite}. */
export interface ApplyIfFiniteState extends OptState {
  readonly kind: "applyIfFinite";
  /** Non-finite steps in a row so far. */
  readonly notFiniteCount: number;
  /** Non-finite steps in total. */
  readonly totalNotFinite: number;
  /** Whether the last updates were finite. */
  readonly lastFinite: boolean;
  readonly inner: OptState;
}

/**
 * Runs `inner` only when every incoming update is finite (one native read-only pass). A non-finite
 * step returns zero updates, leaves the inner state exactly as it was (inner is not called), and
 * counts the skip; the `maxConsecutiveErrors + 1`-th non-finite step in a row throws a RangeError
 * instead, since training has diverged (optax would apply the NaNs at that point).
 *
 * @param inner The transformation to protect.
 * @param maxConsecutiveErrors Non-finite steps in a row tolerated (>= 0).
 * @returns A transformation whose state counts skips.
 * @example
 * ```ts
 * import { tensor } from "../tensor.ts";
 * import { applyIfFinite } from "./apply_if_finite.ts";
 * import { sgd } from "./sgd.ts";
 * const tx = applyIfFinite(sgd({ lr: 1 }), 3);
 * using g = tensor([Number.NaN]);
 * const [u, s] = tx.update([g], tx.init([g]));
 * if ((u as any)[0].toArray()[0] !== 0 || s.notFiniteCount !== 1) throw new Error("not skipped");
 * ```
 */
export function applyIfFinite(
  inner: GradientTransformation,
  maxConsecutiveErrors: number,
): GradientTransformation<ApplyIfFiniteState> {
  checkNumber(maxConsecutiveErrors, "maxConsecutiveErrors", { min: 0 });
  return {
    init(params: Params): ApplyIfFiniteState {
      return freezeState({
        kind: "applyIfFinite",
        notFiniteCount: 0,
        totalNotFinite: 0,
        lastFinite: true,
        inner: inner.init(params),
      });
    },
    update(updates: Updates, state: ApplyIfFiniteState, params?: Params) {
      checkState(state, "applyIfFinite");
      const { foundInf } = sumSquares(tensorLeaves(updates, "applyIfFinite updates"));
      if (!foundInf) {
        const [out, innerState] = inner.update(updates, state.inner, params);
        return [out, freezeState({ ...state, notFiniteCount: 0, lastFinite: true, inner: innerState })] as const;
      }
      if (state.notFiniteCount >= maxConsecutiveErrors) {
        throw new RangeError(
          `applyIfFinite: the updates were non-finite (inf or NaN) on ${state.notFiniteCount + 1} consecutive steps, more than maxConsecutiveErrors = ${maxConsecutiveErrors}: training has diverged; lower the learning rate, use loss scaling (withLossScale) for float16, or check the loss for NaN`,
        );
      }
      const out = treeMap((u: Tensor) => zeros(u.shape), updates);
      return [
        out,
        freezeState({
          ...state,
          notFiniteCount: state.notFiniteCount + 1,
          totalNotFinite: state.totalNotFinite + 1,
          lastFinite: false,
        }),
      ] as const;
    },
  };
}
