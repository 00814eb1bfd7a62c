/**
 * The CUDA backend's row-op kernels (src/backend/cuda/rows.ts, zig/src/cuda/ops_rows.zig): layer
 * and RMS norm, softmax, log-softmax, cross-entropy, embedding, rope and attention, forward and
 * backward, in float32, float16 and bfloat16, each compared bit for bit with the CPU backend on
 * the same inputs. The kernels are called through the backends (the ops' own device plumbing is
 * another suite's); inputs are built on the CPU and copied to the device with `.to()`.
 *
 * It runs where CUDA is available, the fake driver included (MIXPREC_LIBCUDA, where each kernel
 * is emulated by its CPU twin: then it checks the plumbing, arguments, staging and workspaces,
 * not the PTX); elsewhere it is skipped with one line saying why. MIXPREC_DEVICE=cpu turns it off.
 */

import { describe, expect, test } from "bun:test";
import { backendOf } from "../src/backend/backend.ts";
import type { AttentionOperand, AttentionProblem } from "../src/backend/cpu/attention.ts";
import type { RopeProblem } from "../src/backend/cpu/rope.ts";
import { cudaAvailability, cudaDevices, cudaSyncCount } from "../src/backend/cuda.ts";
import {
  type DtypeName,
  MixprecError,
  ops,
  type StorageArray,
  type Tensor,
  tensor,
  valueAndGrad,
  zeros,
} from "../src/mod.ts";

const availability = cudaAvailability();
const gpu = availability.available && (process.env.MIXPREC_DEVICE ?? "") !== "cpu";
if (!gpu) {
  const why = availability.available ? "MIXPREC_DEVICE=cpu" : availability.reason;
  console.log(`CUDA row-op suites skipped (${why}); they run where CUDA (or the fake driver) is available`);
}
const device = "cuda:0";
const fakeDriver = gpu && cudaDevices()[0]!.name.includes("fake");

const DTYPES: readonly DtypeName[] = ["float32", "float16", "bfloat16"];

/** Deterministic values in [-spread, spread). */
function values(count: number, seed: number, spread = 2): Float32Array {
  const out = new Float32Array(count);
  let state = seed >>> 0;
  for (let i = 0; i < count; i++) {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    out[i] = ((state >>> 8) / (1 << 24) - 0.5) * 2 * spread;
  }
  return out;
}

/** The same input on the CPU and on the device (rounded once into `dtype` on the CPU). */
function both(data: Float32Array, shape: number[], dtype: DtypeName): [Tensor, Tensor] {
  const host = tensor(data, { dtype, shape });
  return [host, host.to(device)];
}

/** Outputs of one shape on the CPU and on the device. */
function outputs(shape: number[], dtype: DtypeName): [Tensor, Tensor] {
  return [zeros(shape, { dtype }), zeros(shape, { dtype, device })];
}

function rawBits(array: StorageArray): ArrayLike<number> {
  return array instanceof Float32Array ? new Uint32Array(array.buffer, array.byteOffset, array.length) : array;
}

/** Expects the device tensor to hold the CPU tensor's bits; names the first difference. */
function expectSameBits(actual: Tensor, expected: Tensor, what: string): void {
  const [a, e] = [rawBits(actual.bits()), rawBits(expected.bits())];
  let i = 0;
  while (i < Math.min(a.length, e.length) && a[i] === e[i]) i++;
  const hex = (x: number | undefined) => (x === undefined ? "none" : `0x${x.toString(16)}`);
  expect(`${what}: element ${i} of ${a.length}: ${hex(a[i])}`).toBe(
    `${what}: element ${i} of ${e.length}: ${hex(e[i])}`,
  );
}

const cpu = backendOf("cpu");
const cuda = backendOf(device);

