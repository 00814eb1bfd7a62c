/**
 * chain: composes gradient transformations left to right.
 *
 * @module
 */

import type { Tensor } from "../tensor.ts";
import { treeLeaves, treeMap } from "../tree.ts";
import {
  checkState,
  freezeState,
  type GradientTransformation,
  type OptState,
  type Params,
  type Updates,
} from "./transformation.ts";

/** State of {@linkcode chain}: the inner states in order. */
export interface ChainState extends OptState {
  readonly kind: "chain";
  readonly inner: readonly OptState[];
}

/**
 * Chains transformations: the updates flow through each in turn (optax's `chain`). Intermediate
 * updates are disposed as soon as the next transformation has consumed them, so a chain leaks
 * nothing; the caller owns only the final updates.
 *
 * @param transforms The transformations, applied first to last.
 * @returns A transformation whose state holds the inner states.
 * @example
 * ```ts
 * import { tensor } from "../tensor.ts";
 * import { chain } from "./chain.ts";
 * import { scaleByLearningRate } from "./scale_by_learning_rate.ts";
 * import { clipByGlobalNorm } from "./clip_by_global_norm.ts";
 * const tx = chain(clipByGlobalNorm(1), scaleByLearningRate(0.5));
 * using g = tensor([3, 4]);
 * const [u] = tx.update([g], tx.init([g]));
 * const values = (u as any)[0].toArray();
 * if (Math.abs(values[0] + 0.3) > 1e-6) throw new Error("not chained");
 * ```
 */
export function chain(...transforms: GradientTransformation[]): GradientTransformation<ChainState> {
  transforms.forEach((t, i) => {
    if (typeof t?.init !== "function" || typeof t?.update !== "function") {
      throw new TypeError(`chain() argument ${i} is not a GradientTransformation: pass objects with init and update`);
    }
  });
  return {
    init(params: Params): ChainState {
      return freezeState({ kind: "chain", inner: Object.freeze(transforms.map((t) => t.init(params))) });
    },
    update(updates: Updates, state: ChainState, params?: Params): readonly [Updates, ChainState] {
      checkState(state, "chain");
      if (state.inner.length !== transforms.length) {
        throw new TypeError(
          `chain.update() was given the state of a chain of ${state.inner.length} transformations, but this chain has ${transforms.length}: pass the state this chain's init() made`,
        );
      }
      const next: OptState[] = [];
      let current = updates;
      for (let i = 0; i < transforms.length; i++) {
        const [out, innerState] = transforms[i]!.update(current, state.inner[i]!, params);
        if (current !== updates) disposeIntermediate(current, out, updates);
        current = out;
        next.push(innerState);
      }
      if (current === updates) current = copyTree(updates);
      return [current, freezeState({ kind: "chain", inner: Object.freeze(next) })];
    },
  };
}

/** Disposes the leaves of `used` that appear neither in `result` nor in the caller's `input`. */
function disposeIntermediate(used: Updates, result: Updates, input: Updates): void {
  const keep = new Set<Tensor>([...treeLeaves(result), ...treeLeaves(input)]);
  for (const leaf of treeLeaves(used)) if (!keep.has(leaf)) leaf.dispose();
}

/** An empty chain returns new float32 copies, keeping the "updates are new tensors" rule. */
function copyTree(tree: Updates): Updates {
  return treeMap((t: Tensor) => t.to("float32"), tree);
}
