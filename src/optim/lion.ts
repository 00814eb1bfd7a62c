/**
 * lion: the Lion optimizer (Chen et al., 2023), sign updates with decoupled weight decay.
 *
 * @module
 */

import type { Tensor } from "../tensor.ts";
import { zeros } from "../tensor.ts";
import { treeMap } from "../tree.ts";
import { fround, valuesOf } from "./_ops.ts";
import { chain, type ChainState } from "./chain.ts";
import { decoupledWeightDecay } from "./decoupled_weight_decay.ts";
import { scaleByLearningRate } from "./scale_by_learning_rate.ts";
import {
  checkLeavesMatch,
  checkHyperparameters,
  checkNumber,
  checkState,
  freezeState,
  type GradientTransformation,
  type OptState,
  type Params,
  type Schedule,
  tensorLeaves,
  type Updates,
} from "./transformation.ts";

/** State of {@linkcode scaleByLion}. */
export interface ScaleByLionState extends OptState {
  readonly kind: "scaleByLion";
  readonly mu: Updates;
}

/**
 * Lion's direction: `sign(b1 * m + (1 - b1) * g)`, then `m = b2 * m + (1 - b2) * g` (float32).
 *
 * @param b1 Interpolation of the update (default 0.9).
 * @param b2 Decay of the momentum (default 0.99).
 * @returns A transformation holding one momentum per parameter.
 * @example
 * ```ts
 * import { tensor } from "../tensor.ts";
 * import { scaleByLion } from "./lion.ts";
 * const tx = scaleByLion();
 * using g = tensor([-0.25, 0, 3]);
 * const [u] = tx.update([g], tx.init([g]));
 * if ((u as any)[0].toArray().join() !== "-1,0,1") throw new Error("sign");
 * ```
 */
export function scaleByLion(b1 = 0.9, b2 = 0.99): GradientTransformation<ScaleByLionState> {
  const beta1 = fround(checkNumber(b1, "b1", { min: 0 }));
  const beta2 = fround(checkNumber(b2, "b2", { min: 0 }));
  const c1 = fround(1 - b1);
  const c2 = fround(1 - b2);
  return {
    init(params: Params): ScaleByLionState {
      tensorLeaves(params, "scaleByLion params");
      return freezeState({ kind: "scaleByLion", mu: treeMap((p: Tensor) => zeros(p.shape), params) });
    },
    update(updates: Updates, state: ScaleByLionState) {
      checkState(state, "scaleByLion");
      const mu = tensorLeaves(state.mu, "scaleByLion state.mu");
      checkLeavesMatch(
        tensorLeaves(updates, "scaleByLion updates"),
        mu,
        "scaleByLion: the updates do not match the state",
        "pass the state init() made for these params",
      );
      let leaf = 0;
      const out = treeMap((u: Tensor) => {
        const m = mu[leaf++]!.data as Float32Array;
        const g = valuesOf(u);
        const result = zeros(u.shape);
        const r = result.data as Float32Array;
        for (let k = 0; k < r.length; k++) {
          r[k] = Math.sign(fround(beta1 * m[k]!) + fround(c1 * g[k]!));
          m[k] = fround(beta2 * m[k]!) + fround(c2 * g[k]!);
        }
        return result;
      }, updates);
      return [out, state] as const;
    },
  };
}

/** Options of {@linkcode lion}. */
export interface LionOptions {
  /** Learning rate or schedule (default 1e-4). */
  readonly lr?: number | Schedule;
  /** (beta1, beta2), default (0.9, 0.99). */
  readonly betas?: readonly [number, number];
  /** Decoupled weight decay (default 0). */
  readonly weightDecay?: number;
}

/**
 * Lion: `p = p * (1 - lr * wd) - lr * sign(b1 m + (1 - b1) g)`; `m = b2 m + (1 - b2) g`.
 *
 * @param options lr, betas, weightDecay.
 * @returns The chained transformation.
 * @example
 * ```ts
 * import { tensor } from "../tensor.ts";
 * import { lion } from "./lion.ts";
 * const opt = lion({ lr: 0.5 });
 * using p = tensor([1]);
 * using g = tensor([7]);
 * const [u] = opt.update([g], opt.init([p]), [p]);
 * if ((u as any)[0].toArray()[0] !== -0.5) throw new Error("lr * sign");
 * ```
 */
export function lion(options: LionOptions = {}): GradientTransformation<ChainState> {
  checkHyperparameters("lion", options);
  const lr = options.lr ?? 1e-4;
  const [b1, b2] = options.betas ?? [0.9, 0.99];
  return chain(
    scaleByLion(b1, b2),
    scaleByLearningRate(lr),
    decoupledWeightDecay({ weightDecay: options.weightDecay ?? 0, learningRate: lr }),
  );
}
