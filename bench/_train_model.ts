/**
 * The training demo's model and recipes: a tiny GPT-style character model (token and position
 * embeddings, pre-norm transformer blocks with causal self-attention and a GELU MLP, a tied-free
 * output head) trained with mixprec alone under each precision recipe.
 *
 * @module
 */

import {
  autocast,
  type Device,
  dynamicLossScale,
  fusedAdamW,
  getPolicy,
  type LossScale,
  loadSafetensors,
  noLossScale,
  preflight,
  nn,
  ops,
  type Policy,
  randn,
  saveSafetensors,
  tensor,
  type Tensor,
  tidy,
  type Tree,
  treeLeaves,
  treeMap,
  validatePrecisionConfig,
  valueAndGrad,
  zeros,
} from "../src/mod.ts";
import { readFileSync } from "node:fs";
import { corpus, sampleBatch, Stream, VOCAB } from "./_train_data.ts";
import type { RecipeResult } from "./_train_report.ts";

/** The recipes, in the order they run. */
export const RECIPES = {
  fp32: { needsBase: false, describe: "float32 everywhere (the reference)" },
  mixed_bf16: { needsBase: false, describe: "bfloat16 params and compute, float32 master weights and state" },
  pure_bf16_sr: { needsBase: false, describe: "bfloat16 params, no master copy, stochastic rounding" },
  fp16_noscale: { needsBase: false, describe: "float16 params and compute, float32 master, no loss scaling" },
  fp16_dynamic: { needsBase: false, describe: "float16 params and compute, float32 master, dynamic loss scaling" },
  lora_bf16_fp16: { needsBase: true, describe: "LoRA: frozen bfloat16 base, float16 adapters, dynamic loss scaling" },
  lora_int8_fp32: { needsBase: true, describe: "LoRA: frozen int8 base, float32 adapters, no autocast or scaling" },
} as const;

export type RecipeName = keyof typeof RECIPES;

export interface TrainOptions {
  readonly batchSize: number;
  readonly steps: number;
  readonly seed: number;
  readonly device: string;
  /** Where the fp32 recipe saves its model and the LoRA recipes load it. */
  readonly baseCheckpoint: string;
}

export interface Progress {
  readonly step: number;
  readonly loss: number;
  readonly scale: number;
  readonly ms: number;
}

/** Model size: small enough for 2 CPU cores, big enough that accuracy means something. */
export const CONFIG = { context: 32, width: 64, heads: 4, layers: 2, hidden: 256 } as const;
const LORA = { rank: 8, alpha: 16 } as const;
/**
 * LayerScale's initial value (Touvron et al., "Going deeper with image transformers": 1e-6 for their
 * deepest models). Each block's residual branch is multiplied by a trainable per-channel gain that
 * starts here, so the gradients reaching the blocks start about a million times smaller than the
 * residual stream's: below float16's smallest subnormal (2^-24), they round to zero without loss
 * scaling. This is the model choice that makes float16's underflow visible in the demo.
 */
const LAYER_SCALE_INIT = 1e-6;
const LEARNING_RATE = 3e-3;
/**
 * Dynamic loss scaling grows the scale after this many clean steps. PyTorch's default is 2000;
 * the demo uses 100 so that within a few hundred steps the scale is seen growing until gradients
 * overflow, the step is skipped and the scale backs off.
 */
const GROWTH_INTERVAL = 100;
const EVAL_WINDOWS = 64;

type Linear = nn.GptLinear;
export type Model = nn.GptParams;

/** The demo's model, from the library (src/nn/gpt.ts), with LayerScale. */
const GPT = nn.gpt({ vocab: VOCAB.length, ...CONFIG, layerScale: LAYER_SCALE_INIT });

/** A freshly initialised float32 model (GPT-2 style: N(0, 0.02), residual projections scaled). */
export function initModel(seed: number): Model {
  return GPT.init({ seed });
}

/** How a linear layer runs: plain, or LoRA over a frozen (possibly quantized) base. */
type LinearFn = nn.GptLinearFn;

const plainLinear: LinearFn = (x, layer) => ops.linear(x, layer.w, layer.b);

