/**
 * Layers as pairs of pure functions, Haiku / Flax style: a factory takes the layer's sizes and
 * returns `{ init, apply }`; `init({ seed })` returns a parameter pytree (plain objects of tensors)
 * and `apply(params, x)` runs the layer with the ops (so it is differentiable and follows
 * autocast). Parameters are plain data: cast them with a Policy, save them with safetensors,
 * differentiate them with valueAndGrad.
 *
 * @module
 */

import { canonicalDtype, type Dtype, type DtypeName } from "../dtype.ts";
import { tidy } from "../autodiff.ts";
import * as ops from "../ops/mod.ts";
import type { Tensor } from "../tensor.ts";
import { checkSeed, filled, subSeed, uniform } from "./_init.ts";
import { randn } from "../tensor.ts";

/** A layer: init makes parameters, apply runs the layer on them. */
export interface Layer<P, X = Tensor, Y = Tensor> {
  /** New parameters (the caller owns them). */
  init(options: { readonly seed: number }): P;
  /** The layer's output for parameters and an input. */
  apply(params: P, x: X): Y;
}

function positiveInteger(value: unknown, what: string): number {
  if (!Number.isInteger(value) || (value as number) < 1) {
    throw new RangeError(`${what} must be a positive integer, got ${String(value)}`);
  }
  return value as number;
}

function paramDtype(dtype: Dtype | undefined): DtypeName {
  const name = canonicalDtype(dtype ?? "float32");
  if (name !== "float32" && name !== "float16" && name !== "bfloat16") {
    throw new RangeError(`Parameter dtype ${name} is not trainable: use float32, float16 or bfloat16`);
  }
  return name;
}

/** Options of {@linkcode linear}. */
export interface LinearOptions {
  readonly inFeatures: number;
  readonly outFeatures: number;
  /** Add a bias (default true). */
  readonly bias?: boolean;
  /** Parameter dtype (default float32). */
  readonly dtype?: Dtype;
}

/** Parameters of a linear layer: weight [out, in] (PyTorch layout) and an optional bias [out]. */
export interface LinearParams {
  readonly weight: Tensor;
  readonly bias?: Tensor;
}

/**
 * A dense layer y = x W^T + b, initialized as PyTorch's nn.Linear (uniform in +-1/sqrt(in)).
 *
 * @param options inFeatures, outFeatures, bias, dtype.
 * @returns The layer.
 * @example
 * ```ts
 * import { linear } from "./layers.ts";
 * import { ones } from "../tensor.ts";
 * const layer = linear({ inFeatures: 3, outFeatures: 2 });
 * const params = layer.init({ seed: 0 });
 * using y = layer.apply(params, ones([4, 3]));
 * if (y.shape.join() !== "4,2") throw new Error("shape");
 * ```
 */
export function linear(options: LinearOptions): Layer<LinearParams> {
  const inFeatures = positiveInteger(options?.inFeatures, "linear: inFeatures");
  const outFeatures = positiveInteger(options.outFeatures, "linear: outFeatures");
  const dtype = paramDtype(options.dtype);
  const withBias = options.bias ?? true;
  return {
    init({ seed }) {
      checkSeed(seed, "linear.init");
      const bound = 1 / Math.sqrt(inFeatures);
      const weight = uniform([outFeatures, inFeatures], bound, subSeed(seed, 0), dtype);
      if (!withBias) return { weight };
      return { weight, bias: uniform([outFeatures], bound, subSeed(seed, 1), dtype) };
    },
    apply(params, x) {
      return ops.linear(x, params.weight, params.bias);
    },
  };
}

/** Options of {@linkcode embedding}. */
export interface EmbeddingOptions {
  readonly vocabulary: number;
  readonly dim: number;
  /** Standard deviation of the initial values (default 0.02, as GPT-2). */
  readonly std?: number;
  readonly dtype?: Dtype;
}

/** Token ids for an embedding: ids and their shape. */
export interface TokenIds {
  readonly ids: ops.Ids;
  readonly shape?: readonly number[];
}

/**
 * A token embedding table [vocabulary, dim]; apply gathers rows for `{ ids, shape }`.
 *
 * @param options vocabulary, dim, std, dtype.
 * @returns The layer.
 * @example
 * ```ts
 * import { embedding } from "./layers.ts";
 * const layer = embedding({ vocabulary: 10, dim: 4 });
 * const params = layer.init({ seed: 1 });
 * using y = layer.apply(params, { ids: [1, 2, 3], shape: [1, 3] });
 * if (y.shape.join() !== "1,3,4") throw new Error("shape");
 * ```
 */
export function embedding(options: EmbeddingOptions): Layer<{ readonly table: Tensor }, TokenIds> {
  const vocabulary = positiveInteger(options?.vocabulary, "embedding: vocabulary");
  const dim = positiveInteger(options.dim, "embedding: dim");
  const dtype = paramDtype(options.dtype);
  const std = options.std ?? 0.02;
  return {
    init({ seed }) {
      checkSeed(seed, "embedding.init");
      return { table: randn([vocabulary, dim], { seed, std, dtype }) };
    },
    apply(params, x) {
      return ops.embedding(params.table, x.ids, x.shape);
    },
  };
}

