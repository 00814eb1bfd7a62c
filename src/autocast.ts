/**
 * Functional autocast: `autocast(policy, fn, { deviceType })` runs fn with a precision policy in
 * force, and ops ask {@linkcode autocastDtype} which dtype to compute in. The op lists are
 * PyTorch's, one table per device type as in aten/src/ATen/autocast_mode.cpp:
 * {@linkcode AUTOCAST_OPS_BY_DEVICE}.cuda holds the CUDA lists ({@linkcode AUTOCAST_OPS}),
 * `.cpu` the CPU lists of torch.autocast("cpu"), verified op by op against torch 2.13
 * (test/fixtures/probe_autocast_cpu.py): on the CPU softmax, log_softmax, the norms, exp, log, pow,
 * sum, mean, cumsum and the like run in their input dtype, scaled_dot_product_attention is
 * lowered, and mv/addmv are not. The device type is the `device` an op passes (its input's), else
 * the `deviceType` autocast was given, else "cuda" (the lists mixprec has always used). Categories:
 *
 * - "lower": matmul-like ops, computed in the policy's compute dtype (float16 or bfloat16);
 * - "float32": ops whose range or accuracy suffers in 16 bits (softmax, log_softmax, losses, norms,
 *   exp, log, pow, reductions), computed in float32;
 * - "promote" (also every op not in the table): computed in the widest input dtype.
 *
 * A policy whose compute dtype is float32 turns autocast off, so an inner `autocast(fp32, ...)`
 * disables an outer mixed one. The policy in force follows fn's asynchronous extent too: it is
 * held in an AsyncLocalStorage, so code after an `await` inside fn still sees it, and code outside
 * fn (including other tasks running while fn awaits) never does. It is restored when fn throws.
 *
 * @module
 */

import { AsyncLocalStorage } from "node:async_hooks";
import { canonicalDtype, describeKind, type DtypeName } from "./dtype.ts";
import { isPolicy, type Policy } from "./policy.ts";
import { isTensor, type Tensor } from "./tensor.ts";

/** How autocast treats an op. */
export type AutocastCategory = "lower" | "float32" | "promote";

/**
 * The op table: op name -> category. Ops not listed promote to the widest input dtype.
 *
 * @example
 * ```ts
 * import { AUTOCAST_OPS } from "./autocast.ts";
 * if (AUTOCAST_OPS.matmul !== "lower" || AUTOCAST_OPS.softmax !== "float32") throw new Error("wrong table");
 * ```
 */
export const AUTOCAST_OPS: Readonly<Record<string, AutocastCategory>> = Object.freeze({
  // Lower precision: tensor-core friendly, accumulate in float32 inside the kernel.
  matmul: "lower",
  mm: "lower",
  mv: "lower",
  bmm: "lower",
  addmm: "lower",
  addmv: "lower",
  baddbmm: "lower",
  addbmm: "lower",
  scaled_dot_product_attention: "lower",
  linear: "lower",
  conv: "lower",
  conv1d: "lower",
  conv2d: "lower",
  conv3d: "lower",
  conv_transpose: "lower",
  einsum: "lower",
  prelu: "lower",
  // float32: range- or accuracy-sensitive.
  softmax: "float32",
  log_softmax: "float32",
  cross_entropy: "float32",
  nll_loss: "float32",
  mse_loss: "float32",
  l1_loss: "float32",
  smooth_l1_loss: "float32",
  huber_loss: "float32",
  kl_div: "float32",
  binary_cross_entropy_with_logits: "float32",
  layer_norm: "float32",
  rms_norm: "float32",
  group_norm: "float32",
  norm: "float32",
  exp: "float32",
  expm1: "float32",
  log: "float32",
  log1p: "float32",
  log2: "float32",
  log10: "float32",
  pow: "float32",
  reciprocal: "float32",
  rsqrt: "float32",
  softplus: "float32",
  logsumexp: "float32",
  sum: "float32",
  mean: "float32",
  prod: "float32",
  cumsum: "float32",
  cumprod: "float32",
  cosine_similarity: "float32",
  // Promote: elementwise ops with several inputs run in the widest.
  add: "promote",
  sub: "promote",
  mul: "promote",
  div: "promote",
  addcmul: "promote",
  addcdiv: "promote",
  cat: "promote",
  stack: "promote",
  where: "promote",
  dot: "promote",
});

