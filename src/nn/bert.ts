/**
 * BERT encoders (transformers' BertModel) as `{ init, apply }` over a flat parameter record with
 * Hugging Face's names (with or without the `bert.` prefix a task head's checkpoint adds), and
 * mean pooling for sentence embeddings (sentence-transformers' default).
 *
 * @module
 */

import { discard, tidy, track } from "../autodiff.ts";
import * as ops from "../ops/mod.ts";
import { ones, randn, type Tensor, tensor, zeros } from "../tensor.ts";
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
import type { Model } from "./llama.ts";

/** A BERT config.json (the keys mixprec reads). */
export interface BertConfig {
  readonly model_type?: string;
  readonly vocab_size: number;
  readonly hidden_size: number;
  readonly num_hidden_layers: number;
  readonly num_attention_heads: number;
  readonly intermediate_size: number;
  readonly max_position_embeddings?: number;
  readonly type_vocab_size?: number;
  readonly layer_norm_eps?: number;
  readonly hidden_act?: string;
  readonly initializer_range?: number;
  readonly [key: string]: unknown;
}

/** BERT's apply options: the shared ones plus token type ids. */
export interface BertApplyOptions extends ApplyOptions {
  /** Segment ids [B * T] (default all 0). */
  readonly tokenTypeIds?: Int32Array | readonly number[];
}

const ACTIVATION: Readonly<Record<string, (x: Tensor) => Tensor>> = Object.freeze({
  gelu: (x: Tensor) => ops.gelu(x),
  gelu_new: (x: Tensor) => ops.gelu(x, { approximate: "tanh" }),
  gelu_pytorch_tanh: (x: Tensor) => ops.gelu(x, { approximate: "tanh" }),
  relu: (x: Tensor) => ops.relu(x),
});

/**
 * A BERT encoder: word, position and token-type embeddings with LayerNorm, post-norm blocks
 * (self-attention, GELU MLP), padding masks. `apply(params, ids, { shape, attentionMask,
 * tokenTypeIds, adapters })` returns the last hidden state [B, T, hidden].
 *
 * @param config A BERT config.json object.
 * @returns The model.
 * @example
 * ```ts
 * import { bert } from "./bert.ts";
 * const model = bert({ vocab_size: 16, hidden_size: 8, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 16 });
 * const params = model.init({ seed: 0 });
 * using hidden = model.apply(params, [1, 2, 3, 0], { shape: [1, 4], attentionMask: [1, 1, 1, 0] });
 * if (hidden.shape.join() !== "1,4,8") throw new Error("shape");
 * ```
 */
