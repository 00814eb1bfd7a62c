/**
 * sgd: torch.optim.SGD (momentum, dampening, nesterov, weight decay) as a chain.
 *
 * @module
 */

import type { DtypeName } from "../dtype.ts";
import { addDecayedWeights } from "./add_decayed_weights.ts";
import { chain, type ChainState } from "./chain.ts";
import { scaleByLearningRate } from "./scale_by_learning_rate.ts";
import { trace } from "./trace.ts";
import { checkHyperparameters, checkNumber, type GradientTransformation, type Schedule } from "./transformation.ts";

/** Options of {@linkcode sgd} (PyTorch's names and defaults). */
export interface SgdOptions {
  /** Learning rate or schedule (default 1e-3, as PyTorch 2). */
  readonly lr?: number | Schedule;
  /** Momentum (default 0: none). */
  readonly momentum?: number;
  /** Dampening (default 0). */
  readonly dampening?: number;
  /** Coupled L2 weight decay added to the gradient (default 0). */
  readonly weightDecay?: number;
  /** Nesterov momentum (default false). */
  readonly nesterov?: boolean;
  /** Dtype of the momentum buffer (default "float32"). */
  readonly stateDtype?: DtypeName;
}

/**
 * SGD as torch.optim.SGD defines it: `d = g + wd * p`; with momentum, `buf = d` on the first step
 * and `buf = momentum * buf + (1 - dampening) * d` after, `d = nesterov ? d + momentum * buf : buf`;
 * `p = p - lr * d`. `chain(addDecayedWeights?, trace?, scaleByLearningRate)`.
 *
 * @param options lr, momentum, dampening, weightDecay, nesterov, stateDtype.
 * @returns The chained transformation.
 * @example
 * ```ts
 * import { tensor } from "../tensor.ts";
 * import { sgd } from "./sgd.ts";
 * const opt = sgd({ lr: 0.5 });
 * using g = tensor([4]);
 * const [u] = opt.update([g], opt.init([g]));
 * if ((u as any)[0].toArray()[0] !== -2) throw new Error("plain SGD");
 * ```
 */
export function sgd(options: SgdOptions = {}): GradientTransformation<ChainState> {
  checkHyperparameters("sgd", options);
  const momentum = checkNumber(options.momentum ?? 0, "momentum", { min: 0 });
  const weightDecay = checkNumber(options.weightDecay ?? 0, "weightDecay", { min: 0 });
  if ((options.nesterov ?? false) && momentum === 0) {
    throw new RangeError("Nesterov momentum requires a momentum > 0: set momentum, or nesterov to false");
  }
  const links: GradientTransformation[] = [];
  if (weightDecay !== 0) links.push(addDecayedWeights(weightDecay));
  if (momentum !== 0) {
    links.push(
      trace({ momentum, dampening: options.dampening, nesterov: options.nesterov, stateDtype: options.stateDtype }),
    );
  }
  links.push(scaleByLearningRate(options.lr ?? 1e-3));
  return chain(...links);
}
