/**
 * The checkpoint form of the fused optimizers' state (PyTorch's `state_dict` / `load_state_dict`
 * for fusedAdamW and fusedSgd): validation that names the offending entry and writes nothing.
 *
 * @module
 */

import { describeKind, type DtypeName } from "../dtype.ts";
import { getPolicy, type Policy } from "../policy.ts";
import { Tensor } from "../tensor.ts";

/** The version of the fused optimizers' state dict. */
export const FUSED_STATE_VERSION = 1;

/** One parameter's entry: named tensors (PyTorch's names) or null where the option is off. */
export type FusedEntry = Record<string, Tensor | null>;

/** What a fused optimizer's `stateDict()` returns and `loadStateDict()` takes. */
export interface FusedStateDict {
  readonly kind: "fusedAdamW" | "fusedSgd";
  readonly version: number;
  /** Applied steps: PyTorch's `step`; it also counts the stochastic-rounding stream. */
  readonly step: number;
  /** The stochastic-rounding seed; each step's stream is a pure function of (seed, step, leaf). */
  readonly seed: number;
  /** The options the state depends on; loading checks them against the new optimizer's. */
  readonly options: Readonly<Record<string, string | number | boolean>>;
  /** One entry per parameter (empty before the first step); the tensors are the optimizer's own. */
  readonly state: readonly FusedEntry[];
}

/** How each named tensor of an entry must look. */
export interface EntrySpec {
  readonly name: string;
  /** The dtype it must have. */
  readonly dtype: DtypeName;
  /** true: the entry must be null; false: it must be a Tensor; "either": a Tensor or null. */
  readonly absent: boolean | "either";
}

/**
 * Checks a state dict against the optimizer's kind, options and entry layout, and returns the
 * entries' tensors to copy. Throws (TypeError for wrong kinds, RangeError for wrong values)
 * naming the entry, before anything is written.
 * @internal
 */
export function checkFusedStateDict(
  value: unknown,
  kind: FusedStateDict["kind"],
  seed: number,
  options: Readonly<Record<string, string | number | boolean>>,
  specs: readonly EntrySpec[],
): { step: number; entries: (Tensor | null)[][] } {
  const fix = `pass the stateDict() of a ${kind} created with the same options`;
  if (typeof value !== "object" || value === null) {
    throw new TypeError(`${kind}.loadStateDict() takes the object stateDict() returned, got ${describeKind(value)}`);
  }
  const dict = value as Record<string, unknown>;
  if (dict.kind !== kind) throw new TypeError(`state_dict kind is ${JSON.stringify(dict.kind)}, not "${kind}": ${fix}`);
  if (dict.version !== FUSED_STATE_VERSION) {
    throw new RangeError(`state_dict version ${String(dict.version)} is not ${FUSED_STATE_VERSION}: ${fix}`);
  }
  const step = dict.step;
  if (typeof step !== "number" || !Number.isSafeInteger(step) || step < 0) {
    throw new RangeError(`state_dict step must be a non-negative integer, got ${String(step)}: ${fix}`);
  }
  if (dict.seed !== seed) {
    throw new RangeError(`state_dict seed ${String(dict.seed)} differs from this optimizer's seed ${seed}: ${fix}`);
  }
  const saved = (dict.options ?? {}) as Record<string, unknown>;
  for (const [key, expected] of Object.entries(options)) {
    if (saved[key] !== expected) {
      throw new RangeError(
        `state_dict options.${key} is ${JSON.stringify(saved[key])} but this optimizer has ${JSON.stringify(expected)}: ${fix}`,
      );
    }
  }
  if (!Array.isArray(dict.state)) throw new TypeError(`state_dict state must be an array of entries: ${fix}`);
  const state = dict.state as unknown[];
  if ((step === 0) !== (state.length === 0) && step === 0) {
    throw new RangeError(`state_dict step is 0 but it holds ${state.length} entries: ${fix}`);
  }
  const entries = state.map((raw, i) => {
    if (typeof raw !== "object" || raw === null) {
      throw new TypeError(`state_dict state[${i}] must be an object of tensors, got ${describeKind(raw)}`);
    }
    const entry = raw as Record<string, unknown>;
    const known = new Set(specs.map((s) => s.name));
    for (const key of Object.keys(entry)) {
      if (!known.has(key)) throw new RangeError(`state_dict state[${i}] has an unknown key "${key}": ${fix}`);
    }
    let shape: readonly number[] | null = null;
    return specs.map(({ name, dtype, absent }) => {
      const where = `state_dict state[${i}].${name}`;
      const t = entry[name] ?? null;
      if (t === null) {
        if (absent === false) throw new TypeError(`${where} is missing: ${fix}`);
        return null;
      }
      if (absent === true) throw new RangeError(`${where} is present, but this optimizer keeps none: ${fix}`);
      if (!(t instanceof Tensor)) throw new TypeError(`${where} must be a Tensor, got ${describeKind(t)}`);
      if (t.disposed) throw new TypeError(`${where} is disposed: load the state dict before disposing it`);
      if (t.dtype !== dtype) throw new TypeError(`${where} is ${t.dtype}, expected ${dtype}: ${fix}`);
      if (shape === null) shape = t.shape;
      else if (t.shape.join() !== shape.join()) {
        throw new TypeError(
          `${where} has shape [${t.shape.join(", ")}] against [${shape.join(", ")}] for the entry's other tensors: ${fix}`,
        );
      }
      return t;
    });
  });
  return { step, entries };
}

