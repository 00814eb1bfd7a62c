/**
 * decoupledWeightDecay: AdamW's decay of the old parameters, PyTorch's form.
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
  resolveHyper,
  type Schedule,
  tensorLeaves,
  type Updates,
} from "./transformation.ts";

/** Options of {@linkcode decoupledWeightDecay}. */
export interface DecoupledWeightDecayOptions {
  /** The decay coefficient (PyTorch's `weight_decay`). */
  readonly weightDecay: number;
  /** The learning rate the decay is scaled by (the same number or schedule as the step's). */
  readonly learningRate: number | Schedule;
}

/** State of {@linkcode decoupledWeightDecay}: the step count its schedule reads. */
export interface DecoupledWeightDecayState extends OptState {
  readonly kind: "decoupledWeightDecay";
  readonly count: number;
}

/**
 * Decays the old parameters before the step, as torch.optim.AdamW does: the new parameter is
 * `float32(p * (1 - lr * wd)) + u` where u is the incoming (already lr-scaled) update. It returns
 * `float32(that - p)`, so `applyUpdates` lands on PyTorch's value (exactly whenever the new
 * parameter is within a factor 2 of the old, by Sterbenz's lemma; else within 1 ulp). With
 * `1 - lr * wd` equal to 1 the updates are copied unchanged.
 *
 * @param options weightDecay and learningRate.
 * @returns A transformation that needs the params.
 * @example
 * ```ts
 * import { tensor } from "../tensor.ts";
 * import { decoupledWeightDecay } from "./decoupled_weight_decay.ts";
 * const tx = decoupledWeightDecay({ weightDecay: 0.5, learningRate: 0.5 });
 * using u = tensor([0]);
 * using p = tensor([8]);
 * const [out] = tx.update([u], tx.init([p]), [p]);
 * if ((out as any)[0].toArray()[0] !== -2) throw new Error("p * (1 - 0.25) - p is -2");
 * ```
 */
export function decoupledWeightDecay(
  options: DecoupledWeightDecayOptions,
): GradientTransformation<DecoupledWeightDecayState> {
  const wd = checkNumber(options?.weightDecay, "weightDecay", { min: 0 });
  const learningRate = options.learningRate;
  if (typeof learningRate !== "function") checkNumber(learningRate, "learningRate");
  return {
    init(_params: Params): DecoupledWeightDecayState {
      return freezeState({ kind: "decoupledWeightDecay", count: 0 });
    },
    update(updates: Updates, state: DecoupledWeightDecayState, params?: Params) {
      checkState(state, "decoupledWeightDecay");
      const p = requireParams(params, "decoupledWeightDecay");
      const u = tensorLeaves(updates, "decoupledWeightDecay updates");
      checkLeavesMatch(u, p, "decoupledWeightDecay: updates and params differ", "pass the params the updates are for");
      const decay = decayFactor(resolveHyper(learningRate, state.count, "learningRate"), wd);
      let leaf = 0;
      const out = treeMap((update: Tensor) => {
        const pv = valuesOf(p[leaf++]!);
        const result = zeros(update.shape);
        const r = result.data as Float32Array;
        const uv = valuesOf(update);
        if (decay === 1) r.set(uv);
        else for (let k = 0; k < r.length; k++) r[k] = fround(fround(pv[k]! * decay) + uv[k]!) - pv[k]!;
        return result;
      }, updates);
      return [out, freezeState({ kind: "decoupledWeightDecay", count: state.count + 1 })] as const;
    },
  };
}

/**
 * `float32(1 - lr * wd)`, computed in float64 as PyTorch's Python scalar is.
 * @internal
 */
export function decayFactor(lr: number, weightDecay: number): number {
  return fround(1 - lr * weightDecay);
}
