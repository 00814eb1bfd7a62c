/**
 * mixprec: mixed-precision training for Bun. Casts between float32, float16, bfloat16 and fp8 that
 * agree bit for bit across TypeScript, CPU SIMD and GPU kernels; tensors; loss scaling.
 *
 * @example
 * ```ts
 * import { cast, dtypeInfo } from "mixprec";
 * const bf16 = cast(new Float32Array([3.14159]), "float32", "bfloat16");
 * if (dtypeInfo("bf16").bits !== 16 || bf16[0] !== 0x4049) throw new Error("unexpected");
 * ```
 *
 * @module
 */

export {
  type Dtype,
  type DtypeAlias,
  type DtypeInfo,
  type DtypeName,
  DTYPE_NAMES,
  dtypeInfo,
  type StorageArray,
} from "./dtype.ts";
export { cast, castInto, type CastOptions } from "./cast.ts";
export { MixprecError } from "./errors.ts";
export {
  type Device,
  type FillOptions,
  full,
  isTensor,
  ones,
  randn,
  type RandnOptions,
  type Shape,
  Tensor,
  tensor,
  type TensorOptions,
  zeros,
} from "./tensor.ts";
export {
  type Tree,
  treeLeaves,
  treeMap,
  type TreeOf,
  type TreeStructure,
  treeStructure,
  treeUnflatten,
} from "./tree.ts";
export { type GradientRow, unscaleAndCheck } from "./unscale.ts";

// ---- Optimizers (src/optim/): optax-style gradient transformations, fused mixed-precision steps ----
export {
  disposeTree,
  type GradientTransformation,
  type OptState,
  type Params,
  type Schedule,
  type Updates,
} from "./optim/transformation.ts";
export { applyUpdates, type ApplyUpdatesOptions } from "./optim/apply_updates.ts";
export { chain, type ChainState } from "./optim/chain.ts";
export { scaleByAdam, type ScaleByAdamOptions, type ScaleByAdamState } from "./optim/scale_by_adam.ts";
export { scaleByLearningRate, type ScaleByLearningRateState } from "./optim/scale_by_learning_rate.ts";
export { addDecayedWeights, type AddDecayedWeightsState } from "./optim/add_decayed_weights.ts";
export {
  decoupledWeightDecay,
  type DecoupledWeightDecayOptions,
  type DecoupledWeightDecayState,
} from "./optim/decoupled_weight_decay.ts";
export { adam } from "./optim/adam.ts";
export { adamw, type AdamWOptions } from "./optim/adamw.ts";
export { trace, type TraceOptions, type TraceState } from "./optim/trace.ts";
export { sgd, type SgdOptions } from "./optim/sgd.ts";
export { lion, type LionOptions, scaleByLion, type ScaleByLionState } from "./optim/lion.ts";
export { clipByGlobalNorm, type ClipByGlobalNormState } from "./optim/clip_by_global_norm.ts";
export { applyIfFinite, type ApplyIfFiniteState } from "./optim/apply_if_finite.ts";
export { multiSteps, type MultiStepsOptions, type MultiStepsState } from "./optim/multi_steps.ts";
export { type Mask, masked, type MaskedState } from "./optim/masked.ts";
export { type Labels, multiTransform, type MultiTransformState } from "./optim/multi_transform.ts";
export { setToZero, type SetToZeroState } from "./optim/set_to_zero.ts";
export { injectHyperparams, type InjectHyperparamsState, setHyperparams } from "./optim/inject_hyperparams.ts";
export {
  constantSchedule,
  cosineDecaySchedule,
  linearSchedule,
  warmupCosineDecaySchedule,
} from "./optim/schedules.ts";
export { type MasterWeightsOptions, type MasterWeightsState, withMasterWeights } from "./optim/with_master_weights.ts";
export {
  withLossScale,
  type WithLossScaleState,
} from "./optim/with_loss_scale.ts";
export {
  type FusedAdamWOptions,
  type FusedAdamWState,
  type FusedOptimizer,
  type FusedStepOptions,
  type FusedStepResult,
  fusedAdamW,
} from "./optim/fused_adamw.ts";
export { type FusedSgdOptions, type FusedSgdState, fusedSgd } from "./optim/fused_sgd.ts";
export { type FusedEntry, type FusedStateDict } from "./optim/_fused_state.ts";
// AMP: loss scales, precision policies (issue #3).
export {
  allFinite,
  type DynamicLossScale,
  type DynamicLossScaleOptions,
  dynamicLossScale,
  type LossScale,
  type LossScaleEvent,
  type LossScaleJSON,
  lossScaleFromJSON,
  noLossScale,
  type StepResult,
  staticLossScale,
  type Unscaled,
} from "./loss_scale.ts";
export { getPolicy, isPolicy, type Policy, type PolicyDtype, POLICY_PRESETS } from "./policy.ts";
export {
  AUTOCAST_OPS,
  AUTOCAST_OPS_BY_DEVICE,
  AUTOCAST_OPS_CPU,
  autocast,
  type AutocastCategory,
  autocastCategory,
  type AutocastDeviceType,
  currentDeviceType,
  autocastDtype,
  type AutocastTensors,
  autocastTensors,
  currentPolicy,
  promoteDtypes,
} from "./autocast.ts";
export {
  GradScaler,
  type GradScalerOptions,
  type GradScalerStateDict,
  type ScaleUpdate,
  type ScalerOptimizer,
} from "./grad_scaler.ts";
export {
  type DeviceCapabilities,
  type LoraPrecision,
  type NormalizedPrecisionConfig,
  type PrecisionCheck,
  type PrecisionConfig,
  type Quantization,
  validatePrecisionConfig,
} from "./precision_config.ts";
export {
  type CpuDeviceInfo,
  type CpuKernels,
  type CudaDeviceInfo,
  cudaCapabilities,
  type DeviceInfo,
  devices,
  registerDeviceProvider,
  setThreads,
} from "./device.ts";

