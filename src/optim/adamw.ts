/**
 * adamw: torch.optim.AdamW's algorithm and defaults as a chain of transformations.
 *
 * @module
 */

import type { DtypeName } from "../dtype.ts";
import { chain, type ChainState } from "./chain.ts";
import { decoupledWeightDecay } from "./decoupled_weight_decay.ts";
import { scaleByAdam } from "./scale_by_adam.ts";
import { scaleByLearningRate } from "./scale_by_learning_rate.ts";
import { checkHyperparameters, checkNumber, type GradientTransformation, type Schedule } from "./transformation.ts";

/** Options of {@linkcode adamw} (PyTorch's names and defaults). */
export interface AdamWOptions {
  /** Learning rate or schedule (default 1e-3). */
  readonly lr?: number | Schedule;
  /** (beta1, beta2), default (0.9, 0.999). */
  readonly betas?: readonly [number, number];
  /** Default 1e-8, added after bias correction. */
  readonly eps?: number;
  /** Decoupled weight decay, default 1e-2. */
  readonly weightDecay?: number;
  /** AMSGrad: maximum of the raw v, then bias-correct (default false). */
  readonly amsgrad?: boolean;
  /** Dtype of m and v (default "float32"; "bfloat16" allowed). */
  readonly stateDtype?: DtypeName;
}

/**
 * AdamW exactly as torch.optim.AdamW defines it (defaults lr 1e-3, betas (0.9, 0.999), eps 1e-8,
 * weight_decay 1e-2): per step t,
 * `p = p * (1 - lr * wd)` on the old p first, then `p -= lr * (m / (1 - b1^t)) / (sqrt(v) / sqrt(1 - b2^t) + eps)`.
 * Built as `chain(scaleByAdam, scaleByLearningRate(lr), decoupledWeightDecay)`: the last link
 * decays the old parameters and returns the difference, so `applyUpdates` lands on PyTorch's new
 * parameter. (optax's `adamw` instead adds `wd * p` to the Adam direction before scaling by lr,
 * which rounds differently and defaults to wd 1e-4; it is not offered here.)
 *
 * @param options lr, betas, eps, weightDecay, amsgrad, stateDtype.
 * @returns The chained transformation (it needs the params in update).
 * @example
 * ```ts
 * import { tensor } from "../tensor.ts";
 * import { adamw } from "./adamw.ts";
 * import { applyUpdates } from "./apply_updates.ts";
 * const opt = adamw({ lr: 0.1, weightDecay: 0 });
 * using p = tensor([1]);
 * using g = tensor([5]);
 * const [u] = opt.update([g], opt.init([p]), [p]);
 * applyUpdates([p], u);
 * if (Math.abs(p.toArray()[0] - 0.9) > 1e-6) throw new Error("the first Adam step moves by lr");
 * ```
 */
export function adamw(options: AdamWOptions = {}): GradientTransformation<ChainState> {
  checkHyperparameters("adamw", options);
  const lr = options.lr ?? 1e-3;
  const [b1, b2] = options.betas ?? [0.9, 0.999];
  const weightDecay = checkNumber(options.weightDecay ?? 1e-2, "weightDecay", { min: 0 });
  return chain(
    scaleByAdam({ b1, b2, eps: options.eps ?? 1e-8, amsgrad: options.amsgrad, stateDtype: options.stateDtype }),
    scaleByLearningRate(lr),
    decoupledWeightDecay({ weightDecay, learningRate: lr }),
  );
}
