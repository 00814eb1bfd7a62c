/**
 * GradScaler: PyTorch's imperative loss-scaling facade (torch/amp/grad_scaler.py), with its method
 * names, its state_dict keys and its misuse errors, over the immutable {@linkcode dynamicLossScale}.
 *
 * What "optimizer" means here: any object with the gradients it will apply and a `step()` that
 * applies them ({@linkcode ScalerOptimizer}). The scaler unscales `optimizer.grads` in place (one
 * native call for the whole tree, float32, float16 and bfloat16 alike: PyTorch refuses bfloat16
 * gradients on CUDA) and calls `optimizer.step()` only when they are all finite.
 *
 * On cuda tensors (`device: "cuda:N"`, or the first `scale()` of a cuda loss) the scale, growth
 * tracker and found-inf flag live in one device allocation: scale, unscale_, step (with fusedAdamW's
 * `scalerOptimizer`, which unscales, clips and skips on the device) and update queue kernels and
 * never wait for the device. Reading a value for the host (the fields of step()'s and update()'s
 * results, getScale, lossScale, stateDict) waits once, and cudaSyncCount counts it.
 *
 * Created for bfloat16 training (`new GradScaler({ dtype: "bfloat16" })`) the scaler is a
 * pass-through, like PyTorch's `enabled=False`: bfloat16 needs no loss scaling. It says so once
 * per process with console.warn, and in its `notice`.
 *
 * @module
 */

import {
  CachedDeviceBuffer,
  checkGradients,
  type DeviceAmp,
  DeviceScaleState,
  scaleByDeviceScale,
} from "./backend/cuda_amp.ts";
import { record, track } from "./autodiff.ts";
import type { Dtype } from "./dtype.ts";
import { canonicalDtype, describeKind } from "./dtype.ts";
import { MixprecError } from "./errors.ts";
import {
  allFinite,
  type DynamicLossScale,
  dynamicLossScale,
  type LossScaleEvent,
  lossScaleFromJSON,
  type StepResult,
} from "./loss_scale.ts";
import { getPolicy, type Policy } from "./policy.ts";
import { validatePrecisionConfig } from "./precision_config.ts";
import { isTensor, Tensor } from "./tensor.ts";
import { type Tree, treeLeaves, treeMap } from "./tree.ts";

/**
 * The optimizer a GradScaler drives: its gradients and a step that applies them. `grads` is read
 * at each unscale_/step, so it may be a getter or be replaced between iterations. The optimizer
 * helper's imperative wrappers satisfy it; so does `{ grads, step: () => applyUpdates(...) }`.
 */
export interface ScalerOptimizer {
  /** The gradients step() will apply (unscaled in place by the scaler, unless the step scales). */
  readonly grads: Tree<Tensor>;
  /**
   * Applies the gradients; called only when they are all finite. An optimizer that sets
   * `stepSupportsAmpScaling` is given the inverse scale instead and unscales inside its own pass
   * (fusedAdamW/fusedSgd's `scalerOptimizer`), as PyTorch's GradScaler does for fused optimizers.
   */
  step(amp?: { readonly invScale: number; readonly foundInf: false } | { readonly device: DeviceAmp }): unknown;
  /** true: step() takes the inverse scale, so the scaler only checks (no write pass). */
  readonly stepSupportsAmpScaling?: boolean;
  /**
   * true: step() also takes `{ device }`, the addresses of a device-resident scale and found-inf
   * flag, and unscales and skips on the device (fusedAdamW's `scalerOptimizer`), so a GradScaler
   * on cuda tensors never waits for the device.
   */
  readonly stepSupportsDeviceAmp?: boolean;
}

