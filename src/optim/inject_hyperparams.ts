/**
 * injectHyperparams: hyperparameters kept in the state, changeable between steps.
 *
 * @module
 */

import {
  checkState,
  freezeState,
  type GradientTransformation,
  type OptState,
  type Params,
  resolveHyper,
  type Schedule,
  type Updates,
} from "./transformation.ts";

/** State of {@linkcode injectHyperparams}. */
export interface InjectHyperparamsState<H extends Record<string, number>> extends OptState {
  readonly kind: "injectHyperparams";
  /** Steps taken (the argument schedules see). */
  readonly count: number;
  /** The values used by the next step (schedules write their value at each step). */
  readonly hyperparams: Readonly<H>;
  readonly inner: OptState;
}

/**
 * Makes the numeric hyperparameters of a transformation factory part of its state (optax's
 * inject_hyperparams): `injectHyperparams(adamw)({ lr: 1e-3, weightDecay: 0.01 })`. Each update
 * rebuilds the transformation from the state's values, so change them between steps with
 * {@linkcode setHyperparams}; a schedule given instead of a number is evaluated at every step
 * (its value shows in `state.hyperparams`). The factory's state layout must not depend on the
 * injected numbers (true of every factory here).
 *
 * @param factory A function from options to a transformation, e.g. `adamw`.
 * @returns A function from the initial hyperparameters to the transformation.
 * @example
 * ```ts
 * import { tensor } from "../tensor.ts";
 * import { injectHyperparams, setHyperparams } from "./inject_hyperparams.ts";
 * import { sgd } from "./sgd.ts";
 * const tx = injectHyperparams(sgd)({ lr: 1 });
 * using g = tensor([2]);
 * const state = setHyperparams(tx.init([g]), { lr: 0.5 });
 * const [u] = tx.update([g], state);
 * if ((u as any)[0].toArray()[0] !== -1) throw new Error("lr not injected");
 * ```
 */
export function injectHyperparams<O extends Record<string, unknown>>(factory: (options: O) => GradientTransformation) {
  return <H extends { [K in keyof O]?: number | Schedule }>(
    hyperparams: H,
  ): GradientTransformation<InjectHyperparamsState<Record<string, number>>> => {
    const entries = Object.entries(hyperparams ?? {});
    const schedules = new Map(entries.filter(([, v]) => typeof v === "function") as [string, Schedule][]);
    const resolve = (count: number, current: Readonly<Record<string, number>>) => {
      const values: Record<string, number> = { ...current };
      for (const [name, schedule] of schedules) values[name] = resolveHyper(schedule, count, name);
      return Object.freeze(values);
    };
    const initial: Record<string, number> = {};
    for (const [name, value] of entries) {
      if (typeof value !== "function") initial[name] = resolveHyper(value as number, 0, name);
    }
    return {
      init(params: Params) {
        const values = resolve(0, initial);
        return freezeState({
          kind: "injectHyperparams",
          count: 0,
          hyperparams: values,
          inner: factory(values as unknown as O).init(params),
        });
      },
      update(updates: Updates, state: InjectHyperparamsState<Record<string, number>>, params?: Params) {
        checkState(state, "injectHyperparams");
        const values = resolve(state.count, state.hyperparams);
        const [out, innerState] = factory(values as unknown as O).update(updates, state.inner, params);
        return [
          out,
          freezeState({ ...state, count: state.count + 1, hyperparams: values, inner: innerState }),
        ] as const;
      },
    };
  };
}

/**
 * A copy of an injectHyperparams state with some hyperparameters replaced (for the next step).
 *
 * @param state The current state.
 * @param values The new values, e.g. `{ lr: 1e-4 }`.
 * @returns The new state (the old one must not be used again).
 * @example
 * ```ts
 * import { tensor } from "../tensor.ts";
 * import { injectHyperparams, setHyperparams } from "./inject_hyperparams.ts";
 * import { sgd } from "./sgd.ts";
 * using p = tensor([0]);
 * const s = setHyperparams(injectHyperparams(sgd)({ lr: 1 }).init([p]), { lr: 0.1 });
 * if (s.hyperparams.lr !== 0.1) throw new Error("not set");
 * ```
 */
export function setHyperparams<H extends Record<string, number>>(
  state: InjectHyperparamsState<H>,
  values: Partial<H>,
): InjectHyperparamsState<H> {
  checkState(state, "injectHyperparams");
  for (const [name, value] of Object.entries(values)) {
    if (!(name in state.hyperparams)) {
      throw new TypeError(
        `setHyperparams: ${JSON.stringify(name)} is not an injected hyperparameter (known: ${Object.keys(state.hyperparams).join(", ")}): pass it to injectHyperparams first`,
      );
    }
    if (typeof value !== "number" || Number.isNaN(value))
      throw new TypeError(`setHyperparams: ${name} must be a number, got ${String(value)}`);
  }
  return freezeState({ ...state, hyperparams: Object.freeze({ ...state.hyperparams, ...values }) });
}
