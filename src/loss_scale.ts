/**
 * Loss scales as immutable values, in the style of jmp (jmp/_src/loss_scale.py): a loss scale
 * multiplies the loss before the backward pass, divides the gradients after it, and
 * `adjust(finite)` returns the next loss scale instead of mutating this one.
 *
 * - {@linkcode noLossScale}: the identity (value 1), for float32 and bfloat16 training.
 * - {@linkcode staticLossScale}: a fixed scale.
 * - {@linkcode dynamicLossScale}: PyTorch's dynamic scale (`_amp_update_scale_`, step for step
 *   with its defaults), with optional floor and ceiling and DeepSpeed's hysteresis.
 *
 * The dynamic algorithm, with scale a float32 value and tracker an int32 counter:
 * ```
 * adjust(finite):
 *   if not finite:
 *     if hysteresisLeft > 1: hysteresisLeft -= 1; tracker = 0                  # event "hysteresis"
 *     else: scale = f32(scale * backoff); tracker = 0                          # event "backoff"
 *           if minScale and scale <= minScale: scale = minScale                # event "floor"
 *   else:
 *     if consecutiveHysteresis: hysteresisLeft = hysteresis
 *     tracker += 1
 *     if tracker == growthInterval:                                             # the interval-th clean step
 *       tracker = 0; hysteresisLeft = hysteresis
 *       next = f32(scale * growth)
 *       if maxScale and next >= maxScale: scale = max(scale, maxScale)          # event "ceiling"
 *       elif next is inf: scale unchanged                                       # event "growth_refused"
 *       else: scale = next                                                      # event "grew"
 * ```
 * Factors stay float64, as PyTorch's CPU and CUDA kernels take them (`double growth_factor`): each
 * product is the float32 scale times the float64 factor, rounded once to float32 (`f32(...)`). A
 * factor such as 1.7 is not rounded to float32 first, which would move about 4 in 10 products by
 * 1 ulp. Without minScale the scale can reach 0 after about 166 overflows in a row, as in
 * PyTorch. With hysteresis 1 (the default) the rule is exactly PyTorch's.
 *
 * @module
 */

import { record, track } from "./autodiff.ts";
import { canonicalDtype, describeKind } from "./dtype.ts";
import { isTensor, type Tensor, tensor } from "./tensor.ts";
import { type Tree, treeLeaves } from "./tree.ts";
import { unscaleAndCheck } from "./unscale.ts";

/** What the last `adjust` did; null when the scale and counters only moved on the usual path. */
export type LossScaleEvent = null | "grew" | "backoff" | "hysteresis" | "floor" | "ceiling" | "growth_refused";

/** The result of one optimizer step (or of a skipped one), shared by every step-taking API. */
export interface StepResult {
  /** Whether the parameters were updated. */
  readonly applied: boolean;
  /** Why: "applied", "non_finite" (skipped), "accumulating", "bf16_no_scaling", or another reason. */
  readonly reason: "applied" | "non_finite" | "accumulating" | "bf16_no_scaling" | (string & {});
  /** The loss scale the step's gradients were unscaled with. */
  readonly scaleBefore: number;
  /** The loss scale the next step will use. */
  readonly scaleAfter: number;
}

/** The outcome of {@linkcode LossScale.unscale}. */
export interface Unscaled<T extends Tree<Tensor>> {
  /** The same tree, whose tensors were unscaled in place. */
  readonly grads: T;
  /** false when any element was inf or NaN: skip the step and `adjust(false)`. */
  readonly finite: boolean;
}

