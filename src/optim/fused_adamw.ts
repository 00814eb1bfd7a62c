/**
 * fusedAdamW: a whole AdamW step (unscale, clip, moments, float32 master, low-precision write) in
 * one native multi-tensor pass.
 *
 * @module
 */

import { type DeviceAmp, DeviceAdamRecord, snapshotWord } from "../backend/cuda_amp.ts";
import { noteOptimizerStep } from "../_leak_check.ts";
import type { DtypeName } from "../dtype.ts";
import type { ScalerOptimizer } from "../grad_scaler.ts";
import { type LossScale, noLossScale, type StepResult } from "../loss_scale.ts";
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
import { checkStateDtype, rowSeed } from "./_ops.ts";
import { type AdamRowTensors, fusedAdamWStep, sumSquares } from "./_native.ts";
import { clipCoefficient } from "./clip_by_global_norm.ts";
import { decayFactor } from "./decoupled_weight_decay.ts";
import { adamConstants } from "./scale_by_adam.ts";
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
import { fround } from "./_ops.ts";

/** Options of {@linkcode fusedAdamW} (PyTorch's AdamW names and defaults, plus precision). */
export interface FusedAdamWOptions {
  readonly lr?: number | Schedule;
  readonly betas?: readonly [number, number];
  readonly eps?: number;
  readonly weightDecay?: number;
  readonly amsgrad?: boolean;
  /** Clip the global gradient norm (after unscaling) to this, PyTorch's clip_grad_norm_; null: off. */
  readonly maxGradNorm?: number | null;
  /** Keep float32 masters of float16 / bfloat16 params (default true); false updates them in place. */
  readonly masterWeights?: boolean;
  /** Rounding of the low-precision parameter write (default "nearest"). */
  readonly rounding?: "nearest" | "stochastic";
  /** Seed of stochastic rounding (mixed with the step count and the leaf index). */
  readonly seed?: number;
  /** Dtype of m and v (default "float32"; "bfloat16" allowed). */
  readonly stateDtype?: DtypeName;
  /** The precision policy (or its string): every param must be stored in its `param` dtype. */
  readonly policy?: Policy | string;
}

/** Options of one fused step: the AMP inputs, so no separate unscale pass is needed. */
export interface FusedStepOptions {
  /** The inverse loss scale applied to the gradients inside the kernel (default 1). */
  readonly invScale?: number;
  /**
   * Whether the gradients hold inf/NaN, when the caller already knows (GradScaler). true skips the
   * step without touching memory; a Uint32Array flag is read by the kernel (non-zero skips), as a
   * device-side flag is on the GPU; undefined makes the step check (one read-only pass).
   */
  readonly foundInf?: boolean | Uint32Array;
  /**
   * The device-resident loss scale and found-inf flag of a GradScaler on cuda tensors (the scaler
   * passes it; `invScale` and `foundInf` are then ignored). The step reads the scale's inverse and
   * the flag on the device, clips on the device, skips itself on overflow and counts applied steps
   * on the device: it never waits. Its result's `applied` waits for the device when read, and
   * `gradNorm` is null.
   * @internal
   */
  readonly device?: DeviceAmp;
}

/** What a fused step did. */
export interface FusedStepResult {
  readonly applied: boolean;
  readonly reason: "applied" | "non_finite";
  /** The global gradient norm after unscaling, when it was computed (clipping on), else null. */
  readonly gradNorm: number | null;
}

/** The fused optimizer's state (read-only view; tensors are owned by the optimizer). */
export interface FusedAdamWState {
  readonly kind: "fusedAdamW";
  /** Applied steps. */
  readonly count: number;
  readonly master: readonly (Tensor | null)[];
  readonly mu: readonly Tensor[];
  readonly nu: readonly Tensor[];
  readonly nuMax: readonly Tensor[] | null;
  readonly lastStep: FusedStepResult | null;
}

