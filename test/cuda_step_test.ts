/**
 * A training step on cuda tensors through the public API: matmul and linear (cuBLAS for the
 * product, the PTX epilogue for bias and rounding) forward and backward against the CPU, and a
 * sync-free GradScaler + fusedAdamW step (0 host synchronisations, counted with cudaSyncCount) whose
 * parameters, moments and scale trace equal the CPU path's bits.
 *
 * Runs where CUDA is available: on a GPU, or against the fake driver (MIXPREC_LIBCUDA=
 * zig/zig-out/lib/libcuda_fake.so, with MIXPREC_LIBCUBLAS=zig/zig-out/lib/libcublas_fake.so for
 * matmul), which counts as available and checks the plumbing (argument order, transposes, leading
 * dimensions, strides, dtypes) with the CPU code as the emulation. Elsewhere every suite is skipped
 * with one printed line saying why.
 */

import { describe, expect, test } from "bun:test";
import { cudaAvailability, cudaDevices, cudaSyncCount } from "../src/cuda.ts";
import {
  type DtypeName,
  fusedAdamW,
  fusedSgd,
  GradScaler,
  MixprecError,
  ops,
  type Tensor,
  tensor,
  valueAndGrad,
} from "../src/mod.ts";

const availability = cudaAvailability();
const gpu = availability.available && process.env.MIXPREC_DEVICE !== "cpu";
if (!gpu) {
  const why = availability.available ? "MIXPREC_DEVICE=cpu" : availability.reason;
  console.log(`cuda_step suites skipped (${why}); they run on a GPU or with MIXPREC_LIBCUDA=<libcuda_fake.so>`);
}
const device = "cuda:0";
const fakeDriver = gpu && cudaDevices()[0]!.name.includes("fake");
const fakeCublas = (process.env.MIXPREC_LIBCUBLAS ?? "").includes("cublas_fake");

/** Whether cuBLAS loads here, and the library's message when it does not. */
function probeCublas(): { ok: true } | { ok: false; error: MixprecError } {
  if (!gpu) return { ok: true };
  try {
    using a = tensor([[1, 2]], { device });
    using b = tensor([[3], [4]], { device });
    using c = ops.matmul(a, b);
    if (c.toArray()[0] !== 11) throw new Error(`1*3 + 2*4 came back as ${c.toArray()[0]}`);
    return { ok: true };
  } catch (error) {
    if (error instanceof MixprecError && /libcublas/.test(error.message)) return { ok: false, error };
    throw error;
  }
}
const cublas = probeCublas();
const matmulOn = gpu && cublas.ok;
if (gpu && !cublas.ok) {
  console.log(`cuda_step matmul suites skipped: ${cublas.error.message}`);
}

/** Deterministic values in [-1, 1). */
function values(count: number, seed: number): Float32Array {
  const out = new Float32Array(count);
  let state = seed >>> 0 || 1;
  for (let i = 0; i < count; i++) {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    out[i] = state / 2 ** 31 - 1;
  }
  return out;
}

function make(shape: number[], dtype: DtypeName, seed: number, on: string): Tensor {
  const count = shape.reduce((a, b) => a * b, 1);
  return tensor(values(count, seed), { dtype, shape, device: on as "cpu" });
}

/** Bits of a tensor as plain numbers (so expect() prints them). */
function bitsOf(t: Tensor): number[] {
  return Array.from(t.bits());
}

/**
 * Float32 values equal within `ulps` units in the last place of their dtype (the fake cuBLAS is the
 * CPU code: 0; a real GPU sums in another order).
 */
function expectClose(actual: Tensor, expected: Tensor, what: string): void {
  expect(actual.dtype).toBe(expected.dtype);
  expect(actual.shape).toEqual(expected.shape);
  if (fakeCublas) {
    expect({ what, bits: bitsOf(actual) }).toEqual({ what, bits: bitsOf(expected) });
    return;
  }
  const eps = expected.dtype === "float32" ? 2 ** -20 : expected.dtype === "float16" ? 2 ** -8 : 2 ** -5;
  const a = actual.toArray();
  const e = expected.toArray();
  let scale = 1;
  for (const v of e) scale = Math.max(scale, Math.abs(v));
  for (let i = 0; i < e.length; i++) {
    if (Math.abs(a[i]! - e[i]!) > eps * scale * 8) {
      throw new Error(`${what}: element ${i} is ${a[i]} on the GPU and ${e[i]} on the CPU`);
    }
  }
}

type Run = { readonly loss: number; readonly out: Tensor; readonly grads: Tensor[] };

