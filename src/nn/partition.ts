/**
 * Splitting a parameter tree into the part to differentiate and the frozen rest (Equinox's
 * partition / combine): tensors are trainable; every other leaf (a FrozenWeight, a number) is
 * frozen. Each side keeps the tree's containers, with null where the other side has the leaf.
 *
 * @module
 */

import { isTensor } from "../tensor.ts";
import type { Tree } from "../tree.ts";
import { isNode } from "../tree.ts";

function mapTree(tree: unknown, leaf: (value: unknown) => unknown): unknown {
  // Parameter trees are shallow (a few levels), so plain recursion over containers is bounded.
  if (tree === null || tree === undefined) return tree;
  if (Array.isArray(tree)) return tree.map((item) => mapTree(item, leaf));
  if (isNode(tree)) {
    const out: Record<string, unknown> = {};
    for (const [key, value] of Object.entries(tree as Record<string, unknown>)) out[key] = mapTree(value, leaf);
    return out;
  }
  return leaf(tree);
}

/**
 * Splits params into `{ trainable, frozen }`: trainable holds the tensor leaves, frozen the others.
 *
 * @param params A parameter tree.
 * @returns The two halves, each shaped like params with null for the other half's leaves.
 * @example
 * ```ts
 * import { partition } from "./partition.ts";
 * import { tensor } from "../tensor.ts";
 * using a = tensor([1]);
 * const { trainable, frozen } = partition({ a, n: 3 });
 * if ((trainable as { n: unknown }).n !== null || (frozen as { n: number }).n !== 3) throw new Error("split");
 * ```
 */
export function partition<T>(params: T): { trainable: T; frozen: T } {
  return {
    trainable: mapTree(params, (leaf) => (isTensor(leaf) ? leaf : null)) as T,
    frozen: mapTree(params, (leaf) => (isTensor(leaf) ? null : leaf)) as T,
  };
}

function combineTrees(a: unknown, b: unknown): unknown {
  if (a === null || a === undefined) return b;
  if (b === null || b === undefined) return a;
  if (Array.isArray(a) && Array.isArray(b)) {
    if (a.length !== b.length) throw new TypeError("combine: the two trees have arrays of different lengths");
    return a.map((item, i) => combineTrees(item, b[i]));
  }
  if (isNode(a) && isNode(b)) {
    const out: Record<string, unknown> = {};
    const keys = new Set([...Object.keys(a as object), ...Object.keys(b as object)]);
    for (const key of keys) {
      out[key] = combineTrees((a as Record<string, unknown>)[key], (b as Record<string, unknown>)[key]);
    }
    return out;
  }
  throw new TypeError("combine: both trees have a leaf at the same place: pass the halves from partition()");
}

/**
 * Joins the halves from {@linkcode partition} back into one tree.
 *
 * @param trainable The trainable half (for example, updated parameters or gradients).
 * @param frozen The frozen half.
 * @returns The combined tree.
 * @example
 * ```ts
 * import { combine, partition } from "./partition.ts";
 * import { tensor } from "../tensor.ts";
 * using a = tensor([1]);
 * const { trainable, frozen } = partition({ a, n: 3 });
 * const both = combine(trainable, frozen) as { a: unknown; n: number };
 * if (both.a !== a || both.n !== 3) throw new Error("combined");
 * ```
 */
export function combine<T>(trainable: T, frozen: T): T {
  return combineTrees(trainable, frozen) as T;
}

export type { Tree };