/** The forward pass: next-character logits [batch * context, vocabulary]. */
function forwardLogits(model: Model, inputs: Int32Array, batch: number, linear: LinearFn): Tensor {
  return GPT.apply(model, inputs, { batch, linear });
}

/** The training loss: mean next-character cross-entropy of a batch. */
function forward(model: Model, inputs: Int32Array, targets: Int32Array, batch: number, linear: LinearFn): Tensor {
  return ops.crossEntropy(forwardLogits(model, inputs, batch, linear), targets);
}

/**
 * The demo model's training loss with plain (non-LoRA) linear layers, as the fp32 and mixed_bf16
 * recipes compute it: bench/step_bench.ts times one step of exactly this.
 */
export function demoLoss(model: Model, inputs: Int32Array, targets: Int32Array, batch: number): Tensor {
  return forward(model, inputs, targets, batch, plainLinear);
}

/** Eval loss and next-character accuracy on held-out text (no tape; tidy frees every temporary). */
function evaluate(
  model: Model,
  data: Int32Array,
  linear: LinearFn,
  policy: Policy | null,
): { loss: number; accuracy: number } {
  const { inputs, targets } = sampleBatch(data, new Stream(12345), EVAL_WINDOWS, CONFIG.context);
  const run = () => {
    const logits = forwardLogits(model, inputs, EVAL_WINDOWS, linear);
    const loss = ops.crossEntropy(logits, targets).toArray()[0]!;
    const values = logits.toArray();
    const classes = VOCAB.length;
    let correct = 0;
    for (let row = 0; row < targets.length; row++) {
      let best = 0;
      for (let c = 1; c < classes; c++) if (values[row * classes + c]! > values[row * classes + best]!) best = c;
      if (best === targets[row]) correct++;
    }
    return { loss, accuracy: correct / targets.length };
  };
  return tidy(() => (policy === null ? run() : autocast(policy, run)()));
}

function preflightSentence(report: ReturnType<typeof preflight>): string {
  const percent = (x: number) => `${(100 * x).toFixed(1)}%`;
  return `preflight on its step-1 gradients: in float16, ${percent(report.f16UnderflowShare)} of them would underflow to zero and ${percent(report.f16SubnormalShare)} become subnormal; a loss scale of ${report.initialScale} cuts underflow to ${percent(report.f16UnderflowShareScaled)}`;
}

/** Gradient entries that are exactly zero (lost to underflow, or structurally zero). */
function countZeros(grads: Tree<Tensor>): number {
  let zeros = 0;
  for (const g of treeLeaves(grads)) {
    const data = g.bits();
    const mask = g.dtype === "float32" ? 0x7fffffff : 0x7fff;
    const bits = data instanceof Float32Array ? new Uint32Array(data.buffer, data.byteOffset, data.length) : data;
    for (let i = 0; i < bits.length; i++) if ((bits[i]! & mask) === 0) zeros++;
  }
  return zeros;
}

function tensorBytes(tree: Tree<Tensor>): number {
  return treeLeaves(tree).reduce((sum, t) => sum + t.sizeBytes, 0);
}

function peakRssBytes(): number {
  try {
    const status = readFileSync("/proc/self/status", "utf8");
    const match = /VmHWM:\s+(\d+) kB/.exec(status);
    if (match) return Number(match[1]) * 1024;
  } catch {
    // Not Linux: fall back to the current RSS.
  }
  return process.memoryUsage().rss;
}

/**
 * The tree on `device`: the same tree on the CPU, else device copies (the CPU tensors are freed).
 * A device that is not there throws the library's message (MixprecError "cuda_unavailable", or a
 * RangeError naming the devices this machine has).
 */
function toDevice<T>(tree: T, device: string): T {
  if (device === "cpu") return tree;
  return treeMap(
    (t: Tensor) => {
      const moved = t.to(device as Device);
      t.dispose();
      return moved;
    },
    tree as unknown as Tree<Tensor>,
  ) as unknown as T;
}

function castModel(model: Model, dtype: "bfloat16" | "float16"): Model {
  return treeMap((t: Tensor) => t.to(dtype), model as unknown as Tree<Tensor>) as unknown as Model;
}

