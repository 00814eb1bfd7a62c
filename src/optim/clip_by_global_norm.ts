/**
 * clipByGlobalNorm: rescales all updates together when their global L2 norm exceeds a maximum.
 *
 * @module
 */

import type { Tensor } from "../tensor.ts";
import { zeros } from "../tensor.ts";
import { treeMap } from "../tree.ts";
import { fround, valuesOf } from "./_ops.ts";
import { sumSquares } from "./_native.ts";
import {
  checkNumber,
  checkState,
  freezeState,
  type GradientTransformation,
  type OptState,
  type Params,
  tensorLeaves,
  type Updates,
} from "./transformation.ts";

/** State of {@linkcode clipByGlobalNorm}: the last global norm seen (for logging). */
export interface ClipByGlobalNormState extends OptState {
  readonly kind: "clipByGlobalNorm";
  /** The global norm of the last updates, before clipping (NaN before the first). */
  readonly lastNorm: number;
}

/**
 * The clip factor of torch.nn.utils.clip_grad_norm_, in float32:
 * `min(1, maxNorm / (norm + 1e-6))` with `norm = float32(sqrt(sumOfSquares))`.
 * @internal
 */
export function clipCoefficient(sumOfSquares: number, maxNorm: number): { norm: number; coefficient: number } {
  const norm = fround(Math.sqrt(sumOfSquares));
  const coefficient = fround(fround(maxNorm) / fround(norm + fround(1e-6)));
  return { norm, coefficient: coefficient < 1 || Number.isNaN(coefficient) ? coefficient : 1 };
}

/**
 * Scales every update by `min(1, maxNorm / (norm + 1e-6))`, where norm is the L2 norm of all
 * updates together: PyTorch's clip_grad_norm_ (optax's clip_by_global_norm has no 1e-6). The sum
 * of squares is one native multi-tensor call (float64 accumulation). A non-finite norm gives a
 * non-finite factor, as in PyTorch: wrap in {@linkcode applyIfFinite} or use `withLossScale`.
 *
 * @param maxNorm The largest global norm let through (> 0).
 * @returns A transformation; the norm before clipping is in `state.lastNorm`.
 * @example
 * ```ts
 * import { tensor } from "../tensor.ts";
 * import { clipByGlobalNorm } from "./clip_by_global_norm.ts";
 * const tx = clipByGlobalNorm(1);
 * using g = tensor([3, 4]);
 * const [u, s] = tx.update([g], tx.init([g]));
 * const v = (u as any)[0].toArray();
 * if (s.lastNorm !== 5 || Math.abs(v[0] - 0.6) > 1e-6) throw new Error("not clipped");
 * ```
 */
export function clipByGlobalNorm(maxNorm: number): GradientTransformation<ClipByGlobalNormState> {
  checkNumber(maxNorm, "maxNorm", { min: 0, minInclusive: false });
  return {
    init(_params: Params): ClipByGlobalNormState {
      return freezeState({ kind: "clipByGlobalNorm", lastNorm: Number.NaN });
    },
    update(updates: Updates, state: ClipByGlobalNormState) {
      checkState(state, "clipByGlobalNorm");
      const leaves = tensorLeaves(updates, "clipByGlobalNorm updates");
      const { norm, coefficient } = clipCoefficient(sumSquares(leaves).sum, maxNorm);
      const out = treeMap((u: Tensor) => {
        const result = zeros(u.shape);
        const r = result.data as Float32Array;
        const values = valuesOf(u);
        for (let k = 0; k < r.length; k++) r[k] = values[k]! * coefficient;
        return result;
      }, updates);
      return [out, freezeState({ kind: "clipByGlobalNorm", lastNorm: norm })] as const;
    },
  };
}
