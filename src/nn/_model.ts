/**
 * Shared plumbing of the model families: flat parameter records keyed by Hugging Face names, the
 * projection that runs a (possibly frozen or quantized) base weight plus an attached LoRA branch,
 * and the inputs' shape checks.
 *
 * @module
 */

import { track } from "../autodiff.ts";
import { autocast, currentPolicy } from "../autocast.ts";
import { getPolicy } from "../policy.ts";
import { validatePrecisionConfig } from "../precision_config.ts";
import type { DtypeName } from "../dtype.ts";
import * as ops from "../ops/mod.ts";
import { type Device, isTensor, type Tensor, tensor } from "../tensor.ts";
import { FrozenWeight } from "./lora.ts";

/** A model's parameters: Hugging Face tensor names -> tensors (or frozen weights after injectLora). */
export type ModelParams = Readonly<Record<string, Tensor | FrozenWeight>>;

/** Trainable LoRA adapters: `<module>.lora_A.weight` [r, in] and `<module>.lora_B.weight` [out, r]. */
export type LoraAdapters = Readonly<Record<string, Tensor>>;

/** How attached adapters run (what injectLora and loadPeftAdapter return beside the tensors). */
export interface LoraConfig {
  /** Module name suffixes the adapters target (e.g. ["q_proj", "v_proj"]). */
  readonly targetModules: readonly string[];
  /** Rank. */
  readonly r: number;
  /** Scaling numerator: the update is multiplied by alpha / r. */
  readonly alpha: number;
  /** Dropout on the adapter branch's input while training (default 0). */
  readonly dropout?: number;
  /** The adapters' storage dtype (default float32). */
  readonly adapterDtype?: DtypeName;
  /** The dtype the adapted modules' frozen branch computes in (default: autocast's choice). */
  readonly baseCompute?: DtypeName;
  /** The dtype the adapter branch computes in (default: autocast's choice). */
  readonly adapterCompute?: DtypeName;
}

/** Where frozen params keep the LoRA config injectLora attached (not enumerable: no tree sees it). */
export const LORA_CONFIG = Symbol("mixprec.loraConfig");

/** Options every family's apply accepts. */
export interface ApplyOptions {
  /** [B, T] of the flat ids (default [1, ids.length]). */
  readonly shape?: readonly [number, number];
  /** Padding mask [B * T]: 1 keep, 0 pad. */
  readonly attentionMask?: Int32Array | readonly number[];
  /** LoRA adapters to attach (from injectLora or loadPeftAdapter). */
  readonly adapters?: LoraAdapters;
  /** Their config (default: the one injectLora attached to the frozen params). */
  readonly lora?: LoraConfig;
  /** A seed for adapter dropout; dropout runs only when given. */
  readonly dropoutSeed?: number;
}

/**
 * The attention ops' padding mask from a family's `attentionMask` option: a float32 [B, T] tensor
 * on `device` (1 keeps a key, 0 pads), owned by the innermost scope; null when there is none.
 */
export function maskTensor(
  mask: Int32Array | readonly number[] | undefined,
  batch: number,
  steps: number,
  device: Device,
): Tensor | null {
  if (mask === undefined) return null;
  if (mask.length !== batch * steps) {
    throw new TypeError(
      `attentionMask has ${mask.length} entries, expected B * T = ${batch} * ${steps}: pass one 0/1 per token`,
    );
  }
  return track(tensor(Float32Array.from(mask), { shape: [batch, steps], device }));
}

/** The run context of one forward pass. */
export interface Context {
  readonly params: ModelParams;
  readonly adapters: LoraAdapters | null;
  readonly scaling: number;
  readonly dropout: number;
  readonly adapterDtype: DtypeName;
  readonly baseCompute: DtypeName | null;
  readonly adapterCompute: DtypeName | null;
  seed: number | null;
}

/** Builds the forward pass's context from apply's params and options. */
export function context(params: ModelParams, options: ApplyOptions): Context {
  const adapters = options.adapters ?? null;
  const lora = options.lora ?? (params as { [LORA_CONFIG]?: LoraConfig })[LORA_CONFIG] ?? null;
  if (adapters !== null && lora === null) {
    throw new TypeError("apply: adapters were given without their LoRA config: pass { lora } (r, alpha)");
  }
  return {
    params,
    adapters,
    scaling: lora === null ? 1 : lora.alpha / lora.r,
    dropout: lora?.dropout ?? 0,
    adapterDtype: lora?.adapterDtype ?? "float32",
    baseCompute: lora?.baseCompute ?? null,
    adapterCompute: lora?.adapterCompute ?? null,
    seed: options.dropoutSeed ?? null,
  };
}