function disposeTree(tree: Tree<Tensor>): void {
  for (const t of treeLeaves(tree)) t.dispose();
}

interface Setup {
  /** The trainable parameters the optimizer steps. */
  readonly params: Tree<Tensor>;
  /** Builds the loss from the trainable parameters. */
  readonly loss: (params: Tree<Tensor>, inputs: Int32Array, targets: Int32Array, batch: number) => Tensor;
  readonly policy: Policy | null;
  readonly lossScale: LossScale;
  readonly optimizer: ReturnType<typeof fusedAdamW>;
  readonly trainData: Int32Array;
  readonly evalData: Int32Array;
  /** The model as evaluated (with the trainable parameters in place). */
  readonly evalModel: () => { model: Model; linear: LinearFn };
  readonly extraBytes: number;
  readonly note: string;
  /** Frees per-step temporaries (dequantized weights). */
  readonly afterStep: () => void;
  readonly dispose: () => void;
}

const TRAIN_CHARS = 200_000;
const EVAL_CHARS = 20_000;

function pretrainSetup(name: RecipeName, options: TrainOptions): Setup {
  const trainData = corpus(options.seed + 1, "base", TRAIN_CHARS);
  const evalData = corpus(options.seed + 2, "base", EVAL_CHARS);
  const fp32 = initModel(options.seed);
  const lowDtype = name === "fp32" ? null : name.startsWith("fp16") ? "float16" : "bfloat16";
  const cast = lowDtype === null ? fp32 : castModel(fp32, lowDtype);
  if (cast !== fp32) disposeTree(fp32 as unknown as Tree<Tensor>);
  // Parameters (and so gradients, masters and optimizer state) live on the training device.
  const model = toDevice(cast, options.device);
  const policy = lowDtype === null ? null : getPolicy(`p=${lowDtype},c=${lowDtype},o=float32`);
  const lossScale = name === "fp16_dynamic" ? dynamicLossScale({ growthInterval: GROWTH_INTERVAL }) : noLossScale();
  const optimizer = fusedAdamW({
    lr: LEARNING_RATE,
    weightDecay: 0.01,
    maxGradNorm: 1,
    masterWeights: name !== "pure_bf16_sr",
    rounding: name === "pure_bf16_sr" ? "stochastic" : "nearest",
    seed: options.seed,
  });
  return {
    params: model as unknown as Tree<Tensor>,
    loss: (params, inputs, targets, batch) => forward(params as unknown as Model, inputs, targets, batch, plainLinear),
    policy,
    lossScale,
    optimizer,
    trainData,
    evalData,
    evalModel: () => ({ model, linear: plainLinear }),
    extraBytes: 0,
    note: RECIPES[name].describe,
    afterStep: () => {},
    dispose: () => disposeTree(model as unknown as Tree<Tensor>),
  };
}

interface Adapter {
  readonly a: Tensor;
  readonly b: Tensor;
}

