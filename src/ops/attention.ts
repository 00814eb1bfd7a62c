/**
 * Attention on one native kernel (zig/src/ops/attention.zig), tiled with an online softmax as
 * FlashAttention-2: scores, softmax and products run in float32 tiles of the kernel, one query
 * tile and one key/value tile at a time, so memory per query row is O(head size) and no T x S
 * matrix exists, at any sequence length. Inputs and outputs stay in the compute dtype (a bfloat16
 * tensor is never widened to a float32 copy); what the backward pass keeps is the output and one
 * float32 log-sum-exp per query row, from which it recomputes the probabilities tile by tile.
 * Results are bit-identical on any thread count.
 *
 * @module
 */

import { record, recording, requiresGrad } from "../autodiff.ts";
import { backendOf } from "../backend/backend.ts";
import type { AttentionOperand, AttentionProblem } from "../backend/cpu/attention.ts";
import type { Tensor } from "../tensor.ts";
import { autocastDtype } from "./_autocast.ts";
import { checkTensor, empty, shapeText, toDtype } from "./_util.ts";

/** The largest head size the kernel's tiles hold (zig/src/ops/attention.zig `head_dim_max`). */
export const ATTENTION_HEAD_DIM_MAX = 256;

/** Options of {@linkcode attention}. */
export interface AttentionOptions {
  /**
   * Each query sees only keys at or before its own position (default false). With S keys and T
   * queries, query i is at position i + S - T (bottom-right alignment, as FlashAttention: the
   * last query sees every key; for S = T the usual lower triangle).
   */
  readonly causal?: boolean;
  /**
   * Padding mask [B, S] as Hugging Face's attention_mask: 1 keeps a key, 0 marks it as padding
   * (any non-zero value keeps). A float tensor on the inputs' device; it is not differentiated.
   */
  readonly mask?: Tensor | null;
  /** The score multiplier (default 1 / sqrt(D)). */
  readonly scale?: number;
}

/** Runs the kernel and records the backward pass; operands are views of already cast tensors. */
function run(
  problem: AttentionProblem,
  inputs: readonly Tensor[],
  views: (sources: readonly Tensor[]) => [AttentionOperand, AttentionOperand, AttentionOperand],
  mask: Tensor | null,
  outShape: readonly number[],
): Tensor {
  const first = inputs[0]!;
  const backend = backendOf(first.device);
  const [q, k, v] = views(inputs);
  const out = empty(outShape, first.dtype, first.device);
  const lse = empty([problem.batch, problem.headsQ, problem.stepsQ], "float32", first.device);
  backend.attentionForward(problem, q, k, v, mask, out, lse);
  if (!recording() || !inputs.some(requiresGrad)) {
    lse.dispose();
    return out;
  }
  return record(out, inputs, [...inputs, out, lse, ...(mask !== null ? [mask] : [])], (g) => {
    const grads = inputs.map((input) => empty(input.shape, input.dtype, input.device));
    const [dq, dk, dv] = views(grads);
    try {
      backend.attentionBackward(problem, q, k, v, mask, out, lse, g, dq, dk, dv);
    } catch (error) {
      for (const grad of grads) grad.dispose();
      throw error;
    }
    return grads;
  });
}

function checkFlag(value: unknown, op: string, name: string): boolean {
  if (value === undefined) return false;
  if (typeof value !== "boolean") throw new TypeError(`${op}: ${name} must be true or false, got ${String(value)}`);
  return value;
}

function checkScale(value: unknown, headDim: number, op: string): number {
  if (value === undefined) return 1 / Math.sqrt(headDim);
  if (typeof value !== "number" || !Number.isFinite(value)) {
    throw new RangeError(`${op}: scale must be a finite number, got ${String(value)}: omit it for 1 / sqrt(D)`);
  }
  return value;
}

