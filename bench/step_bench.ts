/**
 * One training step (forward, backward through valueAndGrad, fusedAdamW) of three models, mixprec
 * beside PyTorch (CPU) in the same run, with the targets written beside the ratios:
 *
 * 1. Step time (mitata medians) of the demo model, a mid GPT and a LLaMA-shaped model
 *    (bench/_step_models.ts), in mixprec float32 and mixprec mixed bf16 (the demo's mixed_bf16
 *    recipe: bfloat16 parameters and compute, float32 master weights and moments in the fused
 *    optimizer), beside torch float32 and torch bf16 autocast (bench/compare_step_torch.py).
 * 2. Peak memory at batch 32: RSS growth (peak RSS minus RSS after setup), one child process per
 *    configuration and side, so no run inherits another's heap.
 * 3. A per-op table at the mid model's shapes: forward and backward of each op beside its limit
 *    (a native copy of the same bytes for memory-bound ops, the measured FMA peak for matmuls) and
 *    beside torch.
 *
 *   bun bench/step_bench.ts [--configs demo,mid,llama] [--iterations N] [--budget-ms 3000]
 *     [--batch N] [--memory-batch 32] [--memory-steps 2] [--op-batch 8] [--threads N]
 *     [--no-torch] [--no-memory] [--no-ops] [--json FILE]
 *
 * `--iterations N` takes exactly N samples per median (plus one warm-up call) instead of
 * `--budget-ms` of them; `--batch N` overrides every configuration's step batch size.
 *
 * @module
 */

import {
  autocast,
  castInto,
  devices,
  disposeTree,
  fusedAdamW,
  getPolicy,
  ops,
  type Policy,
  randn,
  setThreads,
  type Tensor,
  tidy,
  type Tree,
  treeMap,
  valueAndGrad,
} from "../src/mod.ts";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import { flag, formatTable, medianNs, peakFmaGflops } from "./_harness.ts";
import { CONFIG_NAMES, type ConfigName, SIZES, stepModel, tokenIds } from "./_step_models.ts";

type Precision = "fp32" | "bf16";
const PRECISIONS: readonly Precision[] = ["fp32", "bf16"];
/** Mixed bf16 as the demo's mixed_bf16 recipe runs it (bench/_train_model.ts). */
const MIXED_BF16 = "p=bfloat16,c=bfloat16,o=float32";
const LEARNING_RATE = 3e-3;
const WEIGHT_DECAY = 0.01;

const has = (name: string) => Bun.argv.includes(`--${name}`);
const iterationsFlag = Number(flag("iterations", "0"));
const samples = iterationsFlag > 0 ? iterationsFlag : undefined;
const budgetMs = Number(flag("budget-ms", "3000"));
const threads = Number(flag("threads", String(Math.min(navigator.hardwareConcurrency, 16))));
const batchOverride = Number(flag("batch", "0"));
const memoryBatch = Number(flag("memory-batch", "32"));
const memorySteps = Number(flag("memory-steps", "2"));
const opBatch = Number(flag("op-batch", String(batchOverride || SIZES.mid.batch)));
const jsonPath = flag("json", "");
const configs = flag("configs", CONFIG_NAMES.join(","))
  .split(",")
  .map((c) => c.trim()) as ConfigName[];
for (const c of configs) {
  if (!CONFIG_NAMES.includes(c)) {
    throw new RangeError(`--configs: unknown configuration ${JSON.stringify(c)}: use ${CONFIG_NAMES.join(", ")}`);
  }
}
setThreads(threads);

// ---- One step ----

interface Step {
  /** Runs one training step and returns the loss. */
  readonly run: () => number;
  readonly dispose: () => void;
}

