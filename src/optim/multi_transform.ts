/**
 * multiTransform: different transformations for labelled groups of parameters.
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

/** Labels: one string per leaf (a tree of the params' structure), or a function of the tree. */
export type Labels = Tree<string> | ((tree: Tree<Tensor>) => Tree<string>);

/** State of {@linkcode multiTransform}. */
export interface MultiTransformState extends OptState {
  readonly kind: "multiTransform";
  /** Each label's inner state, made for that label's leaves (a flat list). */
  readonly inner: Readonly<Record<string, OptState>>;
}

const isString = (x: unknown): x is string => typeof x === "string";

/**
 * Partitions the leaves by label and gives each group its own transformation (optax's
 * multi_transform): e.g. `{ adapter: adamw(), base: setToZero() }` trains LoRA adapters and freezes
 * the base. Every leaf needs a label that names one of `transforms`; otherwise it throws with the
 * leaf and the fix. Each inner transformation sees its leaves as a flat list.
 *
 * @param transforms A transformation per label.
 * @param paramLabels A label per leaf, or a function of the params (init) / updates (update).
 * @returns A transformation holding one inner state per label.
 * @example
 * ```ts
 * import { tensor } from "../tensor.ts";
 * import { multiTransform } from "./multi_transform.ts";
 * import { setToZero } from "./set_to_zero.ts";
 * import { sgd } from "./sgd.ts";
 * const tx = multiTransform({ train: sgd({ lr: 1 }), freeze: setToZero() }, { a: "train", b: "freeze" });
 * using a = tensor([2]);
 * using b = tensor([3]);
 * const [u] = tx.update({ a, b }, tx.init({ a, b }));
 * if ((u as any).a.toArray()[0] !== -2 || (u as any).b.toArray()[0] !== 0) throw new Error("labels");
 * ```
 */
export function multiTransform(
  transforms: Readonly<Record<string, GradientTransformation>>,
  paramLabels: Labels,
): GradientTransformation<MultiTransformState> {
  const names = Object.keys(transforms ?? {});
  if (names.length === 0) throw new TypeError("multiTransform() needs at least one labelled transformation");
  const fix = `label every parameter with one of ${names.map((n) => JSON.stringify(n)).join(", ")} (a tree of strings with the params' structure)`;
  const groups = (tree: Tree<Tensor>): Map<string, number[]> => {
    const labels = leafLabels(paramLabels, tree, "multiTransform(): the labels", isString, fix);
    const byLabel = new Map<string, number[]>(names.map((n) => [n, []]));
    labels.forEach((label, i) => {
      const group = byLabel.get(label);
      if (group === undefined) {
        throw new TypeError(
          `multiTransform(): leaf ${i} has label ${JSON.stringify(label)}, which has no transformation: ${fix}, or add transforms[${JSON.stringify(label)}]`,
        );
      }
      group.push(i);
    });
    return byLabel;
  };
  return {
    init(params: Params): MultiTransformState {
      const leaves = tensorLeaves(params, "multiTransform params");
      const inner: Record<string, OptState> = {};
      for (const [label, indices] of groups(params)) inner[label] = transforms[label]!.init(gather(leaves, indices));
      return freezeState({ kind: "multiTransform", inner: Object.freeze(inner) });
    },
    update(updates: Updates, state: MultiTransformState, params?: Params) {
      checkState(state, "multiTransform");
      const leaves = tensorLeaves(updates, "multiTransform updates");
      const paramLeaves = params === undefined ? undefined : tensorLeaves(params, "multiTransform params");
      const results: Tensor[] = new Array(leaves.length);
      const inner: Record<string, OptState> = {};
      for (const [label, indices] of groups(updates)) {
        if (!(label in state.inner)) {
          throw new TypeError(
            `multiTransform.update(): the state has no group ${JSON.stringify(label)}: pass the state this multiTransform's init() made`,
          );
        }
        const [out, innerState] = transforms[label]!.update(
          gather(leaves, indices),
          state.inner[label]!,
          paramLeaves === undefined ? undefined : gather(paramLeaves, indices),
        );
        tensorLeaves(out, "multiTransform inner updates").forEach((t, k) => {
          results[indices[k]!] = t;
        });
        inner[label] = innerState;
      }
      return [scatter(updates, results), freezeState({ kind: "multiTransform", inner: Object.freeze(inner) })] as const;
    },
  };
}