function checkHeadDim(headDim: number, op: string): void {
  if (headDim < 1 || headDim > ATTENTION_HEAD_DIM_MAX) {
    throw new RangeError(
      `${op}: head size ${headDim} is outside 1..${ATTENTION_HEAD_DIM_MAX}: split the heads differently (more heads of a smaller size)`,
    );
  }
}

/**
 * Scaled dot-product attention, softmax(q k^T * scale + mask) v, with grouped-query heads, a causal
 * option and a padding mask, on the tiled native kernel (see the module docs).
 *
 * The layout is the one a linear layer's output reshapes to with no copy: q [B, T, Hq, D] (from a
 * [B, T, Hq * D] projection), k and v [B, S, Hkv, D]; the result is [B, T, Hq, D], ready for the
 * output projection after a reshape to [B, T, Hq * D]. Hkv must divide Hq: query head h uses
 * key/value head floor(h / (Hq / Hkv)) (Hkv = Hq: multi-head, Hkv = 1: multi-query). A query row
 * that sees no key (every key padded, or causal with S < T) gives 0, not NaN, and gradient 0.
 *
 * @param q Queries [B, T, Hq, D].
 * @param k Keys [B, S, Hkv, D].
 * @param v Values [B, S, Hkv, D].
 * @param options causal, mask, scale.
 * @returns The attention output [B, T, Hq, D] in the compute dtype (autocast's
 * "scaled_dot_product_attention": the policy's compute dtype, else the widest input dtype).
 * @example
 * ```ts
 * import { attention } from "./attention.ts";
 * import { tensor } from "../tensor.ts";
 * // One query attending to two keys with equal scores: the mean of the values.
 * using q = tensor([0], { shape: [1, 1, 1, 1] });
 * using k = tensor([1, 2], { shape: [1, 2, 1, 1] });
 * using v = tensor([4, 8], { shape: [1, 2, 1, 1] });
 * using y = attention(q, k, v);
 * if (y.toArray()[0] !== 6) throw new Error("mean of the values");
 * ```
 */
export function attention(q: Tensor, k: Tensor, v: Tensor, options: AttentionOptions = {}): Tensor {
  const op = "attention";
  checkTensor(q, op, "q");
  checkTensor(k, op, "k");
  checkTensor(v, op, "v");
  if (typeof options !== "object" || options === null) {
    throw new TypeError(`${op}: options must be an object such as { causal: true }, got ${String(options)}`);
  }
  for (const [name, t] of [
    ["q", q],
    ["k", k],
    ["v", v],
  ] as const) {
    if (t.ndim !== 4) throw new TypeError(`${op}: ${name} ${shapeText(t.shape)} must be 4-D [B, steps, heads, D]`);
  }
  const [batch, stepsQ, headsQ, headDim] = q.shape as [number, number, number, number];
  const [kBatch, stepsKv, headsKv, kDim] = k.shape as [number, number, number, number];
  if (v.shape.some((d, i) => d !== k.shape[i])) {
    throw new TypeError(`${op}: v ${shapeText(v.shape)} must have the shape of k ${shapeText(k.shape)}`);
  }
  if (kBatch !== batch) {
    throw new TypeError(`${op}: q ${shapeText(q.shape)} and k ${shapeText(k.shape)} have different batch sizes`);
  }
  if (kDim !== headDim) {
    throw new TypeError(
      `${op}: the head size of q ${shapeText(q.shape)} (${headDim}) differs from that of k ${shapeText(k.shape)} (${kDim})`,
    );
  }
  if (headsKv < 1 || headsQ % headsKv !== 0) {
    throw new TypeError(
      `${op}: q has ${headsQ} heads, which is not a multiple of k's ${headsKv}: grouped-query attention needs Hkv to divide Hq`,
    );
  }
  checkHeadDim(headDim, op);
  if (k.device !== q.device || v.device !== q.device) {
    throw new TypeError(`${op}: q, k and v are on ${q.device}, ${k.device} and ${v.device}: move them to one device`);
  }
  const causal = checkFlag(options.causal, op, "causal");
  const scale = checkScale(options.scale, headDim, op);
  const mask = options.mask ?? null;
  if (mask !== null) {
    checkTensor(mask, op, "mask");
    if (mask.ndim !== 2 || mask.shape[0] !== batch || mask.shape[1] !== stepsKv) {
      throw new TypeError(
        `${op}: mask ${shapeText(mask.shape)} must be [B, S] = [${batch}, ${stepsKv}] (1 keep, 0 pad)`,
      );
    }
    if (mask.device !== q.device) {
      throw new TypeError(`${op}: mask is on ${mask.device} but q on ${q.device}: move it to the same device`);
    }
  }
  const dtype = autocastDtype("scaled_dot_product_attention", [q.dtype, k.dtype, v.dtype], q.device);
  const inputs = [toDtype(q, dtype), toDtype(k, dtype), toDtype(v, dtype)];
  const problem: AttentionProblem = { batch, stepsQ, stepsKv, headsQ, headsKv, headDim, causal, scale };
  return run(
    problem,
    inputs,
    ([tq, tk, tv]) => [
      { tensor: tq!, offset: 0, stride: headsQ * headDim },
      { tensor: tk!, offset: 0, stride: headsKv * headDim },
      { tensor: tv!, offset: 0, stride: headsKv * headDim },
    ],
    mask,
    [batch, stepsQ, headsQ, headDim],
  );
}

