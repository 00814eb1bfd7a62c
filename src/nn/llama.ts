/**
 * LLaMA-family causal language models (transformers' LlamaForCausalLM) as `{ init, apply }` over a
 * flat parameter record with Hugging Face's names, so a checkpoint loads without a mapping table.
 *
 * @module
 */

import { discard, tidy } from "../autodiff.ts";
import * as ops from "../ops/mod.ts";
import { ones as onesTensor, randn, type Tensor } from "../tensor.ts";
import {
  type ApplyOptions,
  context,
  type Context,
  idsShape,
  maskTensor,
  type ModelParams,
  param,
  project,
  required,
} from "./_model.ts";

/** A LLaMA config.json (the keys mixprec reads; transformers 4 and 5 spellings). */
export interface LlamaConfig {
  readonly model_type?: string;
  readonly vocab_size: number;
  readonly hidden_size: number;
  readonly intermediate_size: number;
  readonly num_hidden_layers: number;
  readonly num_attention_heads: number;
  readonly num_key_value_heads?: number;
  readonly head_dim?: number;
  readonly rms_norm_eps?: number;
  readonly rope_theta?: number;
  readonly rope_scaling?: Readonly<Record<string, unknown>> | null;
  readonly rope_parameters?: Readonly<Record<string, unknown>> | null;
  readonly tie_word_embeddings?: boolean;
  readonly attention_bias?: boolean;
  readonly mlp_bias?: boolean;
  readonly initializer_range?: number;
  readonly [key: string]: unknown;
}

/** A model family: parameters from a seed, and logits (or hidden states) from ids. */
export interface Model {
  /** Freshly initialised float32 parameters (the caller owns them). */
  init(options: { readonly seed: number }): Record<string, Tensor>;
  /** The forward pass. */
  apply(params: ModelParams, ids: Int32Array | readonly number[], options?: ApplyOptions): Tensor;
}

/**
 * The RoPE inverse frequencies a config asks for: "default" (theta^(-2i/D)) or "llama3" (low
 * frequencies divided by factor, a smooth ramp between, as transformers'
 * _compute_llama3_parameters).
 *
 * @param config The model config.
 * @returns Inverse frequencies [head_dim / 2] in float32.
 * @example
 * ```ts
 * import { ropeInvFreq } from "./llama.ts";
 * const f = ropeInvFreq({ vocab_size: 8, hidden_size: 8, intermediate_size: 8, num_hidden_layers: 1, num_attention_heads: 2 });
 * if (f.length !== 2 || f[0] !== 1) throw new Error("theta^0");
 * ```
 */
export function ropeInvFreq(config: LlamaConfig): Float32Array {
  const rope = { ...(config.rope_scaling ?? {}), ...(config.rope_parameters ?? {}) } as Record<string, unknown>;
  const theta = (rope.rope_theta as number | undefined) ?? config.rope_theta ?? 10000;
  const type = (rope.rope_type ?? rope.type ?? "default") as string;
  const dim = headDim(config);
  const inv = ops.ropeInvFreq(dim, theta);
  if (type === "default") return inv;
  if (type !== "llama3") {
    throw new RangeError(`llama: rope_type ${JSON.stringify(type)} is not supported: use "default" or "llama3"`);
  }
  const factor = rope.factor as number;
  const low = rope.low_freq_factor as number;
  const high = rope.high_freq_factor as number;
  const original = rope.original_max_position_embeddings as number;
  const lowWavelen = original / low;
  const highWavelen = original / high;
  const out = new Float32Array(inv.length);
  for (let i = 0; i < inv.length; i++) {
    const f = inv[i]!;
    const wavelen = Math.fround((2 * Math.PI) / f);
    const scaled = wavelen > lowWavelen ? Math.fround(f / factor) : f;
    const medium = !(wavelen < highWavelen) && !(wavelen > lowWavelen);
    if (medium) {
      const smooth = Math.fround((Math.fround(original / wavelen) - low) / (high - low));
      out[i] = Math.fround(Math.fround(((1 - smooth) * scaled) / factor) + Math.fround(smooth * scaled));
    } else {
      out[i] = scaled;
    }
  }
  return out;
}

function headDim(config: LlamaConfig): number {
  return config.head_dim ?? config.hidden_size / config.num_attention_heads;
}