/** A loss scale: an immutable value. */
export interface LossScale {
  readonly kind: "none" | "static" | "dynamic";
  /** The current scale, a float32 value. */
  readonly value: number;
  /** What the `adjust` that produced this value did (null for fresh values and the usual path). */
  readonly event: LossScaleEvent;
  /**
   * Multiplies a loss by the scale. A number comes back as a number; a tensor comes back as a new
   * tensor of the same dtype and shape (multiplied in float32), which the caller owns.
   */
  scale(loss: number): number;
  scale(loss: Tensor): Tensor;
  /**
   * Divides every gradient by the scale in place (one native call for the whole tree, skipped
   * multiplication when the scale is 1) and checks them for inf and NaN.
   */
  unscale<T extends Tree<Tensor>>(grads: T): Unscaled<T>;
  /** The next loss scale after a step whose gradients were `finite` (or not). */
  adjust(finite: boolean): LossScale;
  /** A plain object for checkpoints; {@linkcode lossScaleFromJSON} restores it. */
  toJSON(): LossScaleJSON;
}

/** A dynamic loss scale: its settings and counters are readable. */
export interface DynamicLossScale extends LossScale {
  readonly kind: "dynamic";
  readonly growthFactor: number;
  readonly backoffFactor: number;
  readonly growthInterval: number;
  readonly minScale: number | null;
  readonly maxScale: number | null;
  readonly hysteresis: number;
  readonly consecutiveHysteresis: boolean;
  /** Consecutive clean steps since the last growth or overflow (PyTorch's `_growth_tracker`). */
  readonly growthTracker: number;
  /** Overflows still absorbed before the scale backs off (DeepSpeed's `cur_hysteresis`). */
  readonly hysteresisLeft: number;
  /** The next dynamic loss scale (a dynamic scale stays dynamic). */
  adjust(finite: boolean): DynamicLossScale;
}

/** The checkpoint form of a loss scale. */
export type LossScaleJSON =
  | { readonly kind: "none" }
  | { readonly kind: "static"; readonly scale: number }
  | {
      readonly kind: "dynamic";
      readonly scale: number;
      readonly growthFactor: number;
      readonly backoffFactor: number;
      readonly growthInterval: number;
      readonly minScale: number | null;
      readonly maxScale: number | null;
      readonly hysteresis: number;
      readonly consecutiveHysteresis: boolean;
      readonly growthTracker: number;
      readonly hysteresisLeft: number;
      readonly event: LossScaleEvent;
    };

/** Options of {@linkcode dynamicLossScale}; the defaults are PyTorch's GradScaler's. */
export interface DynamicLossScaleOptions {
  /** Initial scale (default 2^16). */
  readonly initialScale?: number;
  /** Multiplier on growth, > 1 (default 2). */
  readonly growthFactor?: number;
  /** Multiplier on overflow, in (0, 1) (default 0.5). */
  readonly backoffFactor?: number;
  /** Consecutive clean steps before growth, an integer >= 1 (default 2000). */
  readonly growthInterval?: number;
  /** Floor: backoff never goes below it, and reaching it is reported as event "floor". */
  readonly minScale?: number | null;
  /** Ceiling: growth never goes above it (event "ceiling"). */
  readonly maxScale?: number | null;
  /** Overflows absorbed before the first backoff, DeepSpeed's delayed_shift (default 1: none). */
  readonly hysteresis?: number;
  /** Restore hysteresis on every clean step instead of on growth (DeepSpeed's option, default false). */
  readonly consecutiveHysteresis?: boolean;
}

const INT32_MAX = 2 ** 31 - 1;
const FLOAT32_MAX = 3.4028234663852886e38;

function scaleLoss(value: number, loss: number | Tensor): number | Tensor {
  if (typeof loss === "number") return loss * value;
  if (!isTensor(loss)) {
    throw new TypeError(`scale() takes a number or a Tensor, got ${describeKind(loss)}: pass the loss`);
  }
  const values = loss.toArray();
  for (let i = 0; i < values.length; i++) values[i] = Math.fround(values[i]! * value);
  const scaled = track(tensor(values, { dtype: canonicalDtype(loss.dtype), shape: loss.shape, device: loss.device }));
  // Differentiable, so `valueAndGrad(p => scaler.scale(loss(p)))` yields gradients times the scale
  // (PyTorch's `scaler.scale(loss).backward()`).
  return record(scaled, [loss], [], (grad) => {
    const gradValues = grad.toArray();
    for (let i = 0; i < gradValues.length; i++) gradValues[i] = Math.fround(gradValues[i]! * value);
    return [tensor(gradValues, { dtype: grad.dtype, shape: grad.shape, device: grad.device })];
  });
}

