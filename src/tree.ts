/**
 * Pytrees: nested plain objects and arrays whose leaves are tensors (or other non-container
 * values). `null` and `undefined` are empty subtrees, as None is in JAX. Traversal is iterative.
 *
 * @module
 */

/** A pytree of leaves of type L. */
export type Tree<L> = L | null | undefined | readonly Tree<L>[] | { readonly [key: string]: Tree<L> };

/**
 * `T` checked as a tree of `L` leaves, for generic parameters: `P extends TreeOf<P, Tensor>`.
 * Records declared as interfaces pass (they have no index signature, so `Tree<L>` refuses them), and
 * so do tuples and optional members. Each member must be a leaf, null, undefined or an object: a
 * nested tree, or another leaf such as a frozen weight (types cannot tell a class instance from a
 * record, so deeper levels are checked at run time); a primitive member (a number among the
 * tensors) is refused.
 */
export type TreeOf<T, L> = { [K in keyof T]: TreeMember<T[K], L> };

/** One member of a {@linkcode TreeOf}. */
type TreeMember<V, L> = V extends L | null | undefined ? V : V extends object ? V : never;

/** The shape of a tree without its leaves: "*" marks a leaf. */
export type TreeStructure = "*" | null | readonly TreeStructure[] | { readonly [key: string]: TreeStructure };

function isPlainObject(value: unknown): value is Record<string, unknown> {
  if (typeof value !== "object" || value === null) return false;
  const proto = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

/** Whether a value is a container node (a plain array or plain object), not a leaf. */
export function isNode(value: unknown): boolean {
  return Array.isArray(value) || isPlainObject(value);
}

/**
 * The leaves of a tree in a fixed order (arrays by index, objects by sorted key).
 *
 * @param tree A pytree.
 * @returns Its leaves, depth first.
 * @example
 * ```ts
 * import { treeLeaves } from "./tree.ts";
 * if (treeLeaves({ b: [2, 3], a: 1 }).join() !== "1,2,3") throw new Error("wrong order");
 * ```
 */
export function treeLeaves<L>(tree: Tree<L>): L[] {
  const leaves: L[] = [];
  const stack: unknown[] = [tree];
  while (stack.length > 0) {
    const node = stack.pop();
    if (node === null || node === undefined) continue;
    if (Array.isArray(node)) {
      for (let i = node.length - 1; i >= 0; i--) stack.push(node[i]);
    } else if (isPlainObject(node)) {
      const keys = Object.keys(node).sort();
      for (let i = keys.length - 1; i >= 0; i--) stack.push(node[keys[i]!]);
    } else {
      leaves.push(node as L);
    }
  }
  return leaves;
}

/**
 * The structure of a tree: the same containers with every leaf replaced by "*".
 *
 * @param tree A pytree.
 * @returns Its structure, comparable with JSON.stringify.
 */
export function treeStructure<L>(tree: Tree<L>): TreeStructure {
  return treeMap(() => "*" as const, tree) as TreeStructure;
}

/**
 * Builds a tree of the given structure from leaves in treeLeaves order.
 *
 * @param structure From treeStructure.
 * @param leaves As many leaves as the structure has "*".
 * @returns The tree.
 */
export function treeUnflatten<L>(structure: TreeStructure, leaves: readonly L[]): Tree<L> {
  let index = 0;
  const result = treeMap(
    () => {
      if (index >= leaves.length) throw new RangeError(`The structure has more leaves than the ${leaves.length} given`);
      return leaves[index++]!;
    },
    structure as Tree<"*">,
  );
  if (index !== leaves.length) {
    throw new RangeError(`The structure has ${index} leaves but ${leaves.length} were given`);
  }
  return result;
}

/**
 * Applies `fn` to every leaf (with the matching leaves of `rest`, which must have the same
 * structure) and returns a tree of the results with the same containers.
 *
 * @param fn Called as fn(leaf, ...restLeaves, path).
 * @param tree The first tree.
 * @param rest Further trees of the same structure.
 * @returns The mapped tree.
 * @example
 * ```ts
 * import { treeMap } from "./tree.ts";
 * const doubled = treeMap((x: number) => 2 * x, { a: [1, 2] }) as { a: number[] };
 * if (doubled.a[1] !== 4) throw new Error("not mapped");
 * ```
 */
export function treeMap<L, R>(fn: (leaf: L, ...rest: any[]) => R, tree: Tree<L>, ...rest: Tree<unknown>[]): Tree<R> {
  const restLeaves = rest.map((other) => treeLeaves(other));
  const leafCount = treeLeaves(tree).length;
  restLeaves.forEach((leaves, i) => {
    if (
      leaves.length !== leafCount ||
      JSON.stringify(treeStructureOf(rest[i])) !== JSON.stringify(treeStructureOf(tree))
    ) {
      throw new TypeError(`Tree ${i + 2} does not have the structure of the first tree: map trees of the same shape`);
    }
  });
  let index = 0;
  const build = (node: unknown): unknown => {
    if (node === null || node === undefined) return node;
    if (Array.isArray(node)) return node.map(build);
    if (isPlainObject(node)) {
      const out: Record<string, unknown> = {};
      for (const key of Object.keys(node)) out[key] = undefined;
      for (const key of Object.keys(node).sort()) out[key] = build(node[key]);
      return out;
    }
    const i = index++;
    return fn(node as L, ...restLeaves.map((leaves) => leaves[i]));
  };
  return build(tree) as Tree<R>;
}

function treeStructureOf(tree: unknown): unknown {
  if (tree === null || tree === undefined) return null;
  if (Array.isArray(tree)) return tree.map(treeStructureOf);
  if (isPlainObject(tree)) {
    const out: Record<string, unknown> = {};
    for (const key of Object.keys(tree).sort()) out[key] = treeStructureOf(tree[key]);
    return out;
  }
  return "*";
}