/** A stateful fused optimizer (PyTorch style): it owns its state and steps params in place. */
export interface FusedOptimizer<S> {
  /** Steps `params` in place from `grads` (read only; any float dtype). */
  step(params: Params, grads: Updates, options?: FusedStepOptions): FusedStepResult;
  /**
   * One step under a loss scale without an unscale pass: the check pass reads the scaled
   * gradients, the kernel multiplies by `1 / scale` itself. Returns the typed step result and the
   * adjusted scale for the next step. bfloat16 gradients under a dynamic scale switch scaling off
   * (reason "bf16_no_scaling"), as `withLossScale` does.
   */
  stepWithLossScale(params: Params, grads: Updates, lossScale: LossScale): { step: StepResult; lossScale: LossScale };
  /**
   * This optimizer as the GradScaler's `ScalerOptimizer`: `scaler.step(opt.scalerOptimizer(params, grads))`.
   * The scaler unscales `grads` in place first and calls step() only when they are finite.
   */
  scalerOptimizer(params: Params, grads: Updates | (() => Updates)): ScalerOptimizer;
  /** The state, created by the first step (null before). */
  readonly state: S | null;
  /** PyTorch's flag: step() takes the loss scale and found-inf itself (GradScaler skips unscale). */
  readonly stepSupportsAmpScaling: true;
  /**
   * PyTorch's `state_dict()`: the step count, the stochastic-rounding seed, the options the state
   * depends on and, per parameter, the float32 master and the moments / momentum buffer. The
   * tensors are the optimizer's own (as PyTorch's are): save them (saveTrainState's `optState`)
   * before the next step changes them.
   */
  stateDict(): FusedStateDict;
  /**
   * PyTorch's `load_state_dict()`: copies a state dict (saved by any optimizer of this kind with
   * the same options, e.g. restored by loadTrainState) into this one, so the run continues bit for
   * bit. A wrong kind, option, key, dtype or shape throws an error naming the entry, and nothing
   * is written; the params of the next step are checked against the loaded shapes.
   */
  loadStateDict(state: FusedStateDict): void;
  /** Frees the state's tensors. */
  dispose(): void;
}

interface Mutable {
  count: number;
  /** The shapes of a loaded state, checked against the params of the next step; null otherwise. */
  loaded: (readonly number[])[] | null;
  master: (Tensor | null)[];
  mu: Tensor[];
  nu: Tensor[];
  nuMax: Tensor[] | null;
  lastStep: FusedStepResult | null;
  /** The device record of steps under a device loss scale (count, constants, row tables). */
  device: DeviceAdamRecord | null;
  /** Whether the applied-step count is the device record's (count then is only an upper bound). */
  countOnDevice: boolean;
}

/**
 * AdamW (torch.optim.AdamW's algorithm and defaults) fused into native passes over memory:
 *
 * 1. (only when clipping, or when `foundInf` is not given) a read of the gradients: the
 *    multi-tensor sum of squares after unscaling, which also finds inf/NaN (2 bytes/param for
 *    bfloat16 gradients);
 * 2. one multi-tensor kernel that reads the gradient, multiplies by `invScale` and the clip factor,
 *    updates m, v (and max v), the float32 master, and writes the float16 / bfloat16 parameter
 *    (nearest or stochastic rounding): 28 bytes/param for bf16 grads and params with float32
 *    master and state. A set found-inf flag skips it entirely.
 *
 * The result equals `withMasterWeights(chain(clipByGlobalNorm(maxGradNorm), adamw(...)))` applied
 * to the unscaled float32 gradients, within 1 ulp per element (the same float32 operations in the
 * same order; only the add-back of the update can differ). Steps count only when applied.
 *
 * @param options lr, betas, eps, weightDecay, amsgrad, maxGradNorm, masterWeights, rounding, seed, stateDtype.
 * @returns A stateful optimizer with `step(params, grads, { invScale, foundInf })`.
 * @example
 * ```ts
 * import { tensor } from "../tensor.ts";
 * import { fusedAdamW } from "./fused_adamw.ts";
 * const opt = fusedAdamW({ lr: 0.25, weightDecay: 0 });
 * using p = tensor([1, 1], { dtype: "bf16" });
 * using g = tensor([1024, -1024], { dtype: "bf16" });
 * const result = opt.step([p], [g], { invScale: 1 / 1024 });
 * if (!result.applied || p.toArray().join() !== "0.75,1.25") throw new Error("fused step");
 * opt.dispose();
 * ```
 */
