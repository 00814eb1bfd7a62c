/**
 * GradientTransformation, the optax abstraction mixprec's optimizers are built from: a pair of
 * functions `init(params) -> state` and `update(updates, state, params?) -> [updates, state]`,
 * made by a factory that closes over its hyperparameters.
 *
 * Ownership (who disposes what):
 * - `update` never disposes its input updates or params and, unless a transform says otherwise
 *   (`withLossScale` unscales its incoming gradients in place, as `LossScale.unscale` does), never
 *   writes them. Its returned updates are always new float32 tensors that the caller owns: dispose
 *   them (e.g. with {@linkcode disposeTree}) after {@linkcode applyUpdates}.
 * - State records are frozen plain objects. The tensors inside (moments, accumulators, master
 *   weights) belong to the state and are updated in place by `update`, as PyTorch's optimizer state
 *   is: the record `update` returns is the current one, and the record passed in must not be used
 *   again. Dispose a state's tensors with `disposeTree(state)` when training ends.
 *
 * @module
 */

import { describeKind } from "../dtype.ts";
import { Tensor } from "../tensor.ts";
import { type Tree, treeLeaves } from "../tree.ts";

/** A pytree of parameter tensors (any float dtype). */
export type Params = Tree<Tensor>;
/** A pytree of update (or gradient) tensors with the structure of the parameters. */
export type Updates = Tree<Tensor>;

/** Every optimizer state is a frozen record naming the transformation that made it. */
export interface OptState {
  /** The transformation that made this state, e.g. "scaleByAdam" or "chain". */
  readonly kind: string;
}

/**
 * A gradient transformation: `init` makes the state for some params; `update` maps updates (at
 * first the gradients) and state to new updates and the next state.
 */
export interface GradientTransformation<S extends OptState = OptState> {
  /** Makes the initial state for `params`. */
  init(params: Params): S;
  /** Transforms `updates`; `params` is needed by transforms that read the parameters. */
  update(updates: Updates, state: S, params?: Params): readonly [Updates, S];
}

/** A schedule: the value of a hyperparameter at step `count` (0 for the first update). */
export type Schedule = (count: number) => number;

/** Freezes a state record (shallowly: tensors inside stay live and mutable). */
export function freezeState<S extends OptState>(state: S): S {
  return Object.freeze(state);
}

/**
 * Throws a TypeError unless `state` is a state record of `kind`.
 * @internal
 */
export function checkState(state: unknown, kind: string): void {
  const actual = typeof state === "object" && state !== null ? (state as { kind?: unknown }).kind : undefined;
  if (actual === kind) return;
  const found = actual === undefined ? describeKind(state) : `a "${String(actual)}" state`;
  throw new TypeError(
    `${kind}.update() was given ${found}, not a "${kind}" state: pass the state returned by this transformation's own init() or previous update() (a state from another chain or transformation does not fit)`,
  );
}

/**
 * The tensor leaves of a tree, checked to be tensors.
 * @internal
 */
export function tensorLeaves(tree: Tree<Tensor>, what: string): Tensor[] {
  const leaves = treeLeaves(tree);
  leaves.forEach((leaf, i) => {
    if (!(leaf instanceof Tensor)) {
      throw new TypeError(`${what} leaf ${i} is ${describeKind(leaf)}: every leaf must be a Tensor`);
    }
  });
  return leaves;
}

/**
 * Throws a TypeError when two leaf lists differ in length or in their tensors' sizes.
 * @internal
 */
export function checkLeavesMatch(a: readonly Tensor[], b: readonly Tensor[], what: string, fix: string): void {
  if (a.length !== b.length) {
    throw new TypeError(`${what}: ${a.length} leaves against ${b.length}: ${fix}`);
  }
  for (let i = 0; i < a.length; i++) {
    if (a[i]!.size !== b[i]!.size) {
      throw new TypeError(
        `${what}: leaf ${i} has ${a[i]!.size} elements against ${b[i]!.size} (shapes [${a[i]!.shape.join(", ")}] and [${b[i]!.shape.join(", ")}]): ${fix}`,
      );
    }
  }
}

/**
 * Throws a TypeError when `params` is missing for a transform that reads parameters.
 * @internal
 */