/** The inverse scale PyTorch uses: the float64 reciprocal rounded to float32. */
function inverseOf(value: number): number {
  return Math.fround(1 / value);
}

function unscaleTree<T extends Tree<Tensor>>(value: number, grads: T): Unscaled<T> {
  const leaves = treeLeaves<Tensor>(grads);
  leaves.forEach((leaf, i) => {
    if (!isTensor(leaf)) {
      throw new TypeError(`Gradient leaf ${i} is a ${describeKind(leaf)}: gradient trees hold Tensors`);
    }
  });
  const found = unscaleAndCheck(leaves, inverseOf(value));
  return Object.freeze({ grads, finite: !found });
}

/**
 * Whether every element of every tensor in a tree is finite (jmp's `all_finite`). float32, float16
 * and bfloat16 tensors are checked in one native call; fp8 tensors and number leaves in TypeScript.
 *
 * @param tree A pytree of tensors (number leaves are checked too; other leaves are ignored).
 * @returns true when no element is inf or NaN.
 * @example
 * ```ts
 * import { allFinite } from "./loss_scale.ts";
 * import { tensor } from "./tensor.ts";
 * using a = tensor([1, 2]);
 * using b = tensor([NaN], { dtype: "bf16" });
 * if (!allFinite({ a }) || allFinite([a, b])) throw new Error("wrong finiteness");
 * ```
 */
export function allFinite(tree: Tree<Tensor | number>): boolean {
  const native: Tensor[] = [];
  for (const leaf of treeLeaves(tree)) {
    if (typeof leaf === "number") {
      if (!Number.isFinite(leaf)) return false;
    } else if (isTensor(leaf)) {
      if (leaf.dtype === "float32" || leaf.dtype === "float16" || leaf.dtype === "bfloat16") native.push(leaf);
      else if (!leaf.toArray().every(Number.isFinite)) return false;
    }
  }
  return !unscaleAndCheck(native, 1);
}

/**
 * The identity loss scale (value 1): `scale` and `unscale` leave values as they are, and `unscale`
 * still reports whether the gradients are finite. Use it for float32 and bfloat16 training.
 *
 * @returns The loss scale.
 * @example
 * ```ts
 * import { noLossScale } from "./loss_scale.ts";
 * const s = noLossScale();
 * if (s.scale(3) !== 3 || s.adjust(false).value !== 1) throw new Error("not the identity");
 * ```
 */
export function noLossScale(): LossScale {
  const self: LossScale = Object.freeze({
    kind: "none" as const,
    value: 1,
    event: null,
    scale: ((loss: number | Tensor) => scaleLoss(1, loss)) as LossScale["scale"],
    unscale: <T extends Tree<Tensor>>(grads: T) => unscaleTree(1, grads),
    adjust: (finite: boolean) => {
      checkFinite(finite);
      return self;
    },
    toJSON: () => ({ kind: "none" as const }),
  });
  return self;
}

function checkFinite(finite: unknown): void {
  if (typeof finite !== "boolean") {
    throw new TypeError(`adjust() takes a boolean, got ${describeKind(finite)}: pass the finite flag from unscale()`);
  }
}

function checkScale(name: string, value: unknown, allowZero = false): number {
  if (typeof value !== "number" || !Number.isFinite(value) || value < 0 || (!allowZero && value === 0)) {
    throw new RangeError(`${name} must be a finite number > 0, got ${String(value)}: e.g. ${name}: 65536`);
  }
  const rounded = Math.fround(value);
  if (!Number.isFinite(rounded) || (!allowZero && rounded === 0)) {
    throw new RangeError(
      `${name} ${value} is not representable as a float32 loss scale: use a value between 2^-149 and 3.4e38`,
    );
  }
  return rounded;
}