/**
 * The forward output, the loss (out flattened times a fixed vector: a reduction made of matmuls
 * only) and every gradient, on one device.
 */
function runOn(
  on: string,
  dtype: DtypeName,
  shapes: number[][],
  forward: (inputs: Tensor[]) => Tensor,
  seed: number,
): Run {
  const inputs = shapes.map((shape, i) => make(shape, dtype, seed + i, on));
  let outSize = 0;
  const probe = forward(inputs);
  outSize = probe.size;
  const out = probe;
  const weights = make([outSize, 1], dtype, seed + 99, on);
  const lossOf = (params: Tensor[]) => ops.matmul(ops.reshape(forward(params), [1, outSize]), weights);
  const [loss, grads] = valueAndGrad(lossOf)(inputs);
  weights.dispose();
  for (const t of inputs) t.dispose();
  return { loss: loss as number, out, grads: grads as Tensor[] };
}

function compareDevices(dtype: DtypeName, shapes: number[][], forward: (inputs: Tensor[]) => Tensor, seed: number) {
  const cpu = runOn("cpu", dtype, shapes, forward, seed);
  const before = cudaSyncCount();
  const gpuRun = runOn(device, dtype, shapes, forward, seed);
  // valueAndGrad reads the loss value back (one wait); nothing else in forward or backward waits.
  expect(cudaSyncCount() - before).toBe(1);
  try {
    for (const t of [gpuRun.out, ...gpuRun.grads]) expect(t.device).toBe(device);
    expectClose(gpuRun.out, cpu.out, "forward");
    gpuRun.grads.forEach((g, i) => expectClose(g, cpu.grads[i]!, `gradient ${i}`));
    if (fakeCublas) expect(gpuRun.loss).toBe(cpu.loss);
  } finally {
    for (const t of [cpu.out, gpuRun.out, ...cpu.grads, ...gpuRun.grads]) t.dispose();
  }
}

const DTYPES: readonly DtypeName[] = ["float32", "float16", "bfloat16"];

describe.skipIf(!matmulOn)("matmul and linear on cuda tensors (cuBLAS + the PTX epilogue)", () => {
  for (const dtype of DTYPES) {
    test(`matmul of ${dtype} with a shared B: forward and both gradients equal the CPU's`, () => {
      compareDevices(
        dtype,
        [
          [2, 3, 5],
          [5, 4],
        ],
        ([a, b]) => ops.matmul(a!, b!),
        11,
      );
    });
    test(`matmul of ${dtype} with a batched B: forward and both gradients equal the CPU's`, () => {
      compareDevices(
        dtype,
        [
          [3, 4, 7],
          [3, 7, 2],
        ],
        ([a, b]) => ops.matmul(a!, b!),
        23,
      );
    });
    test(`linear of ${dtype} with a bias: forward and the x, weight and bias gradients equal the CPU's`, () => {
      compareDevices(dtype, [[2, 3, 6], [5, 6], [5]], ([x, w, b]) => ops.linear(x!, w!, b!), 37);
    });
    test(`linear of ${dtype} without a bias, odd sizes: equal the CPU's`, () => {
      compareDevices(
        dtype,
        [
          [9, 13],
          [17, 13],
        ],
        ([x, w]) => ops.linear(x!, w!),
        41,
      );
    });
  }

  test("a product with K = 0 is zeros, and an empty product writes nothing", () => {
    using a = tensor(new Float32Array(0), { shape: [3, 0], device });
    using b = tensor(new Float32Array(0), { shape: [0, 2], device });
    using c = ops.matmul(a, b);
    expect(Array.from(c.toArray())).toEqual([0, 0, 0, 0, 0, 0]);
    using e = tensor(new Float32Array(0), { shape: [0, 4], device });
    using f = tensor(new Float32Array(8), { shape: [4, 2], device });
    using g = ops.matmul(e, f);
    expect(g.shape).toEqual([0, 2]);
  });

  test("operands on different devices are refused with the fix, before any work", () => {
    using a = tensor([[1, 2]], { device });
    using b = tensor([[3], [4]]);
    expect(() => ops.matmul(a, b)).toThrow(/different devices/);
  });
});

describe.skipIf(!gpu || cublas.ok)("matmul where cuBLAS is missing", () => {
  test("the error names the library and how to install it or point MIXPREC_LIBCUBLAS at it", () => {
    if (cublas.ok) return;
    expect(cublas.error.code).toBe("cuda_unavailable");
    expect(cublas.error.message).toMatch(/libcublas\.so\.13 \/ libcublas\.so\.12 not found/);
    expect(cublas.error.message).toMatch(/MIXPREC_LIBCUBLAS/);
  });
});

