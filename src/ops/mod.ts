/**
 * Differentiable ops on tensors. Every op computes in the dtype autocast picks for it
 * (src/autocast.ts), accumulates in float32 or wider, and records its backward pass when a
 * `valueAndGrad` tape is active.
 *
 * @example
 * ```ts
 * import { add, sum } from "./mod.ts";
 * import { tensor } from "../tensor.ts";
 * using s = sum(add(tensor([1, 2]), tensor(1)));
 * if (s.toArray()[0] !== 5) throw new Error("sum");
 * ```
 *
 * @module
 */

export { ATTENTION_HEAD_DIM_MAX, type AttentionOptions, attention, causalSelfAttention } from "./attention.ts";
export {
  add,
  div,
  erf,
  exp,
  gelu,
  type GeluOptions,
  log,
  mul,
  relu,
  scale,
  silu,
  sub,
  swiglu,
  tanh,
  toDtype,
} from "./elementwise.ts";
export { dropout, type DropoutOptions, embedding, type Ids } from "./embedding.ts";
export { linear, matmul } from "./matmul.ts";
export { layerNorm, rmsNorm } from "./norm.ts";
export { ROPE_HEAD_DIM_MAX, type RopeOptions, rope, ropeInvFreq } from "./rope.ts";
export { mean, type ReduceOptions, sum } from "./reduce.ts";
export { concat, reshape, slice, transpose } from "./shape.ts";
export { type CrossEntropyOptions, crossEntropy, type Labels, logSoftmax, softmax } from "./softmax.ts";