/**
 * Checks that the params of the first step after a load match the loaded entries: count, shape,
 * and a float32 master exactly for the non-float32 params when master weights are on.
 * @internal
 */
export function checkLoadedParams(
  kind: string,
  params: readonly Tensor[],
  master: readonly (Tensor | null)[],
  shapes: readonly (readonly number[] | null)[],
  masterWeights: boolean,
): void {
  const fix = "load the state dict of a run over the same parameters";
  if (params.length !== shapes.length) {
    throw new TypeError(`${kind}: the loaded state has ${shapes.length} entries but ${params.length} params: ${fix}`);
  }
  params.forEach((p, i) => {
    const shape = shapes[i] ?? p.shape; // null: the entry holds no tensor (no master, no momentum)
    if (p.shape.join() !== shape.join()) {
      throw new TypeError(
        `${kind}: loaded state[${i}] has shape [${shape.join(", ")}] but param ${i} is [${p.shape.join(", ")}]: ${fix}`,
      );
    }
    const wantsMaster = masterWeights && p.dtype !== "float32";
    if (wantsMaster !== (master[i] !== null)) {
      throw new TypeError(
        `${kind}: loaded state[${i}].master is ${master[i] === null ? "absent" : "present"} but param ${i} is ${p.dtype}${masterWeights ? "" : " (masterWeights off)"}: ${fix}`,
      );
    }
  });
}

/**
 * Resolves a fused optimizer's `policy` option (a Policy or a policy string) to the params dtype it
 * demands, or null when none was given.
 * @internal
 */
export function policyParamDtype(policy: Policy | string | undefined): { dtype: DtypeName; name: string } | null {
  if (policy === undefined) return null;
  const resolved = typeof policy === "string" ? getPolicy(policy) : policy;
  if (typeof resolved !== "object" || resolved === null || typeof resolved.param !== "string") {
    throw new TypeError(`policy must be a Policy or a policy string, got ${describeKind(policy)}`);
  }
  return { dtype: resolved.param, name: String(resolved) };
}

/**
 * Throws when a parameter's dtype contradicts the policy the optimizer was told (float16 params
 * under "mixed_bf16", whose params are float32), before anything is written.
 * @internal
 */
export function checkPolicyParams(
  kind: string,
  params: readonly Tensor[],
  policy: { dtype: DtypeName; name: string } | null,
): void {
  if (policy === null) return;
  const index = params.findIndex((p) => p.dtype !== policy.dtype);
  if (index < 0) return;
  throw new TypeError(
    `${kind}: param ${index} is ${params[index]!.dtype} but the policy "${policy.name}" stores params as ${policy.dtype}: cast the params with policy.castToParam, or pass the policy they were made under`,
  );
}
