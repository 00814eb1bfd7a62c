/**
 * Precision policies, as in jmp (jmp/_src/policy.py): which dtype parameters are stored in, which
 * dtype computation runs in, and which dtype outputs come back in, as one frozen value parsed
 * from a short string.
 *
 * Grammar: a preset (`fp32`, `mixed_bf16`, `mixed_f16`, `pure_bf16`), a single dtype (all three
 * parts), or comma-separated `key=dtype` parts with keys `params`/`param`/`p`, `compute`/`c`,
 * `output`/`o` and any dtype name or alias (`float32 f32 full`, `float16 f16 half`,
 * `bfloat16 bf16`). Missing parts default as in jmp: params float32, compute follows params,
 * output follows compute (`"c=bf16"` is params float32, compute and output bfloat16).
 *
 * @module
 */

import { canonicalDtype, describeKind, type DtypeName } from "./dtype.ts";
import { isTensor, type Tensor } from "./tensor.ts";
import { type Tree, treeMap } from "./tree.ts";

/** The dtypes a policy part may name. */
export type PolicyDtype = "float32" | "float16" | "bfloat16";

/** A precision policy: an immutable value. */
export interface Policy {
  /** Storage dtype of parameters (and of master weights). */
  readonly param: PolicyDtype;
  /** Dtype computation runs in (autocast's lower-precision dtype when it is not float32). */
  readonly compute: PolicyDtype;
  /** Dtype of outputs handed back to the caller. */
  readonly output: PolicyDtype;
  /**
   * Casts every tensor leaf to `param`; other leaves pass through. Returns a new tree whose tensor
   * leaves are all new tensors the caller owns (even where the dtype already matched); the input
   * tree and its tensors are untouched.
   */
  castToParam<T>(tree: Tree<T>): Tree<T>;
  /** As castToParam, to `compute`. */
  castToCompute<T>(tree: Tree<T>): Tree<T>;
  /** As castToParam, to `output`. */
  castToOutput<T>(tree: Tree<T>): Tree<T>;
  /** The same policy with another output dtype (jmp's `with_output_dtype`). */
  withOutputDtype(output: string): Policy;
  /** `params=<dtype>,compute=<dtype>,output=<dtype>`, which getPolicy parses back to an equal policy. */
  toString(): string;
}

/** Extra spellings accepted in policy strings, beyond dtype.ts's names and aliases (jmp's). */
const POLICY_ALIASES: Readonly<Record<string, PolicyDtype>> = Object.freeze({
  full: "float32",
  half: "float16",
});

const PRESETS: Readonly<Record<string, string>> = Object.freeze({
  fp32: "params=float32,compute=float32,output=float32",
  mixed_bf16: "params=float32,compute=bfloat16,output=float32",
  mixed_f16: "params=float32,compute=float16,output=float32",
  pure_bf16: "params=bfloat16,compute=bfloat16,output=bfloat16",
});

const KEYS: Readonly<Record<string, "param" | "compute" | "output">> = Object.freeze({
  params: "param",
  param: "param",
  p: "param",
  compute: "compute",
  c: "compute",
  output: "output",
  o: "output",
});

const POLICY_DTYPES: ReadonlySet<DtypeName> = new Set(["float32", "float16", "bfloat16"]);

/**
 * The preset names and the policy strings they stand for.
 *
 * @example
 * ```ts
 * import { getPolicy, POLICY_PRESETS } from "./policy.ts";
 * if (getPolicy(POLICY_PRESETS.mixed_bf16!).compute !== "bfloat16") throw new Error("wrong preset");
 * ```
 */
export const POLICY_PRESETS: Readonly<Record<string, string>> = PRESETS;

/** Whether `text` names a dtype (fp8 included, so parseDtype can say why policies refuse it). */
function isDtypeWord(text: string): boolean {
  if (Object.hasOwn(POLICY_ALIASES, text)) return true;
  try {
    canonicalDtype(text);
    return true;
  } catch {
    return false;
  }
}

function parseDtype(text: string, whole: string): PolicyDtype {
  let dtype: DtypeName;
  if (Object.hasOwn(POLICY_ALIASES, text)) dtype = POLICY_ALIASES[text]!;
  else {
    try {
      dtype = canonicalDtype(text);
    } catch {
      throw new SyntaxError(
        `Unknown dtype "${text}" in policy "${whole}": use float32 (f32, full), float16 (f16, half) or bfloat16 (bf16)`,
      );
    }
  }
  if (!POLICY_DTYPES.has(dtype)) {
    throw new RangeError(
      `Policy "${whole}" names ${dtype}: policies use float32, float16 or bfloat16 (fp8 needs per-tensor scaling, not a policy)`,
    );
  }
  return dtype as PolicyDtype;
}

