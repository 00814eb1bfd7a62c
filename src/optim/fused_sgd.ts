/**
 * fusedSgd: a whole SGD step (unscale, clip, weight decay, momentum, master, write) in one pass.
 *
 * @module
 */

import { noteOptimizerStep } from "../_leak_check.ts";
import type { DtypeName } from "../dtype.ts";
import type { Tensor } from "../tensor.ts";
import { zeros } from "../tensor.ts";
import type { Policy } from "../policy.ts";
import {
  checkFusedStateDict,
  checkLoadedParams,
  checkPolicyParams,
  FUSED_STATE_VERSION,
  type FusedStateDict,
  policyParamDtype,
} from "./_fused_state.ts";
import { checkStateDtype, fround, rowSeed } from "./_ops.ts";
import { fusedSgdStep } from "./_native.ts";
import {
  checkRounding,
  checkSeed,
  type FusedOptimizer,
  type FusedStepOptions,
  type FusedStepResult,
  preCheck,
  skipped,
  withScalerMethods,
} from "./fused_adamw.ts";
import {
  checkHyperparameters,
  checkLeavesMatch,
  checkNumber,
  type Params,
  resolveHyper,
  type Schedule,
  tensorLeaves,
  type Updates,
} from "./transformation.ts";

/** Options of {@linkcode fusedSgd} (PyTorch's SGD names and defaults, plus precision). */
export interface FusedSgdOptions {
  readonly lr?: number | Schedule;
  readonly momentum?: number;
  readonly dampening?: number;
  readonly weightDecay?: number;
  readonly nesterov?: boolean;
  readonly maxGradNorm?: number | null;
  readonly masterWeights?: boolean;
  readonly rounding?: "nearest" | "stochastic";
  readonly seed?: number;
  readonly stateDtype?: DtypeName;
  /** The precision policy (or its string): every param must be stored in its `param` dtype. */
  readonly policy?: Policy | string;
}

/** The fused SGD state (read-only view). */
export interface FusedSgdState {
  readonly kind: "fusedSgd";
  readonly count: number;
  readonly master: readonly (Tensor | null)[];
  /** Momentum buffers, or null without momentum. */
  readonly buffer: readonly Tensor[] | null;
  readonly lastStep: FusedStepResult | null;
}

/**
 * SGD (torch.optim.SGD's algorithm) fused like {@linkcode fusedAdamW}: an optional read pass for
 * the norm / found-inf, then one kernel per step (bf16 grad 2 + master 4+4 + buffer 4+4 + bf16
 * param 2 = 20 bytes/param). Equals `withMasterWeights(chain(clipByGlobalNorm, sgd(...)))` on the
 * unscaled float32 gradients within 1 ulp.
 *
 * @param options lr, momentum, dampening, weightDecay, nesterov, maxGradNorm, masterWeights, rounding, seed, stateDtype.
 * @returns A stateful optimizer with `step(params, grads, { invScale, foundInf })`.
 * @example
 * ```ts
 * import { tensor } from "../tensor.ts";
 * import { fusedSgd } from "./fused_sgd.ts";
 * const opt = fusedSgd({ lr: 0.5 });
 * using p = tensor([1]);
 * using g = tensor([1]);
 * opt.step([p], [g]);
 * if (p.toArray()[0] !== 0.5) throw new Error("fused sgd");
 * opt.dispose();
 * ```
 */