function loraSetup(name: RecipeName, options: TrainOptions): Setup {
  const trainData = corpus(options.seed + 3, "tuned", TRAIN_CHARS);
  const evalData = corpus(options.seed + 4, "tuned", EVAL_CHARS);
  const { tree } = loadSafetensors(options.baseCheckpoint);
  const base = toDevice(tree as unknown as Model, options.device);
  const int8 = name === "lora_int8_fp32";
  const adapterDtype = int8 ? "float32" : "float16";
  let note: string = RECIPES[name].describe;
  if (int8) {
    // The combination the users asked to refuse: show the validator's message instead of running it.
    try {
      validatePrecisionConfig({ quantization: "int8", compute: "bfloat16", lossScale: "dynamic" });
      note += "; validator accepted int8 + bf16 autocast + loss scaling (unexpected)";
    } catch (error) {
      note += `; int8 + mixed precision refused by validatePrecisionConfig: "${(error as Error).message}"`;
    }
  } else {
    validatePrecisionConfig({
      compute: "float16",
      lossScale: "dynamic",
      lora: { base: "bfloat16", adapters: "float16" },
    });
  }
  // Frozen base layers: bfloat16 copies, or int8 with per-output-channel scales (nn.freezeWeight).
  const frozen = new Map<string, { weight: nn.FrozenWeight; bias: Tensor }>();
  const adapters: Record<string, Adapter> = {};
  base.blocks.forEach((block, l) => {
    for (const key of ["qkv", "proj", "fc", "out"] as const) {
      const layer = block[key];
      const layerName = `blocks.${l}.${key}`;
      frozen.set(layerName, { weight: nn.freezeWeight(layer.w, int8 ? "int8" : "bfloat16"), bias: layer.b });
      layer.w.dispose(); // Only the frozen copy stays.
      const [out, inp] = layer.w.shape as [number, number];
      adapters[layerName] = {
        a: randn([LORA.rank, inp], {
          seed: options.seed * 7919 + l * 17 + key.length,
          std: 1 / Math.sqrt(inp),
          dtype: adapterDtype,
          device: options.device as Device,
        }),
        b: zeros([out, LORA.rank], { dtype: adapterDtype, device: options.device as Device }),
      };
    }
  });
  // The frozen base runs in bfloat16 and the adapters in float16, each under its own policy;
  // the int8 base is dequantized to float32 on the fly (no autocast: quantization is the saving).
  const basePolicy = getPolicy("p=bfloat16,c=bfloat16,o=float32");
  const adapterPolicy = int8 ? null : getPolicy("p=float16,c=float16,o=float32");
  const dequantized: Tensor[] = [];
  const loraLinear =
    (current: Record<string, Adapter>): LinearFn =>
    (x, _layer, layerName) => {
      const f = frozen.get(layerName)!;
      const adapter = current[layerName]!;
      let baseOut: Tensor;
      if (f.weight.tensor !== null) {
        baseOut = autocast(basePolicy, () => ops.linear(x, f.weight.tensor!, f.bias))();
      } else {
        const weight = tensor(f.weight.dequantize(), { shape: f.weight.shape, device: x.device });
        dequantized.push(weight);
        baseOut = ops.linear(x, weight, f.bias);
      }
      const delta = () => ops.scale(ops.linear(ops.linear(x, adapter.a), adapter.b), LORA.alpha / LORA.rank);
      return ops.add(baseOut, adapterPolicy === null ? delta() : autocast(adapterPolicy, delta)());
    };
  const optimizer = fusedAdamW({ lr: 3e-3, weightDecay: 0, maxGradNorm: 1, masterWeights: true, seed: options.seed });
  const frozenBytes = [...frozen.values()].reduce((sum, f) => sum + f.weight.sizeBytes + f.bias.sizeBytes, 0);
  const otherBytes = tensorBytes([
    base.tokens,
    base.positions,
    base.head.w,
    base.head.b,
    base.lnF.w,
    base.lnF.b,
    ...base.blocks.flatMap((b) => [b.ln1.w, b.ln1.b, b.ln2.w, b.ln2.b]),
  ]);
  return {
    params: adapters as unknown as Tree<Tensor>,
    loss: (params, inputs, targets, batch) =>
      forward(base, inputs, targets, batch, loraLinear(params as unknown as Record<string, Adapter>)),
    policy: null,
    lossScale: int8 ? noLossScale() : dynamicLossScale({ growthInterval: GROWTH_INTERVAL }),
    optimizer,
    trainData,
    evalData,
    evalModel: () => ({ model: base, linear: loraLinear(adapters) }),
    extraBytes: frozenBytes + otherBytes,
    note,
    afterStep: () => {
      for (const t of dequantized.splice(0)) t.dispose();
    },
    dispose: () => {
      disposeTree(base as unknown as Tree<Tensor>);
      disposeTree(adapters as unknown as Tree<Tensor>);
      for (const f of frozen.values()) f.weight.dispose();
    },
  };
}