export function bert(config: BertConfig): Model & {
  apply(params: ModelParams, ids: Int32Array | readonly number[], options?: BertApplyOptions): Tensor;
} {
  const family = "bert";
  for (const key of ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"]) {
    required(config, key, family);
  }
  const width = config.hidden_size;
  const heads = config.num_attention_heads;
  const dim = width / heads;
  const eps = config.layer_norm_eps ?? 1e-12;
  const act = ACTIVATION[config.hidden_act ?? "gelu"];
  if (act === undefined) {
    throw new RangeError(
      `bert: hidden_act ${JSON.stringify(config.hidden_act)} is not supported: use ${Object.keys(ACTIVATION).join(", ")}`,
    );
  }
  const layers = config.num_hidden_layers;
  const norm = (ctx: Context, name: string, x: Tensor) =>
    ops.layerNorm(x, param(ctx, `${name}.weight`), param(ctx, `${name}.bias`), eps);

  return {
    init({ seed }) {
      const std = config.initializer_range ?? 0.02;
      const params: Record<string, Tensor> = {};
      let n = 0;
      const linear = (name: string, out: number, inp: number) => {
        params[`${name}.weight`] = randn([out, inp], { seed: (seed * 7919 + n++) >>> 0, std });
        params[`${name}.bias`] = zeros([out]);
      };
      const layerNorm = (name: string) => {
        params[`${name}.weight`] = ones([width]);
        params[`${name}.bias`] = zeros([width]);
      };
      const embed = (name: string, rows: number) => {
        params[name] = randn([rows, width], { seed: (seed * 7919 + n++) >>> 0, std });
      };
      embed("embeddings.word_embeddings.weight", config.vocab_size);
      embed("embeddings.position_embeddings.weight", config.max_position_embeddings ?? 512);
      embed("embeddings.token_type_embeddings.weight", config.type_vocab_size ?? 2);
      layerNorm("embeddings.LayerNorm");
      for (let l = 0; l < layers; l++) {
        const p = `encoder.layer.${l}`;
        linear(`${p}.attention.self.query`, width, width);
        linear(`${p}.attention.self.key`, width, width);
        linear(`${p}.attention.self.value`, width, width);
        linear(`${p}.attention.output.dense`, width, width);
        layerNorm(`${p}.attention.output.LayerNorm`);
        linear(`${p}.intermediate.dense`, config.intermediate_size, width);
        linear(`${p}.output.dense`, width, config.intermediate_size);
        layerNorm(`${p}.output.LayerNorm`);
      }
      return params;
    },
    apply(params, ids, options: BertApplyOptions = {}) {
      const [batch, steps] = idsShape(ids, options, family);
      const ctx = context(params, options);
      const root = "bert.embeddings.word_embeddings.weight" in params ? "bert." : "";
      return tidy(() => {
        const positions = Array.from({ length: steps }, (_, t) => t);
        const types = options.tokenTypeIds ?? new Int32Array(ids.length);
        let x = ops.embedding(param(ctx, `${root}embeddings.word_embeddings.weight`), ids, [batch, steps]);
        x = ops.add(
          x,
          ops.embedding(param(ctx, `${root}embeddings.token_type_embeddings.weight`), types, [batch, steps]),
        );
        x = ops.add(
          x,
          ops.embedding(param(ctx, `${root}embeddings.position_embeddings.weight`), positions, [1, steps]),
        );
        x = norm(ctx, `${root}embeddings.LayerNorm`, x);
        const keep = maskTensor(options.attentionMask, batch, steps, x.device);
        for (let l = 0; l < layers; l++) {
          const p = `${root}encoder.layer.${l}`;
          const split = (name: string) =>
            ops.reshape(project(ctx, `${p}.attention.self.${name}`, x), [batch, steps, heads, dim]);
          const a = ops.attention(split("query"), split("key"), split("value"), { mask: keep });
          const attended = project(ctx, `${p}.attention.output.dense`, ops.reshape(a, [batch, steps, width]));
          const summed = ops.add(attended, x);
          discard(attended); // Done with once added: no backward pass reads it.
          x = norm(ctx, `${p}.attention.output.LayerNorm`, summed);
          const inner = act(project(ctx, `${p}.intermediate.dense`, x));
          const output = project(ctx, `${p}.output.dense`, inner);
          const summed2 = ops.add(output, x);
          discard(output);
          x = norm(ctx, `${p}.output.LayerNorm`, summed2);
        }
        return x;
      });
    },
  };
}

/**
 * Mean of the hidden states over the positions the mask keeps (sentence-transformers' mean
 * pooling): sum_t h[b, t] * m[b, t] / max(sum_t m[b, t], 1e-9).
 *
 * @param hidden Hidden states [B, T, H].
 * @param attentionMask [B * T]: 1 keep, 0 pad.
 * @returns [B, H].
 * @example
 * ```ts
 * import { meanPool } from "./bert.ts";
 * import { tensor } from "../tensor.ts";
 * using h = tensor([[[1, 2], [3, 4], [100, 100]]]);
 * using pooled = meanPool(h, [1, 1, 0]);
 * if (pooled.toArray().join() !== "2,3") throw new Error("mean of the kept rows");
 * ```
 */
export function meanPool(hidden: Tensor, attentionMask: Int32Array | readonly number[]): Tensor {
  const [batch, steps] = hidden.shape as [number, number, number];
  if (attentionMask.length !== batch * steps) {
    throw new TypeError(`meanPool: attentionMask has ${attentionMask.length} entries, expected ${batch * steps}`);
  }
  const inverse = new Float32Array(batch);
  for (let b = 0; b < batch; b++) {
    let count = 0;
    for (let t = 0; t < steps; t++) count += attentionMask[b * steps + t]!;
    inverse[b] = 1 / Math.max(count, 1e-9);
  }
  return tidy(() => {
    const mask = track(tensor(Float32Array.from(attentionMask), { shape: [batch, steps, 1] }));
    const summed = ops.sum(ops.mul(hidden, mask), { axis: 1 });
    return ops.mul(summed, track(tensor(inverse, { shape: [batch, 1] })));
  });
}
