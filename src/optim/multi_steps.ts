/**
 * multiSteps: gradient accumulation over k micro-batches.
 *
 * @module
 */

import type { DtypeName } from "../dtype.ts";
import type { Tensor } from "../tensor.ts";
import { zeros } from "../tensor.ts";
import { treeMap } from "../tree.ts";
import { checkStateDtype, fround, storeState, valuesOf } from "./_ops.ts";
import {
  checkLeavesMatch,
  checkNumber,
  checkState,
  freezeState,
  type GradientTransformation,
  type OptState,
  type Params,
  tensorLeaves,
  type Updates,
} from "./transformation.ts";

/** Options of {@linkcode multiSteps}. */
export interface MultiStepsOptions {
  /** Micro-batches per real step (>= 1). */
  readonly everyK: number;
  /** Dtype of the accumulator (default "float32"; "bfloat16" loses precision and is not advised). */
  readonly accumulatorDtype?: DtypeName;
}

/** State of {@linkcode multiSteps}. */
export interface MultiStepsState extends OptState {
  readonly kind: "multiSteps";
  /** Micro-batches accumulated since the last real step (0 .. everyK - 1). */
  readonly miniStep: number;
  /** Real steps taken. */
  readonly gradientStep: number;
  /** Sum of the micro-batch gradients so far. */
  readonly accumulator: Updates;
  readonly inner: OptState;
}

/**
 * Accumulates gradients over `everyK` calls and runs `inner` once on their mean: the result equals
 * one step on a batch `everyK` times larger (whose gradient is the mean of the micro-batch means).
 * Between real steps the updates are zeros and the inner state is untouched. The sum is kept in
 * float32 by default; the mean is `float32(sum / everyK)`.
 *
 * @param inner The transformation to run every k-th call.
 * @param options everyK, accumulatorDtype.
 * @returns A transformation whose state holds the accumulator.
 * @example
 * ```ts
 * import { tensor } from "../tensor.ts";
 * import { multiSteps } from "./multi_steps.ts";
 * import { sgd } from "./sgd.ts";
 * const tx = multiSteps(sgd({ lr: 1 }), { everyK: 2 });
 * using a = tensor([1]);
 * using b = tensor([3]);
 * const [u1, s1] = tx.update([a], tx.init([a]));
 * const [u2] = tx.update([b], s1);
 * if ((u1 as any)[0].toArray()[0] !== 0 || (u2 as any)[0].toArray()[0] !== -2) throw new Error("not the mean");
 * ```
 */
export function multiSteps(
  inner: GradientTransformation,
  options: MultiStepsOptions,
): GradientTransformation<MultiStepsState> {
  const everyK = checkNumber(options?.everyK, "everyK", { min: 1 });
  if (!Number.isInteger(everyK)) throw new RangeError(`everyK must be an integer, got ${everyK}`);
  const dtype = checkStateDtype(options.accumulatorDtype ?? "float32", "accumulatorDtype");
  return {
    init(params: Params): MultiStepsState {
      tensorLeaves(params, "multiSteps params");
      return freezeState({
        kind: "multiSteps",
        miniStep: 0,
        gradientStep: 0,
        accumulator: treeMap((p: Tensor) => zeros(p.shape, { dtype }), params),
        inner: inner.init(params),
      });
    },
    update(updates: Updates, state: MultiStepsState, params?: Params) {
      checkState(state, "multiSteps");
      const acc = tensorLeaves(state.accumulator, "multiSteps state.accumulator");
      const grads = tensorLeaves(updates, "multiSteps updates");
      checkLeavesMatch(
        grads,
        acc,
        "multiSteps: the updates do not match the state",
        "pass the state init() made for these params",
      );
      grads.forEach((g, i) => {
        const sum = valuesOf(acc[i]!).slice();
        const values = valuesOf(g);
        for (let k = 0; k < sum.length; k++) sum[k] = sum[k]! + values[k]!;
        storeState(acc[i]!, sum);
      });
      if (state.miniStep + 1 < everyK) {
        const out = treeMap((u: Tensor) => zeros(u.shape), updates);
        return [out, freezeState({ ...state, miniStep: state.miniStep + 1 })] as const;
      }
      let leaf = 0;
      const mean = treeMap((u: Tensor) => {
        const a = acc[leaf++]!;
        const result = zeros(u.shape);
        const r = result.data as Float32Array;
        const sum = valuesOf(a);
        for (let k = 0; k < r.length; k++) r[k] = fround(sum[k]! / everyK);
        a.data.fill(0);
        return result;
      }, updates);
      try {
        const [out, innerState] = inner.update(mean, state.inner, params);
        return [
          out,
          freezeState({ ...state, miniStep: 0, gradientStep: state.gradientStep + 1, inner: innerState }),
        ] as const;
      } finally {
        for (const t of tensorLeaves(mean, "mean")) t.dispose();
      }
    },
  };
}