/** Options of {@linkcode GradScaler}; PyTorch's defaults. */
export interface GradScalerOptions {
  /** Initial scale (default 2^16). */
  readonly initScale?: number;
  /** Growth multiplier (default 2). */
  readonly growthFactor?: number;
  /** Backoff multiplier (default 0.5). */
  readonly backoffFactor?: number;
  /** Clean steps before growth (default 2000). */
  readonly growthInterval?: number;
  /** false: every method is a pass-through (default true). */
  readonly enabled?: boolean;
  /** The low-precision dtype being trained (default float16); bfloat16 makes a pass-through. */
  readonly dtype?: Dtype;
  /** The device trained on (default "cpu"), checked by validatePrecisionConfig. */
  readonly device?: string;
  /**
   * The precision policy trained under (a Policy or its string): its compute dtype is the default
   * `dtype`, and gradients (which have their params' dtype) must be in its `param` dtype.
   */
  readonly policy?: Policy | string;
  /** mixprec extensions (see dynamicLossScale): floor, ceiling, hysteresis. */
  readonly minScale?: number | null;
  readonly maxScale?: number | null;
  readonly hysteresis?: number;
}

/** PyTorch's GradScaler state_dict (mixprec's extension keys appear only when configured). */
export interface GradScalerStateDict {
  readonly scale: number;
  readonly growth_factor: number;
  readonly backoff_factor: number;
  readonly growth_interval: number;
  readonly _growth_tracker: number;
  readonly min_scale?: number;
  readonly max_scale?: number;
  readonly hysteresis?: number;
  readonly _hysteresis_left?: number;
}

/** What update() did. */
export interface ScaleUpdate {
  readonly scaleBefore: number;
  readonly scaleAfter: number;
  /** The loss scale's event ("backoff", "grew", "floor", ...); null for a manual scale. */
  readonly event: LossScaleEvent;
}

type Stage = "ready" | "unscaled" | "stepped";

interface OptimizerState {
  stage: Stage;
  /** "device": checked, the answer is in the device flag. */
  foundInf: boolean | null | "device";
}

let bf16NoticeShown = false;

/**
 * A bfloat16 scaler is a pass-through: float16 gradients under it would be stepped unscaled (their
 * small values flushed to zero by the backward pass), so they are refused before anything runs.
 */
function checkNoFloat16(grads: unknown): void {
  const leaves = treeLeaves(grads as Tree<unknown>);
  const index = leaves.findIndex((g) => isTensor(g) && g.dtype === "float16");
  if (index < 0) return;
  throw new TypeError(
    `GradScaler was constructed for bfloat16 (a pass-through, no scaling) but gradient ${index} is float16: construct it with dtype: "float16" to scale float16 training, or train in bfloat16`,
  );
}

/** Gradients have their params' dtype: under a policy it must be the policy's param dtype. */
function checkPolicyGrads(grads: unknown, policy: Policy | null): void {
  if (policy === null) return;
  const leaves = treeLeaves(grads as Tree<unknown>);
  const index = leaves.findIndex((g) => isTensor(g) && g.dtype !== policy.param);
  if (index < 0) return;
  throw new TypeError(
    `GradScaler: gradient ${index} is ${(leaves[index] as Tensor).dtype} but the policy "${String(policy)}" stores params (and so their gradients) as ${policy.param}: cast the params with policy.castToParam, or pass the policy they were made under`,
  );
}

function checkScalerDtype(dtype: unknown): void {
  if (dtype === undefined) return;
  let name: string;
  try {
    name = canonicalDtype(dtype);
  } catch {
    name = "";
  }
  if (name !== "float16" && name !== "bfloat16" && name !== "float32") {
    throw new RangeError(
      `GradScaler dtype ${JSON.stringify(dtype) ?? String(dtype)} is not a training dtype: use "float16" (scaled), "bfloat16" or "float32" (pass-through)`,
    );
  }
}

const UNINITIALIZED_FIX =
  "This may indicate your script did not use scaler.scale(loss or outputs) earlier in the iteration.";