/** Options of {@linkcode layerNorm} and {@linkcode rmsNorm}. */
export interface NormOptions {
  readonly dim: number;
  readonly eps?: number;
  readonly dtype?: Dtype;
}

/**
 * Layer normalization with a learned scale (ones) and shift (zeros).
 *
 * @param options dim, eps (default 1e-5), dtype.
 * @returns The layer.
 * @example
 * ```ts
 * import { layerNorm } from "./layers.ts";
 * import { tensor } from "../tensor.ts";
 * const layer = layerNorm({ dim: 2 });
 * using y = layer.apply(layer.init({ seed: 0 }), tensor([[1, 3]]));
 * if (Math.abs(y.toArray()[1]! - 1) > 1e-4) throw new Error("normalized");
 * ```
 */
export function layerNorm(options: NormOptions): Layer<{ readonly weight: Tensor; readonly bias: Tensor }> {
  const dim = positiveInteger(options?.dim, "layerNorm: dim");
  const dtype = paramDtype(options.dtype);
  const eps = options.eps ?? 1e-5;
  return {
    init({ seed }) {
      checkSeed(seed, "layerNorm.init");
      return { weight: filled([dim], 1, dtype), bias: filled([dim], 0, dtype) };
    },
    apply(params, x) {
      return ops.layerNorm(x, params.weight, params.bias, eps);
    },
  };
}

/**
 * RMS normalization with a learned scale (ones).
 *
 * @param options dim, eps (default 1e-6), dtype.
 * @returns The layer.
 * @example
 * ```ts
 * import { rmsNorm } from "./layers.ts";
 * import { tensor } from "../tensor.ts";
 * const layer = rmsNorm({ dim: 2 });
 * using y = layer.apply(layer.init({ seed: 0 }), tensor([[2, 2]]));
 * if (Math.abs(y.toArray()[0]! - 1) > 1e-5) throw new Error("normalized");
 * ```
 */
export function rmsNorm(options: NormOptions): Layer<{ readonly weight: Tensor }> {
  const dim = positiveInteger(options?.dim, "rmsNorm: dim");
  const dtype = paramDtype(options.dtype);
  const eps = options.eps ?? 1e-6;
  return {
    init({ seed }) {
      checkSeed(seed, "rmsNorm.init");
      return { weight: filled([dim], 1, dtype) };
    },
    apply(params, x) {
      return ops.rmsNorm(x, params.weight, eps);
    },
  };
}

/** Activations by name. */
export const ACTIVATIONS = Object.freeze({
  gelu: (x: Tensor) => ops.gelu(x),
  gelu_tanh: (x: Tensor) => ops.gelu(x, { approximate: "tanh" }),
  relu: ops.relu,
  silu: ops.silu,
  tanh: ops.tanh,
});

/** Options of {@linkcode mlp}. */
export interface MlpOptions {
  readonly inFeatures: number;
  readonly hidden: number;
  /** Output width (default inFeatures). */
  readonly outFeatures?: number;
  /** Activation between the two layers (default "gelu"). */
  readonly activation?: keyof typeof ACTIVATIONS;
  readonly dtype?: Dtype;
}

/** Parameters of an MLP. */
export interface MlpParams {
  readonly fc: LinearParams;
  readonly proj: LinearParams;
}

/**
 * Two dense layers with an activation between them: proj(act(fc(x))).
 *
 * @param options inFeatures, hidden, outFeatures, activation, dtype.
 * @returns The layer.
 * @example
 * ```ts
 * import { mlp } from "./layers.ts";
 * import { ones } from "../tensor.ts";
 * const layer = mlp({ inFeatures: 4, hidden: 16 });
 * using y = layer.apply(layer.init({ seed: 0 }), ones([2, 4]));
 * if (y.shape.join() !== "2,4") throw new Error("shape");
 * ```
 */
export function mlp(options: MlpOptions): Layer<MlpParams> {
  const inFeatures = positiveInteger(options?.inFeatures, "mlp: inFeatures");
  const hidden = positiveInteger(options.hidden, "mlp: hidden");
  const outFeatures = positiveInteger(options.outFeatures ?? inFeatures, "mlp: outFeatures");
  const name = options.activation ?? "gelu";
  const activation = ACTIVATIONS[name];
  if (activation === undefined) {
    throw new RangeError(`mlp: unknown activation ${JSON.stringify(name)}: use ${Object.keys(ACTIVATIONS).join(", ")}`);
  }
  const fc = linear({ inFeatures, outFeatures: hidden, dtype: options.dtype });
  const proj = linear({ inFeatures: hidden, outFeatures, dtype: options.dtype });
  return {
    init({ seed }) {
      checkSeed(seed, "mlp.init");
      return { fc: fc.init({ seed: subSeed(seed, 0) }), proj: proj.init({ seed: subSeed(seed, 1) }) };
    },
    apply(params, x) {
      return tidy(() => proj.apply(params.proj, activation(fc.apply(params.fc, x))));
    },
  };
}
