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

export { fakeDriver, GradScaler, fusedAdamW };
