/**
 * scaleByAdam: Adam's moment estimates and the bias-corrected update direction.
 *
 * @module
 */

import { zeros } from "../tensor.ts";
import type { DtypeName } from "../dtype.ts";
import type { Tensor } from "../tensor.ts";
import { checkStateDtype, fmaf, fround, storeState, valuesOf } from "./_ops.ts";
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
import { treeMap } from "../tree.ts";

/** Options of {@linkcode scaleByAdam}. */
export interface ScaleByAdamOptions {
  /** Decay of the first moment (default 0.9). */
  readonly b1?: number;
  /** Decay of the second moment (default 0.999). */
  readonly b2?: number;
  /** Added to the bias-corrected root of the second moment (default 1e-8). */
  readonly eps?: number;
  /** Use the running maximum of the second moment (AMSGrad), as PyTorch does: max, then correct. */
  readonly amsgrad?: boolean;
  /** Dtype of m and v: "float32" (default) or "bfloat16" (nearest even, half the memory). */
  readonly stateDtype?: DtypeName;
}

/** State of {@linkcode scaleByAdam}. */
export interface ScaleByAdamState extends OptState {
  readonly kind: "scaleByAdam";
  /** Updates done so far (t - 1 during the next update). */
  readonly count: number;
  /** First moments, one tensor per parameter (the params' structure). */
  readonly mu: Updates;
  /** Second moments. */
  readonly nu: Updates;
  /** Running maxima of the second moments (amsgrad), else null. */
  readonly nuMax: Updates | null;
}

/**
 * The float32 constants of Adam step `t` (1-based), shared by the composed transform and the fused
 * kernel so both round identically. The bias corrections are folded into two scalars computed in
 * float64 and rounded once: `stepScale = sqrt(1 - b2^t) / (1 - b1^t)` and
 * `epsHat = eps * sqrt(1 - b2^t)`, so that `(stepScale * m) / (sqrt(v) + epsHat)` equals PyTorch's
 * `(m / (1 - b1^t)) / (sqrt(v) / sqrt(1 - b2^t) + eps)` in real arithmetic (eps stays after bias
 * correction) with one division and one square root per element.
 * @internal
 */
export function adamConstants(b1: number, b2: number, eps: number, t: number) {
  const biasCorrection2Sqrt = Math.sqrt(1 - b2 ** t);
  return {
    oneMinusBeta1: fround(1 - b1),
    beta2: fround(b2),
    oneMinusBeta2: fround(1 - b2),
    stepScale: fround(biasCorrection2Sqrt / (1 - b1 ** t)),
    epsHat: fround(eps * biasCorrection2Sqrt),
  };
}

/**
 * Rescales updates by Adam's rule (PyTorch's moments, in float32):
 * `m = fma(1 - b1, g - m, m)` (torch's vectorised lerp; `fma(-b1, g - m, g)` when b1 <= 0.5),
 * `v = fma((1 - b2) g, g, b2 v)` (addcmul contracted), exactly torch 2.13's CPU bits, and the output
 * `(m / (1 - b1^t)) / (sqrt(v) / sqrt(1 - b2^t) + eps)` (eps after bias correction), computed as
 * `(stepScale * m) / (sqrt(v) + epsHat)` with the bias corrections folded into two float64
 * scalars (see `adamConstants`): equal in real arithmetic, as many roundings as PyTorch's form,
 * one division. With `amsgrad` the running maximum of v is used. Combine with
 * {@linkcode scaleByLearningRate}.
 *
 * @param options b1, b2, eps, amsgrad, stateDtype.
 * @returns A transformation whose state holds m, v (and max v) per parameter.
 * @example
 * ```ts
 * import { tensor } from "../tensor.ts";
 * import { scaleByAdam } from "./scale_by_adam.ts";
 * const tx = scaleByAdam();
 * using g = tensor([2, -3]);
 * const [u] = tx.update([g], tx.init([g]));
 * const first = (u as any)[0].toArray();
 * if (Math.abs(first[0] - 1) > 1e-6 || Math.abs(first[1] + 1) > 1e-6) throw new Error("first step is sign(g)");
 * ```
 */
