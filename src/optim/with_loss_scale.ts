/**
 * withLossScale: loss scaling as a gradient transformation.
 *
 * @module
 */

import { type LossScale, noLossScale, type StepResult } from "../loss_scale.ts";
import { validatePrecisionConfig } from "../precision_config.ts";
import type { Tensor } from "../tensor.ts";
import { zeros } from "../tensor.ts";
import { treeMap } from "../tree.ts";
import {
  checkState,
  freezeState,
  type GradientTransformation,
  type OptState,
  type Params,
  tensorLeaves,
  type Updates,
} from "./transformation.ts";

/** State of {@linkcode withLossScale}. */
export interface WithLossScaleState extends OptState {
  readonly kind: "withLossScale";
  /** The loss scale for the next step: multiply the loss by `lossScale.scale(loss)` / `.value`. */
  readonly lossScale: LossScale;
  /** The last step's result (null before the first). */
  readonly lastStep: StepResult | null;
  readonly inner: OptState;
}

let bf16NoticeShown = false;

/** Whether inner is a multiSteps that only accumulated this call (its updates are zeros). */
function isAccumulating(innerState: OptState): boolean {
  return innerState.kind === "multiSteps" && (innerState as OptState & { miniStep: number }).miniStep !== 0;
}

/**
 * Wraps an optimizer with loss scaling (jmp's pattern as one transformation): each update unscales
 * the incoming gradients IN PLACE (`lossScale.unscale`, one multi-tensor native call that also
 * checks for inf/NaN), runs `inner` only when they are finite (otherwise returns zero updates and
 * leaves inner's state untouched), adjusts the scale, and records `{ applied, reason, scaleBefore,
 * scaleAfter }` in `state.lastStep` (reason "accumulating", applied false, while an inner
 * `multiSteps` only accumulates, so schedules and logs can count real steps). Scale the loss with `state.lossScale` before computing the
 * gradients. With `noLossScale()` it is a pass-through. Given bfloat16 gradients under a dynamic
 * scale it follows validatePrecisionConfig's notice: bfloat16 has float32's exponent range, so
 * scaling is switched off (this step's gradients are still unscaled by the current value, the
 * state's scale becomes "none", reason "bf16_no_scaling") and a notice is printed once.
 *
 * @param lossScale The initial loss scale (noLossScale, staticLossScale or dynamicLossScale).
 * @param inner The optimizer.
 * @returns A transformation whose state holds the current scale and the last step's result.
 * @example
 * ```ts
 * import { staticLossScale } from "../loss_scale.ts";
 * import { tensor } from "../tensor.ts";
 * import { sgd } from "./sgd.ts";
 * import { withLossScale } from "./with_loss_scale.ts";
 * const opt = withLossScale(staticLossScale(4), sgd({ lr: 1 }));
 * using g = tensor([8]);
 * const [u, s] = opt.update([g], opt.init([g]));
 * if ((u as any)[0].toArray()[0] !== -2 || !s.lastStep?.applied) throw new Error("unscaled step");
 * ```
 */
export function withLossScale(
  lossScale: LossScale,
  inner: GradientTransformation,
): GradientTransformation<WithLossScaleState> {
  if (typeof lossScale?.unscale !== "function" || typeof lossScale.adjust !== "function") {
    throw new TypeError(
      "withLossScale() needs a LossScale (noLossScale(), staticLossScale(s) or dynamicLossScale()) first",
    );
  }
  return {
    init(params: Params): WithLossScaleState {
      return freezeState({ kind: "withLossScale", lossScale, lastStep: null, inner: inner.init(params) });
    },
    update(updates: Updates, state: WithLossScaleState, params?: Params) {
      checkState(state, "withLossScale");
      const scale = state.lossScale;
      const before = scale.value;
      if (scale.kind === "none") {
        const [out, innerState] = inner.update(updates, state.inner, params);
        const accumulating = isAccumulating(innerState);
        const reason = accumulating ? "accumulating" : "applied";
        const lastStep = { applied: !accumulating, reason, scaleBefore: before, scaleAfter: before };
        return [out, freezeState({ ...state, lastStep, inner: innerState })] as const;
      }
      const leaves = tensorLeaves(updates, "withLossScale updates");
      const bf16 = scale.kind === "dynamic" && leaves.some((g) => g.dtype === "bfloat16");
      const { finite } = scale.unscale(updates);
      const next = bf16 ? noLossScale() : scale.adjust(finite);
      if (bf16 && !bf16NoticeShown) {
        bf16NoticeShown = true;
        const { notices } = validatePrecisionConfig({ compute: "bfloat16", lossScale: "dynamic" });
        console.warn(`mixprec withLossScale: ${notices.join("; ")} (pass noLossScale() to silence this)`);
      }
      if (!finite) {
        const out = treeMap((u: Tensor) => zeros(u.shape), updates);
        const lastStep = { applied: false, reason: "non_finite", scaleBefore: before, scaleAfter: next.value };
        return [out, freezeState({ ...state, lossScale: next, lastStep })] as const;
      }
      const [out, innerState] = inner.update(updates, state.inner, params);
      const accumulating = isAccumulating(innerState);
      const reason = accumulating ? "accumulating" : bf16 ? "bf16_no_scaling" : "applied";
      const lastStep: StepResult = { applied: !accumulating, reason, scaleBefore: before, scaleAfter: next.value };
      return [out, freezeState({ ...state, lossScale: next, lastStep, inner: innerState })] as const;
    },
  };
}