/**
 * PyTorch's CPU autocast table (torch.autocast("cpu")), as probed on torch 2.13 by
 * test/fixtures/probe_autocast_cpu.py (every op of the CUDA table, plus scaled_dot_product_attention,
 * gelu and relu). Ops not listed promote.
 *
 * @example
 * ```ts
 * import { AUTOCAST_OPS_CPU } from "./autocast.ts";
 * if (AUTOCAST_OPS_CPU.softmax !== "promote" || AUTOCAST_OPS_CPU.scaled_dot_product_attention !== "lower") throw new Error("wrong table");
 * ```
 */
export const AUTOCAST_OPS_CPU: Readonly<Record<string, AutocastCategory>> = Object.freeze({
  // Lower precision (torch's CPU lower_precision_fp list).
  matmul: "lower",
  mm: "lower",
  bmm: "lower",
  addmm: "lower",
  baddbmm: "lower",
  addbmm: "lower",
  linear: "lower",
  conv: "lower",
  conv1d: "lower",
  conv2d: "lower",
  conv3d: "lower",
  conv_transpose: "lower",
  einsum: "lower",
  prelu: "lower",
  scaled_dot_product_attention: "lower",
  // float32 (torch's CPU fp32 list): the losses, and prod.
  cross_entropy: "float32",
  nll_loss: "float32",
  mse_loss: "float32",
  l1_loss: "float32",
  smooth_l1_loss: "float32",
  huber_loss: "float32",
  kl_div: "float32",
  binary_cross_entropy_with_logits: "float32",
  prod: "float32",
  // Run in the input dtype on the CPU (fp32 on CUDA), or promote to the widest input.
  mv: "promote",
  addmv: "promote",
  softmax: "promote",
  log_softmax: "promote",
  layer_norm: "promote",
  rms_norm: "promote",
  group_norm: "promote",
  norm: "promote",
  exp: "promote",
  expm1: "promote",
  log: "promote",
  log1p: "promote",
  log2: "promote",
  log10: "promote",
  pow: "promote",
  reciprocal: "promote",
  rsqrt: "promote",
  softplus: "promote",
  logsumexp: "promote",
  sum: "promote",
  mean: "promote",
  cumsum: "promote",
  cumprod: "promote",
  cosine_similarity: "promote",
  add: "promote",
  sub: "promote",
  mul: "promote",
  div: "promote",
  addcmul: "promote",
  addcdiv: "promote",
  cat: "promote",
  stack: "promote",
  where: "promote",
  dot: "promote",
  gelu: "promote",
  relu: "promote",
});

/** The device types autocast has op lists for. */
export type AutocastDeviceType = "cpu" | "cuda";

/**
 * The op tables per device type: CUDA's lists for cuda tensors, CPU's for CPU tensors.
 *
 * @example
 * ```ts
 * import { AUTOCAST_OPS_BY_DEVICE } from "./autocast.ts";
 * if (AUTOCAST_OPS_BY_DEVICE.cuda.mv !== "lower" || AUTOCAST_OPS_BY_DEVICE.cpu.mv !== "promote") throw new Error("wrong");
 * ```
 */
export const AUTOCAST_OPS_BY_DEVICE: Readonly<Record<AutocastDeviceType, Readonly<Record<string, AutocastCategory>>>> =
  Object.freeze({ cuda: AUTOCAST_OPS, cpu: AUTOCAST_OPS_CPU });

/**
 * The widest of two dtypes: the narrowest dtype that holds both exactly. float16 and bfloat16
 * promote to float32 (as in PyTorch); fp8 values fit in either 16-bit type.
 */
const PROMOTE: Readonly<Record<DtypeName, Readonly<Record<DtypeName, DtypeName>>>> = Object.freeze({
  float32: {
    float32: "float32",
    float16: "float32",
    bfloat16: "float32",
    float8_e4m3fn: "float32",
    float8_e5m2: "float32",
  },
  float16: {
    float32: "float32",
    float16: "float16",
    bfloat16: "float32",
    float8_e4m3fn: "float16",
    float8_e5m2: "float16",
  },
  bfloat16: {
    float32: "float32",
    float16: "float32",
    bfloat16: "bfloat16",
    float8_e4m3fn: "bfloat16",
    float8_e5m2: "bfloat16",
  },
  float8_e4m3fn: {
    float32: "float32",
    float16: "float16",
    bfloat16: "bfloat16",
    float8_e4m3fn: "float8_e4m3fn",
    float8_e5m2: "float16",
  },
  float8_e5m2: {
    float32: "float32",
    float16: "float16",
    bfloat16: "bfloat16",
    float8_e4m3fn: "float16",
    float8_e5m2: "float8_e5m2",
  },
});

interface AutocastContext {
  readonly policy: Policy;
  readonly deviceType: AutocastDeviceType | null;
}

const store = new AsyncLocalStorage<AutocastContext | null>();