export function fusedAdamW(options: FusedAdamWOptions = {}): FusedOptimizer<FusedAdamWState> {
  checkHyperparameters("fusedAdamW", options);
  const lr = options.lr ?? 1e-3;
  if (typeof lr !== "function") checkNumber(lr, "lr");
  const [b1, b2] = options.betas ?? [0.9, 0.999];
  checkNumber(b1, "betas[0]", { min: 0 });
  checkNumber(b2, "betas[1]", { min: 0 });
  if (b1 >= 1 || b2 >= 1) throw new RangeError(`Betas must be in [0, 1), got (${b1}, ${b2})`);
  const eps = checkNumber(options.eps ?? 1e-8, "eps", { min: 0 });
  const weightDecay = checkNumber(options.weightDecay ?? 1e-2, "weightDecay", { min: 0 });
  const amsgrad = options.amsgrad ?? false;
  const maxGradNorm = options.maxGradNorm ?? null;
  if (maxGradNorm !== null) checkNumber(maxGradNorm, "maxGradNorm", { min: 0, minInclusive: false });
  const masterWeights = options.masterWeights ?? true;
  const stochastic = checkRounding(options.rounding);
  const seed = checkSeed(options.seed ?? 0);
  const stateDtype = checkStateDtype(options.stateDtype ?? "float32", "stateDtype");
  const policy = policyParamDtype(options.policy);
  const dictOptions = Object.freeze({
    amsgrad,
    masterWeights,
    rounding: stochastic ? "stochastic" : "nearest",
    stateDtype,
  });
  let state: Mutable | null = null;

  const init = (params: readonly Tensor[]): Mutable => ({
    count: 0,
    loaded: null,
    master: params.map((p) => (masterWeights && p.dtype !== "float32" ? p.to("float32") : null)),
    mu: params.map((p) => zeros(p.shape, { dtype: stateDtype, device: p.device })),
    nu: params.map((p) => zeros(p.shape, { dtype: stateDtype, device: p.device })),
    nuMax: amsgrad ? params.map((p) => zeros(p.shape, { dtype: stateDtype, device: p.device })) : null,
    lastStep: null,
    device: null,
    countOnDevice: false,
  });

  /** The applied-step count, read from the device when it lives there (one wait). */
  const countOf = (s: Mutable): number => {
    if (s.countOnDevice && s.device !== null) {
      s.count = s.device.count();
      s.countOnDevice = false;
    }
    return s.count;
  };

  /** The constants of step number t (1-based) without the AMP factors. */
  const hyperOf = (t: number) => {
    const lrNow = resolveHyper(lr, t - 1, "lr");
    return {
      invScale: 1,
      clip: 1,
      ...adamConstants(b1, b2, eps, t),
      negLr: fround(-lrNow),
      decay: decayFactor(lrNow, weightDecay),
      amsgrad,
      stochastic,
    };
  };

  /** A step queued under a device loss scale: nothing is read back. */
  const deviceStep = (s: Mutable, p: readonly Tensor[], g: readonly Tensor[], amp: DeviceAmp): FusedStepResult => {
    const device = `cuda:${amp.ordinal}`;
    for (const t of [...p, ...g]) {
      if (t.device !== device) {
        throw new TypeError(
          `fusedAdamW: ${t} is not on ${device}, where the loss scale lives: keep parameters and gradients on the scaler's device`,
        );
      }
    }
    if (s.device === null) s.device = new DeviceAdamRecord(amp.ordinal, s.count);
    else if (!s.countOnDevice) s.device.setCount(s.count);
    const rows: AdamRowTensors[] = p.map((param, i) => ({
      grad: g[i]!,
      param,
      master: s.master[i]!,
      m: s.mu[i]!,
      v: s.nu[i]!,
      vMax: s.nuMax === null ? null : s.nuMax[i]!,
      seed: 0,
    }));
    s.device.step(rows, hyperOf, amp, { maxNorm: maxGradNorm, seed, stochastic });
    s.countOnDevice = true;
    const found = snapshotWord(amp.ordinal, amp.foundInfAddress);
    return Object.freeze({
      get applied() {
        return found() === 0;
      },
      get reason() {
        return found() === 0 ? ("applied" as const) : ("non_finite" as const);
      },
      gradNorm: null,
    });
  };

  return withScalerMethods<FusedAdamWState>(
    {
      stepSupportsAmpScaling: true,
      get state(): FusedAdamWState | null {
        if (state === null) return null;
        const s = state;
        return Object.freeze({
          kind: "fusedAdamW" as const,
          count: countOf(s),
          master: Object.freeze([...s.master]),
          mu: Object.freeze([...s.mu]),
          nu: Object.freeze([...s.nu]),
          nuMax: s.nuMax === null ? null : Object.freeze([...s.nuMax]),
          lastStep: s.lastStep,
        });
      },
      step(params: Params, grads: Updates, stepOptions: FusedStepOptions = {}): FusedStepResult {
        noteOptimizerStep();
        const p = tensorLeaves(params, "fusedAdamW params");
        const g = tensorLeaves(grads, "fusedAdamW grads");
        checkPolicyParams("fusedAdamW", p, policy);
        checkLeavesMatch(p, g, "fusedAdamW: grads do not match params", "pass one gradient per parameter");
        state ??= init(p);
        if (state.loaded !== null) {
          checkLoadedParams("fusedAdamW", p, state.master, state.loaded, masterWeights);
          state.loaded = null;
        }
        checkLeavesMatch(
          p,
          state.mu,
          "fusedAdamW: these params are not the ones of the first step",
          "use one optimizer per parameter set",
        );
        const s = state;
        if (stepOptions.device !== undefined) return (s.lastStep = deviceStep(s, p, g, stepOptions.device));
        countOf(s);
        const pre = preCheck(g, stepOptions, maxGradNorm);
        if (pre.skip) return (s.lastStep = skipped(pre.gradNorm));
        const t = s.count + 1;
        const lrNow = resolveHyper(lr, s.count, "lr");
        const c = adamConstants(b1, b2, eps, t);
        const rows: AdamRowTensors[] = p.map((param, i) => ({
          grad: g[i]!,
          param,
          master: s.master[i]!,
          m: s.mu[i]!,
          v: s.nu[i]!,
          vMax: s.nuMax === null ? null : s.nuMax[i]!,
          seed: rowSeed(seed, s.count, i),
        }));
        const applied = fusedAdamWStep(
          rows,
          {
            invScale: pre.invScale,
            clip: pre.clip,
            ...c,
            negLr: fround(-lrNow),
            decay: decayFactor(lrNow, weightDecay),
            amsgrad,
            stochastic,
          },
          pre.flag,
        );
        if (!applied) return (s.lastStep = skipped(pre.gradNorm));
        s.count = t;
        return (s.lastStep = Object.freeze({ applied: true, reason: "applied" as const, gradNorm: pre.gradNorm }));
      },
      stateDict(): FusedStateDict {
        const s = state;
        return {
          kind: "fusedAdamW",
          version: FUSED_STATE_VERSION,
          step: s === null ? 0 : countOf(s),
          seed,
          options: dictOptions,
          state:
            s === null
              ? []
              : s.mu.map((m, i) => ({
                  master: s.master[i]!,
                  exp_avg: m,
                  exp_avg_sq: s.nu[i]!,
                  max_exp_avg_sq: s.nuMax === null ? null : s.nuMax[i]!,
                })),
        };
      },
      loadStateDict(dict: FusedStateDict): void {
        const { step, entries } = checkFusedStateDict(dict, "fusedAdamW", seed, dictOptions, [
          { name: "master", dtype: "float32", absent: masterWeights ? "either" : true },
          { name: "exp_avg", dtype: stateDtype, absent: false },
          { name: "exp_avg_sq", dtype: stateDtype, absent: false },
          { name: "max_exp_avg_sq", dtype: stateDtype, absent: !amsgrad },
        ]);
        const copy = (t: Tensor | null) => (t === null ? null : t.clone());
        const next: Mutable | null =
          entries.length === 0
            ? null
            : {
                count: step,
                loaded: entries.map((e) => e[1]!.shape),
                master: entries.map((e) => copy(e[0]!)),
                mu: entries.map((e) => e[1]!.clone()),
                nu: entries.map((e) => e[2]!.clone()),
                nuMax: amsgrad ? entries.map((e) => e[3]!.clone()) : null,
                lastStep: null,
                device: null,
                countOnDevice: false,
              };
        if (state !== null) {
          state.device?.dispose();
          for (const t of [...state.master, ...state.mu, ...state.nu, ...(state.nuMax ?? [])]) t?.dispose();
        }
        state = next;
      },
      dispose(): void {
        if (state === null) return;
        state.device?.dispose();
        for (const t of [...state.master, ...state.mu, ...state.nu, ...(state.nuMax ?? [])]) t?.dispose();
        state = null;
      },
    },
    { deviceAmp: true },
  );
}