export function scaleByAdam(options: ScaleByAdamOptions = {}): GradientTransformation<ScaleByAdamState> {
  const b1 = checkNumber(options.b1 ?? 0.9, "b1", { min: 0 });
  const b2 = checkNumber(options.b2 ?? 0.999, "b2", { min: 0 });
  const eps = checkNumber(options.eps ?? 1e-8, "eps", { min: 0 });
  if (b1 >= 1 || b2 >= 1) throw new RangeError(`Betas must be in [0, 1), got b1 = ${b1}, b2 = ${b2}`);
  const amsgrad = options.amsgrad ?? false;
  const stateDtype = checkStateDtype(options.stateDtype ?? "float32", "stateDtype");
  return {
    init(params: Params): ScaleByAdamState {
      tensorLeaves(params, "scaleByAdam params");
      const zerosTree = () => treeMap((p: Tensor) => zeros(p.shape, { dtype: stateDtype }), params);
      return freezeState({
        kind: "scaleByAdam",
        count: 0,
        mu: zerosTree(),
        nu: zerosTree(),
        nuMax: amsgrad ? zerosTree() : null,
      });
    },
    update(updates: Updates, state: ScaleByAdamState, _params?: Params): readonly [Updates, ScaleByAdamState] {
      checkState(state, "scaleByAdam");
      const grads = tensorLeaves(updates, "scaleByAdam updates");
      const mu = tensorLeaves(state.mu, "scaleByAdam state.mu");
      const nu = tensorLeaves(state.nu, "scaleByAdam state.nu");
      const nuMax = state.nuMax === null ? null : tensorLeaves(state.nuMax, "scaleByAdam state.nuMax");
      if ((nuMax !== null) !== amsgrad) {
        throw new TypeError(
          "scaleByAdam.update() was given a state made with another amsgrad setting: use this transformation's init()",
        );
      }
      checkLeavesMatch(
        grads,
        mu,
        "scaleByAdam: the updates do not match the state",
        "pass the state init() made for these params",
      );
      const t = state.count + 1;
      const c = adamConstants(b1, b2, eps, t);
      const smallWeight = c.oneMinusBeta1 < 0.5;
      const weightMinusOne = fround(c.oneMinusBeta1 - 1);
      let leaf = 0;
      const out = treeMap((g: Tensor) => {
        const i = leaf++;
        const result = zeros(g.shape);
        const r = result.data as Float32Array;
        const gv = valuesOf(g);
        const m = valuesOf(mu[i]!).slice();
        const v = valuesOf(nu[i]!).slice();
        for (let k = 0; k < gv.length; k++) {
          const gk = gv[k]!;
          // torch 2.13's CPU rounding (lerp and addcmul contracted to fma), as the fused kernels.
          const diff = fround(gk - m[k]!);
          m[k] = smallWeight ? fmaf(c.oneMinusBeta1, diff, m[k]!) : fmaf(weightMinusOne, diff, gk);
          v[k] = fmaf(fround(c.oneMinusBeta2 * gk), gk, fround(c.beta2 * v[k]!));
        }
        const ms = storeState(mu[i]!, m);
        let vs = storeState(nu[i]!, v);
        if (nuMax !== null) {
          const vmax = valuesOf(nuMax[i]!).slice();
          for (let k = 0; k < vmax.length; k++) vmax[k] = Math.max(vmax[k]!, vs[k]!);
          vs = storeState(nuMax[i]!, vmax);
        }
        for (let k = 0; k < r.length; k++) {
          r[k] = fround(c.stepScale * ms[k]!) / fround(fround(Math.sqrt(vs[k]!)) + c.epsHat);
        }
        return result;
      }, updates);
      return [out, freezeState({ ...state, count: t })];
    },
  };
}
