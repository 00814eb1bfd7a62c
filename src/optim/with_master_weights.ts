/**
 * withMasterWeights: float32 master copies of low-precision parameters under any optimizer.
 *
 * @module
 */

import { castInto } from "../cast.ts";
import { allocateStorage } from "../dtype.ts";
import type { Tensor } from "../tensor.ts";
import { zeros } from "../tensor.ts";
import { rowSeed, valuesOf } from "./_ops.ts";
import { scatter } from "./_partition.ts";
import {
  checkLeavesMatch,
  checkState,
  freezeState,
  type GradientTransformation,
  type OptState,
  type Params,
  requireParams,
  tensorLeaves,
  type Updates,
} from "./transformation.ts";

/** Options of {@linkcode withMasterWeights}. */
export interface MasterWeightsOptions {
  /** The master copies' dtype: "float32" (the only one supported). */
  readonly masterDtype?: "float32";
  /** How the new master values are rounded into float16 / bfloat16 params (default "nearest"). */
  readonly rounding?: "nearest" | "stochastic";
  /** Seed of stochastic rounding; with the step count and leaf index it seeds each write. Default 0. */
  readonly seed?: number;
}

/** State of {@linkcode withMasterWeights}. */
export interface MasterWeightsState extends OptState {
  readonly kind: "withMasterWeights";
  /** Steps taken (mixes into the stochastic-rounding seeds). */
  readonly count: number;
  /** Per leaf (treeLeaves order): the float32 master of a low-precision param, or null for float32 params. */
  readonly master: readonly (Tensor | null)[];
  readonly inner: OptState;
}

/**
 * Keeps a float32 master copy of every float16 / bfloat16 parameter (float32 parameters are their
 * own master) and runs `inner` on the masters, as mixed-precision training needs (Micikevicius et
 * al., 2018): small updates accumulate in float32 instead of vanishing in the low-precision copy.
 * `update` adds inner's updates to the masters (in the state) and returns, for low-precision
 * leaves, `rounded(new master) - p` in float32, so that `applyUpdates(params, updates)` writes
 * exactly the rounded master into each parameter (the difference of two bfloat16 / float16 values
 * is exact in float32 for any realistic step). Rounding is nearest-even or stochastic (seeded by
 * seed, step and leaf, so every step differs and a run is reproducible). Optimizer-state dtype is
 * inner's option (e.g. `adamw({ stateDtype: "bfloat16" })`).
 *
 * @param inner The optimizer to run on the float32 masters.
 * @param options masterDtype, rounding, seed.
 * @returns A transformation whose state holds the masters; it needs the params in update.
 * @example
 * ```ts
 * import { tensor } from "../tensor.ts";
 * import { applyUpdates } from "./apply_updates.ts";
 * import { sgd } from "./sgd.ts";
 * import { withMasterWeights } from "./with_master_weights.ts";
 * const opt = withMasterWeights(sgd({ lr: 1e-3 }));
 * using p = tensor([1], { dtype: "bf16" });
 * using g = tensor([1]);
 * let state = opt.init([p]);
 * for (let i = 0; i < 10; i++) {
 *   const [u, next] = opt.update([g], state, [p]);
 *   applyUpdates([p], u);
 *   state = next;
 * }
 * if (Math.abs(state.master[0]!.toArray()[0] - 0.99) > 1e-6 || p.toArray()[0] !== 0.98828125) throw new Error("master");
 * ```
 */
export function withMasterWeights(
  inner: GradientTransformation,
  options: MasterWeightsOptions = {},
): GradientTransformation<MasterWeightsState> {
  if ((options.masterDtype ?? "float32") !== "float32") {
    throw new RangeError(`masterDtype must be "float32", got ${JSON.stringify(options.masterDtype)}`);
  }
  const rounding = options.rounding ?? "nearest";
  if (rounding !== "nearest" && rounding !== "stochastic") {
    throw new RangeError(`rounding must be "nearest" or "stochastic", got ${JSON.stringify(rounding)}`);
  }
  const seed = options.seed ?? 0;
  if (!Number.isInteger(seed) || seed < 0 || seed >= 2 ** 32) {
    throw new RangeError(`seed must be an integer in [0, 2^32), got ${seed}`);
  }
  const working = (params: Params, master: readonly (Tensor | null)[]): Params => {
    const leaves = tensorLeaves(params, "withMasterWeights params");
    return scatter(
      params,
      leaves.map((p, i) => master[i] ?? p),
    );
  };
  return {
    init(params: Params): MasterWeightsState {
      const leaves = tensorLeaves(params, "withMasterWeights params");
      const master = leaves.map((p) => (p.dtype === "float32" ? null : p.to("float32")));
      return freezeState({
        kind: "withMasterWeights",
        count: 0,
        master: Object.freeze(master),
        inner: inner.init(working(params, master)),
      });
    },
    update(updates: Updates, state: MasterWeightsState, params?: Params) {
      checkState(state, "withMasterWeights");
      const leaves = requireParams(params, "withMasterWeights");
      if (leaves.length !== state.master.length) {
        throw new TypeError(
          `withMasterWeights: ${leaves.length} params against ${state.master.length} masters: pass the params init() was given`,
        );
      }
      const [innerOut, innerState] = inner.update(updates, state.inner, working(params!, state.master));
      const out = tensorLeaves(innerOut, "withMasterWeights inner updates");
      checkLeavesMatch(
        out,
        leaves,
        "withMasterWeights: inner's updates do not match the params",
        "inner must return one update per parameter",
      );
      const results = out.map((u, i) => {
        const master = state.master[i];
        if (master === null || master === undefined) return u;
        const param = leaves[i]!;
        const m = master.data as Float32Array;
        const uv = valuesOf(u);
        for (let k = 0; k < m.length; k++) m[k] = m[k]! + uv[k]!;
        u.dispose();
        const bits = castInto(m, allocateStorage(param.dtype, m.length), "float32", param.dtype, {
          rounding,
          seed: rowSeed(seed, state.count, i),
        });
        const rounded = castInto(bits, new Float32Array(m.length), param.dtype, "float32");
        const old = param.toArray();
        const delta = zeros(param.shape);
        const d = delta.data as Float32Array;
        for (let k = 0; k < d.length; k++) d[k] = rounded[k]! - old[k]!;
        return delta;
      });
      return [scatter(updates, results), freezeState({ ...state, count: state.count + 1, inner: innerState })] as const;
    },
  };
}