/**
 * PyTorch's GradScaler. Misuse raises MixprecError with PyTorch's message and a code:
 * "unscale_twice", "unscale_after_step", "step_twice", "not_scaled" (step/unscale_/update before
 * the first scale()), "no_inf_checks" (update() with no step or unscale_ since the last update),
 * "empty_state_dict".
 *
 * @example
 * ```ts
 * import { GradScaler } from "./grad_scaler.ts";
 * import { tensor } from "./tensor.ts";
 * const scaler = new GradScaler({ initScale: 1024, dtype: "float16" });
 * using g = tensor([2048], { dtype: "f16" });
 * let steps = 0;
 * const optimizer = { grads: [g], step: () => steps++ };
 * scaler.scale(1.0);
 * const result = scaler.step(optimizer);
 * scaler.update();
 * if (!result.applied || steps !== 1 || g.toArray()[0] !== 2) throw new Error("not unscaled");
 * ```
 */
export class GradScaler {
  /** Why the scaler is a pass-through, or another fact worth knowing; null when none. */
  readonly notice: string | null;
  readonly #enabled: boolean;
  readonly #bf16: boolean;
  readonly #extensions: { minScale: number | null; maxScale: number | null; hysteresis: number };
  readonly #policy: Policy | null;
  #loss: DynamicLossScale;
  #initialized = false;
  #states = new Map<ScalerOptimizer, OptimizerState>();
  /** The device the scale lives on ("cuda:N"), or null: on the host. */
  #deviceName: string | null = null;
  #device: DeviceScaleState | null = null;
  /** Whether the device found-inf flag was zeroed in this iteration. */
  #flagCleared = false;
  #tables = new Map<ScalerOptimizer, CachedDeviceBuffer>();