/**
 * A fixed loss scale: `adjust` returns the same value whatever happens.
 *
 * @param scale The scale, a finite number > 0 (rounded to float32).
 * @returns The loss scale.
 * @throws {RangeError} When scale is not a finite positive float32 value.
 * @example
 * ```ts
 * import { staticLossScale } from "./loss_scale.ts";
 * const s = staticLossScale(128);
 * if (s.scale(0.5) !== 64 || s.adjust(false).value !== 128) throw new Error("not static");
 * ```
 */
export function staticLossScale(scale: number): LossScale {
  const value = checkScale("scale", scale);
  const self: LossScale = Object.freeze({
    kind: "static" as const,
    value,
    event: null,
    scale: ((loss: number | Tensor) => scaleLoss(value, loss)) as LossScale["scale"],
    unscale: <T extends Tree<Tensor>>(grads: T) => unscaleTree(value, grads),
    adjust: (finite: boolean) => {
      checkFinite(finite);
      return self;
    },
    toJSON: () => ({ kind: "static" as const, scale: value }),
  });
  return self;
}

interface DynamicSettings {
  readonly growthFactor: number;
  readonly backoffFactor: number;
  readonly growthInterval: number;
  readonly minScale: number | null;
  readonly maxScale: number | null;
  readonly hysteresis: number;
  readonly consecutiveHysteresis: boolean;
}

interface DynamicState {
  readonly value: number;
  readonly growthTracker: number;
  readonly hysteresisLeft: number;
  readonly event: LossScaleEvent;
}

function checkInteger(name: string, value: unknown, min: number, example: string): number {
  if (typeof value !== "number" || !Number.isInteger(value) || value < min || value > INT32_MAX) {
    throw new RangeError(
      `${name} must be an integer in [${min}, 2^31), got ${String(value)}: e.g. ${name}: ${example}`,
    );
  }
  return value;
}

function checkSettings(options: DynamicLossScaleOptions): DynamicSettings {
  if (typeof options !== "object" || options === null) {
    throw new TypeError(`dynamicLossScale options must be an object, got ${describeKind(options)}`);
  }
  const growthFactor = options.growthFactor ?? 2;
  if (typeof growthFactor !== "number" || !(growthFactor > 1) || !Number.isFinite(growthFactor)) {
    throw new RangeError(`growthFactor must be a finite number > 1, got ${String(growthFactor)}: e.g. growthFactor: 2`);
  }
  const backoffFactor = options.backoffFactor ?? 0.5;
  if (typeof backoffFactor !== "number" || !(backoffFactor > 0) || !(backoffFactor < 1)) {
    throw new RangeError(
      `backoffFactor must be a number in (0, 1), got ${String(backoffFactor)}: e.g. backoffFactor: 0.5`,
    );
  }
  const growthInterval = checkInteger("growthInterval", options.growthInterval ?? 2000, 1, "2000");
  const minScale = options.minScale == null ? null : checkScale("minScale", options.minScale);
  const maxScale = options.maxScale == null ? null : checkScale("maxScale", options.maxScale);
  if (minScale !== null && maxScale !== null && minScale > maxScale) {
    throw new RangeError(`minScale ${minScale} is above maxScale ${maxScale}: pass minScale <= maxScale`);
  }
  const hysteresis = checkInteger("hysteresis", options.hysteresis ?? 1, 1, "2");
  const consecutiveHysteresis = options.consecutiveHysteresis ?? false;
  if (typeof consecutiveHysteresis !== "boolean") {
    throw new TypeError(`consecutiveHysteresis must be a boolean, got ${describeKind(consecutiveHysteresis)}`);
  }
  return Object.freeze({
    growthFactor,
    backoffFactor,
    growthInterval,
    minScale,
    maxScale,
    hysteresis,
    consecutiveHysteresis,
  });
}