function setupStep(name: ConfigName, precision: Precision, batch: number): Step {
  const model = stepModel(name);
  const fp32 = model.init(0);
  const params =
    precision === "fp32" ? fp32 : (treeMap((t: Tensor) => t.to("bfloat16"), fp32) as unknown as Tree<Tensor>);
  if (params !== fp32) disposeTree(fp32);
  const policy: Policy | null = precision === "fp32" ? null : getPolicy(MIXED_BF16);
  const optimizer = fusedAdamW({ lr: LEARNING_RATE, weightDecay: WEIGHT_DECAY, masterWeights: precision === "bf16" });
  const count = batch * model.context;
  const inputs = tokenIds(count, model.vocabulary, 1);
  const targets = tokenIds(count, model.vocabulary, 2);
  const lossAndGrads = valueAndGrad((p: Tree<Tensor>, x: Int32Array, y: Int32Array) => model.loss(p, x, y, batch));
  const forwardBackward = policy === null ? lossAndGrads : autocast(policy, lossAndGrads);
  return {
    run() {
      const [loss, grads] = forwardBackward(params, inputs, targets);
      optimizer.step(params, grads);
      disposeTree(grads);
      return loss;
    },
    dispose() {
      optimizer.dispose();
      disposeTree(params);
      model.dispose();
    },
  };
}

// ---- Memory: one child process per configuration ----

function procStatusKib(key: "VmRSS" | "VmHWM"): number {
  const match = new RegExp(`${key}:\\s+(\\d+) kB`).exec(readFileSync("/proc/self/status", "utf8"));
  if (match === null) throw new Error(`/proc/self/status has no ${key}: peak memory needs Linux`);
  return Number(match[1]);
}

/** Resets the peak RSS (VmHWM) to the current RSS (Linux >= 4.0); false where the kernel refuses. */
function resetPeak(): boolean {
  try {
    writeFileSync("/proc/self/clear_refs", "5");
    return true;
  } catch {
    return false;
  }
}

interface MemoryResult {
  readonly baselineBytes: number;
  readonly peakBytes: number;
  readonly growthBytes: number;
  readonly peakReset: boolean;
}

/** In the child: setup, RSS, reset the peak, `steps` steps, peak RSS. */
function memoryChild(spec: string): void {
  const [name, precision, batch, steps] = spec.split(":");
  const step = setupStep(name as ConfigName, precision as Precision, Number(batch));
  Bun.gc(true);
  const baseline = procStatusKib("VmRSS");
  const peakReset = resetPeak();
  for (let i = 0; i < Number(steps); i++) step.run();
  const peak = procStatusKib("VmHWM");
  const result: MemoryResult = {
    baselineBytes: baseline * 1024,
    peakBytes: peak * 1024,
    growthBytes: (peak - baseline) * 1024,
    peakReset,
  };
  console.log(JSON.stringify(result));
}

function runChild(command: string[]): MemoryResult | string {
  const child = Bun.spawnSync(command, { stdout: "pipe", stderr: "pipe" });
  if (child.exitCode !== 0) return `failed: ${child.stderr.toString().trim().split("\n").pop()}`;
  return JSON.parse(child.stdout.toString().trim().split("\n").pop()!) as MemoryResult;
}

// ---- Torch ----

type TorchResult = Record<string, unknown> & { torch?: string; threads?: number };

const TORCH_SCRIPT = new URL("./compare_step_torch.py", import.meta.url).pathname;

function torchAvailable(): string | null {
  if (has("no-torch")) return "--no-torch";
  const probe = Bun.spawnSync(["python3", "-c", "import torch"], { stdout: "pipe", stderr: "pipe" });
  if (probe.exitCode === 0) return null;
  const last = probe.stderr.toString().trim().split("\n").pop() ?? "";
  return `python3 -c "import torch" failed (${last}): pip install torch==2.13.0 for the CPU build`;
}

function runTorch(args: string[]): TorchResult | string {
  const child = Bun.spawnSync(["python3", TORCH_SCRIPT, "--threads", String(threads), ...args], {
    stdout: "pipe",
    stderr: "pipe",
  });
  if (child.exitCode !== 0) return `compare_step_torch.py failed: ${child.stderr.toString().trim().split("\n").pop()}`;
  return JSON.parse(child.stdout.toString()) as TorchResult;
}

// ---- Per-op table ----

interface OpCase {
  readonly name: string;
  readonly shape: string;
  /** The differentiated inputs (parameters of a tiny loss). */
  readonly inputs: Record<string, Tensor>;
  readonly apply: (p: Record<string, Tensor>) => Tensor;
  /** FLOPs of the forward pass (matmul-like ops; the backward counts twice), or null. */
  readonly flops: number | null;
  /**
   * Bytes read + written by forward and backward, in elements of the input dtype: the copy limit of
   * memory-bound ops (unused where `flops` is set).
   */
  readonly elements: readonly [number, number];
}