/** "cpu" or "cuda" for a device string ("cpu", "cuda", "cuda:1") or device type. */
function deviceTypeOf(device: string): AutocastDeviceType {
  if (device === "cpu") return "cpu";
  if (device === "cuda" || /^cuda:\d+$/.test(device)) return "cuda";
  throw new RangeError(`Unknown device ${JSON.stringify(device)} for autocast: use "cpu" or "cuda" (or "cuda:N")`);
}

/**
 * The policy in force: the innermost `autocast` around the caller, or null outside any.
 *
 * @returns The policy, or null.
 * @example
 * ```ts
 * import { autocast, currentPolicy } from "./autocast.ts";
 * import { getPolicy } from "./policy.ts";
 * const inner = autocast(getPolicy("mixed_bf16"), () => currentPolicy()?.compute);
 * if (inner() !== "bfloat16" || currentPolicy() !== null) throw new Error("wrong policy");
 * ```
 */
export function currentPolicy(): Policy | null {
  return store.getStore()?.policy ?? null;
}

/**
 * The device type whose op lists apply: that of `device` when given, else the `deviceType` the
 * innermost autocast was given, else "cuda".
 *
 * @param device An op's device ("cpu", "cuda:0"), optional.
 * @returns "cpu" or "cuda".
 * @example
 * ```ts
 * import { autocast, currentDeviceType } from "./autocast.ts";
 * import { getPolicy } from "./policy.ts";
 * if (autocast(getPolicy("mixed_bf16"), () => currentDeviceType(), { deviceType: "cpu" })() !== "cpu") throw new Error("wrong");
 * if (currentDeviceType("cuda:1") !== "cuda" || currentDeviceType() !== "cuda") throw new Error("wrong");
 * ```
 */
export function currentDeviceType(device?: string): AutocastDeviceType {
  if (device !== undefined) return deviceTypeOf(device);
  return store.getStore()?.deviceType ?? "cuda";
}

/**
 * The category of an op in a device type's autocast table ("promote" for ops not listed).
 *
 * @param op An op name such as "matmul".
 * @param deviceType "cuda" (default) or "cpu".
 * @returns "lower", "float32" or "promote".
 * @example
 * ```ts
 * import { autocastCategory } from "./autocast.ts";
 * if (autocastCategory("linear") !== "lower" || autocastCategory("relu") !== "promote") throw new Error("wrong");
 * ```
 */
export function autocastCategory(op: string, deviceType: AutocastDeviceType = "cuda"): AutocastCategory {
  if (typeof op !== "string") throw new TypeError(`An op name is a string, got ${describeKind(op)}`);
  const table = AUTOCAST_OPS_BY_DEVICE[deviceTypeOf(deviceType)];
  return Object.hasOwn(table, op) ? table[op]! : "promote";
}

/**
 * The widest of some dtypes (float32 for none).
 *
 * @param dtypes Dtype names or aliases.
 * @returns The narrowest dtype that holds all of them exactly.
 * @example
 * ```ts
 * import { promoteDtypes } from "./autocast.ts";
 * if (promoteDtypes(["bf16", "f16"]) !== "float32" || promoteDtypes(["bf16"]) !== "bfloat16") throw new Error("wrong");
 * ```
 */
export function promoteDtypes(dtypes: readonly string[]): DtypeName {
  if (!Array.isArray(dtypes))
    throw new TypeError(`promoteDtypes takes an array of dtypes, got ${describeKind(dtypes)}`);
  if (dtypes.length === 0) return "float32";
  let widest = canonicalDtype(dtypes[0]);
  for (let i = 1; i < dtypes.length; i++) widest = PROMOTE[widest][canonicalDtype(dtypes[i])];
  return widest;
}

/**
 * The dtype an op computes in under the policy in force: the compute dtype for "lower" ops,
 * float32 for "float32" ops, the widest input dtype for the rest. Outside autocast, or under a
 * policy whose compute dtype is float32, every op computes in its widest input dtype.
 *
 * @param op The op name (see {@linkcode AUTOCAST_OPS}).
 * @param inputDtypes The dtypes of the op's floating-point inputs.
 * @param device The op's device (its inputs'), which picks the device type's op lists; without it
 *   the autocast's `deviceType` (default "cuda") does.
 * @returns The dtype to cast inputs to and compute in.
 * @example
 * ```ts
 * import { autocast, autocastDtype } from "./autocast.ts";
 * import { getPolicy } from "./policy.ts";
 * const f = autocast(getPolicy("mixed_f16"), () => [
 *   autocastDtype("matmul", ["float32", "float32"]),
 *   autocastDtype("softmax", ["float16"]),
 *   autocastDtype("add", ["float16", "float32"]),
 * ]);
 * if (f().join() !== "float16,float32,float32") throw new Error("wrong dispatch");
 * if (autocastDtype("matmul", ["float32"]) !== "float32") throw new Error("autocast leaked");
 * ```
 */