describe.skipIf(!gpu)("row ops on cuda tensors give the CPU's bits", () => {
  for (const dtype of DTYPES) {
    test(`layerNorm forward and backward with weight and bias gradients (${dtype})`, () => {
      for (const [rows, width] of [
        [70, 37],
        [3, 48],
        [129, 5],
      ] as const) {
        const [x, xd] = both(values(rows * width, 1, 3), [rows, width], dtype);
        const [w, wd] = both(values(width, 2), [width], dtype);
        const [b, bd] = both(values(width, 3), [width], dtype);
        const [g, gd] = both(values(rows * width, 4), [rows, width], dtype);
        const [y, yd] = outputs([rows, width], dtype);
        const [mean, meand] = outputs([rows], "float32");
        const [rstd, rstdd] = outputs([rows], "float32");
        cpu.layerNormForward(x, w, b, y, mean, rstd, 1e-5);
        cuda.layerNormForward(xd, wd, bd, yd, meand, rstdd, 1e-5);
        expectSameBits(yd, y, `y ${rows}x${width}`);
        expectSameBits(meand, mean, "mean");
        expectSameBits(rstdd, rstd, "rstd");
        const [dx, dxd] = outputs([rows, width], dtype);
        const [dw, dwd] = outputs([width], dtype);
        const [db, dbd] = outputs([width], dtype);
        cpu.layerNormBackward(x, w, mean, rstd, g, dx, dw, db);
        cuda.layerNormBackward(xd, wd, meand, rstdd, gd, dxd, dwd, dbd);
        expectSameBits(dxd, dx, "dx");
        expectSameBits(dwd, dw, "dweight");
        expectSameBits(dbd, db, "dbias");
        // Without weight and bias, and without statistics (inference).
        const [y2, y2d] = outputs([rows, width], dtype);
        cpu.layerNormForward(x, null, null, y2, null, null, 1e-3);
        cuda.layerNormForward(xd, null, null, y2d, null, null, 1e-3);
        expectSameBits(y2d, y2, "y without weight");
      }
    });

    test(`rmsNorm forward and backward with the weight gradient (${dtype})`, () => {
      const [rows, width] = [67, 33];
      const [x, xd] = both(values(rows * width, 5, 4), [rows, width], dtype);
      const [w, wd] = both(values(width, 6), [width], dtype);
      const [g, gd] = both(values(rows * width, 7), [rows, width], dtype);
      const [y, yd] = outputs([rows, width], dtype);
      const [rstd, rstdd] = outputs([rows], "float32");
      cpu.rmsNormForward(x, w, y, rstd, 1e-6);
      cuda.rmsNormForward(xd, wd, yd, rstdd, 1e-6);
      expectSameBits(yd, y, "y");
      expectSameBits(rstdd, rstd, "rstd");
      const [dx, dxd] = outputs([rows, width], dtype);
      const [dw, dwd] = outputs([width], dtype);
      cpu.rmsNormBackward(x, w, rstd, g, dx, dw);
      cuda.rmsNormBackward(xd, wd, rstdd, gd, dxd, dwd);
      expectSameBits(dxd, dx, "dx");
      expectSameBits(dwd, dw, "dweight");
    });

    test(`a norm over no rows gives zero weight and bias gradients (${dtype})`, () => {
      const [x, xd] = both(new Float32Array(0), [0, 6], dtype);
      const [w, wd] = both(values(6, 8), [6], dtype);
      const [dw, dwd] = [zeros([6], { dtype }), tensor(values(6, 9), { dtype, device })];
      const [db, dbd] = [zeros([6], { dtype }), tensor(values(6, 10), { dtype, device })];
      const empty = zeros([0], { dtype: "float32", device });
      cuda.layerNormBackward(xd, wd, empty, empty, xd, xd, dwd, dbd);
      cpu.layerNormBackward(x, w, zeros([0]), zeros([0]), x, x, dw, db);
      expectSameBits(dwd, dw, "dweight");
      expectSameBits(dbd, db, "dbias");
    });

    test(`softmax and log-softmax forward and backward (${dtype})`, () => {
      for (const [rows, width] of [
        [9, 35],
        [40, 16],
        [5, 1],
      ] as const) {
        const [x, xd] = both(values(rows * width, 11, 8), [rows, width], dtype);
        const [g, gd] = both(values(rows * width, 12), [rows, width], dtype);
        for (const op of ["softmax", "logSoftmax"] as const) {
          const [y, yd] = outputs([rows, width], dtype);
          cpu[`${op}Forward`](x, y);
          cuda[`${op}Forward`](xd, yd);
          expectSameBits(yd, y, `${op} ${rows}x${width}`);
          const [dx, dxd] = outputs([rows, width], dtype);
          cpu[`${op}Backward`](y, g, dx);
          cuda[`${op}Backward`](yd, gd, dxd);
          expectSameBits(dxd, dx, `${op} backward ${rows}x${width}`);
        }
      }
    });

    test(`crossEntropy forward and backward skip ignored rows and mean over the kept (${dtype})`, () => {
      const [rows, width] = [37, 23];
      const labels = new Int32Array(rows);
      for (let i = 0; i < rows; i++) labels[i] = i % 5 === 2 ? -100 : (i * 7) % width;
      const [x, xd] = both(values(rows * width, 13, 6), [rows, width], dtype);
      const [lse, lsed] = outputs([rows], "float32");
      const [mean, meand] = outputs([], "float32");
      cpu.crossEntropyForward(x, labels, -100, lse, mean);
      cuda.crossEntropyForward(xd, labels, -100, lsed, meand);
      expectSameBits(lsed, lse, "lse");
      expectSameBits(meand, mean, "mean");
      const [gMean, gMeand] = both(new Float32Array([0.75]), [], "float32");
      const [dx, dxd] = outputs([rows, width], dtype);
      cpu.crossEntropyBackward(x, labels, -100, lse, gMean, dx);
      cuda.crossEntropyBackward(xd, labels, -100, lsed, gMeand, dxd);
      expectSameBits(dxd, dx, "dlogits");
      // Another ignore index, and every row ignored: the mean is NaN and the gradient zeros.
      const ignored = new Int32Array(rows).fill(7);
      cuda.crossEntropyForward(xd, ignored, 7, lsed, meand);
      expect(Number.isNaN(meand.toArray()[0]!)).toBe(true);
      cpu.crossEntropyBackward(x, ignored, 7, lse, gMean, dx);
      cuda.crossEntropyBackward(xd, ignored, 7, lsed, gMeand, dxd);
      expectSameBits(dxd, dx, "dlogits, all ignored");
    });

    test(`embedding gathers and scatter-adds repeated ids in token order (${dtype})`, () => {
      const [vocabulary, dim] = [11, 300];
      const ids = new Int32Array([3, 0, 3, 10, 3, 7, 0, 3]);
      const [table, tabled] = both(values(vocabulary * dim, 14), [vocabulary, dim], dtype);
      const [out, outd] = outputs([ids.length, dim], dtype);
      cpu.embeddingForward(table, ids, out);
      cuda.embeddingForward(tabled, ids, outd);
      expectSameBits(outd, out, "gather");
      const [g, gd] = both(values(ids.length * dim, 15), [ids.length, dim], dtype);
      const [dt, dtd] = outputs([vocabulary, dim], dtype);
      cpu.embeddingBackward(ids, g, dt);
      cuda.embeddingBackward(ids, gd, dtd);
      expectSameBits(dtd, dt, "scatter-add");
      // No tokens: every row of the gradient is zero.
      const poisoned = tensor(values(vocabulary * dim, 16), { dtype, shape: [vocabulary, dim], device });
      cuda.embeddingBackward(new Int32Array(0), gd, poisoned);
      expect(poisoned.toArray().every((v) => v === 0)).toBe(true);
    });

    test(`rope forward and backward, with offsets and explicit per-batch positions (${dtype})`, () => {
      const [batch, steps, heads, headDim] = [2, 5, 3, 38];
      const invFreq = new Float32Array(headDim / 2);
      for (let i = 0; i < invFreq.length; i++) invFreq[i] = 1 / 10000 ** ((2 * i) / headDim);
      const shape = [batch, steps, heads, headDim];
      const count = batch * steps * heads * headDim;
      const positions = new Int32Array(batch * steps);
      for (let i = 0; i < positions.length; i++) positions[i] = (i * 37) % 1000;
      const problems: RopeProblem[] = [
        { batch, steps, heads, headDim, invFreq, offset: 7, positions: null },
        { batch, steps, heads, headDim, invFreq, offset: 0, positions: positions.subarray(0, steps) },
        { batch, steps, heads, headDim, invFreq, offset: 0, positions },
        { batch, steps, heads, headDim, invFreq, offset: 3_000_000, positions: null },
      ];
      const [x, xd] = both(values(count, 17), shape, dtype);
      for (const [index, problem] of problems.entries()) {
        const [y, yd] = outputs(shape, dtype);
        cpu.ropeForward(problem, x, y);
        cuda.ropeForward(problem, xd, yd);
        expectSameBits(yd, y, `rope ${index}`);
        const [dx, dxd] = outputs(shape, dtype);
        cpu.ropeBackward(problem, y, dx);
        cuda.ropeBackward(problem, yd, dxd);
        expectSameBits(dxd, dx, `rope backward ${index}`);
      }
    });

    test(`attention forward and backward: causal or not, masks, GQA and odd lengths (${dtype})`, () => {
      const cases: { name: string; problem: AttentionProblem; mask: boolean }[] = [
        {
          name: "causal GQA 2 with a mask",
          problem: { batch: 2, stepsQ: 37, stepsKv: 41, headsQ: 4, headsKv: 2, headDim: 19, causal: true, scale: 0.23 },
          mask: true,
        },
        {
          name: "GQA 4, not causal",
          problem: {
            batch: 1,
            stepsQ: 33,
            stepsKv: 33,
            headsQ: 4,
            headsKv: 1,
            headDim: 16,
            causal: false,
            scale: 0.25,
          },
          mask: false,
        },
        {
          name: "one query, wide heads",
          problem: { batch: 2, stepsQ: 1, stepsKv: 70, headsQ: 2, headsKv: 2, headDim: 64, causal: true, scale: 0.125 },
          mask: true,
        },
      ];
      for (const { name, problem, mask } of cases) {
        const { batch, stepsQ, stepsKv, headsQ, headsKv, headDim } = problem;
        const qShape = [batch, stepsQ, headsQ, headDim];
        const kvShape = [batch, stepsKv, headsKv, headDim];
        const [q, qd] = both(
          values(
            qShape.reduce((a, b) => a * b),
            21,
            1.5,
          ),
          qShape,
          dtype,
        );
        const [k, kd] = both(
          values(
            kvShape.reduce((a, b) => a * b),
            22,
            1.5,
          ),
          kvShape,
          dtype,
        );
        const [v, vd] = both(
          values(
            kvShape.reduce((a, b) => a * b),
            23,
          ),
          kvShape,
          dtype,
        );
        const maskValues = new Float32Array(batch * stepsKv).fill(1);
        // Batch 1 (or 0) keeps only its last 11 keys, so early causal rows see nothing.
        for (let j = 0; j < stepsKv - 11; j++) maskValues[(batch - 1) * stepsKv + j] = 0;
        maskValues[3] = 0;
        const [m, md] = mask ? both(maskValues, [batch, stepsKv], dtype) : [null, null];
        const operand = (tensor: Tensor, heads: number): AttentionOperand => ({
          tensor,
          offset: 0,
          stride: heads * headDim,
        });
        const [out, outd] = outputs(qShape, dtype);
        const [lse, lsed] = outputs([batch, headsQ, stepsQ], "float32");
        cpu.attentionForward(problem, operand(q, headsQ), operand(k, headsKv), operand(v, headsKv), m, out, lse);
        cuda.attentionForward(problem, operand(qd, headsQ), operand(kd, headsKv), operand(vd, headsKv), md, outd, lsed);
        expectSameBits(outd, out, `${name}: out`);
        expectSameBits(lsed, lse, `${name}: lse`);
        const [g, gd] = both(
          values(
            qShape.reduce((a, b) => a * b),
            24,
          ),
          qShape,
          dtype,
        );
        const [dq, dqd] = outputs(qShape, dtype);
        const [dk, dkd] = outputs(kvShape, dtype);
        const [dv, dvd] = outputs(kvShape, dtype);
        cpu.attentionBackward(
          problem,
          operand(q, headsQ),
          operand(k, headsKv),
          operand(v, headsKv),
          m,
          out,
          lse,
          g,
          operand(dq, headsQ),
          operand(dk, headsKv),
          operand(dv, headsKv),
        );
        cuda.attentionBackward(
          problem,
          operand(qd, headsQ),
          operand(kd, headsKv),
          operand(vd, headsKv),
          md,
          outd,
          lsed,
          gd,
          operand(dqd, headsQ),
          operand(dkd, headsKv),
          operand(dvd, headsKv),
        );
        expectSameBits(dqd, dq, `${name}: dq`);
        expectSameBits(dkd, dk, `${name}: dk`);
        expectSameBits(dvd, dv, `${name}: dv`);
      }
    });
  }
});