function opCases(batch: number, dtype: "float32" | "bfloat16"): OpCase[] {
  const { context: t, width: c, hidden: h, vocabulary: v, heads } = SIZES.mid;
  const n = batch * t;
  const r = (shape: number[], seed: number, std = 1) => randn(shape, { seed, std, dtype });
  const ids = tokenIds(n, v, 3);
  const labels = tokenIds(n, v, 4);
  return [
    {
      name: "linear (MLP fc)",
      shape: `[${n}, ${c}] x [${h}, ${c}]^T + b`,
      inputs: { x: r([batch, t, c], 1), w: r([h, c], 2, 0.02), b: r([h], 3, 0.02) },
      apply: (p) => ops.linear(p.x!, p.w!, p.b),
      flops: 2 * n * c * h,
      elements: [n * c + h * c + n * h, 2 * n * h + n * c + 2 * h * c],
    },
    {
      name: "layerNorm",
      shape: `[${batch}, ${t}, ${c}]`,
      inputs: { x: r([batch, t, c], 4), w: r([c], 5), b: r([c], 6) },
      apply: (p) => ops.layerNorm(p.x!, p.w, p.b),
      flops: null,
      elements: [2 * n * c, 3 * n * c],
    },
    {
      name: "gelu (tanh)",
      shape: `[${batch}, ${t}, ${h}]`,
      inputs: { x: r([batch, t, h], 7) },
      apply: (p) => ops.gelu(p.x!, { approximate: "tanh" }),
      flops: null,
      elements: [2 * n * h, 3 * n * h],
    },
    {
      name: "crossEntropy",
      shape: `[${n}, ${v}]`,
      inputs: { logits: r([n, v], 8) },
      apply: (p) => ops.crossEntropy(p.logits!, labels),
      flops: null,
      elements: [n * v, 2 * n * v],
    },
    {
      name: "causalSelfAttention",
      shape: `qkv [${batch}, ${t}, ${3 * c}], ${heads} heads`,
      inputs: { qkv: r([batch, t, 3 * c], 9) },
      apply: (p) => ops.causalSelfAttention(p.qkv!, heads),
      // The causal half of Q K^T and of P V: 2 * (B * H * T^2 / 2 * D) FMAs each.
      flops: 2 * batch * t * t * c,
      elements: [4 * n * c, 7 * n * c],
    },
    {
      name: "embedding",
      shape: `[${v}, ${c}][${batch}, ${t}]`,
      inputs: { table: r([v, c], 10) },
      apply: (p) => ops.embedding(p.table!, ids, [batch, t]),
      flops: null,
      elements: [2 * n * c, n * c + v * c],
    },
    {
      name: "add",
      shape: `[${batch}, ${t}, ${c}] x 2`,
      inputs: { a: r([batch, t, c], 11), b: r([batch, t, c], 12) },
      apply: (p) => ops.add(p.a!, p.b!),
      flops: null,
      elements: [3 * n * c, 3 * n * c],
    },
  ];
}

interface OpRow {
  readonly op: string;
  readonly shape: string;
  readonly dtype: Precision;
  readonly pass: "forward" | "backward";
  /** null where the backward's estimate is within noise (at or below zero). */
  readonly ms: number | null;
  /** The limit's time for the same work: a copy of the same bytes, or FLOPs at the FMA peak. */
  readonly limitMs: number;
  readonly limit: string;
  readonly torchMs: number | null;
}

/** A native copy moving `bytes` (read + write), threaded (the cast kernel on one dtype) or set(). */
async function copyNs(bytes: number): Promise<number> {
  const half = Math.max(Math.round(bytes / 2), 64);
  const source = new Uint8Array(half).fill(1);
  const target = new Uint8Array(half);
  const threaded = await medianNs(() => castInto(source, target, "e4m3", "e4m3"), budgetMs / 20, samples);
  const plain = await medianNs(() => target.set(source), budgetMs / 20, samples);
  return Math.min(threaded, plain);
}