/** @internal */
export function checkRounding(rounding: unknown): boolean {
  if (rounding === undefined || rounding === "nearest") return false;
  if (rounding === "stochastic") return true;
  throw new RangeError(`rounding must be "nearest" or "stochastic", got ${JSON.stringify(rounding)}`);
}

/** @internal */
export function checkSeed(seed: number): number {
  if (!Number.isInteger(seed) || seed < 0 || seed >= 2 ** 32) {
    throw new RangeError(`seed must be an integer in [0, 2^32), got ${seed}`);
  }
  return seed;
}

/** @internal */
export function skipped(gradNorm: number | null): FusedStepResult {
  return Object.freeze({ applied: false, reason: "non_finite" as const, gradNorm });
}

/**
 * The pass before a fused step: decides skipping, and computes the clip factor.
 * @internal
 */
export function preCheck(
  grads: readonly Tensor[],
  options: FusedStepOptions,
  maxGradNorm: number | null,
): { skip: boolean; invScale: number; clip: number; gradNorm: number | null; flag: Uint32Array | null } {
  const invScale = fround(options.invScale ?? 1);
  if (Number.isNaN(invScale)) throw new TypeError("invScale must be a number: pass 1 / lossScale");
  const foundInf = options.foundInf;
  let flag: Uint32Array | null = null;
  if (foundInf instanceof Uint32Array) {
    if (foundInf.length < 1) throw new TypeError("foundInf must be a boolean or a Uint32Array of length >= 1");
    flag = foundInf;
  } else if (foundInf !== undefined && typeof foundInf !== "boolean") {
    throw new TypeError(`foundInf must be a boolean or a Uint32Array flag, got ${typeof foundInf}`);
  }
  if (foundInf === true || (flag !== null && flag[0] !== 0)) {
    return { skip: true, invScale, clip: 1, gradNorm: null, flag };
  }
  if (maxGradNorm === null && foundInf !== undefined) return { skip: false, invScale, clip: 1, gradNorm: null, flag };
  const { sum, foundInf: found } = sumSquares(grads, invScale);
  if (found) return { skip: true, invScale, clip: 1, gradNorm: null, flag };
  if (maxGradNorm === null) return { skip: false, invScale, clip: 1, gradNorm: null, flag };
  const { norm, coefficient } = clipCoefficient(sum, maxGradNorm);
  return { skip: false, invScale, clip: coefficient, gradNorm: norm, flag };
}