function nextState(settings: DynamicSettings, state: DynamicState, finite: boolean): DynamicState {
  if (!finite) {
    if (state.hysteresisLeft > 1) {
      return { value: state.value, growthTracker: 0, hysteresisLeft: state.hysteresisLeft - 1, event: "hysteresis" };
    }
    let value = Math.fround(state.value * settings.backoffFactor);
    let event: LossScaleEvent = "backoff";
    if (settings.minScale !== null && value <= settings.minScale) {
      value = settings.minScale;
      event = "floor";
    }
    return { value, growthTracker: 0, hysteresisLeft: state.hysteresisLeft, event };
  }
  const hysteresisLeft = settings.consecutiveHysteresis ? settings.hysteresis : state.hysteresisLeft;
  // PyTorch's tracker is an int32; `| 0` wraps the same way (it only matters for absurd intervals).
  const successful = (state.growthTracker + 1) | 0;
  if (successful !== settings.growthInterval) {
    return { value: state.value, growthTracker: successful, hysteresisLeft, event: null };
  }
  const grown = Math.fround(state.value * settings.growthFactor);
  let value = grown;
  let event: LossScaleEvent = "grew";
  if (settings.maxScale !== null && grown >= settings.maxScale) {
    value = Math.max(state.value, settings.maxScale);
    event = "ceiling";
  } else if (!Number.isFinite(grown)) {
    value = state.value;
    event = "growth_refused";
  }
  return { value, growthTracker: 0, hysteresisLeft: settings.hysteresis, event };
}

function makeDynamic(settings: DynamicSettings, state: DynamicState): DynamicLossScale {
  const value = state.value;
  const self: DynamicLossScale = Object.freeze({
    kind: "dynamic" as const,
    value,
    event: state.event,
    ...settings,
    growthTracker: state.growthTracker,
    hysteresisLeft: state.hysteresisLeft,
    scale: ((loss: number | Tensor) => scaleLoss(value, loss)) as LossScale["scale"],
    unscale: <T extends Tree<Tensor>>(grads: T) => unscaleTree(value, grads),
    adjust: (finite: boolean): DynamicLossScale => {
      checkFinite(finite);
      return makeDynamic(settings, nextState(settings, state, finite));
    },
    toJSON: () => ({
      kind: "dynamic" as const,
      scale: value,
      ...settings,
      growthTracker: state.growthTracker,
      hysteresisLeft: state.hysteresisLeft,
      event: state.event,
    }),
  });
  return self;
}

/**
 * A dynamic loss scale. With its defaults it is PyTorch's GradScaler scale step for step
 * (`_amp_update_scale_`): float32 scale, int32 growth tracker, growth on the
 * `growthInterval`-th consecutive clean step, growth refused when it would overflow to inf (the
 * tracker still resets), halving on every overflow, no floor. `minScale` / `maxScale` clamp
 * (event "floor" / "ceiling"); `hysteresis` > 1 absorbs that many overflows before backing off, as
 * DeepSpeed's `delayed_shift` does (restored on growth, or on every clean step with
 * `consecutiveHysteresis`). Unlike DeepSpeed, growth keeps PyTorch's timing: DeepSpeed's first
 * growth after an overflow comes one clean step later.
 *
 * @param options initialScale (2^16), growthFactor (2), backoffFactor (0.5), growthInterval (2000),
 *   minScale, maxScale, hysteresis (1), consecutiveHysteresis (false).
 * @returns The loss scale; `adjust(finite)` returns the next one and `event` says what happened.
 * @throws {RangeError} When an option is out of range (the message names it and an example).
 * @example
 * ```ts
 * import { dynamicLossScale } from "./loss_scale.ts";
 * let s = dynamicLossScale({ initialScale: 1024, growthInterval: 2 });
 * s = s.adjust(true).adjust(true);
 * if (s.value !== 2048 || s.event !== "grew") throw new Error("no growth");
 * s = s.adjust(false);
 * if (s.value !== 1024 || s.event !== "backoff") throw new Error("no backoff");
 * ```
 */