async function opRows(batch: number, peakGflops: number, torchOps: Record<string, unknown> | null): Promise<OpRow[]> {
  const rows: OpRow[] = [];
  const opBudget = budgetMs / 10;
  for (const precision of PRECISIONS) {
    const dtype = precision === "fp32" ? "float32" : "bfloat16";
    const policy = precision === "fp32" ? null : getPolicy(MIXED_BF16);
    const under = <A extends unknown[], R>(fn: (...args: A) => R) => (policy === null ? fn : autocast(policy, fn));
    const elementBytes = precision === "fp32" ? 4 : 2;
    for (const op of opCases(batch, dtype)) {
      // The output's shape and dtype, for the reduction baseline below.
      const probe = tidy(() => {
        const out = under(() => op.apply(op.inputs))();
        return { shape: [...out.shape], dtype: out.dtype };
      });
      const scalar = probe.shape.reduce((a, b) => a * b, 1) === 1;
      const forward = under(() => tidy(() => void op.apply(op.inputs)));
      const both = under(valueAndGrad((p: Record<string, Tensor>) => (scalar ? op.apply(p) : ops.sum(op.apply(p)))));
      const forwardNs = await medianNs(forward, opBudget, samples);
      const bothNs = await medianNs(
        () => disposeTree(both(op.inputs)[1] as unknown as Tree<Tensor>),
        opBudget,
        samples,
      );
      // backward = fwd+bwd of sum(op(x)) - fwd(op) - fwd+bwd of sum(y) on a tensor of op's output shape.
      let reduceNs = 0;
      if (!scalar) {
        const y = { y: randn(probe.shape, { seed: 99, dtype: probe.dtype }) };
        const reduce = under(valueAndGrad((p: { y: Tensor }) => ops.sum(p.y)));
        reduceNs = await medianNs(() => disposeTree(reduce(y)[1] as unknown as Tree<Tensor>), opBudget, samples);
        y.y.dispose();
      }
      // At or below zero the op's backward is lost in the other terms' noise: reported as null.
      const backwardNs = bothNs - forwardNs - reduceNs > 0 ? bothNs - forwardNs - reduceNs : Number.NaN;
      for (const [pass, ns, index] of [
        ["forward", forwardNs, 0],
        ["backward", backwardNs, 1],
      ] as const) {
        let limitNs: number;
        let limit: string;
        if (op.flops !== null) {
          const flops = op.flops * (pass === "forward" ? 1 : 2);
          limitNs = flops / peakGflops;
          limit = `${(flops / 1e6).toFixed(0)} MFLOP at FMA peak`;
        } else {
          const bytes = op.elements[index] * elementBytes;
          limitNs = await copyNs(bytes);
          limit = `copy ${(bytes / 2 ** 20).toFixed(1)} MiB r+w`;
        }
        const key = `${op.name.split(" ")[0] === "causalSelfAttention" ? "attention" : op.name.split(" ")[0]} ${precision}`;
        const torchOp = torchOps?.[key] as { forward: number; backward: number } | undefined;
        rows.push({
          op: op.name,
          shape: op.shape,
          dtype: precision,
          pass,
          ms: Number.isNaN(ns) ? null : ns / 1e6,
          limitMs: limitNs / 1e6,
          limit,
          torchMs: torchOp === undefined ? null : torchOp[pass],
        });
      }
      for (const t of Object.values(op.inputs)) t.dispose();
    }
  }
  return rows;
}

// ---- Report ----

const fmt = (x: number | null | undefined, digits = 1) =>
  x === null || x === undefined || !Number.isFinite(x) ? "-" : x.toFixed(digits);
const ratio = (a: number | null | undefined, b: number | null | undefined) =>
  a == null || b == null || !Number.isFinite(a) || !Number.isFinite(b) || b === 0 ? null : a / b;
const mark = (ok: boolean | null) => (ok === null ? "-" : ok ? "met" : "MISSED");
const mib = (bytes: number | null | undefined) => (bytes == null ? null : bytes / 2 ** 20);

/**
 * Whether the library's chosen CPU kernels have bfloat16 arithmetic (AVX512-BF16 or AMX), which
 * sets the bf16 target: the kernels, not the CPU's flags, so MIXPREC_CPU=baseline measures (and
 * is held to) the AVX2 target on an AVX-512 machine.
 */
