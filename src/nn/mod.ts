/**
 * Layers as `{ init, apply }` pairs over parameter pytrees: linear, embedding, layerNorm, rmsNorm,
 * mlp, transformerBlock and loraLinear (frozen bfloat16 / int8 / int4 base with trainable
 * adapters), plus partition / combine to split trainable from frozen parameters.
 *
 * @example
 * ```ts
 * import { linear } from "./mod.ts";
 * import { ones } from "../tensor.ts";
 * const layer = linear({ inFeatures: 2, outFeatures: 1, bias: false });
 * using y = layer.apply(layer.init({ seed: 0 }), ones([1, 2]));
 * if (y.shape.join() !== "1,1") throw new Error("shape");
 * ```
 *
 * @module
 */

export {
  ACTIVATIONS,
  embedding,
  type EmbeddingOptions,
  type Layer,
  layerNorm,
  linear,
  type LinearOptions,
  type LinearParams,
  mlp,
  type MlpOptions,
  type MlpParams,
  type NormOptions,
  rmsNorm,
  type TokenIds,
} from "./layers.ts";
export {
  type BaseStorage,
  freezeWeight,
  FrozenWeight,
  INT4_GROUP_SIZE,
  type LoraInitOptions,
  loraLinear,
  type LoraLinearOptions,
  type LoraLinearParams,
} from "./lora.ts";
export { combine, partition } from "./partition.ts";
export { transformerBlock, type TransformerBlockOptions, type TransformerBlockParams } from "./transformer.ts";
export { ropeInvFreq, llama, type LlamaConfig, type Model } from "./llama.ts";
export { bert, type BertApplyOptions, type BertConfig, meanPool } from "./bert.ts";
export { type InjectedLora, injectLora, type InjectLoraOptions, mergeLora } from "./inject_lora.ts";
export { lmLoss, type LmLossOptions } from "./lm_loss.ts";
export type { ApplyOptions, LoraAdapters, LoraConfig, ModelParams } from "./_model.ts";
export {
  type GptApplyOptions,
  type GptBlock,
  type GptConfig,
  gpt,
  type GptLinear,
  type GptLinearFn,
  type GptNorm,
  type GptParams,
} from "./gpt.ts";
