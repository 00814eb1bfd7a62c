/**
 * LoRA by target module over a model's parameter record (PEFT's `target_modules`): the targeted
 * projections' weights are frozen in the base storage, every other parameter is frozen too, and
 * new adapters `<module>.lora_A.weight` [r, in] / `<module>.lora_B.weight` [out, r] are the only
 * trainable tensors. Precision is declared once per branch: the frozen base (bfloat16, float16,
 * int8 or int4; float32 for reference runs) and the adapters (float32, float16 or bfloat16); each
 * branch computes in its own dtype and the adapter update is added in the base branch's dtype.
 *
 * @module
 */

import { canonicalDtype, type DtypeName } from "../dtype.ts";
import { type PrecisionConfig, validatePrecisionConfig } from "../precision_config.ts";
import { isTensor, type Tensor, tensor } from "../tensor.ts";
import { filled, subSeed, uniform } from "./_init.ts";
import { LORA_CONFIG, type LoraAdapters, type LoraConfig, type ModelParams } from "./_model.ts";
import { type BaseStorage, FrozenWeight, freezeWeight } from "./lora.ts";

/** Options of {@linkcode injectLora}. */
export interface InjectLoraOptions {
  /** Module names or suffixes to adapt (PEFT's rule: the module is the name or ends with ".name"). */
  readonly targetModules: readonly string[];
  /** Rank. */
  readonly r: number;
  /** Scaling numerator (update * alpha / r). */
  readonly alpha: number;
  /** Dropout on the adapter branch's input (applied when apply gets a dropoutSeed; default 0). */
  readonly dropout?: number;
  /** Frozen base storage: "bfloat16" (default), "float16", "int8", "int4" or "float32". */
  readonly baseDtype?: BaseStorage;
  /** Adapter dtype: "float32" (default), "float16" or "bfloat16". */
  readonly adapterDtype?: "float32" | "float16" | "bfloat16";
  /** The dtype the adapted modules' frozen branch computes in (default: autocast's choice). */
  readonly baseCompute?: "float32" | "float16" | "bfloat16";
  /** The dtype the adapter branch computes in (default: autocast's choice). */
  readonly adapterCompute?: "float32" | "float16" | "bfloat16";
  /** The training precision, checked together with the base and adapters (validatePrecisionConfig). */
  readonly precision?: PrecisionConfig;
  /** Seed of lora_A's initialisation (default 0). */
  readonly seed?: number;
}

/** What {@linkcode injectLora} returns. */
export interface InjectedLora {
  /** The trainable adapters (float tensors; differentiate these). */
  readonly adapters: Record<string, Tensor>;
  /** Every base parameter, frozen: pass as the model's params; the LoRA config rides along. */
  readonly frozen: ModelParams;
  /** The adapters' config (for savePeftAdapter and apply). */
  readonly config: LoraConfig;
}

/** Whether a module name matches PEFT's target_modules list. */
export function targets(module: string, targetModules: readonly string[]): boolean {
  return targetModules.some((target) => module === target || module.endsWith(`.${target}`));
}

/** Attaches a LoRA config to frozen params (not enumerable, so trees and saves ignore it). */
export function withLoraConfig(params: ModelParams, config: LoraConfig): ModelParams {
  const out = { ...params };
  Object.defineProperty(out, LORA_CONFIG, { value: config, enumerable: false });
  return Object.freeze(out);
}

/**
 * Freezes a model's parameters and adds LoRA adapters to the target modules. lora_A starts
 * uniform in +-1/sqrt(in) (PEFT's Kaiming-uniform bound), lora_B at zero, so the model's output is
 * unchanged until the adapters train.
 *
 * @param params The model's parameters (Hugging Face names; not consumed).
 * @param options targetModules, r, alpha, dropout, baseDtype, adapterDtype, precision, seed.
 * @returns `{ adapters, frozen, config }`.
 * @example
 * ```ts
 * import { injectLora, llama } from "./mod.ts";
 * const model = llama({ vocab_size: 16, hidden_size: 8, intermediate_size: 16, num_hidden_layers: 1, num_attention_heads: 2 });
 * const { adapters, frozen } = injectLora(model.init({ seed: 0 }), { targetModules: ["q_proj", "v_proj"], r: 2, alpha: 4 });
 * if (Object.keys(adapters).length !== 4) throw new Error("A and B for two modules");
 * using logits = model.apply(frozen, [1, 2], { adapters });
 * if (logits.shape.join() !== "1,2,16") throw new Error("shape");
 * ```
 */
