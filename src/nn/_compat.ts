/**
 * Adapters between the model families and the ops: each uses the native op when the ops module
 * exports it (feature-detected at run time) and otherwise composes today's ops. The compositions are
 * exact in float32 (they are what the native kernels must equal); the integrator deletes each
 * fallback once its native op lands.
 *
 * @module
 */

import { track } from "../autodiff.ts";
import * as ops from "../ops/mod.ts";
import { type Tensor, tensor } from "../tensor.ts";

// The namespace object, read as a record so that ops not yet exported can be probed.
const OPS = ops as unknown as Record<string, unknown>;

/** Options of {@linkcode attention}. */
export interface AttentionOptions {
  /** Mask keys after each query (query t sees keys s <= t + (S - T)). */
  readonly causal?: boolean;
  /** Padding mask [B, S]: 1 keep, 0 pad. */
  readonly mask?: Int32Array | readonly number[] | null;
  /** Score scale (default 1 / sqrt(D)). */
  readonly scale?: number;
}

/** The additive bias that removes a key: large and finite, so a fully masked row stays finite. */
const MASKED = -1e30;

/**
 * Scaled dot-product attention with grouped-query heads: q [B, T, Hq, D], k and v [B, S, Hkv, D],
 * Hq a multiple of Hkv (query head h reads key head floor(h / (Hq / Hkv)), as transformers'
 * repeat_kv). Returns [B, T, Hq, D].
 */
export function attention(q: Tensor, k: Tensor, v: Tensor, options: AttentionOptions = {}): Tensor {
  const native = OPS.attention as ((q: Tensor, k: Tensor, v: Tensor, o: AttentionOptions) => Tensor) | undefined;
  if (typeof native === "function") return native(q, k, v, options);
  const [batch, steps, heads, dim] = q.shape as [number, number, number, number];
  const keys = k.shape[1]!;
  const kvHeads = k.shape[2]!;
  if (heads % kvHeads !== 0) {
    throw new RangeError(`attention: ${heads} query heads are not a multiple of ${kvHeads} key/value heads`);
  }
  const repeat = heads / kvHeads;
  const scale = options.scale ?? 1 / Math.sqrt(dim);
  const qh = ops.transpose(q, [0, 2, 1, 3]); // [B, Hq, T, D]
  const expand = (x: Tensor): Tensor => {
    const xh = ops.transpose(x, [0, 2, 1, 3]); // [B, Hkv, S, D]
    if (repeat === 1) return xh;
    const one = ops.reshape(xh, [batch, kvHeads, 1, keys, dim]);
    const copies = ops.concat(
      Array.from({ length: repeat }, () => one),
      2,
    );
    return ops.reshape(copies, [batch, heads, keys, dim]);
  };
  const kh = expand(k);
  const vh = expand(v);
  let scores = ops.scale(ops.matmul(qh, ops.transpose(kh, [0, 1, 3, 2])), scale); // [B, Hq, T, S]
  const bias = maskBias(batch, steps, keys, options);
  if (bias !== null) scores = ops.add(scores, bias);
  const probs = ops.softmax(scores);
  const out = ops.matmul(probs, vh); // [B, Hq, T, D]
  return ops.transpose(out, [0, 2, 1, 3]);
}

/** The additive mask [B, 1, T, S] (causal and padding), or null when nothing is masked. */
function maskBias(batch: number, steps: number, keys: number, options: AttentionOptions): Tensor | null {
  const causal = options.causal ?? false;
  const mask = options.mask ?? null;
  if (!causal && mask === null) return null;
  if (mask !== null && mask.length !== batch * keys) {
    throw new TypeError(`attention: mask has ${mask.length} entries, expected B * S = ${batch * keys}`);
  }
  const values = new Float32Array(batch * steps * keys);
  const offset = keys - steps;
  for (let b = 0; b < batch; b++) {
    for (let t = 0; t < steps; t++) {
      for (let s = 0; s < keys; s++) {
        const hidden = (causal && s > t + offset) || (mask !== null && mask[b * keys + s] === 0);
        if (hidden) values[(b * steps + t) * keys + s] = MASKED;
      }
    }
  }
  return track(tensor(values, { shape: [batch, 1, steps, keys] }));
}