function cpuKernels(): { bf16: boolean; kernels: string } {
  const cpu = devices().find((d) => d.kind === "cpu");
  if (cpu === undefined || cpu.kind !== "cpu") return { bf16: false, kernels: "unknown" };
  return { bf16: cpu.bf16Native, kernels: cpu.kernels };
}

async function main(): Promise<void> {
  const torchSkip = torchAvailable();
  if (torchSkip !== null) console.log(`torch columns skipped: ${torchSkip}`);
  const { bf16: bf16Native, kernels } = cpuKernels();
  const bf16Target = bf16Native ? 0.7 : 1.0;
  const notes: string[] = [];

  // 1. Step time.
  const steps: Record<string, unknown>[] = [];
  let torchSteps: TorchResult | null = null;
  if (torchSkip === null) {
    const args = ["--configs", configs.join(","), "--budget-ms", String(budgetMs)];
    if (samples !== undefined) args.push("--iterations", String(samples));
    if (batchOverride > 0) args.push("--batch", String(batchOverride));
    const result = runTorch(args);
    if (typeof result === "string") notes.push(result);
    else torchSteps = result;
  }
  for (const name of configs) {
    const model = stepModel(name);
    notes.push(`${name}: ${model.describe}${model.notes.length > 0 ? `; ${model.notes.join("; ")}` : ""}`);
    model.dispose();
    const batch = batchOverride || SIZES[name].batch;
    const ours: Record<Precision, number> = { fp32: Number.NaN, bf16: Number.NaN };
    const losses: Record<Precision, number> = { fp32: Number.NaN, bf16: Number.NaN };
    for (const precision of PRECISIONS) {
      const step = setupStep(name, precision, batch);
      ours[precision] = (await medianNs(() => (losses[precision] = step.run()), budgetMs, samples)) / 1e6;
      step.dispose();
    }
    const torchMs = (torchSteps?.steps ?? {}) as Record<string, number>;
    const torchFp32 = torchMs[`${name} fp32`] ?? null;
    const torchBf16 = torchMs[`${name} bf16`] ?? null;
    const speedFp32 = ratio(torchFp32, ours.fp32);
    const bf16OverFp32 = ratio(ours.bf16, ours.fp32);
    steps.push({
      config: name,
      batch,
      oursFp32Ms: ours.fp32,
      oursBf16Ms: ours.bf16,
      // The last step's loss: a sanity check (about ln(vocabulary) for these freshly initialised models).
      oursFp32Loss: losses.fp32,
      oursBf16Loss: losses.bf16,
      torchFp32Ms: torchFp32,
      torchBf16Ms: torchBf16,
      speedupVsTorchFp32: speedFp32,
      speedupVsTorchBf16: ratio(torchBf16, ours.bf16),
      bf16OverFp32,
      torchBf16OverFp32: ratio(torchBf16, torchFp32),
      fp32Target: 1.0,
      fp32Aim: name === "demo" ? 1.5 : null,
      fp32TargetMet: speedFp32 === null ? null : speedFp32 >= 1.0,
      bf16Target,
      bf16TargetMet: bf16OverFp32 === null ? null : bf16OverFp32 <= bf16Target,
    });
  }

  // 2. Peak memory.
  const memory: Record<string, unknown>[] = [];
  if (!has("no-memory")) {
    for (const name of configs) {
      const row: Record<string, MemoryResult | string | null> = {};
      for (const precision of PRECISIONS) {
        const spec = `${name}:${precision}:${memoryBatch}:${memorySteps}`;
        row[`ours ${precision}`] = runChild([
          process.execPath,
          import.meta.path,
          "--memory-child",
          spec,
          "--threads",
          String(threads),
        ]);
        row[`torch ${precision}`] =
          torchSkip !== null
            ? null
            : (runTorch([
                "--memory",
                name,
                "--precision",
                precision,
                "--batch",
                String(memoryBatch),
                "--steps",
                String(memorySteps),
              ]) as MemoryResult | string);
      }
      const growth = (key: string) => {
        const r = row[key];
        if (typeof r === "string") notes.push(`memory ${name} ${key}: ${r}`);
        return r !== null && typeof r === "object" ? r.growthBytes : null;
      };
      const [of32, obf, tf32, tbf] = ["ours fp32", "ours bf16", "torch fp32", "torch bf16"].map(growth);
      const fp32VsTorch = ratio(of32, tf32);
      const bf16VsFp32 = ratio(obf, of32);
      memory.push({
        config: name,
        batch: memoryBatch,
        steps: memorySteps,
        oursFp32MiB: mib(of32),
        oursBf16MiB: mib(obf),
        torchFp32MiB: mib(tf32),
        torchBf16MiB: mib(tbf),
        bf16OverFp32: bf16VsFp32,
        oursOverTorchFp32: fp32VsTorch,
        oursOverTorchBf16: ratio(obf, tbf),
        fp32TargetMet: fp32VsTorch === null ? null : fp32VsTorch <= 1,
        bf16TargetMet: bf16VsFp32 === null ? null : bf16VsFp32 <= 0.75,
      });
    }
  }

  // 3. Per-op table at the mid model's shapes.
  let opTable: OpRow[] = [];
  let peak: number | null = null;
  if (!has("no-ops")) {
    peak = peakFmaGflops(threads, samples === undefined ? 40 : 4);
    let torchOps: Record<string, unknown> | null = null;
    if (torchSkip === null) {
      const args = ["--ops", "--batch", String(opBatch), "--budget-ms", String(budgetMs / 2.5)];
      if (samples !== undefined) args.push("--iterations", String(samples));
      const result = runTorch(args);
      if (typeof result === "string") notes.push(result);
      else torchOps = result.ops as Record<string, unknown>;
    }
    opTable = await opRows(opBatch, peak, torchOps);
  }

  const [load1] = readFileSync("/proc/loadavg", "utf8").split(" ");
  const machine = {
    cpus: navigator.hardwareConcurrency,
    threads,
    avx512bf16: bf16Native,
    kernels,
    fmaPeakGflops: peak,
    torch: torchSteps?.torch ?? null,
    torchThreads: torchSteps?.threads ?? null,
    torchFusedAdamW: torchSteps?.fusedAdamW ?? null,
    loadAverage: Number(load1),
  };
  printReport(machine, steps, memory, opTable, notes, torchSkip);
  if (jsonPath !== "") {
    const options = {
      configs,
      iterations: samples ?? null,
      budgetMs,
      batch: batchOverride || null,
      memoryBatch,
      memorySteps,
      opBatch,
    };
    mkdirSync(dirname(jsonPath), { recursive: true });
    writeFileSync(jsonPath, `${JSON.stringify({ machine, options, steps, memory, ops: opTable, notes }, null, 2)}\n`);
    console.log(`\nwrote ${jsonPath}`);
  }
}

