/**
 * Shared by masked and multiTransform: leaf labels, checked against a tree, and the gather /
 * scatter of the leaves that carry a label.
 *
 * @module
 */

import { describeKind } from "../dtype.ts";
import type { Tensor } from "../tensor.ts";
import { type Tree, treeLeaves, treeStructure, treeUnflatten } from "../tree.ts";

/** Labels (or mask booleans) per leaf, in treeLeaves order, checked to cover `tree` one to one. */
export function leafLabels<L>(
  labels: Tree<L> | ((tree: Tree<Tensor>) => Tree<L>),
  tree: Tree<Tensor>,
  what: string,
  check: (label: unknown) => label is L,
  fix: string,
): L[] {
  const resolved = typeof labels === "function" ? (labels as (t: Tree<Tensor>) => Tree<L>)(tree) : labels;
  const flat = treeLeaves(resolved as Tree<unknown>);
  const leafCount = treeLeaves(tree).length;
  if (flat.length !== leafCount) {
    throw new TypeError(`${what} has ${flat.length} labels for a tree of ${leafCount} leaves: ${fix}`);
  }
  flat.forEach((label, i) => {
    if (!check(label)) throw new TypeError(`${what}: leaf ${i}'s label is ${describeKind(label)}: ${fix}`);
  });
  return flat as L[];
}

/** The leaves whose index is in `indices`, as a flat array (a valid pytree). */
export function gather(leaves: readonly Tensor[], indices: readonly number[]): Tensor[] {
  return indices.map((i) => leaves[i]!);
}

/** Rebuilds a tree of `template`'s structure from per-leaf results. */
export function scatter(template: Tree<Tensor>, results: readonly Tensor[]): Tree<Tensor> {
  return treeUnflatten(treeStructure(template), results) as Tree<Tensor>;
}