export function fusedSgd(options: FusedSgdOptions = {}): FusedOptimizer<FusedSgdState> {
  checkHyperparameters("fusedSgd", options);
  const lr = options.lr ?? 1e-3;
  if (typeof lr !== "function") checkNumber(lr, "lr");
  const momentum = checkNumber(options.momentum ?? 0, "momentum", { min: 0 });
  const dampening = checkNumber(options.dampening ?? 0, "dampening");
  const weightDecay = checkNumber(options.weightDecay ?? 0, "weightDecay", { min: 0 });
  const nesterov = options.nesterov ?? false;
  if (nesterov && (momentum === 0 || dampening !== 0)) {
    throw new RangeError(
      "Nesterov momentum requires a momentum > 0 and dampening 0: fix them, or set nesterov to false",
    );
  }
  const maxGradNorm = options.maxGradNorm ?? null;
  if (maxGradNorm !== null) checkNumber(maxGradNorm, "maxGradNorm", { min: 0, minInclusive: false });
  const masterWeights = options.masterWeights ?? true;
  const stochastic = checkRounding(options.rounding);
  const seed = checkSeed(options.seed ?? 0);
  const stateDtype = checkStateDtype(options.stateDtype ?? "float32", "stateDtype");
  const policy = policyParamDtype(options.policy);
  const dictOptions = Object.freeze({
    momentum,
    dampening,
    nesterov,
    masterWeights,
    rounding: stochastic ? "stochastic" : "nearest",
    stateDtype,
  });
  let state: {
    count: number;
    loaded: (readonly number[] | null)[] | null;
    master: (Tensor | null)[];
    buffer: Tensor[] | null;
    lastStep: FusedStepResult | null;
  } | null = null;
  return withScalerMethods<FusedSgdState>({
    stepSupportsAmpScaling: true,
    get state(): FusedSgdState | null {
      if (state === null) return null;
      return Object.freeze({
        kind: "fusedSgd" as const,
        count: state.count,
        master: Object.freeze([...state.master]),
        buffer: state.buffer === null ? null : Object.freeze([...state.buffer]),
        lastStep: state.lastStep,
      });
    },
    step(params: Params, grads: Updates, stepOptions: FusedStepOptions = {}): FusedStepResult {
      noteOptimizerStep();
      const p = tensorLeaves(params, "fusedSgd params");
      const g = tensorLeaves(grads, "fusedSgd grads");
      checkPolicyParams("fusedSgd", p, policy);
      checkLeavesMatch(p, g, "fusedSgd: grads do not match params", "pass one gradient per parameter");
      state ??= {
        count: 0,
        loaded: null,
        master: p.map((x) => (masterWeights && x.dtype !== "float32" ? x.to("float32") : null)),
        buffer: momentum === 0 ? null : p.map((x) => zeros(x.shape, { dtype: stateDtype, device: x.device })),
        lastStep: null,
      };
      const s = state;
      if (s.master.length !== p.length) {
        throw new TypeError(
          `fusedSgd: ${p.length} params against ${s.master.length} at the first step: use one optimizer per parameter set`,
        );
      }
      if (s.loaded !== null) {
        checkLoadedParams("fusedSgd", p, s.master, s.loaded, masterWeights);
        s.loaded = null;
      }
      const pre = preCheck(g, stepOptions, maxGradNorm);
      if (pre.skip) return (s.lastStep = skipped(pre.gradNorm));
      const lrNow = resolveHyper(lr, s.count, "lr");
      const applied = fusedSgdStep(
        p.map((param, i) => ({
          grad: g[i]!,
          param,
          master: s.master[i]!,
          buffer: s.buffer === null ? null : s.buffer[i]!,
          seed: rowSeed(seed, s.count, i),
        })),
        {
          invScale: pre.invScale,
          clip: pre.clip,
          weightDecay: fround(weightDecay),
          momentum: fround(momentum),
          oneMinusDampening: fround(1 - dampening),
          negLr: fround(-lrNow),
          nesterov,
          stochastic,
          firstStep: s.count === 0,
          hasMomentum: momentum !== 0,
        },
        pre.flag,
      );
      if (!applied) return (s.lastStep = skipped(pre.gradNorm));
      s.count += 1;
      return (s.lastStep = Object.freeze({ applied: true, reason: "applied" as const, gradNorm: pre.gradNorm }));
    },
    stateDict(): FusedStateDict {
      const s = state;
      return {
        kind: "fusedSgd",
        version: FUSED_STATE_VERSION,
        step: s?.count ?? 0,
        seed,
        options: dictOptions,
        state:
          s === null
            ? []
            : s.master.map((master, i) => ({
                master,
                momentum_buffer: s.buffer === null ? null : s.buffer[i]!,
              })),
      };
    },
    loadStateDict(dict: FusedStateDict): void {
      const { step, entries } = checkFusedStateDict(dict, "fusedSgd", seed, dictOptions, [
        { name: "master", dtype: "float32", absent: masterWeights ? "either" : true },
        { name: "momentum_buffer", dtype: stateDtype, absent: momentum === 0 },
      ]);
      const next =
        entries.length === 0
          ? null
          : {
              count: step,
              loaded: entries.map((e) => (e[0] ?? e[1])?.shape ?? null),
              master: entries.map((e) => (e[0] === null ? null : e[0]!.clone())),
              buffer: momentum === 0 ? null : entries.map((e) => e[1]!.clone()),
              lastStep: null,
            };
      if (state !== null) for (const t of [...state.master, ...(state.buffer ?? [])]) t?.dispose();
      state = next;
    },
    dispose(): void {
      if (state === null) return;
      for (const t of [...state.master, ...(state.buffer ?? [])]) t?.dispose();
      state = null;
    },
  });
}