/**
 * A LLaMA causal LM: RMSNorm (eps from config), RoPE (default or llama3 scaling), grouped-query
 * attention, SwiGLU MLP, tied or untied lm_head, padding masks. `apply(params, ids, { shape,
 * attentionMask, adapters })` returns logits [B, T, vocab].
 *
 * @param config A LLaMA config.json object.
 * @returns The model.
 * @example
 * ```ts
 * import { llama } from "./llama.ts";
 * const model = llama({ vocab_size: 16, hidden_size: 8, intermediate_size: 16, num_hidden_layers: 1, num_attention_heads: 2, num_key_value_heads: 1 });
 * const params = model.init({ seed: 0 });
 * using logits = model.apply(params, [1, 2, 3], { shape: [1, 3] });
 * if (logits.shape.join() !== "1,3,16") throw new Error("shape");
 * ```
 */
export function llama(config: LlamaConfig): Model {
  const family = "llama";
  for (const key of ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"]) {
    required(config, key, family);
  }
  const heads = config.num_attention_heads;
  const kvHeads = config.num_key_value_heads ?? heads;
  const dim = headDim(config);
  const eps = config.rms_norm_eps ?? 1e-6;
  const tied = config.tie_word_embeddings ?? false;
  const invFreq = ropeInvFreq(config);
  const layers = config.num_hidden_layers;

  const attentionBlock = (ctx: Context, prefix: string, x: Tensor, keep: Tensor | null): Tensor => {
    const [batch, steps] = x.shape as [number, number, number];
    const q = ops.reshape(project(ctx, `${prefix}.q_proj`, x), [batch, steps, heads, dim]);
    const k = ops.reshape(project(ctx, `${prefix}.k_proj`, x), [batch, steps, kvHeads, dim]);
    const v = ops.reshape(project(ctx, `${prefix}.v_proj`, x), [batch, steps, kvHeads, dim]);
    const out = ops.attention(ops.rope(q, { invFreq }), ops.rope(k, { invFreq }), v, { causal: true, mask: keep });
    return project(ctx, `${prefix}.o_proj`, ops.reshape(out, [batch, steps, heads * dim]));
  };

  return {
    init({ seed }) {
      const std = config.initializer_range ?? 0.02;
      const params: Record<string, Tensor> = {};
      let n = 0;
      const normal = (name: string, shape: number[]) => {
        params[name] = randn(shape, { seed: (seed * 7919 + n++) >>> 0, std });
      };
      const ones = (name: string, size: number) => {
        params[name] = onesTensor([size]);
      };
      const { hidden_size: width, intermediate_size: hidden, vocab_size: vocab } = config;
      normal("model.embed_tokens.weight", [vocab, width]);
      for (let l = 0; l < layers; l++) {
        const p = `model.layers.${l}`;
        ones(`${p}.input_layernorm.weight`, width);
        normal(`${p}.self_attn.q_proj.weight`, [heads * dim, width]);
        normal(`${p}.self_attn.k_proj.weight`, [kvHeads * dim, width]);
        normal(`${p}.self_attn.v_proj.weight`, [kvHeads * dim, width]);
        normal(`${p}.self_attn.o_proj.weight`, [width, heads * dim]);
        ones(`${p}.post_attention_layernorm.weight`, width);
        normal(`${p}.mlp.gate_proj.weight`, [hidden, width]);
        normal(`${p}.mlp.up_proj.weight`, [hidden, width]);
        normal(`${p}.mlp.down_proj.weight`, [width, hidden]);
      }
      ones("model.norm.weight", width);
      if (!tied) normal("lm_head.weight", [vocab, width]);
      return params;
    },
    apply(params, ids, options = {}) {
      const [batch, steps] = idsShape(ids, options, family);
      const ctx = context(params, options);
      return tidy(() => {
        let x = ops.embedding(param(ctx, "model.embed_tokens.weight"), ids, [batch, steps]);
        const keep = maskTensor(options.attentionMask, batch, steps, x.device);
        for (let l = 0; l < layers; l++) {
          const p = `model.layers.${l}`;
          const h = ops.rmsNorm(x, param(ctx, `${p}.input_layernorm.weight`), eps);
          // Each branch's output is done with once added to the residual stream.
          const attended = attentionBlock(ctx, `${p}.self_attn`, h, keep);
          x = ops.add(x, attended);
          discard(attended);
          const h2 = ops.rmsNorm(x, param(ctx, `${p}.post_attention_layernorm.weight`), eps);
          const gate = ops.swiglu(project(ctx, `${p}.mlp.gate_proj`, h2), project(ctx, `${p}.mlp.up_proj`, h2));
          const down = project(ctx, `${p}.mlp.down_proj`, gate);
          x = ops.add(x, down);
          discard(down);
        }
        x = ops.rmsNorm(x, param(ctx, "model.norm.weight"), eps);
        const head = params["lm_head.weight"] === undefined ? "model.embed_tokens" : "lm_head";
        return head === "lm_head" ? project(ctx, "lm_head", x) : ops.linear(x, param(ctx, "model.embed_tokens.weight"));
      });
    },
  };
}