export function autocastDtype(op: string, inputDtypes: readonly string[], device?: string): DtypeName {
  const category = autocastCategory(op, currentDeviceType(device));
  const widest = promoteDtypes(inputDtypes);
  const policy = currentPolicy();
  if (policy === null || policy.compute === "float32") return widest;
  if (category === "lower") return policy.compute;
  if (category === "float32") return "float32";
  return widest;
}

/**
 * Wraps fn so that it runs with `policy` in force. Nestable; the previous policy is back in force
 * when fn returns or throws. For an async fn the policy holds through its awaits (see the module
 * docs), and only there.
 *
 * @param policy A policy from getPolicy (compute float32 turns autocast off inside).
 * @param fn The function to run.
 * @param options deviceType: whose op lists apply to ops that do not pass their device ("cuda",
 *   the default, or "cpu"), as torch.autocast's device_type.
 * @returns A function with fn's parameters and result.
 * @example
 * ```ts
 * import { autocast, currentPolicy } from "./autocast.ts";
 * import { getPolicy } from "./policy.ts";
 * const outer = autocast(getPolicy("mixed_bf16"), () => autocast(getPolicy("fp32"), () => currentPolicy()!.compute)());
 * if (outer() !== "float32") throw new Error("inner policy not in force");
 * ```
 */
export function autocast<A extends unknown[], R>(
  policy: Policy,
  fn: (...args: A) => R,
  options: { readonly deviceType?: AutocastDeviceType } = {},
): (...args: A) => R {
  if (!isPolicy(policy)) {
    throw new TypeError(
      `autocast takes a policy from getPolicy(), got ${describeKind(policy)}: e.g. getPolicy("mixed_bf16")`,
    );
  }
  if (typeof fn !== "function") throw new TypeError(`autocast takes a function to run, got ${describeKind(fn)}`);
  const deviceType = options.deviceType === undefined ? null : deviceTypeOf(options.deviceType);
  const context: AutocastContext = { policy, deviceType };
  return (...args: A) => store.run(context, fn, ...args);
}

/** Inputs cast for an op by {@linkcode autocastTensors}; disposing it frees only the casts it made. */
export interface AutocastTensors extends Disposable {
  /** The dtype the op computes in. */
  readonly dtype: DtypeName;
  /** The inputs in that dtype: an input already in it is passed as is, others are new casts. */
  readonly tensors: readonly Tensor[];
  /** Frees the casts made here (never the caller's inputs). */
  dispose(): void;
}

/**
 * Casts an op's tensor inputs to the dtype {@linkcode autocastDtype} chooses. Use with `using` so
 * the temporary casts are freed when the op is done.
 *
 * @param op The op name.
 * @param inputs The op's floating-point tensor inputs.
 * @returns The dtype and the inputs in it.
 * @example
 * ```ts
 * import { autocast, autocastTensors } from "./autocast.ts";
 * import { getPolicy } from "./policy.ts";
 * import { tensor } from "./tensor.ts";
 * using a = tensor([1, 2]);
 * autocast(getPolicy("mixed_bf16"), () => {
 *   using cast = autocastTensors("matmul", [a]);
 *   if (cast.dtype !== "bfloat16" || cast.tensors[0]!.dtype !== "bfloat16") throw new Error("not cast");
 * })();
 * ```
 */
export function autocastTensors(op: string, inputs: readonly Tensor[]): AutocastTensors {
  if (!Array.isArray(inputs))
    throw new TypeError(`autocastTensors takes an array of tensors, got ${describeKind(inputs)}`);
  inputs.forEach((input, i) => {
    if (!isTensor(input)) throw new TypeError(`Input ${i} of ${op} is a ${describeKind(input)}, not a Tensor`);
  });
  const dtype = autocastDtype(
    op,
    inputs.map((t) => t.dtype),
    inputs[0]?.device,
  );
  const made: Tensor[] = [];
  const dispose = () => {
    for (const t of made) t.dispose();
  };
  let tensors: Tensor[];
  try {
    tensors = inputs.map((t) => {
      if (t.dtype === dtype) return t;
      const cast = t.to(dtype);
      made.push(cast);
      return cast;
    });
  } catch (error) {
    dispose();
    throw error;
  }
  return Object.freeze({ dtype, tensors: Object.freeze(tensors), dispose, [Symbol.dispose]: dispose });
}