/** Runs one recipe for `options.steps` steps and reports what it measured. */
export async function runRecipe(
  name: RecipeName,
  options: TrainOptions,
  onProgress: (progress: Progress) => void,
): Promise<RecipeResult> {
  // Asking for the device checks it: a missing one throws the library's message, never a CPU run.
  tensor(0, { device: options.device as Device }).dispose();
  const setup = RECIPES[name].needsBase ? loraSetup(name, options) : pretrainSetup(name, options);
  const { batchSize } = options;
  const stream = new Stream(options.seed * 31 + 7);
  let lossScale = setup.lossScale;
  const lossCurve: number[] = [];
  const scaleCurve: number[] = [];
  const zeroCurve: number[] = [];
  let skipped = 0;
  let totalMs = 0;
  let zeroGrads = 0;
  let gradCount = 0;
  let firstZeroShare = 0;
  let firstPreflight: ReturnType<typeof preflight> | null = null;
  const lossOf = (params: Tree<Tensor>, inputs: Int32Array, targets: Int32Array) => {
    const loss = setup.loss(params, inputs, targets, batchSize);
    return lossScale.value === 1 ? loss : ops.scale(loss, lossScale.value);
  };
  const step = valueAndGrad(lossOf);
  const run = setup.policy === null ? step : autocast(setup.policy, step);
  for (let i = 0; i < options.steps; i++) {
    const { inputs, targets } = sampleBatch(setup.trainData, stream, batchSize, CONFIG.context);
    const started = performance.now();
    const scaleBefore = lossScale.value;
    const [scaledLoss, grads] = run(setup.params, inputs, targets);
    if (i === 0) {
      firstZeroShare = countZeros(grads) / treeLeaves(grads).reduce((sum, g) => sum + g.size, 0);
      // What float16 would do to these gradients (meaningful for the float32 recipe's gradients).
      if (name === "fp32") firstPreflight = preflight(grads, { bf16Supported: false });
    }
    const stepZeros = countZeros(grads);
    zeroGrads += stepZeros;
    zeroCurve.push(stepZeros / treeLeaves(grads).reduce((sum, g) => sum + g.size, 0));
    gradCount += treeLeaves(grads).reduce((sum, g) => sum + g.size, 0);
    const result = setup.optimizer.step(setup.params, grads, { invScale: 1 / scaleBefore });
    disposeTree(grads);
    setup.afterStep();
    lossScale = lossScale.adjust(result.applied);
    if (!result.applied) skipped++;
    const ms = performance.now() - started;
    totalMs += ms;
    const loss = scaledLoss / scaleBefore;
    lossCurve.push(loss);
    scaleCurve.push(lossScale.value);
    if (i % 5 === 0 || i === options.steps - 1)
      onProgress({ step: i + 1, loss, scale: lossScale.value, ms: totalMs / (i + 1) });
  }
  const { model, linear } = setup.evalModel();
  const evaluation = evaluate(model, setup.evalData, linear, setup.policy);
  setup.afterStep();
  if (name === "fp32" && options.baseCheckpoint)
    saveSafetensors(options.baseCheckpoint, model as unknown as Tree<Tensor>);
  const state = setup.optimizer.state;
  const stateTensors = state ? [...state.master.filter((t): t is Tensor => t !== null), ...state.mu, ...state.nu] : [];
  const stateBytes = tensorBytes(setup.params) + tensorBytes(stateTensors) + setup.extraBytes;
  const tail = lossCurve.slice(Math.floor(lossCurve.length * 0.9)).filter(Number.isFinite);
  const result: RecipeResult = {
    name,
    batchSize,
    steps: options.steps,
    finalLoss: tail.length > 0 ? tail.reduce((a, b) => a + b, 0) / tail.length : Number.NaN,
    evalLoss: evaluation.loss,
    evalAccuracy: evaluation.accuracy,
    skippedSteps: skipped,
    finalScale: lossScale.value,
    stepMs: totalMs / options.steps,
    peakRssBytes: peakRssBytes(),
    stateBytes,
    lossCurve,
    scaleCurve,
    zeroCurve,
    note: firstPreflight === null ? setup.note : `${setup.note}; ${preflightSentence(firstPreflight)}`,
    zeroGradShare: gradCount === 0 ? 0 : zeroGrads / gradCount,
    firstZeroGradShare: firstZeroShare,
  };
  setup.optimizer.dispose();
  setup.dispose();
  return result;
}
