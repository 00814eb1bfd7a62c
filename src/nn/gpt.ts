/**
 * A small GPT-style language model (the training demo's, bench/train.ts): token and learned
 * position embeddings, pre-norm blocks with causal self-attention and a GELU MLP, a final
 * LayerNorm and an untied head with bias. Optionally LayerScale (Touvron et al., "Going deeper with
 * image transformers", 2021): each residual branch is multiplied by a trainable per-channel gain
 * that starts small (the demo uses 1e-6, which puts the blocks' gradients below float16's smallest
 * subnormal: the model that makes float16's underflow visible).
 *
 * @module
 */

import { discard } from "../autodiff.ts";
import * as ops from "../ops/mod.ts";
import { full, ones, randn, type Tensor, zeros } from "../tensor.ts";

/** Sizes of {@linkcode gpt}. */
export interface GptConfig {
  readonly vocab: number;
  /** Sequence length (learned positions). */
  readonly context: number;
  readonly width: number;
  readonly heads: number;
  readonly layers: number;
  /** MLP hidden width. */
  readonly hidden: number;
  /** LayerScale's initial gain, or null for plain residuals (default null). */
  readonly layerScale?: number | null;
}

/** A linear layer's parameters. */
export interface GptLinear {
  readonly w: Tensor;
  readonly b: Tensor;
}

/** A LayerNorm's parameters. */
export interface GptNorm {
  readonly w: Tensor;
  readonly b: Tensor;
}

/** One block's parameters (gamma1 / gamma2 only with LayerScale). */
export interface GptBlock {
  readonly gamma1?: Tensor;
  readonly gamma2?: Tensor;
  readonly ln1: GptNorm;
  readonly qkv: GptLinear;
  readonly proj: GptLinear;
  readonly ln2: GptNorm;
  readonly fc: GptLinear;
  readonly out: GptLinear;
}

/** The model's parameters. */
export interface GptParams {
  readonly tokens: Tensor;
  readonly positions: Tensor;
  readonly blocks: readonly GptBlock[];
  readonly lnF: GptNorm;
  readonly head: GptLinear;
}

/** How each linear layer runs (default `ops.linear(x, w, b)`); named `blocks.<l>.<qkv|proj|fc|out>`. */
export type GptLinearFn = (x: Tensor, layer: GptLinear, name: string) => Tensor;

/** Options of the model's apply. */
export interface GptApplyOptions {
  /** Sequences in the batch; inputs hold batch * context ids. */
  readonly batch: number;
  /** Replaces the blocks' linear layers (LoRA over a frozen base, for example). */
  readonly linear?: GptLinearFn;
}

const plainLinear: GptLinearFn = (x, layer) => ops.linear(x, layer.w, layer.b);

/**
 * The demo's GPT: `init({ seed })` (GPT-2 init: N(0, 0.02), residual projections scaled by
 * 1/sqrt(2 layers)) and `apply(params, inputs, { batch, linear? })` -> next-token logits
 * [batch * context, vocab].
 *
 * @param config vocab, context, width, heads, layers, hidden, layerScale.
 * @returns The model.
 * @example
 * ```ts
 * import { gpt } from "./gpt.ts";
 * const model = gpt({ vocab: 10, context: 4, width: 8, heads: 2, layers: 1, hidden: 16, layerScale: 1e-6 });
 * const params = model.init({ seed: 0 });
 * using logits = model.apply(params, new Int32Array(8), { batch: 2 });
 * if (logits.shape.join() !== "8,10") throw new Error("shape");
 * ```
 */
export function gpt(config: GptConfig): {
  init(options: { readonly seed: number }): GptParams;
  apply(params: GptParams, inputs: Int32Array, options: GptApplyOptions): Tensor;
} {
  const { vocab, context, width, heads, layers, hidden } = config;
  for (const [key, value] of Object.entries({ vocab, context, width, heads, layers, hidden })) {
    if (!Number.isInteger(value) || value < 1)
      throw new RangeError(`gpt: ${key} must be a positive integer, got ${value}`);
  }
  if (width % heads !== 0) throw new RangeError(`gpt: width ${width} is not divisible by heads ${heads}`);
  const layerScale = config.layerScale ?? null;
  const linearInit = (out: number, inp: number, seed: number, std = 0.02): GptLinear => ({
    w: randn([out, inp], { seed, std }),
    b: zeros([out]),
  });
  const normInit = (): GptNorm => ({ w: ones([width]), b: zeros([width]) });
  return {
    init({ seed }) {
      const residualStd = 0.02 / Math.sqrt(2 * layers);
      const blocks: GptBlock[] = [];
      for (let l = 0; l < layers; l++) {
        const base = seed * 1000 + 10 * l;
        blocks.push({
          ...(layerScale === null ? {} : { gamma1: full([width], layerScale), gamma2: full([width], layerScale) }),
          ln1: normInit(),
          qkv: linearInit(3 * width, width, base + 1),
          proj: linearInit(width, width, base + 2, residualStd),
          ln2: normInit(),
          fc: linearInit(hidden, width, base + 3),
          out: linearInit(width, hidden, base + 4, residualStd),
        });
      }
      return {
        tokens: randn([vocab, width], { seed: seed * 1000 + 901, std: 0.02 }),
        positions: randn([context, width], { seed: seed * 1000 + 902, std: 0.01 }),
        blocks,
        lnF: normInit(),
        head: linearInit(vocab, width, seed * 1000 + 903),
      };
    },
    apply(params, inputs, { batch, linear = plainLinear }) {
      if (inputs.length !== batch * context) {
        throw new TypeError(`gpt: ${inputs.length} inputs for batch ${batch} of context ${context}`);
      }
      const residual = (x: Tensor, branch: Tensor, gamma: Tensor | undefined) => {
        const scaled = gamma === undefined ? branch : ops.mul(branch, gamma);
        const sum = ops.add(x, scaled);
        discard(branch, scaled); // Each is freed now unless a backward pass reads it (mul reads branch).
        return sum;
      };
      let x = ops.add(ops.embedding(params.tokens, inputs, [batch, context]), params.positions);
      params.blocks.forEach((block, l) => {
        const h = ops.layerNorm(x, block.ln1.w, block.ln1.b);
        const attention = ops.causalSelfAttention(linear(h, block.qkv, `blocks.${l}.qkv`), heads);
        x = residual(x, linear(attention, block.proj, `blocks.${l}.proj`), block.gamma1);
        const h2 = ops.layerNorm(x, block.ln2.w, block.ln2.b);
        const mlp = linear(ops.gelu(linear(h2, block.fc, `blocks.${l}.fc`)), block.out, `blocks.${l}.out`);
        x = residual(x, mlp, block.gamma2);
      });
      const logits = ops.linear(ops.layerNorm(x, params.lnF.w, params.lnF.b), params.head.w, params.head.b);
      return ops.reshape(logits, [batch * context, vocab]);
    },
  };
}