function printReport(
  machine: Record<string, unknown>,
  steps: Record<string, unknown>[],
  memory: Record<string, unknown>[],
  opTable: OpRow[],
  notes: string[],
  torchSkip: string | null,
): void {
  const n = (row: Record<string, unknown>, key: string) => row[key] as number | null;
  console.log(
    `## One training step: mixprec beside PyTorch ${machine.torch ?? "(absent)"} on the CPU\n\n${machine.cpus} CPUs, ${machine.threads} threads for both sides (torch threads: ${machine.torchThreads ?? "-"}, torch AdamW fused: ${machine.torchFusedAdamW ?? "-"}), CPU kernels: ${machine.kernels} (bfloat16 arithmetic: ${machine.avx512bf16 ? "yes" : "no"}), load average ${machine.loadAverage} at the end (other work slows every column).\nStep = forward + backward (valueAndGrad) + fusedAdamW. mixed bf16 = bfloat16 parameters and compute (${MIXED_BF16}), float32 master weights and moments in the fused optimizer; torch bf16 = torch.autocast("cpu", bfloat16) over float32 parameters.\n`,
  );
  console.log(
    formatTable(
      [
        "model",
        "batch",
        "ours fp32 ms",
        "ours bf16 ms",
        "torch fp32 ms",
        "torch bf16 ms",
        "torch/ours fp32",
        "torch/ours bf16",
        "bf16/fp32 ours",
        "bf16/fp32 torch",
        "target fp32 >= 1.0x torch",
        `target bf16 <= ${machine.avx512bf16 ? "0.7" : "1.0"}x fp32`,
      ],
      steps.map((r) => [
        String(r.config),
        String(r.batch),
        fmt(n(r, "oursFp32Ms")),
        fmt(n(r, "oursBf16Ms")),
        fmt(n(r, "torchFp32Ms")),
        fmt(n(r, "torchBf16Ms")),
        fmt(n(r, "speedupVsTorchFp32"), 2),
        fmt(n(r, "speedupVsTorchBf16"), 2),
        fmt(n(r, "bf16OverFp32"), 2),
        fmt(n(r, "torchBf16OverFp32"), 2),
        `${mark(r.fp32TargetMet as boolean | null)}${r.config === "demo" ? " (aim 1.5x)" : ""}`,
        mark(r.bf16TargetMet as boolean | null),
      ]),
    ),
  );
  if (memory.length > 0) {
    console.log(
      `\n## Peak memory: RSS growth over setup, batch ${memory[0]!.batch}, ${memory[0]!.steps} steps, one child process per cell\n\nPeak RSS (VmHWM, reset after setup) minus RSS after setup: activations, gradients, optimizer state and whatever the allocator keeps; MiB.\n`,
    );
    console.log(
      formatTable(
        [
          "model",
          "ours fp32",
          "ours bf16",
          "torch fp32",
          "torch bf16",
          "bf16/fp32 ours",
          "ours/torch fp32",
          "ours/torch bf16",
          "target fp32 <= torch",
          "target bf16 <= 0.75x fp32",
        ],
        memory.map((r) => [
          String(r.config),
          fmt(n(r, "oursFp32MiB")),
          fmt(n(r, "oursBf16MiB")),
          fmt(n(r, "torchFp32MiB")),
          fmt(n(r, "torchBf16MiB")),
          fmt(n(r, "bf16OverFp32"), 2),
          fmt(n(r, "oursOverTorchFp32"), 2),
          fmt(n(r, "oursOverTorchBf16"), 2),
          mark(r.fp32TargetMet as boolean | null),
          mark(r.bf16TargetMet as boolean | null),
        ]),
      ),
    );
  }
  if (opTable.length > 0) {
    console.log(
      `\n## Ops at the mid model's shapes (batch ${opBatch}), ms per call\n\nbackward = fwd+bwd of sum(op(x)) - fwd(op) - fwd+bwd of sum(y) on op's output shape (all mitata medians, so small differences are noise). limit = a threaded copy moving the op's bytes (read + write, its inputs and outputs once), or its FLOPs at the measured float32 FMA peak (${fmt(machine.fmaPeakGflops as number | null)} GFLOP/s; bf16 is held to the same float32 peak). bf16 rows run under the mixed policy on bfloat16 inputs; torch's under autocast on bfloat16 leaves.\n`,
    );
    console.log(
      formatTable(
        ["op", "shape", "dtype", "pass", "ours ms", "limit ms", "limit", "ours/limit", "torch ms", "torch/ours"],
        opTable.map((r) => [
          r.op,
          r.shape,
          r.dtype,
          r.pass,
          r.ms === null ? "~0 (noise)" : fmt(r.ms, 3),
          fmt(r.limitMs, 3),
          r.limit,
          fmt(ratio(r.ms, r.limitMs), 1),
          fmt(r.torchMs, 3),
          fmt(ratio(r.torchMs, r.ms), 2),
        ]),
      ),
    );
  }
  console.log(
    `\nTargets: fp32 step >= 1.0x torch fp32 at every size (aim 1.5x on the demo model); mixed bf16 step no slower than our fp32 step on an AVX2-only CPU (<= 0.7x where AVX512-BF16 exists); fp32 peak-memory growth <= torch's; bf16's <= 0.75x of our fp32's. torch/ours above 1: mixprec faster.`,
  );
  if (torchSkip !== null) console.log(`torch columns: skipped (${torchSkip})`);
  for (const note of notes) console.log(`- ${note}`);
}

const childSpec = flag("memory-child", "");
if (childSpec !== "") memoryChild(childSpec);
else await main();