type StepCase = {
  readonly name: string;
  readonly paramDtypes: readonly DtypeName[];
  readonly options: Parameters<typeof fusedAdamW>[0];
  /** Call unscale_ before step (PyTorch's pattern for clipping unscaled gradients). */
  readonly explicitUnscale: boolean;
};

const STEPS = 7;
const INF_STEP = 3;
const SHAPES = [[4, 5], [7], [3, 3, 2]];

/** Raw (unscaled) gradients of step i; step INF_STEP holds an inf in its second tensor. */
function rawGrads(step: number): Float32Array[] {
  return SHAPES.map((shape, t) => {
    const v = values(
      shape.reduce((a, b) => a * b, 1),
      1000 * step + t + 1,
    );
    for (let i = 0; i < v.length; i++) v[i] = v[i]! * 2 ** -(t + 2);
    if (step === INF_STEP && t === 1) v[3] = Number.POSITIVE_INFINITY;
    return v;
  });
}

type Trace = { scales: number[]; tensors: Tensor[]; count: number; syncs: number[] };

/** Trains STEPS steps with a GradScaler and fusedAdamW on one device, returning what to compare. */
function train(on: string, c: StepCase): Trace {
  const params = SHAPES.map((shape, t) => make(shape, c.paramDtypes[t]!, 77 + t, on));
  const scaler = new GradScaler({ initScale: 2 ** 12, growthInterval: 2, dtype: "float16", device: on });
  const opt = fusedAdamW(c.options);
  const scales: number[] = [];
  const syncs: number[] = [];
  for (let step = 0; step < STEPS; step++) {
    // The backward pass's gradients, in the params' dtypes, made before the step is timed.
    const raw = rawGrads(step).map((v, t) =>
      tensor(v, { dtype: c.paramDtypes[t]!, shape: SHAPES[t]!, device: on as "cpu" }),
    );
    const before = on === "cpu" ? 0 : cudaSyncCount();
    const scaled = scaler.scale(raw) as Tensor[];
    const scalerOpt = opt.scalerOptimizer(params, scaled);
    if (c.explicitUnscale) scaler.unscale_(scalerOpt);
    scaler.step(scalerOpt);
    scaler.update();
    syncs.push(on === "cpu" ? 0 : cudaSyncCount() - before);
    scales.push(scaler.getScale());
    for (const t of [...raw, ...scaled]) t.dispose();
  }
  const state = opt.state!;
  const tensors = [
    ...params,
    ...state.master.filter((t): t is Tensor => t !== null).map((t) => t.clone()),
    ...state.mu.map((t) => t.clone()),
    ...state.nu.map((t) => t.clone()),
  ];
  const count = state.count;
  opt.dispose();
  scaler.dispose();
  return { scales, tensors, count, syncs };
}

const STEP_CASES: readonly StepCase[] = [
  {
    name: "float16 params with float32 masters, clipping, the fused unscale",
    paramDtypes: ["float16", "float16", "float32"],
    options: { lr: 1e-2, weightDecay: 0.1, maxGradNorm: 0.05 },
    explicitUnscale: false,
  },
  {
    name: "float16 params, unscale_ before step (clipping the unscaled gradients)",
    paramDtypes: ["float16", "float32", "float16"],
    options: { lr: 3e-3, weightDecay: 0.01, maxGradNorm: 0.05, amsgrad: true },
    explicitUnscale: true,
  },
  {
    name: "bfloat16 params without masters, stochastic rounding, a schedule, no clipping",
    paramDtypes: ["bfloat16", "bfloat16", "bfloat16"],
    options: { lr: (count: number) => 1e-2 / (1 + count), masterWeights: false, rounding: "stochastic", seed: 9 },
    explicitUnscale: false,
  },
];

