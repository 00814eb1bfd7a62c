/**
 * masked: applies a transformation to the masked-in leaves only.
 *
 * @module
 */

import type { Tensor } from "../tensor.ts";
import type { Tree } from "../tree.ts";
import { gather, leafLabels, scatter } from "./_partition.ts";
import {
  checkState,
  freezeState,
  type GradientTransformation,
  type OptState,
  type Params,
  tensorLeaves,
  type Updates,
} from "./transformation.ts";

/** A mask: one boolean per leaf (a tree of the params' structure), or a function of the tree. */
export type Mask = Tree<boolean> | ((tree: Tree<Tensor>) => Tree<boolean>);

/** State of {@linkcode masked}. */
export interface MaskedState extends OptState {
  readonly kind: "masked";
  /** The inner state, made for the masked-in leaves only (a flat list). */
  readonly inner: OptState;
}

const isBoolean = (x: unknown): x is boolean => typeof x === "boolean";
const FIX = "give one boolean per parameter, as a tree with the params' structure";

/**
 * Runs `inner` on the leaves whose mask is true (passed to it as a flat list) and lets the other
 * updates through unchanged (as new float32 copies), as optax's `masked`. Inner state exists for
 * the masked-in leaves only, e.g. `masked(addDecayedWeights(0.01), noBiases)`.
 *
 * @param inner The transformation for the masked-in leaves.
 * @param mask Booleans per leaf, or a function of the params (at init) / updates (at update).
 * @returns A transformation.
 * @example
 * ```ts
 * import { tensor } from "../tensor.ts";
 * import { masked } from "./masked.ts";
 * import { sgd } from "./sgd.ts";
 * const tx = masked(sgd({ lr: 1 }), { w: true, b: false });
 * using w = tensor([2]);
 * using b = tensor([3]);
 * const [u] = tx.update({ w, b }, tx.init({ w, b }));
 * if ((u as any).w.toArray()[0] !== -2 || (u as any).b.toArray()[0] !== 3) throw new Error("mask");
 * ```
 */
export function masked(inner: GradientTransformation, mask: Mask): GradientTransformation<MaskedState> {
  const selected = (tree: Tree<Tensor>) =>
    leafLabels(mask, tree, "masked(): the mask", isBoolean, FIX).flatMap((on, i) => (on ? [i] : []));
  return {
    init(params: Params): MaskedState {
      const leaves = tensorLeaves(params, "masked params");
      return freezeState({ kind: "masked", inner: inner.init(gather(leaves, selected(params))) });
    },
    update(updates: Updates, state: MaskedState, params?: Params) {
      checkState(state, "masked");
      const leaves = tensorLeaves(updates, "masked updates");
      const indices = selected(updates);
      const paramLeaves = params === undefined ? undefined : gather(tensorLeaves(params, "masked params"), indices);
      const [innerOut, innerState] = inner.update(gather(leaves, indices), state.inner, paramLeaves);
      const innerLeaves = tensorLeaves(innerOut, "masked inner updates");
      const results: Tensor[] = leaves.map((u) => u);
      indices.forEach((leaf, k) => {
        results[leaf] = innerLeaves[k]!;
      });
      const chosen = new Set(indices);
      for (let i = 0; i < results.length; i++) if (!chosen.has(i)) results[i] = leaves[i]!.to("float32");
      return [scatter(updates, results), freezeState({ kind: "masked", inner: innerState })] as const;
    },
  };
}