export function requireParams(params: Params | undefined, kind: string): Tensor[] {
  if (params === undefined) {
    throw new TypeError(`${kind}.update() needs the params: call update(updates, state, params)`);
  }
  return tensorLeaves(params, `${kind} params`);
}

/**
 * Disposes every Tensor found in a tree or state record (nested plain objects and arrays).
 *
 * @param tree Updates, params or an optimizer state.
 * @returns The number of tensors disposed.
 * @example
 * ```ts
 * import { zeros } from "../tensor.ts";
 * import { disposeTree } from "./transformation.ts";
 * const tree = { a: zeros([2]), b: [zeros([3])] };
 * if (disposeTree(tree) !== 2 || !tree.a.disposed) throw new Error("not disposed");
 * ```
 */
export function disposeTree(tree: unknown): number {
  let count = 0;
  for (const leaf of treeLeaves(tree as Tree<unknown>)) {
    if (leaf instanceof Tensor && !leaf.disposed) {
      leaf.dispose();
      count++;
    }
  }
  return count;
}

/**
 * Checks a hyperparameter is a finite number (or a schedule where allowed).
 * @internal
 */
export function checkNumber(value: unknown, name: string, { min = -Infinity, minInclusive = true } = {}): number {
  if (typeof value !== "number" || !Number.isFinite(value)) {
    throw new TypeError(`${name} must be a finite number, got ${String(value)}`);
  }
  if (minInclusive ? value < min : value <= min) {
    throw new RangeError(`${name} must be ${minInclusive ? ">=" : ">"} ${min}, got ${value}`);
  }
  return value;
}

/** Hyperparameters an optimizer factory checks with {@linkcode checkHyperparameters}. */
export interface Hyperparameters {
  readonly lr?: number | Schedule;
  readonly betas?: readonly number[];
  readonly eps?: number;
  readonly weightDecay?: number;
  readonly momentum?: number;
}

/**
 * Refuses out-of-range optimizer hyperparameters before anything is built, as torch.optim does
 * ("Invalid learning rate: -1"): lr >= 0 (a schedule is checked when it is called), every beta in
 * [0, 1), eps > 0, weightDecay >= 0, momentum >= 0. The message names the optimizer, the option and
 * the value.
 * @internal
 */
export function checkHyperparameters(optimizer: string, h: Hyperparameters): void {
  const fail = (option: string, value: unknown, rule: string): never => {
    const kind = typeof value === "number" ? RangeError : TypeError;
    throw new kind(`${optimizer}: ${option} must be ${rule}, got ${String(value)}`);
  };
  const isNumber = (v: unknown): v is number => typeof v === "number" && !Number.isNaN(v);
  if (h.lr !== undefined && typeof h.lr !== "function" && !(isNumber(h.lr) && h.lr >= 0 && h.lr < Infinity)) {
    fail("lr", h.lr, "a finite number >= 0 (or a schedule)");
  }
  if (h.betas !== undefined) {
    if (!Array.isArray(h.betas) || h.betas.length !== 2) fail("betas", h.betas, "a pair [b1, b2]");
    h.betas.forEach((b, i) => {
      if (!(isNumber(b) && b >= 0 && b < 1)) fail(`betas[${i}]`, b, "in [0, 1)");
    });
  }
  if (h.eps !== undefined && !(isNumber(h.eps) && h.eps > 0 && h.eps < Infinity)) {
    fail("eps", h.eps, "a finite number > 0");
  }
  if (h.weightDecay !== undefined && !(isNumber(h.weightDecay) && h.weightDecay >= 0 && h.weightDecay < Infinity)) {
    fail("weightDecay", h.weightDecay, "a finite number >= 0");
  }
  if (h.momentum !== undefined && !(isNumber(h.momentum) && h.momentum >= 0 && h.momentum < Infinity)) {
    fail("momentum", h.momentum, "a finite number >= 0");
  }
}

/**
 * Resolves a number-or-schedule hyperparameter at `count`.
 * @internal
 */
export function resolveHyper(value: number | Schedule, count: number, name: string): number {
  const resolved = typeof value === "function" ? value(count) : value;
  if (typeof resolved !== "number" || Number.isNaN(resolved)) {
    throw new TypeError(`${name} at step ${count} is ${String(resolved)}: a schedule must return a number`);
  }
  return resolved;
}
