/**
 * Learning-rate schedules (optax's): functions of the step count (0 for the first update).
 *
 * @module
 */

import { checkNumber, type Schedule } from "./transformation.ts";

/**
 * A constant schedule.
 *
 * @param value The value at every step.
 * @returns The schedule.
 * @example
 * ```ts
 * import { constantSchedule } from "./schedules.ts";
 * if (constantSchedule(0.1)(1000) !== 0.1) throw new Error("not constant");
 * ```
 */
export function constantSchedule(value: number): Schedule {
  checkNumber(value, "value");
  return () => value;
}

/** Options of {@linkcode linearSchedule}. */
export interface LinearScheduleOptions {
  readonly initValue: number;
  readonly endValue: number;
  /** Steps from initValue to endValue (> 0). */
  readonly transitionSteps: number;
  /** Steps to hold initValue first (default 0). */
  readonly transitionBegin?: number;
}

/**
 * Linear interpolation from initValue to endValue over transitionSteps (a linear warmup when
 * initValue < endValue), holding endValue after.
 *
 * @param options initValue, endValue, transitionSteps, transitionBegin.
 * @returns The schedule.
 * @example
 * ```ts
 * import { linearSchedule } from "./schedules.ts";
 * const warmup = linearSchedule({ initValue: 0, endValue: 1, transitionSteps: 10 });
 * if (warmup(5) !== 0.5 || warmup(20) !== 1) throw new Error("not linear");
 * ```
 */
export function linearSchedule(options: LinearScheduleOptions): Schedule {
  const init = checkNumber(options?.initValue, "initValue");
  const end = checkNumber(options.endValue, "endValue");
  const steps = checkNumber(options.transitionSteps, "transitionSteps", { min: 0, minInclusive: false });
  const begin = checkNumber(options.transitionBegin ?? 0, "transitionBegin", { min: 0 });
  return (count) => {
    const fraction = Math.min(Math.max((count - begin) / steps, 0), 1);
    return init + (end - init) * fraction;
  };
}

/** Options of {@linkcode cosineDecaySchedule}. */
export interface CosineDecayScheduleOptions {
  readonly initValue: number;
  /** Steps to decay over (> 0). */
  readonly decaySteps: number;
  /** The final value as a fraction of initValue (default 0). */
  readonly alpha?: number;
}

/**
 * Cosine decay from initValue to alpha * initValue over decaySteps, then constant.
 *
 * @param options initValue, decaySteps, alpha.
 * @returns The schedule.
 * @example
 * ```ts
 * import { cosineDecaySchedule } from "./schedules.ts";
 * const s = cosineDecaySchedule({ initValue: 1, decaySteps: 100 });
 * if (s(0) !== 1 || Math.abs(s(50) - 0.5) > 1e-12 || s(100) !== 0) throw new Error("not cosine");
 * ```
 */
export function cosineDecaySchedule(options: CosineDecayScheduleOptions): Schedule {
  const init = checkNumber(options?.initValue, "initValue");
  const steps = checkNumber(options.decaySteps, "decaySteps", { min: 0, minInclusive: false });
  const alpha = checkNumber(options.alpha ?? 0, "alpha");
  return (count) => {
    const fraction = Math.min(Math.max(count, 0), steps) / steps;
    const cosine = 0.5 * (1 + Math.cos(Math.PI * fraction));
    return init * ((1 - alpha) * cosine + alpha);
  };
}

/** Options of {@linkcode warmupCosineDecaySchedule}. */
export interface WarmupCosineDecayScheduleOptions {
  readonly initValue: number;
  readonly peakValue: number;
  /** Linear warmup steps from initValue to peakValue. */
  readonly warmupSteps: number;
  /** Total steps, warmup included (> warmupSteps). */
  readonly decaySteps: number;
  /** The value at the end (default 0). */
  readonly endValue?: number;
}

/**
 * Linear warmup to peakValue, then cosine decay to endValue at decaySteps (optax's
 * warmup_cosine_decay_schedule).
 *
 * @param options initValue, peakValue, warmupSteps, decaySteps, endValue.
 * @returns The schedule.
 * @example
 * ```ts
 * import { warmupCosineDecaySchedule } from "./schedules.ts";
 * const s = warmupCosineDecaySchedule({ initValue: 0, peakValue: 1, warmupSteps: 10, decaySteps: 110 });
 * if (s(5) !== 0.5 || s(10) !== 1 || Math.abs(s(60) - 0.5) > 1e-12 || s(110) !== 0) throw new Error("wrong");
 * ```
 */
export function warmupCosineDecaySchedule(options: WarmupCosineDecayScheduleOptions): Schedule {
  const init = checkNumber(options?.initValue, "initValue");
  const peak = checkNumber(options.peakValue, "peakValue");
  const warmup = checkNumber(options.warmupSteps, "warmupSteps", { min: 0 });
  const total = checkNumber(options.decaySteps, "decaySteps", { min: warmup, minInclusive: false });
  const end = checkNumber(options.endValue ?? 0, "endValue");
  const cosine = cosineDecaySchedule({ initValue: peak - end, decaySteps: total - warmup });
  return (count) => {
    if (count < warmup) return init + ((peak - init) * count) / warmup;
    return end + cosine(count - warmup);
  };
}