describe.skipIf(!gpu)("the public ops train on cuda tensors with the CPU's bits", () => {
  for (const dtype of DTYPES) {
    test(`embedding, layerNorm and crossEntropy: the loss and every gradient (${dtype})`, () => {
      const ids = new Int32Array([4, 1, 4, 0, 2, 4]);
      const labels = new Int32Array([3, -100, 0, 5, 5, 1]);
      const f = (p: { table: Tensor; w: Tensor; b: Tensor }) =>
        ops.crossEntropy(ops.layerNorm(ops.embedding(p.table, ids), p.w, p.b), labels);
      const params = (on: "cpu" | typeof device) => ({
        table: tensor(values(5 * 6, 50), { dtype, shape: [5, 6] }).to(on),
        w: tensor(values(6, 51), { dtype }).to(on),
        b: tensor(values(6, 52), { dtype }).to(on),
      });
      const [loss, grads] = valueAndGrad(f)(params("cpu"));
      const [lossd, gradsd] = valueAndGrad(f)(params(device));
      expect(lossd).toBe(loss);
      for (const name of ["table", "w", "b"] as const) {
        expect(gradsd[name].device).toBe(device);
        expectSameBits(gradsd[name], grads[name], `d${name}`);
      }
    });

    test(`rmsNorm, rope, causal GQA attention and logSoftmax: every gradient (${dtype})`, () => {
      const [batch, steps, headDim] = [2, 19, 8];
      const labels = new Int32Array(batch * steps * 4);
      for (let i = 0; i < labels.length; i++) labels[i] = (i * 5) % headDim;
      const f = (p: { q: Tensor; k: Tensor; v: Tensor; w: Tensor }) => {
        const q = ops.rope(ops.rmsNorm(p.q, p.w), { offset: 3 });
        const y = ops.attention(q, ops.rope(p.k, { offset: 3 }), p.v, { causal: true });
        return ops.crossEntropy(ops.logSoftmax(y), labels);
      };
      const params = (on: "cpu" | typeof device) => ({
        q: tensor(values(batch * steps * 4 * headDim, 53), { dtype, shape: [batch, steps, 4, headDim] }).to(on),
        k: tensor(values(batch * steps * 2 * headDim, 54), { dtype, shape: [batch, steps, 2, headDim] }).to(on),
        v: tensor(values(batch * steps * 2 * headDim, 55), { dtype, shape: [batch, steps, 2, headDim] }).to(on),
        w: tensor(values(headDim, 56), { dtype }).to(on),
      });
      const [loss, grads] = valueAndGrad(f)(params("cpu"));
      const [lossd, gradsd] = valueAndGrad(f)(params(device));
      expect(lossd).toBe(loss);
      for (const name of ["q", "k", "v", "w"] as const) {
        expect(gradsd[name].device).toBe(device);
        expectSameBits(gradsd[name], grads[name], `d${name}`);
      }
    });
  }
});

