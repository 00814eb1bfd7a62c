/**
 * adam: torch.optim.Adam (coupled L2 weight decay) as a chain of transformations.
 *
 * @module
 */

import { addDecayedWeights } from "./add_decayed_weights.ts";
import type { AdamWOptions } from "./adamw.ts";
import { chain, type ChainState } from "./chain.ts";
import { scaleByAdam } from "./scale_by_adam.ts";
import { scaleByLearningRate } from "./scale_by_learning_rate.ts";
import { checkHyperparameters, checkNumber, type GradientTransformation } from "./transformation.ts";

/**
 * Adam as torch.optim.Adam defines it (defaults lr 1e-3, betas (0.9, 0.999), eps 1e-8,
 * weight_decay 0): weight decay, when non-zero, is added to the gradient (`g + wd * p`) before
 * the moments. `chain(addDecayedWeights(wd)?, scaleByAdam, scaleByLearningRate(lr))`.
 *
 * @param options lr, betas, eps, weightDecay (default 0), amsgrad, stateDtype.
 * @returns The chained transformation.
 * @example
 * ```ts
 * import { tensor } from "../tensor.ts";
 * import { adam } from "./adam.ts";
 * const opt = adam({ lr: 0.5 });
 * using g = tensor([-3]);
 * const [u] = opt.update([g], opt.init([g]));
 * if (Math.abs((u as any)[0].toArray()[0] - 0.5) > 1e-6) throw new Error("first step is lr * sign");
 * ```
 */
export function adam(options: AdamWOptions = {}): GradientTransformation<ChainState> {
  checkHyperparameters("adam", options);
  const lr = options.lr ?? 1e-3;
  const [b1, b2] = options.betas ?? [0.9, 0.999];
  const weightDecay = checkNumber(options.weightDecay ?? 0, "weightDecay", { min: 0 });
  const core = [
    scaleByAdam({ b1, b2, eps: options.eps ?? 1e-8, amsgrad: options.amsgrad, stateDtype: options.stateDtype }),
    scaleByLearningRate(lr),
  ];
  return weightDecay === 0 ? chain(...core) : chain(addDecayedWeights(weightDecay), ...core);
}
