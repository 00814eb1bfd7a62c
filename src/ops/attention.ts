/**
 * Fused causal multi-head self-attention. Short sequences (T <= 64, head size <= 128, T * head size
 * <= 4096: a small model's training shapes) run in one native kernel per pass
 * (zig/src/cpu/attention.zig): every (batch, head) pair widens its Q, K, V to float32 and computes
 * scores, the causal softmax and the products in float32. Longer ones run on the native batched
 * matmul: Q K^T, a causal mask and a float32 softmax, then P V, with the products in autocast's "bmm"
 * dtype (float32 accumulation). Either way the result is in the compute dtype.
 *
 * @module
 */

import { ptr } from "bun:ffi";
import { check, native } from "../_ffi.ts";
import { record } from "../autodiff.ts";
import { castInto } from "../cast.ts";
import { allocateStorage, type DtypeName, dtypeInfo, type StorageArray } from "../dtype.ts";
import type { Tensor } from "../tensor.ts";
import { autocastDtype } from "./_autocast.ts";
import { checkTensor, fromValues, MatmulFlag, matmulInto, output, shapeText, toDtype, values } from "./_util.ts";

/** The fused kernel's limits (zig/src/cpu/attention.zig). */
const FUSED = Object.freeze({ stepsMax: 64, headDimMax: 128, tileMax: 4096 });

/** One native kernel per pass for short sequences; see the module docs. */
function fusedAttention(source: Tensor, batch: number, steps: number, heads: number, headDim: number): Tensor {
  const dtype = source.dtype;
  const code = dtypeInfo(dtype).code;
  const channels = heads * headDim;
  const probs = new Float32Array(batch * heads * steps * steps);
  const result = output([batch, steps, channels], dtype, (out) => {
    check(
      native().mp_attention_forward(ptr(source.data), code, batch, steps, heads, headDim, ptr(out), ptr(probs)),
      "causalSelfAttention",
    );
  });
  return record(result, [source], (g) => {
    const gradQkv = new Float32Array(source.size);
    const gv = values(g);
    check(
      native().mp_attention_backward(
        ptr(source.data),
        code,
        batch,
        steps,
        heads,
        headDim,
        ptr(probs),
        ptr(gv),
        ptr(gradQkv),
      ),
      "causalSelfAttention backward",
    );
    return [fromValues(gradQkv, source.shape, dtype)];
  });
}

function inDtype(source: Float32Array, dtype: DtypeName): StorageArray {
  if (dtype === "float32") return source;
  return castInto(source, allocateStorage(dtype, source.length), "float32", dtype);
}