export function injectLora(params: ModelParams, options: InjectLoraOptions): InjectedLora {
  const { targetModules, r, alpha } = options;
  if (!Array.isArray(targetModules) || targetModules.length === 0) {
    throw new TypeError(`injectLora: targetModules must list module names, e.g. ["q_proj", "v_proj"]`);
  }
  if (!Number.isInteger(r) || r < 1) throw new RangeError(`injectLora: r must be a positive integer, got ${r}`);
  if (!Number.isFinite(alpha)) throw new RangeError(`injectLora: alpha must be finite, got ${alpha}`);
  const dropout = options.dropout ?? 0;
  if (!(dropout >= 0 && dropout < 1)) throw new RangeError(`injectLora: dropout must be in [0, 1), got ${dropout}`);
  const base = options.baseDtype ?? "bfloat16";
  const adapterDtype = canonicalDtype(options.adapterDtype ?? "float32");
  if (!["float32", "float16", "bfloat16"].includes(adapterDtype)) {
    throw new RangeError(`injectLora: adapterDtype must be float32, float16 or bfloat16, got ${adapterDtype}`);
  }
  const baseCompute = options.baseCompute === undefined ? undefined : canonicalDtype(options.baseCompute);
  const adapterCompute = options.adapterCompute === undefined ? undefined : canonicalDtype(options.adapterCompute);
  for (const compute of [baseCompute, adapterCompute]) {
    // Each branch's compute dtype is checked against the base storage as autocast's would be.
    validatePrecisionConfig({
      ...options.precision,
      compute: compute ?? options.precision?.compute,
      lora: { base, adapters: adapterDtype },
    });
  }
  const floatBase: DtypeName | null = base === "int8" || base === "int4" ? null : base;
  const frozen: Record<string, Tensor | FrozenWeight> = {};
  const adapters: Record<string, Tensor> = {};
  let index = 0;
  for (const [name, value] of Object.entries(params)) {
    const module = name.endsWith(".weight") ? name.slice(0, -".weight".length) : null;
    const tensorValue = value instanceof FrozenWeight ? null : value;
    if (module !== null && tensorValue !== null && tensorValue.ndim === 2 && targets(module, targetModules)) {
      const [out, inp] = tensorValue.shape as [number, number];
      frozen[name] = freezeWeight(tensorValue, base);
      adapters[`${module}.lora_A.weight`] = uniform(
        [r, inp],
        1 / Math.sqrt(inp),
        subSeed(options.seed ?? 0, index++),
        adapterDtype,
      );
      adapters[`${module}.lora_B.weight`] = filled([out, r], 0, adapterDtype);
    } else if (isTensor(tensorValue) && floatBase !== null && tensorValue.dtype !== floatBase) {
      frozen[name] = tensorValue.to(floatBase);
    } else {
      frozen[name] = value;
    }
  }
  if (index === 0) {
    throw new RangeError(`injectLora: no 2-D weight matches targetModules ${JSON.stringify(targetModules)}`);
  }
  const config: LoraConfig = Object.freeze({
    targetModules: [...targetModules],
    r,
    alpha,
    dropout,
    adapterDtype,
    ...(baseCompute === undefined ? {} : { baseCompute }),
    ...(adapterCompute === undefined ? {} : { adapterCompute }),
  });
  return { adapters, frozen: withLoraConfig(frozen, config), config };
}

/**
 * Folds adapters into their base weights for export: W + (alpha / r) B A, in float32 and then in
 * the base weight's dtype (a quantized base is dequantized to float32).
 *
 * @param params The base parameters (plain tensors or the frozen record; not consumed).
 * @param adapters The adapters.
 * @param config Their config (default: the one attached to params by injectLora).
 * @returns New parameters with the same names; untouched tensors are shared, not copied.
 * @example
 * ```ts
 * import { injectLora, llama, mergeLora } from "./mod.ts";
 * const model = llama({ vocab_size: 16, hidden_size: 8, intermediate_size: 16, num_hidden_layers: 1, num_attention_heads: 2 });
 * const params = model.init({ seed: 0 });
 * const { adapters, config } = injectLora(params, { targetModules: ["q_proj"], r: 2, alpha: 2, baseDtype: "float32" });
 * const merged = mergeLora(params, adapters, config);
 * if (merged["model.layers.0.self_attn.q_proj.weight"]!.dtype !== "float32") throw new Error("dtype kept");
 * ```
 */
export function mergeLora(params: ModelParams, adapters: LoraAdapters, config?: LoraConfig): Record<string, Tensor> {
  const lora = config ?? (params as { [LORA_CONFIG]?: LoraConfig })[LORA_CONFIG];
  if (lora === undefined) throw new TypeError("mergeLora: pass the adapters' config (r, alpha)");
  const scaling = lora.alpha / lora.r;
  const out: Record<string, Tensor> = {};
  for (const [name, value] of Object.entries(params)) {
    const module = name.endsWith(".weight") ? name.slice(0, -".weight".length) : null;
    const a = module === null ? undefined : adapters[`${module}.lora_A.weight`];
    const b = module === null ? undefined : adapters[`${module}.lora_B.weight`];
    if (a === undefined || b === undefined) {
      out[name] = value instanceof FrozenWeight ? (value.tensor ?? fromFrozen(value)) : value;
      continue;
    }
    const weight = value instanceof FrozenWeight ? value.dequantize() : value.toArray();
    const [rows, cols] = value.shape as [number, number];
    const av = a.toArray();
    const bv = b.toArray();
    const rank = a.shape[0]!;
    const merged = new Float32Array(rows * cols);
    for (let i = 0; i < rows; i++) {
      for (let j = 0; j < cols; j++) {
        let acc = 0;
        for (let k = 0; k < rank; k++) acc += bv[i * rank + k]! * av[k * cols + j]!;
        merged[i * cols + j] = weight[i * cols + j]! + scaling * acc;
      }
    }
    const dtype = value instanceof FrozenWeight ? (value.tensor?.dtype ?? "float32") : value.dtype;
    const full = tensorOf(merged, [rows, cols]);
    out[name] = dtype === "float32" ? full : convert(full, dtype);
  }
  return out;
}

function tensorOf(values: Float32Array, shape: readonly number[]): Tensor {
  return tensor(values, { shape });
}

function fromFrozen(value: FrozenWeight): Tensor {
  return tensorOf(value.dequantize(), value.shape);
}

function convert(t: Tensor, dtype: DtypeName): Tensor {
  const out = t.to(dtype);
  t.dispose();
  return out;
}