/** A parameter that must exist, as a Tensor (frozen float weights give their tensor). */
export function param(ctx: Context, name: string): Tensor {
  const value = ctx.params[name];
  if (value === undefined) throw new TypeError(`The parameters have no ${JSON.stringify(name)}: is the config right?`);
  if (value instanceof FrozenWeight) {
    if (value.tensor !== null) return value.tensor;
    // A quantized base is dequantized to float32 on the fly; autocast would undo the saving.
    const policy = currentPolicy();
    if (policy !== null) {
      const quantization = value.kind as "int8" | "int4";
      validatePrecisionConfig({ params: policy.param, compute: policy.compute, output: policy.output, quantization });
    }
    return track(tensor(value.dequantize(), { shape: value.shape }));
  }
  return value;
}

/** An optional parameter (a bias). */
export function optionalParam(ctx: Context, name: string): Tensor | null {
  return ctx.params[name] === undefined ? null : param(ctx, name);
}

/**
 * The projection `module` (weights `<module>.weight`, optional `<module>.bias`) on x, plus its LoRA
 * branch when an adapter targets it: scaling * B(A(dropout(x))), computed in the adapters' dtype.
 */
export function project(ctx: Context, module: string, x: Tensor): Tensor {
  const a = ctx.adapters?.[`${module}.lora_A.weight`];
  // A float32 base compute widens a low-precision input too (autocast at float32 only stops lowering).
  const base = () => {
    const input = ctx.baseCompute === "float32" && x.dtype !== "float32" ? ops.toDtype(x, "float32") : x;
    return ops.linear(input, param(ctx, `${module}.weight`), optionalParam(ctx, `${module}.bias`));
  };
  if (a === undefined) return base();
  const b = ctx.adapters![`${module}.lora_B.weight`];
  if (!isTensor(b)) throw new TypeError(`LoRA adapter ${module} has lora_A but no lora_B`);
  const branch = () => {
    let input = x.dtype === a.dtype ? x : ops.toDtype(x, a.dtype);
    if (ctx.dropout > 0 && ctx.seed !== null) input = ops.dropout(input, { rate: ctx.dropout, seed: ctx.seed++ });
    const update = ops.linear(ops.linear(input, a), b);
    return ctx.scaling === 1 ? update : ops.scale(update, ctx.scaling);
  };
  const out = inCompute(ctx.baseCompute, base);
  const scaled = inCompute(ctx.adapterCompute, branch);
  return ops.add(out, scaled.dtype === out.dtype ? scaled : ops.toDtype(scaled, out.dtype));
}

/** Runs fn with its matmuls in `dtype` (an autocast policy of that compute dtype), or as it stands. */
function inCompute(dtype: DtypeName | null, fn: () => Tensor): Tensor {
  if (dtype === null) return fn();
  return autocast(getPolicy(`p=float32,c=${dtype},o=${dtype}`), fn)();
}

/** Checks ids against [B, T] and returns the shape. */
export function idsShape(ids: Int32Array | readonly number[], options: ApplyOptions, what: string): [number, number] {
  const shape = options.shape ?? [1, ids.length];
  if (shape.length !== 2 || shape[0]! * shape[1]! !== ids.length) {
    throw new TypeError(
      `${what}: ${ids.length} ids do not fill the shape [${shape.join(", ")}]: pass { shape: [B, T] }`,
    );
  }
  if (options.attentionMask !== undefined && options.attentionMask.length !== ids.length) {
    throw new TypeError(`${what}: attentionMask has ${options.attentionMask.length} entries, expected ${ids.length}`);
  }
  return [shape[0]!, shape[1]!];
}

/** A config number that must be present. */
export function required(config: Readonly<Record<string, unknown>>, key: string, family: string): number {
  const value = config[key];
  if (typeof value !== "number" || !Number.isFinite(value)) {
    throw new TypeError(`${family} config needs a number ${JSON.stringify(key)}, got ${JSON.stringify(value)}`);
  }
  return value;
}