/**
 * Adds the loss-scale and GradScaler entry points to a fused optimizer's core `step`.
 * @internal
 */
export function withScalerMethods<S>(
  core: Omit<FusedOptimizer<S>, "stepWithLossScale" | "scalerOptimizer">,
  support: { readonly deviceAmp: boolean } = { deviceAmp: false },
): FusedOptimizer<S> {
  const optimizer: FusedOptimizer<S> = Object.defineProperties(
    {
      step: core.step,
      dispose: core.dispose,
      stateDict: core.stateDict,
      loadStateDict: core.loadStateDict,
      stepSupportsAmpScaling: true as const,
      stepWithLossScale(params: Params, grads: Updates, lossScale: LossScale) {
        const before = lossScale.value;
        const leaves = tensorLeaves(grads, "stepWithLossScale grads");
        const bf16 = lossScale.kind === "dynamic" && leaves.some((g) => g.dtype === "bfloat16");
        const invScale = lossScale.kind === "none" ? 1 : fround(1 / before);
        const result = core.step(params, grads, { invScale });
        const next = lossScale.kind === "none" ? lossScale : bf16 ? noLossScale() : lossScale.adjust(result.applied);
        const reason = result.applied && bf16 ? "bf16_no_scaling" : result.reason;
        const step: StepResult = Object.freeze({
          applied: result.applied,
          reason,
          scaleBefore: before,
          scaleAfter: next.value,
        });
        return { step, lossScale: next };
      },
      scalerOptimizer(params: Params, grads: Updates | (() => Updates)): ScalerOptimizer {
        const current = () => (typeof grads === "function" ? grads() : grads);
        return {
          get grads() {
            return current();
          },
          stepSupportsAmpScaling: true,
          // A GradScaler whose scale lives on the device passes its addresses instead (only to
          // optimizers whose step reads them: fusedAdamW).
          stepSupportsDeviceAmp: support.deviceAmp,
          // The scaler passes the inverse scale (it only checked the gradients); without it, the
          // gradients were already unscaled.
          step: (amp) => core.step(params, current(), amp ?? { foundInf: false }),
        };
      },
    },
    { state: { get: () => core.state, enumerable: true } },
  ) as FusedOptimizer<S>;
  return optimizer;
}