// I/O: safetensors files, checkpoint conversion, resumable training state (src/io/).
export {
  IntegerTensor,
  integerTensor,
  type IntegerArray,
  type IntegerDtype,
  type LoadedSafetensors,
  type LoadOptions,
  loadSafetensors,
  openSafetensors,
  type SafetensorsDtype,
  type SafetensorsFile,
  type SafetensorsLeaf,
  type SafetensorsSource,
  saveSafetensors,
  serializeSafetensors,
  type TensorInfo,
} from "./io/safetensors.ts";

// Autodiff, ops and layers (issue 5).
export {
  type Backward,
  checkpoint,
  grad,
  stopGradient,
  type TapeReport,
  tidy,
  type ValueAndGrad,
  valueAndGrad,
  type ValueAndGradOptions,
} from "./autodiff.ts";
export * as nn from "./nn/mod.ts";
export * as ops from "./ops/mod.ts";
export { liveTensorCount } from "./tensor.ts";
export { emptyHostCache, hostMemoryStats } from "./backend/cpu/storage.ts";
export {
  type ConversionReport,
  type ConvertOptions,
  convertCheckpoint,
  describeConversion,
  formatConversionReport,
  type TensorConversion,
} from "./io/convert.ts";
export {
  type Checkpointable,
  type LoadTrainStateOptions,
  loadTrainState,
  type SaveTrainStateOptions,
  saveTrainState,
  TRAIN_STATE_VERSION,
  type TrainState,
} from "./io/train_state.ts";

// Checkpoint directories (Hugging Face config.json + safetensors, sharded or not) and PEFT adapters.
export {
  type FromPretrainedOptions,
  fromPretrained,
  MODEL_FAMILIES,
  type ModelConfig,
  type Pretrained,
  readConfig,
  type SavePretrainedOptions,
  savePretrained,
} from "./io/pretrained.ts";
export { loadPeftAdapter, type PeftAdapter, savePeftAdapter } from "./io/peft.ts";
// Model families, LoRA by target module and the causal-LM loss also at the top level.
export {
  type ApplyOptions,
  bert,
  type BertConfig,
  injectLora,
  type InjectLoraOptions,
  type LlamaConfig,
  llama,
  lmLoss,
  type LoraAdapters,
  type LoraConfig,
  meanPool,
  mergeLora,
  type Model,
  type ModelParams,
} from "./nn/mod.ts";

// Pre-flight check: what float16 would do to one step's gradients, and a recommended recipe.
export { preflight, type PreflightOptions, type PreflightReport, type PreflightTensor } from "./preflight.ts";

// The raw CUDA functions (device memory, row tables, kernels on device addresses, cudaSyncCount)
// are the advanced subpath "mixprec/cuda" (src/cuda.ts); cuda tensors need none of them.