describe.skipIf(!gpu)("GradScaler + fusedAdamW on cuda tensors: sync-free and the CPU's bits", () => {
  for (const c of STEP_CASES) {
    test(`${c.name}: 0 host waits per step; params, masters, moments and scale trace equal the CPU's`, () => {
      const cpu = train("cpu", c);
      const dev = train(device, c);
      try {
        expect(dev.syncs).toEqual(new Array(STEPS).fill(0));
        // The inf step backs off; the clean steps grow the scale every growthInterval (2) steps.
        expect(cpu.scales[INF_STEP]).toBe(cpu.scales[INF_STEP - 1]! / 2);
        expect(dev.scales).toEqual(cpu.scales);
        expect(dev.count).toBe(cpu.count);
        expect(cpu.count).toBe(STEPS - 1);
        expect(dev.tensors.length).toBe(cpu.tensors.length);
        dev.tensors.forEach((t, i) => {
          expect(t.device).toBe(device);
          expect({ i, bits: bitsOf(t) }).toEqual({ i, bits: bitsOf(cpu.tensors[i]!) });
        });
      } finally {
        for (const t of [...cpu.tensors, ...dev.tensors]) t.dispose();
      }
    });
  }

  test("the step result and update result read the device when asked, and describe their own step", () => {
    using p = tensor([1, 2, 3], { dtype: "float16", device });
    const scaler = new GradScaler({ initScale: 1024, growthInterval: 1, dtype: "float16", device });
    const opt = fusedAdamW({ lr: 0.1 });
    const results = [];
    for (const bad of [false, true, false]) {
      using raw = tensor([0.5, bad ? Number.NaN : 1, 2], { dtype: "float16", device });
      using scaled = scaler.scale(raw);
      const before = cudaSyncCount();
      results.push({ step: scaler.step(opt.scalerOptimizer([p], [scaled])), update: scaler.update() });
      expect(cudaSyncCount()).toBe(before);
    }
    expect(results.map((r) => [r.step.applied, r.step.reason, r.step.scaleBefore, r.step.scaleAfter])).toEqual([
      [true, "applied", 1024, 2048],
      [false, "non_finite", 2048, 1024],
      [true, "applied", 1024, 2048],
    ]);
    expect(results.map((r) => [r.update.scaleBefore, r.update.scaleAfter, r.update.event])).toEqual([
      [1024, 2048, "grew"],
      [2048, 1024, "backoff"],
      [1024, 2048, "grew"],
    ]);
    expect(scaler.stateDict()).toMatchObject({ scale: 2048, _growth_tracker: 0 });
    expect(opt.state!.count).toBe(2);
    opt.dispose();
    scaler.dispose();
  });

  test("fusedSgd under a device scaler reads the flag once per step and gives the CPU's bits", () => {
    const run = (on: string) => {
      const params = SHAPES.map((shape, t) => make(shape, "float32", 5 + t, on));
      const scaler = new GradScaler({ initScale: 256, growthInterval: 2, device: on });
      const opt = fusedSgd({ lr: 0.1, momentum: 0.9 });
      const waits: number[] = [];
      for (let step = 0; step < 5; step++) {
        const raw = rawGrads(step).map((v, t) => tensor(v, { shape: SHAPES[t]!, device: on as "cpu" }));
        const before = on === "cpu" ? 0 : cudaSyncCount();
        const scaled = scaler.scale(raw) as Tensor[];
        scaler.step(opt.scalerOptimizer(params, scaled));
        scaler.update();
        waits.push(on === "cpu" ? 0 : cudaSyncCount() - before);
        for (const t of [...raw, ...scaled]) t.dispose();
      }
      const scale = scaler.getScale();
      opt.dispose();
      scaler.dispose();
      return { params, waits, scale };
    };
    const cpu = run("cpu");
    const dev = run(device);
    try {
      // The plain fused step needs the flag on the host: one read per step, no more.
      expect(dev.waits).toEqual([1, 1, 1, 1, 1]);
      expect(dev.scale).toBe(cpu.scale);
      dev.params.forEach((p, i) => expect(bitsOf(p)).toEqual(bitsOf(cpu.params[i]!)));
    } finally {
      for (const t of [...cpu.params, ...dev.params]) t.dispose();
    }
  });

  test("a scaler on the device refuses host-only extensions and gradients of another device, with the fix", () => {
    expect(() => new GradScaler({ device, minScale: 1 })).toThrow(/host-only extensions/);
    const scaler = new GradScaler({ device });
    using loss = tensor([1], { device });
    using scaled = scaler.scale(loss);
    using cpuGrad = tensor([1, 2]);
    const opt = fusedAdamW();
    let steps = 0;
    expect(() => scaler.step({ grads: [cpuGrad], step: () => steps++ })).toThrow(/gradient 0 is on cpu/);
    expect(() => scaler.step(opt.scalerOptimizer([cpuGrad], [cpuGrad]))).toThrow(/gradient 0 is on cpu/);
    expect(steps).toBe(0);
    void scaled;
    opt.dispose();
    scaler.dispose();
  });
});