export function dynamicLossScale(options: DynamicLossScaleOptions = {}): DynamicLossScale {
  const settings = checkSettings(options);
  const value = checkScale("initialScale", options.initialScale ?? 2 ** 16);
  if (settings.minScale !== null && value < settings.minScale) {
    throw new RangeError(`initialScale ${value} is below minScale ${settings.minScale}: start at or above the floor`);
  }
  if (settings.maxScale !== null && value > settings.maxScale) {
    throw new RangeError(`initialScale ${value} is above maxScale ${settings.maxScale}: start at or below the ceiling`);
  }
  return makeDynamic(settings, { value, growthTracker: 0, hysteresisLeft: settings.hysteresis, event: null });
}

const EVENTS: ReadonlySet<unknown> = new Set([
  null,
  "grew",
  "backoff",
  "hysteresis",
  "floor",
  "ceiling",
  "growth_refused",
]);

/**
 * Restores a loss scale from {@linkcode LossScale.toJSON}'s object (for example after
 * `JSON.parse`), with its counters, so training resumes exactly where it stopped.
 *
 * @param json The checkpointed object.
 * @returns An equal loss scale.
 * @throws {TypeError} When the object is not a loss-scale checkpoint.
 * @throws {RangeError} When a field is out of range.
 * @example
 * ```ts
 * import { dynamicLossScale, lossScaleFromJSON } from "./loss_scale.ts";
 * const s = dynamicLossScale({ growthInterval: 3 }).adjust(true);
 * const restored = lossScaleFromJSON(JSON.parse(JSON.stringify(s)));
 * if (restored.adjust(true).adjust(true).value !== 131072) throw new Error("counter lost");
 * ```
 */
export function lossScaleFromJSON(json: unknown): LossScale {
  if (typeof json !== "object" || json === null) {
    throw new TypeError(`A loss-scale checkpoint is an object from toJSON(), got ${describeKind(json)}`);
  }
  const record = json as Record<string, unknown>;
  switch (record.kind) {
    case "none":
      return noLossScale();
    case "static":
      return staticLossScale(record.scale as number);
    case "dynamic": {
      const settings = checkSettings({
        growthFactor: record.growthFactor as number,
        backoffFactor: record.backoffFactor as number,
        growthInterval: record.growthInterval as number,
        minScale: record.minScale as number | null,
        maxScale: record.maxScale as number | null,
        hysteresis: record.hysteresis as number,
        consecutiveHysteresis: record.consecutiveHysteresis as boolean,
      });
      // A PyTorch scale can legitimately have reached 0 after many overflows.
      const value = checkScale("scale", record.scale, true);
      if (record.scale !== value || value > FLOAT32_MAX) {
        throw new RangeError(`scale ${String(record.scale)} is not a float32 value: checkpoints hold float32 scales`);
      }
      const growthTracker = checkInteger("growthTracker", record.growthTracker, 0, "0");
      const hysteresisLeft = checkInteger("hysteresisLeft", record.hysteresisLeft, 1, "1");
      if (hysteresisLeft > settings.hysteresis) {
        throw new RangeError(`hysteresisLeft ${hysteresisLeft} exceeds hysteresis ${settings.hysteresis}`);
      }
      const event = record.event ?? null;
      if (!EVENTS.has(event)) throw new RangeError(`Unknown loss-scale event ${JSON.stringify(event)}`);
      return makeDynamic(settings, { value, growthTracker, hysteresisLeft, event: event as LossScaleEvent });
    }
    default:
      throw new TypeError(
        `Unknown loss-scale kind ${JSON.stringify(record.kind)}: a checkpoint's kind is "none", "static" or "dynamic"`,
      );
  }
}