/** Options of {@linkcode rope}. */
export interface RopeOptions {
  /** Base of the default inverse frequencies (default 10000). */
  readonly theta?: number;
  /** Inverse frequencies [D / 2] (e.g. llama3-scaled); overrides theta. */
  readonly invFreq?: Float32Array;
  /** Position of the first step (default 0). */
  readonly positionOffset?: number;
}

/** The default inverse frequencies, rounded as transformers computes them in float32. */
export function defaultInvFreq(dim: number, theta: number): Float32Array {
  const out = new Float32Array(dim / 2);
  for (let i = 0; i < dim / 2; i++) out[i] = 1 / Math.fround(theta ** Math.fround((2 * i) / dim));
  return out;
}

/**
 * Rotary position embedding, Hugging Face's rotate-half form: x [B, T, H, D] ->
 * x * cos + rotate_half(x) * sin with rotate_half(x) = concat(-x2, x1).
 */
export function rope(x: Tensor, options: RopeOptions = {}): Tensor {
  const native = OPS.rope as ((x: Tensor, o: RopeOptions) => Tensor) | undefined;
  if (typeof native === "function") return native(x, options);
  const [batch, steps, heads, dim] = x.shape as [number, number, number, number];
  const half = dim / 2;
  const invFreq = options.invFreq ?? defaultInvFreq(dim, options.theta ?? 10000);
  const offset = options.positionOffset ?? 0;
  const cos = new Float32Array(steps * dim);
  const sin = new Float32Array(steps * dim);
  for (let t = 0; t < steps; t++) {
    for (let i = 0; i < half; i++) {
      const angle = Math.fround(invFreq[i]! * (t + offset));
      const c = Math.cos(angle);
      const s = Math.sin(angle);
      cos[t * dim + i] = c;
      cos[t * dim + i + half] = c;
      sin[t * dim + i] = s;
      sin[t * dim + i + half] = s;
    }
  }
  // Constants the enclosing tidy (the model's apply) frees.
  const cosT = track(tensor(cos, { shape: [1, steps, 1, dim] }));
  const sinT = track(tensor(sin, { shape: [1, steps, 1, dim] }));
  const x1 = ops.slice(x, [0, 0, 0, 0], [batch, steps, heads, half]);
  const x2 = ops.slice(x, [0, 0, 0, half], [batch, steps, heads, dim]);
  const rotated = ops.concat([ops.scale(x2, -1), x1], 3);
  return ops.add(ops.mul(x, cosT), ops.mul(rotated, sinT));
}

/** SwiGLU's gate: silu(a) * b. */
export function swiglu(a: Tensor, b: Tensor): Tensor {
  const native = OPS.swiglu as ((a: Tensor, b: Tensor) => Tensor) | undefined;
  if (typeof native === "function") return native(a, b);
  return ops.mul(ops.silu(a), b);
}

/**
 * Mean cross-entropy over the rows whose label is not ignoreIndex: logits [N, C], labels [N].
 * The fallback gathers the kept rows (a differentiable row gather), so ignored rows get zero
 * gradient and the mean is over kept rows, as PyTorch's ignore_index.
 */
export function crossEntropy(
  logits: Tensor,
  labels: Int32Array,
  options: { readonly ignoreIndex?: number } = {},
): Tensor {
  const ignoreIndex = options.ignoreIndex ?? -100;
  if (!labels.includes(ignoreIndex)) return ops.crossEntropy(logits, labels);
  // The native op takes { ignoreIndex }; today's refuses a label outside [0, C) with a RangeError
  // before it computes anything, and then the rows are gathered instead.
  try {
    const native = ops.crossEntropy as unknown as (l: Tensor, y: Int32Array, o: object) => Tensor;
    return native(logits, labels, { ignoreIndex });
  } catch (error) {
    if (!(error instanceof RangeError)) throw error;
  }
  const kept: number[] = [];
  const keptLabels: number[] = [];
  for (let i = 0; i < labels.length; i++) {
    if (labels[i] !== ignoreIndex) {
      kept.push(i);
      keptLabels.push(labels[i]!);
    }
  }
  if (kept.length === 0) throw new RangeError("crossEntropy: every label is ignored, so the mean is undefined");
  const rows = ops.embedding(logits, kept, [kept.length]);
  return ops.crossEntropy(rows, keptLabels);
}