/**
 * Causal self-attention over packed projections: `qkv` is [B, T, 3C] holding queries, keys and
 * values (in that order, each C = heads * headDim wide, heads contiguous); the result is [B, T, C]
 * with head outputs concatenated, as in GPT-2 (llm.c's attention_forward).
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
  checkTensor(qkv, "causalSelfAttention", "qkv");
  if (qkv.ndim !== 3 || qkv.shape[2]! % 3 !== 0) {
    throw new TypeError(`causalSelfAttention: qkv ${shapeText(qkv.shape)} must be [B, T, 3C]`);
  }
  const [batch, steps, width3] = qkv.shape as [number, number, number];
  const channels = width3 / 3;
  if (!Number.isInteger(heads) || heads < 1 || channels % heads !== 0) {
    throw new RangeError(`causalSelfAttention: ${heads} heads do not divide ${channels} channels`);
  }
  const headDim = channels / heads;
  const bh = batch * heads;
  const dtype = autocastDtype("bmm", [qkv.dtype]);
  const source = toDtype(qkv, dtype);
  if (steps <= FUSED.stepsMax && headDim <= FUSED.headDimMax && steps * headDim <= FUSED.tileMax && batch > 0) {
    return fusedAttention(source, batch, steps, heads, headDim);
  }
  const bits = source.data;
  const make = () => allocateStorage(dtype, bh * steps * headDim);
  const q = make();
  const k = make();
  const v = make();
  for (let b = 0; b < batch; b++) {
    for (let t = 0; t < steps; t++) {
      const row = (b * steps + t) * width3;
      for (let h = 0; h < heads; h++) {
        const to = ((b * heads + h) * steps + t) * headDim;
        const from = row + h * headDim;
        for (let d = 0; d < headDim; d++) {
          q[to + d] = bits[from + d]!;
          k[to + d] = bits[from + channels + d]!;
          v[to + d] = bits[from + 2 * channels + d]!;
        }
      }
    }
  }
  const scale = 1 / Math.sqrt(headDim);
  const probs = new Float32Array(bh * steps * steps);
  matmulInto(q, dtype, k, dtype, probs, bh, steps, steps, headDim, MatmulFlag.transB);
  for (let r = 0; r < bh * steps; r++) {
    const t = r % steps;
    const base = r * steps;
    let max = -Infinity;
    for (let j = 0; j <= t; j++) {
      const v = probs[base + j]! * scale;
      probs[base + j] = v;
      if (v > max) max = v;
    }
    let total = 0;
    for (let j = 0; j <= t; j++) {
      const e = Math.exp(probs[base + j]! - max);
      probs[base + j] = e;
      total += e;
    }
    const inv = 1 / total;
    for (let j = 0; j <= t; j++) probs[base + j]! *= inv;
    probs.fill(0, base + t + 1, base + steps);
  }
  const probsC = inDtype(probs, dtype);
  const headsOut = new Float32Array(bh * steps * headDim);
  matmulInto(probsC, dtype, v, dtype, headsOut, bh, steps, headDim, steps, 0);
  const result = output([batch, steps, channels], dtype, (out) => {
    for (let b = 0; b < batch; b++) {
      for (let h = 0; h < heads; h++) {
        for (let t = 0; t < steps; t++) {
          const from = ((b * heads + h) * steps + t) * headDim;
          const to = (b * steps + t) * channels + h * headDim;
          for (let d = 0; d < headDim; d++) out[to + d] = headsOut[from + d]!;
        }
      }
    }
  });
  return record(result, [source], (g) => {
    const gBits = g.data;
    const dOut = make();
    for (let b = 0; b < batch; b++) {
      for (let h = 0; h < heads; h++) {
        for (let t = 0; t < steps; t++) {
          const to = ((b * heads + h) * steps + t) * headDim;
          const from = (b * steps + t) * channels + h * headDim;
          for (let d = 0; d < headDim; d++) dOut[to + d] = gBits[from + d]!;
        }
      }
    }
    const dProbs = new Float32Array(bh * steps * steps);
    matmulInto(dOut, dtype, v, dtype, dProbs, bh, steps, steps, headDim, MatmulFlag.transB);
    const dV = new Float32Array(bh * steps * headDim);
    matmulInto(probsC, dtype, dOut, dtype, dV, bh, steps, headDim, steps, MatmulFlag.transA);
    // dS = P * (dP - sum_j dP P) * scale (masked entries have P = 0).
    for (let r = 0; r < bh * steps; r++) {
      const base = r * steps;
      let dot = 0;
      for (let j = 0; j < steps; j++) dot += dProbs[base + j]! * probs[base + j]!;
      for (let j = 0; j < steps; j++) dProbs[base + j] = probs[base + j]! * (dProbs[base + j]! - dot) * scale;
    }
    const dScores = inDtype(dProbs, dtype);
    const dQ = new Float32Array(bh * steps * headDim);
    matmulInto(dScores, dtype, k, dtype, dQ, bh, steps, headDim, steps, 0);
    const dK = new Float32Array(bh * steps * headDim);
    matmulInto(dScores, dtype, q, dtype, dK, bh, steps, headDim, steps, MatmulFlag.transA);
    const grad = output(source.shape, dtype, (out) => {
      for (let b = 0; b < batch; b++) {
        for (let t = 0; t < steps; t++) {
          const row = (b * steps + t) * width3;
          for (let h = 0; h < heads; h++) {
            const from = ((b * heads + h) * steps + t) * headDim;
            const to = row + h * headDim;
            for (let d = 0; d < headDim; d++) {
              out[to + d] = dQ[from + d]!;
              out[to + channels + d] = dK[from + d]!;
              out[to + 2 * channels + d] = dV[from + d]!;
            }
          }
        }
      }
    });
    return [grad];
  });
}