  /**
   * @param options initScale, growthFactor, backoffFactor, growthInterval, enabled, dtype, device,
   *   minScale, maxScale, hysteresis.
   * @throws {RangeError} For out-of-range options (from dynamicLossScale / validatePrecisionConfig).
   */
  constructor(options: GradScalerOptions = {}) {
    if (typeof options !== "object" || options === null) {
      throw new TypeError(`GradScaler options must be an object, got ${describeKind(options)}`);
    }
    const enabled = options.enabled ?? true;
    if (typeof enabled !== "boolean") throw new TypeError(`enabled must be a boolean, got ${describeKind(enabled)}`);
    // Checked here so the messages use GradScaler's option names (initScale, dtype), not the
    // names of the functions the options are passed on to.
    checkScalerDtype(options.dtype);
    this.#policy =
      options.policy === undefined
        ? null
        : typeof options.policy === "string"
          ? getPolicy(options.policy)
          : options.policy;
    if (options.initScale !== undefined) {
      const s = options.initScale;
      if (typeof s !== "number" || !Number.isFinite(s) || !(Math.fround(s) > 0) || !Number.isFinite(Math.fround(s))) {
        throw new RangeError(`initScale must be a finite float32 number > 0, got ${String(s)}: e.g. initScale: 65536`);
      }
    }
    const checked = validatePrecisionConfig({
      compute:
        options.dtype ??
        (this.#policy !== null && this.#policy.compute !== "float32" ? this.#policy.compute : "float16"),
      lossScale: "dynamic",
      ...(options.device === undefined ? {} : { device: options.device }),
    });
    this.#bf16 = checked.config.lossScale === "none";
    this.notice = checked.notices.length > 0 ? checked.notices.join("; ") : null;
    this.#enabled = enabled && !this.#bf16;
    this.#extensions = {
      minScale: options.minScale ?? null,
      maxScale: options.maxScale ?? null,
      hysteresis: options.hysteresis ?? 1,
    };
    this.#loss = dynamicLossScale({
      initialScale: options.initScale ?? 2 ** 16,
      growthFactor: options.growthFactor ?? 2,
      backoffFactor: options.backoffFactor ?? 0.5,
      growthInterval: options.growthInterval ?? 2000,
      ...this.#extensions,
    });
    if (this.#enabled && options.device !== undefined && options.device !== "cpu") this.#useDevice(options.device);
    if (this.#bf16 && enabled && !bf16NoticeShown) {
      bf16NoticeShown = true;
      console.warn(`mixprec GradScaler: ${this.notice} (the scaler is a pass-through)`);
    }
  }

  /**
   * The current loss scale as an immutable value (its `event` says what the last update did). On
   * the device, reading it waits for the device (its `event` is then null).
   */
  get lossScale(): DynamicLossScale {
    this.#syncFromDevice();
    return this.#loss;
  }

  /** Whether the scale, growth tracker and found-inf flag live on a device ("cuda:N"), or null. */
  get device(): string | null {
    return this.#deviceName;
  }

  /**
   * Keeps the state on `device` from now on: one device allocation for scale, tracker and flag.
   * PyTorch's rule only (mixprec's minScale, maxScale and hysteresis extensions are host-only).
   */
  #useDevice(device: string): void {
    if (this.#deviceName === device) return;
    if (this.#deviceName !== null) {
      throw new TypeError(
        `GradScaler keeps its state on ${this.#deviceName} but was given a tensor on ${device}: use one scaler per device`,
      );
    }
    const e = this.#extensions;
    if (e.minScale !== null || e.maxScale !== null || e.hysteresis !== 1) {
      throw new TypeError(
        `GradScaler on ${device} keeps its scale on the device with PyTorch's update rule only: drop minScale, maxScale and hysteresis (host-only extensions), or train on the CPU`,
      );
    }
    const match = /^cuda(?::(\d+))?$/.exec(device);
    if (match === null) throw new TypeError(`Unknown device ${JSON.stringify(device)}: use "cpu" or "cuda:N"`);
    // Checks that the device exists (the library's message when it does not) before any state moves.
    new Tensor("float32", [1], `cuda:${Number(match[1] ?? 0)}`).dispose();
    this.#deviceName = `cuda:${Number(match[1] ?? 0)}`;
    this.#device = new DeviceScaleState(Number(match[1] ?? 0), this.#loss.value, this.#loss.growthTracker);
  }

  /** Reads the device state into the host loss scale (one wait); nothing on the host. */
  #syncFromDevice(): void {
    if (this.#device === null) return;
    const { scale, tracker } = this.#device.read();
    this.#loss = this.#withState(scale, tracker);
  }

  #withState(scale: number, tracker: number): DynamicLossScale {
    const json = this.#loss.toJSON() as Extract<ReturnType<DynamicLossScale["toJSON"]>, { kind: "dynamic" }>;
    return lossScaleFromJSON({ ...json, scale, growthTracker: tracker, event: null }) as DynamicLossScale;
  }

  /** The gradients, all on the scaler's device (checked before anything is queued). */
  #deviceGrads(optimizer: ScalerOptimizer): Tensor[] {
    const grads = treeLeaves(optimizer.grads) as Tensor[];
    grads.forEach((g, i) => {
      if (!isTensor(g) || g.device !== this.#deviceName) {
        throw new TypeError(
          `GradScaler keeps its scale on ${this.#deviceName} but gradient ${i} is ${isTensor(g) ? `on ${g.device}` : describeKind(g)}: keep the gradients on the scaler's device`,
        );
      }
    });
    return grads;
  }

  #clearFlagOnce(state: DeviceScaleState): void {
    if (this.#flagCleared) return;
    state.clearFoundInf();
    this.#flagCleared = true;
  }

  #tableOf(optimizer: ScalerOptimizer, state: DeviceScaleState): CachedDeviceBuffer {
    let table = this.#tables.get(optimizer);
    if (table === undefined) {
      table = new CachedDeviceBuffer(state.ordinal);
      this.#tables.set(optimizer, table);
    }
    return table;
  }

  /** The scaled loss on the device: loss * scale read there, differentiable (g * scale). */
  #scaleOnDevice(loss: Tensor, state: DeviceScaleState): Tensor {
    const scaled = track(new Tensor(loss.dtype, loss.shape, loss.device, false));
    scaleByDeviceScale(loss, scaled, state.scaleAddress);
    return record(scaled, [loss], [], (grad) => {
      const out = new Tensor(grad.dtype, grad.shape, grad.device, false);
      scaleByDeviceScale(grad, out, state.scaleAddress);
      return [out];
    });
  }

  /**
   * Multiplies a loss (a number, a tensor, or a tree of them) by the scale. Tensors come back as
   * new tensors the caller owns. A pass-through scaler returns `outputs` unchanged.
   *
   * @param outputs The loss or losses.
   * @returns The scaled loss(es).
   */
  scale(outputs: number): number;
  scale(outputs: Tensor): Tensor;
  scale<T>(outputs: Tree<T>): Tree<T>;
  scale(outputs: unknown): unknown {
    if (!this.#enabled) return outputs;
    this.#initialized = true;
    return treeMap(
      (leaf: unknown) => {
        if (isTensor(leaf) && leaf.device !== "cpu") this.#useDevice(leaf.device);
        const state = this.#device;
        if (state !== null && isTensor(leaf) && leaf.device !== "cpu") return this.#scaleOnDevice(leaf, state);
        // A number (or a CPU tensor) under a device scale needs the scale's value: one wait.
        if (state !== null) this.#syncFromDevice();
        const loss = this.#loss;
        if (typeof leaf === "number") return loss.scale(leaf);
        if (isTensor(leaf)) return loss.scale(leaf);
        throw new TypeError(`scale() takes numbers or Tensors (or trees of them), got ${describeKind(leaf)}`);
      },
      outputs as Tree<unknown>,
    );
  }

  /**
   * Divides the optimizer's gradients by the scale in place and records whether any is inf or NaN.
   * Optional: step() does it when it was not called. Call it once per optimizer per iteration,
   * e.g. to clip unscaled gradients.
   *
   * @param optimizer The optimizer whose `grads` to unscale.
   */
  unscale_(optimizer: ScalerOptimizer): void {
    checkPolicyGrads(optimizer.grads, this.#policy);
    if (this.#bf16) checkNoFloat16(optimizer.grads);
    if (!this.#enabled) return;
    this.#checkInitialized("unscale_");
    checkOptimizer(optimizer);
    const state = this.#stateOf(optimizer);
    if (state.stage === "unscaled") {
      throw new MixprecError(
        "unscale_twice",
        "unscale_() has already been called on this optimizer since the last update(): call it once per optimizer per iteration",
      );
    }
    if (state.stage === "stepped") {
      throw new MixprecError(
        "unscale_after_step",
        "unscale_() is being called after step(): call unscale_() before step(), or call update() first",
      );
    }
    const device = this.#device;
    if (device !== null) {
      // On the device: unscale in place by the device scale, OR-ing the device flag. No wait.
      const grads = this.#deviceGrads(optimizer);
      this.#clearFlagOnce(device);
      checkGradients(this.#tableOf(optimizer, device), grads, device, true);
      state.foundInf = "device";
    } else {
      const { finite } = this.#loss.unscale(optimizer.grads);
      state.foundInf = !finite;
    }
    state.stage = "unscaled";
  }

  /**
   * Unscales the optimizer's gradients (unless unscale_ was called) and calls `optimizer.step()`
   * when they are all finite; skips it otherwise.
   *
   * @param optimizer The optimizer.
   * @returns Whether the step was applied, why, the scale used and the scale the next update()
   *   will set (given the checks recorded so far this iteration).
   */
  step(optimizer: ScalerOptimizer): StepResult {
    checkOptimizer(optimizer);
    checkPolicyGrads(optimizer.grads, this.#policy);
    if (this.#bf16) checkNoFloat16(optimizer.grads);
    if (!this.#enabled) {
      optimizer.step();
      const reason = this.#bf16 ? "bf16_no_scaling" : "applied";
      return Object.freeze({ applied: true, reason, scaleBefore: 1, scaleAfter: 1 });
    }
    this.#checkInitialized("step");
    const state = this.#stateOf(optimizer);
    if (state.stage === "stepped") {
      throw new MixprecError(
        "step_twice",
        "step() has already been called since the last update(): call update() once per iteration after step()",
      );
    }
    if (this.#device !== null) return this.#stepOnDevice(optimizer, state, this.#device);
    // A fused optimizer unscales inside its own pass: the scaler only checks the gradients (a read
    // pass with an inverse scale of 1, which writes nothing), as PyTorch does for fused optimizers.
    const fused = state.stage === "ready" && optimizer.stepSupportsAmpScaling === true;
    if (fused) {
      state.foundInf = !allFinite(optimizer.grads);
    } else if (state.stage === "ready") {
      this.unscale_(optimizer);
    }
    const applied = state.foundInf === false;
    if (applied && fused) optimizer.step({ invScale: Math.fround(1 / this.#loss.value), foundInf: false });
    else if (applied) optimizer.step();
    state.stage = "stepped";
    return Object.freeze({
      applied,
      reason: applied ? "applied" : "non_finite",
      scaleBefore: this.#loss.value,
      scaleAfter: this.#loss.adjust(!this.#anyFoundInf()).value,
    });
  }

  /**
   * step() with the state on the device. An optimizer that takes `{ device }` (fusedAdamW) gets the
   * scale and flag addresses and unscales, clips and skips on the device: no wait. Any other
   * optimizer needs to know on the host whether to step: the flag is read (one wait). The result's
   * fields wait for the device when read (a snapshot taken now, so they describe this step).
   */
  #stepOnDevice(optimizer: ScalerOptimizer, state: OptimizerState, device: DeviceScaleState): StepResult {
    const fused = optimizer.stepSupportsDeviceAmp === true;
    if (state.stage === "ready") {
      const grads = this.#deviceGrads(optimizer);
      this.#clearFlagOnce(device);
      // The fused optimizer unscales inside its pass: only check (writes nothing); else unscale.
      checkGradients(this.#tableOf(optimizer, device), grads, device, !fused);
      state.foundInf = "device";
    }
    const unscaled = state.stage === "unscaled" || !fused;
    if (fused) {
      optimizer.step({
        device: {
          ordinal: device.ordinal,
          scaleAddress: unscaled ? 0 : device.scaleAddress,
          foundInfAddress: device.foundInfAddress,
        },
      });
    } else if (!device.read().foundInf) {
      optimizer.step();
    }
    state.stage = "stepped";
    const snapshot = device.snapshot();
    const loss = this.#loss;
    const after = () => {
      const { scale, tracker, foundInf } = snapshot();
      return { scale, after: this.#withStateOf(loss, scale, tracker).adjust(!foundInf).value, foundInf };
    };
    return Object.freeze({
      get applied() {
        return !after().foundInf;
      },
      get reason() {
        return after().foundInf ? ("non_finite" as const) : ("applied" as const);
      },
      get scaleBefore() {
        return after().scale;
      },
      get scaleAfter() {
        return after().after;
      },
    });
  }

  #withStateOf(loss: DynamicLossScale, scale: number, tracker: number): DynamicLossScale {
    const json = loss.toJSON() as Extract<ReturnType<DynamicLossScale["toJSON"]>, { kind: "dynamic" }>;
    return lossScaleFromJSON({ ...json, scale, growthTracker: tracker, event: null }) as DynamicLossScale;
  }

  /**
   * Updates the scale for the next iteration: backoff when any optimizer's gradients were
   * non-finite this iteration, growth after growthInterval clean iterations. With `newScale`
   * the scale is set to it instead (the growth tracker is kept, as in PyTorch).
   *
   * @param newScale Optional manual scale (a finite number >= 0, rounded to float32).
   * @returns The scale before and after, and the loss scale's event.
   */
  update(newScale?: number): ScaleUpdate {
    if (this.#device !== null && this.#enabled) return this.#updateOnDevice(this.#device, newScale);
    const scaleBefore = this.getScale();
    if (!this.#enabled) return Object.freeze({ scaleBefore, scaleAfter: scaleBefore, event: null });
    this.#checkInitialized("update");
    if (newScale !== undefined) {
      if (typeof newScale !== "number" || !Number.isFinite(newScale) || newScale < 0) {
        throw new RangeError(`newScale must be a finite number >= 0, got ${String(newScale)}`);
      }
      const json = this.#loss.toJSON() as Extract<ReturnType<DynamicLossScale["toJSON"]>, { kind: "dynamic" }>;
      this.#loss = lossScaleFromJSON({ ...json, scale: Math.fround(newScale), event: null }) as DynamicLossScale;
    } else {
      const checks = [...this.#states.values()].filter((s) => s.foundInf !== null);
      if (checks.length === 0) {
        throw new MixprecError(
          "no_inf_checks",
          "No inf checks were recorded prior to update(): call scaler.step(optimizer) (or unscale_) before update()",
        );
      }
      this.#loss = this.#loss.adjust(!this.#anyFoundInf());
    }
    this.#states = new Map();
    return Object.freeze({ scaleBefore, scaleAfter: this.#loss.value, event: this.#loss.event });
  }

  /**
   * update() on the device: PyTorch's _amp_update_scale_ on the device state, no wait. The result's
   * fields wait for the device when read.
   */
  #updateOnDevice(device: DeviceScaleState, newScale?: number): ScaleUpdate {
    this.#checkInitialized("update");
    if (newScale !== undefined) {
      if (typeof newScale !== "number" || !Number.isFinite(newScale) || newScale < 0) {
        throw new RangeError(`newScale must be a finite number >= 0, got ${String(newScale)}`);
      }
    } else if (![...this.#states.values()].some((s) => s.foundInf !== null)) {
      throw new MixprecError(
        "no_inf_checks",
        "No inf checks were recorded prior to update(): call scaler.step(optimizer) (or unscale_) before update()",
      );
    }
    const snapshot = device.snapshot();
    if (newScale !== undefined) device.writeScale(Math.fround(newScale));
    else {
      if (!this.#flagCleared) device.clearFoundInf();
      device.update(this.#loss.growthFactor, this.#loss.backoffFactor, this.#loss.growthInterval);
    }
    this.#states = new Map();
    this.#flagCleared = false;
    const loss = this.#loss;
    const result = () => {
      const { scale, tracker, foundInf } = snapshot();
      const next =
        newScale !== undefined
          ? this.#withStateOf(loss, Math.fround(newScale), tracker)
          : this.#withStateOf(loss, scale, tracker).adjust(!foundInf);
      return { scaleBefore: scale, scaleAfter: next.value, event: newScale !== undefined ? null : next.event };
    };
    return Object.freeze({
      get scaleBefore() {
        return result().scaleBefore;
      },
      get scaleAfter() {
        return result().scaleAfter;
      },
      get event() {
        return result().event;
      },
    });
  }

  /**
   * The current scale (1 when disabled or a bf16 pass-through). On the device it is read back:
   * one wait, counted by cudaSyncCount (read it outside the step).
   */
  getScale(): number {
    if (this.#enabled) this.#syncFromDevice();
    return this.#enabled ? this.#loss.value : 1;
  }

  /** The growth factor (float32). */
  getGrowthFactor(): number {
    return this.#loss.growthFactor;
  }

  /** The backoff factor (float32). */
  getBackoffFactor(): number {
    return this.#loss.backoffFactor;
  }

  /** The growth interval. */
  getGrowthInterval(): number {
    return this.#loss.growthInterval;
  }

  /** Whether scaling is on (false when disabled or for bfloat16). */
  isEnabled(): boolean {
    return this.#enabled;
  }

  /**
   * The scaler's state under PyTorch's keys (empty when disabled). Call it after update().
   *
   * @returns scale, growth_factor, backoff_factor, growth_interval, _growth_tracker (and min_scale,
   *   max_scale, hysteresis, _hysteresis_left when those extensions are configured).
   */
  stateDict(): GradScalerStateDict | Record<string, never> {
    if (!this.#enabled) return {};
    this.#syncFromDevice();
    const s = this.#loss;
    return {
      scale: s.value,
      growth_factor: s.growthFactor,
      backoff_factor: s.backoffFactor,
      growth_interval: s.growthInterval,
      _growth_tracker: s.growthTracker,
      ...(s.minScale === null ? {} : { min_scale: s.minScale }),
      ...(s.maxScale === null ? {} : { max_scale: s.maxScale }),
      ...(s.hysteresis === 1 ? {} : { hysteresis: s.hysteresis, _hysteresis_left: s.hysteresisLeft }),
    };
  }

  /**
   * Loads a state dict from stateDict() (or from PyTorch's GradScaler.state_dict()). A no-op when
   * disabled. Nothing changes when the dict is rejected.
   *
   * @param stateDict The state.
   * @throws {MixprecError} "empty_state_dict" for {} (saved from a disabled scaler).
   * @throws {TypeError} / {RangeError} for missing or out-of-range entries.
   */
  loadStateDict(stateDict: Partial<GradScalerStateDict>): void {
    if (!this.#enabled) return;
    if (typeof stateDict !== "object" || stateDict === null) {
      throw new TypeError(`loadStateDict takes an object from stateDict(), got ${describeKind(stateDict)}`);
    }
    if (Object.keys(stateDict).length === 0) {
      throw new MixprecError(
        "empty_state_dict",
        "The source state dict is empty, possibly because it was saved from a disabled instance of GradScaler",
      );
    }
    for (const key of ["scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker"] as const) {
      if (typeof stateDict[key] !== "number") {
        throw new TypeError(`The state dict lacks a number "${key}": pass the object stateDict() returned`);
      }
    }
    const hysteresis = stateDict.hysteresis ?? this.#extensions.hysteresis;
    const restored = lossScaleFromJSON({
      kind: "dynamic",
      scale: Math.fround(stateDict.scale!),
      growthFactor: stateDict.growth_factor,
      backoffFactor: stateDict.backoff_factor,
      growthInterval: stateDict.growth_interval,
      minScale: stateDict.min_scale ?? this.#extensions.minScale,
      maxScale: stateDict.max_scale ?? this.#extensions.maxScale,
      hysteresis,
      consecutiveHysteresis: false,
      growthTracker: stateDict._growth_tracker,
      hysteresisLeft: stateDict._hysteresis_left ?? hysteresis,
      event: null,
    });
    this.#loss = restored as DynamicLossScale;
    this.#device?.write(this.#loss.value, this.#loss.growthTracker);
  }

  #checkInitialized(what: string): void {
    if (!this.#initialized) {
      throw new MixprecError("not_scaled", `Attempted ${what} but the scale was never used. ${UNINITIALIZED_FIX}`);
    }
  }

  #stateOf(optimizer: ScalerOptimizer): OptimizerState {
    let state = this.#states.get(optimizer);
    if (state === undefined) {
      state = { stage: "ready", foundInf: null };
      this.#states.set(optimizer, state);
    }
    return state;
  }

  /** Frees the device state (a scaler on the device); the scaler is unusable on the device after. */
  dispose(): void {
    for (const table of this.#tables.values()) table.dispose();
    this.#tables.clear();
    this.#device?.dispose();
  }

  #anyFoundInf(): boolean {
    for (const state of this.#states.values()) if (state.foundInf === true) return true;
    return false;
  }
}

function checkOptimizer(optimizer: unknown): asserts optimizer is ScalerOptimizer {
  if (
    typeof optimizer !== "object" ||
    optimizer === null ||
    typeof (optimizer as ScalerOptimizer).step !== "function" ||
    !("grads" in optimizer)
  ) {
    throw new TypeError(
      `The optimizer must be an object with grads (a tree of Tensors) and step(), got ${describeKind(optimizer)}`,
    );
  }
}
