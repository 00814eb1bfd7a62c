/**
 * A pre-norm GPT-2 transformer block: x + attn(norm1(x)), then + mlp(norm2(x)), with fused causal
 * self-attention (ops.causalSelfAttention) and optional gradient checkpointing of the whole block.
 *
 * @module
 */

import { discard, checkpoint as rematerialize, tidy } from "../autodiff.ts";
import type { Dtype } from "../dtype.ts";
import * as ops from "../ops/mod.ts";
import type { Tensor } from "../tensor.ts";
import { checkSeed, subSeed } from "./_init.ts";
import {
  ACTIVATIONS,
  type Layer,
  layerNorm,
  linear,
  type LinearParams,
  mlp,
  type MlpParams,
  rmsNorm,
} from "./layers.ts";

/** Options of {@linkcode transformerBlock}. */
export interface TransformerBlockOptions {
  /** Model width C. */
  readonly dim: number;
  /** Attention heads (must divide dim). */
  readonly heads: number;
  /** MLP hidden width as a multiple of dim (default 4). */
  readonly mlpRatio?: number;
  /** "layer" (default, GPT-2) or "rms" (LLaMA). */
  readonly norm?: "layer" | "rms";
  /** MLP activation (default "gelu_tanh", GPT-2's). */
  readonly activation?: keyof typeof ACTIVATIONS;
  /** Recompute the block in the backward pass instead of keeping its activations (default false). */
  readonly checkpoint?: boolean;
  readonly dtype?: Dtype;
}

/** Parameters of a transformer block. */
export interface TransformerBlockParams {
  readonly norm1: { readonly weight: Tensor; readonly bias?: Tensor };
  readonly attn: { readonly qkv: LinearParams; readonly proj: LinearParams };
  readonly norm2: { readonly weight: Tensor; readonly bias?: Tensor };
  readonly mlp: MlpParams;
}

/**
 * A pre-norm transformer block on [B, T, C] inputs.
 *
 * @param options dim, heads, mlpRatio, norm, activation, checkpoint, dtype.
 * @returns The layer.
 * @example
 * ```ts
 * import { transformerBlock } from "./transformer.ts";
 * import { randn } from "../tensor.ts";
 * const block = transformerBlock({ dim: 8, heads: 2 });
 * using x = randn([1, 3, 8], { seed: 0 });
 * using y = block.apply(block.init({ seed: 1 }), x);
 * if (y.shape.join() !== "1,3,8") throw new Error("shape");
 * ```
 */
export function transformerBlock(options: TransformerBlockOptions): Layer<TransformerBlockParams> {
  const dim = options?.dim;
  const heads = options?.heads;
  if (!Number.isInteger(dim) || dim < 1 || !Number.isInteger(heads) || heads < 1 || dim % heads !== 0) {
    throw new RangeError(`transformerBlock: heads (${heads}) must be a positive divisor of dim (${dim})`);
  }
  const hidden = Math.round(dim * (options.mlpRatio ?? 4));
  const makeNorm = options.norm === "rms" ? rmsNorm : layerNorm;
  if (options.norm !== undefined && options.norm !== "layer" && options.norm !== "rms") {
    throw new RangeError(`transformerBlock: norm must be "layer" or "rms", got ${JSON.stringify(options.norm)}`);
  }
  const norm = makeNorm({ dim, dtype: options.dtype }) as Layer<{ weight: Tensor; bias?: Tensor }>;
  const qkv = linear({ inFeatures: dim, outFeatures: 3 * dim, dtype: options.dtype });
  const proj = linear({ inFeatures: dim, outFeatures: dim, dtype: options.dtype });
  const feedForward = mlp({
    inFeatures: dim,
    hidden,
    activation: options.activation ?? "gelu_tanh",
    dtype: options.dtype,
  });
  const body = (params: TransformerBlockParams, x: Tensor): Tensor => {
    if (x.ndim !== 3 || x.shape[2] !== dim) {
      throw new TypeError(`transformerBlock: input [${x.shape.join(", ")}] must be [B, T, ${dim}]`);
    }
    const attended = ops.causalSelfAttention(qkv.apply(params.attn.qkv, norm.apply(params.norm1, x)), heads);
    // Each branch's output is done with once added to the residual stream (no backward reads it).
    const attnOut = proj.apply(params.attn.proj, attended);
    const h = ops.add(x, attnOut);
    discard(attnOut);
    const mlpOut = feedForward.apply(params.mlp, norm.apply(params.norm2, h));
    const out = ops.add(h, mlpOut);
    discard(mlpOut);
    return out;
  };
  const checkpointed = rematerialize(body);
  return {
    init({ seed }) {
      checkSeed(seed, "transformerBlock.init");
      return {
        norm1: norm.init({ seed: subSeed(seed, 0) }),
        attn: { qkv: qkv.init({ seed: subSeed(seed, 1) }), proj: proj.init({ seed: subSeed(seed, 2) }) },
        norm2: norm.init({ seed: subSeed(seed, 3) }),
        mlp: feedForward.init({ seed: subSeed(seed, 4) }),
      };
    },
    apply(params, x) {
      return tidy(() => (options.checkpoint ? checkpointed(params, x) : body(params, x)));
    },
  };
}
