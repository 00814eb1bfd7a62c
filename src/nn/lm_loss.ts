/**
 * The causal language-modelling loss: position t predicts token t + 1; targets that are padding
 * are ignored, and the mean is over the kept targets (transformers' ForCausalLMLoss with labels =
 * input_ids and -100 at padding).
 *
 * @module
 */

import * as ops from "../ops/mod.ts";
import type { Tensor } from "../tensor.ts";

/** Options of {@linkcode lmLoss}. */
export interface LmLossOptions {
  /** [B * T]: 1 keep, 0 pad; padded targets are ignored. */
  readonly attentionMask?: Int32Array | readonly number[];
}

/**
 * Mean next-token cross-entropy of logits [B, T, V] against the inputs shifted by one.
 *
 * @param logits [B, T, V].
 * @param inputIds [B * T] token ids (the labels, before the shift).
 * @param options attentionMask.
 * @returns The mean loss, shape [].
 * @example
 * ```ts
 * import { lmLoss } from "./lm_loss.ts";
 * import { zeros } from "../tensor.ts";
 * using logits = zeros([1, 3, 4]);
 * using loss = lmLoss(logits, [0, 1, 2], { attentionMask: [1, 1, 0] });
 * if (Math.abs(loss.toArray()[0]! - Math.log(4)) > 1e-6) throw new Error("uniform over 4 classes");
 * ```
 */
export function lmLoss(logits: Tensor, inputIds: Int32Array | readonly number[], options: LmLossOptions = {}): Tensor {
  if (logits.ndim !== 3) throw new TypeError(`lmLoss: logits must be [B, T, V], got [${logits.shape.join(", ")}]`);
  const [batch, steps, vocab] = logits.shape as [number, number, number];
  if (inputIds.length !== batch * steps) {
    throw new TypeError(`lmLoss: ${inputIds.length} ids for logits [${batch}, ${steps}, ${vocab}]`);
  }
  const mask = options.attentionMask;
  if (mask !== undefined && mask.length !== batch * steps) {
    throw new TypeError(`lmLoss: attentionMask has ${mask.length} entries, expected ${batch * steps}`);
  }
  const labels = new Int32Array(batch * (steps - 1));
  for (let b = 0; b < batch; b++) {
    for (let t = 0; t < steps - 1; t++) {
      const target = b * steps + t + 1;
      labels[b * (steps - 1) + t] = mask !== undefined && mask[target] === 0 ? -100 : inputIds[target]!;
    }
  }
  const shifted = ops.slice(logits, [0, 0, 0], [batch, steps - 1, vocab]);
  return ops.crossEntropy(ops.reshape(shifted, [batch * (steps - 1), vocab]), labels);
}