/**
 * Causal self-attention over packed projections: `qkv` is [B, T, 3C] holding queries, keys and
 * values (in that order, each C = heads * headDim wide, heads contiguous); the result is [B, T, C]
 * with head outputs concatenated, as in GPT-2 (llm.c's attention_forward). It runs the
 * {@linkcode attention} kernel on strided views into qkv (no copies), at any T; its gradient is
 * the packed [B, T, 3C] gradient.
 *
 * @param qkv Packed projections [B, T, 3C].
 * @param heads The number of heads; C must be divisible by it.
 * @returns Attention output [B, T, C] in the compute dtype.
 * @example
 * ```ts
 * import { causalSelfAttention } from "./attention.ts";
 * import { tensor } from "../tensor.ts";
 * // One head, C = 1: the first position can only attend to itself.
 * using qkv = tensor([[[1, 1, 5], [1, 1, 7]]]);
 * using y = causalSelfAttention(qkv, 1);
 * if (y.toArray()[0] !== 5 || y.toArray()[1] !== 6) throw new Error("causal average");
 * ```
 */
export function causalSelfAttention(qkv: Tensor, heads: number): Tensor {
  const op = "causalSelfAttention";
  checkTensor(qkv, op, "qkv");
  if (qkv.ndim !== 3 || qkv.shape[2]! % 3 !== 0) {
    throw new TypeError(`${op}: qkv ${shapeText(qkv.shape)} must be [B, T, 3C]`);
  }
  const [batch, steps, width3] = qkv.shape as [number, number, number];
  const channels = width3 / 3;
  if (!Number.isInteger(heads) || heads < 1 || channels % heads !== 0) {
    throw new RangeError(`${op}: ${heads} heads do not divide ${channels} channels`);
  }
  const headDim = channels / heads;
  checkHeadDim(headDim, op);
  const dtype = autocastDtype("scaled_dot_product_attention", [qkv.dtype], qkv.device);
  const source = toDtype(qkv, dtype);
  const problem: AttentionProblem = {
    batch,
    stepsQ: steps,
    stepsKv: steps,
    headsQ: heads,
    headsKv: heads,
    headDim,
    causal: true,
    scale: 1 / Math.sqrt(headDim),
  };
  return run(
    problem,
    [source],
    ([packed]) => [
      { tensor: packed!, offset: 0, stride: width3 },
      { tensor: packed!, offset: channels, stride: width3 },
      { tensor: packed!, offset: 2 * channels, stride: width3 },
    ],
    null,
    [batch, steps, channels],
  );
}