function castFloating<T>(tree: Tree<T>, dtype: PolicyDtype): Tree<T> {
  return treeMap((leaf: T) => (isTensor(leaf) ? ((leaf as Tensor).to(dtype) as T) : leaf), tree);
}

function makePolicy(param: PolicyDtype, compute: PolicyDtype, output: PolicyDtype): Policy {
  const self: Policy = Object.freeze({
    param,
    compute,
    output,
    castToParam: <T>(tree: Tree<T>) => castFloating(tree, param),
    castToCompute: <T>(tree: Tree<T>) => castFloating(tree, compute),
    castToOutput: <T>(tree: Tree<T>) => castFloating(tree, output),
    withOutputDtype: (dtype: string) => makePolicy(param, compute, parseDtype(String(dtype), String(dtype))),
    toString: () => `params=${param},compute=${compute},output=${output}`,
  });
  return self;
}

/**
 * Parses a precision policy string (see the module docs for the grammar).
 *
 * @param name A preset, a dtype, or `key=dtype` parts such as "params=float32,compute=bfloat16".
 * @returns The policy.
 * @throws {SyntaxError} When the string does not parse (the message quotes the bad part).
 * @throws {RangeError} When it names a dtype policies do not use (fp8).
 * @example
 * ```ts
 * import { getPolicy } from "./policy.ts";
 * const p = getPolicy("p=f32,c=bf16");
 * if (p.param !== "float32" || p.compute !== "bfloat16" || p.output !== "bfloat16") throw new Error("bad parse");
 * if (getPolicy(String(p)).toString() !== p.toString()) throw new Error("no round trip");
 * ```
 */
export function getPolicy(name: string): Policy {
  if (typeof name !== "string") {
    throw new TypeError(
      `getPolicy takes a string such as "params=float32,compute=bfloat16", got ${describeKind(name)}`,
    );
  }
  const whole = name.trim();
  if (whole === "") {
    throw new SyntaxError(`Empty policy string: pass a preset (${Object.keys(PRESETS).join(", ")}) or "p=f32,c=bf16"`);
  }
  if (Object.hasOwn(PRESETS, whole)) return getPolicy(PRESETS[whole]!);
  if (!whole.includes("=")) {
    if (!isDtypeWord(whole)) {
      throw new SyntaxError(
        `Unknown policy "${whole}": use a preset (${Object.keys(PRESETS).join(", ")}), a dtype (float32, float16, bfloat16), or parts such as "params=float32,compute=bfloat16"`,
      );
    }
    const dtype = parseDtype(whole, name);
    return makePolicy(dtype, dtype, dtype);
  }
  const parts: Partial<Record<"param" | "compute" | "output", PolicyDtype>> = {};
  for (const rawPart of whole.split(",")) {
    const part = rawPart.trim();
    const match = /^([A-Za-z_]+)\s*=\s*([A-Za-z0-9_]+)$/.exec(part);
    if (match === null) {
      throw new SyntaxError(
        `Cannot parse "${part}" in policy "${name}": write parts as key=dtype separated by commas, e.g. "params=float32,compute=bfloat16"`,
      );
    }
    const key = match[1]!;
    if (!Object.hasOwn(KEYS, key)) {
      throw new SyntaxError(`Unknown key "${key}" in policy "${name}": use params (p), compute (c) or output (o)`);
    }
    const field = KEYS[key]!;
    if (parts[field] !== undefined) {
      throw new SyntaxError(`Policy "${name}" sets ${field} twice: give each of params, compute, output once`);
    }
    parts[field] = parseDtype(match[2]!, name);
  }
  const param = parts.param ?? "float32";
  const compute = parts.compute ?? param;
  const output = parts.output ?? compute;
  return makePolicy(param, compute, output);
}

/**
 * Whether a value is a policy made by getPolicy.
 *
 * @param value Anything.
 * @returns true for a policy.
 * @example
 * ```ts
 * import { getPolicy, isPolicy } from "./policy.ts";
 * if (!isPolicy(getPolicy("fp32")) || isPolicy({ compute: "float32" })) throw new Error("wrong answer");
 * ```
 */
export function isPolicy(value: unknown): value is Policy {
  if (typeof value !== "object" || value === null) return false;
  const v = value as Record<string, unknown>;
  return (
    POLICY_DTYPES.has(v.param as DtypeName) &&
    POLICY_DTYPES.has(v.compute as DtypeName) &&
    POLICY_DTYPES.has(v.output as DtypeName) &&
    typeof v.castToCompute === "function"
  );
}