describe.skipIf(!gpu)("row ops on cuda tensors refuse bad input", () => {
  test("a label out of range is refused before anything is written, naming the status", () => {
    const [, xd] = both(values(12, 30), [3, 4], "float32");
    const meand = tensor(new Float32Array([42]), { shape: [], device });
    let error: unknown;
    try {
      cuda.crossEntropyForward(xd, new Int32Array([0, 4, 1]), -100, null, meand);
    } catch (caught) {
      error = caught;
    }
    expect(error).toBeInstanceOf(MixprecError);
    expect((error as MixprecError).code).toBe("invalid_argument");
    expect(meand.toArray()[0]).toBe(42);
  });

  test("an id outside the vocabulary is refused and the output keeps its values", () => {
    const [, tabled] = both(values(8, 31), [4, 2], "bfloat16");
    const outd = tensor(new Float32Array([5, 5, 5, 5]), { dtype: "bfloat16", shape: [2, 2], device });
    expect(() => cuda.embeddingForward(tabled, new Int32Array([1, 4]), outd)).toThrow(MixprecError);
    expect(Array.from(outd.toArray())).toEqual([5, 5, 5, 5]);
  });
});

describe.skipIf(!fakeDriver)("row ops on the fake driver", () => {
  test("a forward and backward of every row op queues work without waiting for the device", () => {
    const dtype = "bfloat16";
    const [, xd] = both(values(6 * 8, 40), [6, 8], dtype);
    const [, wd] = both(values(8, 41), [8], dtype);
    const yd = zeros([6, 8], { dtype, device });
    const statistics = zeros([6], { device });
    const rstd = zeros([6], { device });
    const dwd = zeros([8], { dtype, device });
    const meand = zeros([], { device });
    const lsed = zeros([6], { device });
    const before = cudaSyncCount();
    cuda.layerNormForward(xd, wd, wd, yd, statistics, rstd, 1e-5);
    cuda.layerNormBackward(xd, wd, statistics, rstd, yd, yd, dwd, dwd);
    cuda.softmaxForward(xd, yd);
    cuda.crossEntropyForward(xd, new Int32Array([1, 2, 3, -100, 0, 7]), -100, lsed, meand);
    cuda.embeddingBackward(new Int32Array([1, 1, 0, 5, 2, 1]), xd, yd);
    expect(cudaSyncCount()).toBe(before);
  });
});
