import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import { valueAndGrad } from "../../src/autodiff.ts";
import { backendOf } from "../../src/backend/backend.ts";
import { type DtypeName, dtypeInfo } from "../../src/dtype.ts";
import { setThreads } from "../../src/mod.ts";
import { crossEntropy, logSoftmax, mul, softmax, sum } from "../../src/ops/mod.ts";
import { type Tensor, tensor } from "../../src/tensor.ts";
import { gradCheck, randomInputs } from "../_gradcheck.ts";

function rowwise(x: Float64Array, width: number, f: (row: Float64Array) => Float64Array): Float64Array {
  const out = new Float64Array(x.length);
  for (let r = 0; r < x.length / width; r++) out.set(f(x.subarray(r * width, (r + 1) * width)), r * width);
  return out;
}
const softmax64 = (row: Float64Array) => {
  const max = Math.max(...row);
  const e = row.map((v) => Math.exp(v - max));
  const total = e.reduce((p, v) => p + v, 0);
  return e.map((v) => v / total);
};
const logSoftmax64 = (row: Float64Array) => {
  const max = Math.max(...row);
  const lse = max + Math.log(row.reduce((p, v) => p + Math.exp(v - max), 0));
  return row.map((v) => v - lse);
};

describe("softmax", () => {
  test("softmax(), logSoftmax() and crossEntropy() gradients match finite differences", () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 4 }), fc.integer({ min: 1, max: 6 }), fc.nat(1000), (rows, width, seed) => {
        gradCheck(
          ([x]) => softmax(x!),
          ([x]) => rowwise(x!, width, softmax64),
          [[rows, width]],
          seed,
        );
        gradCheck(
          ([x]) => logSoftmax(x!),
          ([x]) => rowwise(x!, width, logSoftmax64),
          [[rows, width]],
          seed,
        );
        const labels = Array.from({ length: rows }, (_, r) => (r * 7 + seed) % width);
        gradCheck(
          ([x]) => crossEntropy(x!, labels),
          ([x]) => {
            const lp = rowwise(x!, width, logSoftmax64);
            let total = 0;
            for (let r = 0; r < rows; r++) total -= lp[r * width + labels[r]!]!;
            return Float64Array.of(total / rows);
          },
          [[rows, width]],
          seed,
        );
      }),
      { numRuns: 20 },
    );
  });

  test("crossEntropy() stays finite with gradients in [-1, 1] for logits of +-1e4", () => {
    using logits = tensor([
      [1e4, -1e4, 0],
      [-1e4, -1e4, 1e4],
      [1e4, 1e4, -1e4],
    ]);
    const labels = [1, 2, 0];
    const [loss, grads] = valueAndGrad((p: { x: Tensor }) => crossEntropy(p.x, labels))({ x: logits });
    // Row 0 misses by 2e4, row 1 is right, row 2 ties two classes: (2e4 + 0 + ln 2) / 3.
    expect(Math.abs((loss as number) - (2e4 + Math.LN2) / 3)).toBeLessThan(1e-2);
    const g = grads.x.toArray();
    expect(g.every((v) => Number.isFinite(v) && Math.abs(v) <= 1)).toBe(true);
    grads.x.dispose();
    using y = softmax(logits);
    expect(y.toArray().every(Number.isFinite)).toBe(true);
  });

  test("crossEntropy() refuses labels out of range or of the wrong count", () => {
    using x = tensor([[0, 1]]);
    expect(() => crossEntropy(x, [2])).toThrow(RangeError);
    expect(() => crossEntropy(x, [0, 1])).toThrow(/pass 1 labels/);
  });

  test("softmax of a bfloat16 input gives a bfloat16 result whose rows sum to one within bfloat16 rounding", () => {
    using x = tensor([[1, 2, 3, 4]], { dtype: "bf16" });
    using y = softmax(x);
    expect(y.dtype).toBe("bfloat16");
    const total = y.toArray().reduce((p, v) => p + v, 0);
    expect(Math.abs(total - 1)).toBeLessThan(4 * 2 ** -8);
  });
});

describe("softmax negative space", () => {
  test("a NaN logit makes its row's loss NaN (so a loss scaler sees it) and leaves other rows finite", () => {
    using x = tensor([
      [Number.NaN, 0],
      [1, 2],
    ]);
    using p = softmax(x);
    const v = p.toArray();
    expect(Number.isNaN(v[0])).toBe(true);
    expect(Math.abs(v[2]! + v[3]! - 1)).toBeLessThan(1e-6);
    using loss = crossEntropy(x, [1, 0]);
    expect(Number.isNaN(loss.toArray()[0])).toBe(true);
  });

  test("softmax of zero rows is empty and -inf logits get probability zero", () => {
    using empty = tensor(new Float32Array(0), { shape: [0, 4] });
    using p = softmax(empty);
    expect(p.shape).toEqual([0, 4]);
    using x = tensor([[-Infinity, 0, 0]]);
    using q = softmax(x);
    expect([...q.toArray()]).toEqual([0, 0.5, 0.5]);
  });
});

/** Values of `shape` rounded to `dtype` (the exact float32 values of the rounded bits). */
function roundedInputs(shape: number[], dtype: DtypeName, seed: number, spread = 1): Float32Array {
  const [values] = randomInputs([shape], seed, spread);
  using t = tensor(values!, { dtype, shape });
  return t.toArray();
}

/**
 * |got - want| within half an ulp of the dtype (the one rounding on store) plus the float32
 * arithmetic's share: `terms` (the size of what was summed) times 2^-20, 16 float32 ulp (2^-24).
 */
function expectClose(
  got: Float32Array,
  want: Float64Array,
  dtype: DtypeName,
  terms: (i: number) => number,
  what: string,
) {
  const { eps, minSubnormal } = dtypeInfo(dtype);
  for (let i = 0; i < want.length; i++) {
    // Half an ulp: eps / 2 relative for normal values, half the subnormal spacing below them.
    const half = Math.max((eps / 2) * Math.abs(want[i]!), minSubnormal / 2);
    const bound = half + 2 ** -20 * terms(i);
    if (!(Math.abs(got[i]! - want[i]!) <= bound)) {
      throw new Error(`${what} element ${i} in ${dtype}: ${got[i]} vs float64 ${want[i]} (bound ${bound})`);
    }
  }
}

describe("softmax in float32, float16 and bfloat16", () => {
  const rows = 5;
  const width = 37;
  for (const dtype of ["float32", "float16", "bfloat16"] as const) {
    test(`softmax() and logSoftmax() in ${dtype} match float64 within half an ulp plus float32 arithmetic, forward and backward`, () => {
      const x = roundedInputs([rows, width], dtype, 21, 3);
      const g = roundedInputs([rows, width], dtype, 22);
      using xt = tensor(x, { dtype, shape: [rows, width] });
      using gt = tensor(g, { dtype, shape: [rows, width] });
      for (const op of [softmax, logSoftmax]) {
        const want =
          op === softmax
            ? rowwise(Float64Array.from(x), width, softmax64)
            : rowwise(Float64Array.from(x), width, logSoftmax64);
        using y = op(xt);
        expect(y.dtype).toBe(dtype);
        const yv = y.toArray();
        // softmax: width exp terms relative to p; log-softmax: |x| and |lse| plus the sum's share.
        const terms = (i: number) => (op === softmax ? width * Math.abs(want[i]!) : Math.abs(x[i]!) + 8 + width);
        expectClose(yv, want, dtype, terms, op.name);
        const [, grads] = valueAndGrad((p: { x: Tensor }) => sum(mul(op(p.x), gt)))({ x: xt });
        try {
          expect(grads.x.dtype).toBe(dtype);
          // The backward reads the saved (rounded) output, as PyTorch's does: the reference too.
          const dx = new Float64Array(x.length);
          for (let r = 0; r < rows; r++) {
            let total = 0;
            for (let j = 0; j < width; j++)
              total += op === softmax ? g[r * width + j]! * yv[r * width + j]! : g[r * width + j]!;
            for (let j = 0; j < width; j++) {
              const i = r * width + j;
              dx[i] = op === softmax ? yv[i]! * (g[i]! - total) : g[i]! - Math.exp(yv[i]!) * total;
            }
          }
          expectClose(grads.x.toArray(), dx, dtype, () => width, `${op.name} gradient`);
        } finally {
          grads.x.dispose();
        }
      }
    });

    test(`crossEntropy() of ${dtype} logits matches float64, forward and backward, with an ignored row`, () => {
      const x = roundedInputs([rows, width], dtype, 23, 3);
      const labels = [3, -100, 0, 36, 17];
      using xt = tensor(x, { dtype, shape: [rows, width] });
      const lp = rowwise(Float64Array.from(x), width, logSoftmax64);
      let total = 0;
      for (let r = 0; r < rows; r++) if (labels[r] !== -100) total -= lp[r * width + labels[r]!]!;
      const kept = 4;
      const [loss, grads] = valueAndGrad((p: { x: Tensor }) => crossEntropy(p.x, labels))({ x: xt });
      try {
        // The loss is float32: each row's lse and logit (magnitude up to ~10) plus the exp sum.
        expect(Math.abs((loss as number) - total / kept)).toBeLessThanOrEqual(2 ** -20 * (16 + width));
        expect(grads.x.dtype).toBe(dtype);
        const dx = new Float64Array(x.length);
        for (let r = 0; r < rows; r++) {
          if (labels[r] === -100) continue;
          for (let j = 0; j < width; j++) {
            dx[r * width + j] = (Math.exp(lp[r * width + j]!) - (j === labels[r] ? 1 : 0)) / kept;
          }
        }
        expectClose(grads.x.toArray(), dx, dtype, () => width / kept, "crossEntropy gradient");
        expect([...grads.x.toArray().subarray(width, 2 * width)].every((v) => v === 0)).toBe(true);
      } finally {
        grads.x.dispose();
      }
    });
  }
});

describe("crossEntropy ignoreIndex and labels", () => {
  test("crossEntropy() with every row ignored gives NaN, as PyTorch's mean reduction, and a zero gradient", () => {
    using x = tensor([
      [1, 2],
      [3, 4],
    ]);
    const [loss, grads] = valueAndGrad((p: { x: Tensor }) => crossEntropy(p.x, [-100, -100]))({ x });
    expect(Number.isNaN(loss as number)).toBe(true);
    expect([...grads.x.toArray()]).toEqual([0, 0, 0, 0]);
    grads.x.dispose();
  });

  test("crossEntropy() takes a custom ignoreIndex and then treats -100 as an out-of-range label", () => {
    using x = tensor([
      [0, 0],
      [9, 1],
    ]);
    using loss = crossEntropy(x, Int32Array.of(1, 7), { ignoreIndex: 7 });
    expect(Math.abs(loss.toArray()[0]! - Math.LN2)).toBeLessThan(1e-7);
    expect(() => crossEntropy(x, [1, -100], { ignoreIndex: 7 })).toThrow(
      /label -100 at row 1 is not a class index in \[0, 2\)/,
    );
    expect(() => crossEntropy(x, [1, 0], { ignoreIndex: 0.5 })).toThrow(RangeError);
  });

  test("crossEntropy() names a Float32Array of labels and says how to convert it", () => {
    using x = tensor([[0, 1]]);
    expect(() => crossEntropy(x, new Float32Array([1]) as unknown as Int32Array)).toThrow(
      /labels must be an Int32Array or an array of integers .* got Float32Array: convert it with Int32Array.from\(labels\)/,
    );
    expect(() => crossEntropy(x, [0.5])).toThrow(/label 0.5 at row 0/);
  });

  test("crossEntropy() reads its own copy of the labels in the backward pass", () => {
    using x = tensor([[0, 1, 2]]);
    const labels = Int32Array.of(2);
    const [, grads] = valueAndGrad((p: { x: Tensor }) => {
      const loss = crossEntropy(p.x, labels);
      labels[0] = 0;
      return loss;
    })({ x });
    expect(grads.x.toArray()[2]!).toBeLessThan(0);
    grads.x.dispose();
  });
});

describe("softmax threads", () => {
  test("softmax(), logSoftmax() and crossEntropy() give the same bits, forward and backward, on 1 and 2 threads", () => {
    const rows = 200;
    const width = 400; // 80,000 elements: above the pool's 65,536-element threshold.
    const labels = Array.from({ length: rows }, (_, r) => (r % 7 === 3 ? -100 : (r * 31) % width));
    const runs: Float32Array[][] = [];
    for (const threads of [1, 2]) {
      setThreads(threads);
      try {
        const [xv, gv] = randomInputs(
          [
            [rows, width],
            [rows, width],
          ],
          9,
          4,
        );
        using x = tensor(xv!, { dtype: "bfloat16", shape: [rows, width] });
        using g = tensor(gv!, { dtype: "bfloat16", shape: [rows, width] });
        const outputs: Float32Array[] = [];
        for (const op of [softmax, logSoftmax]) {
          using y = op(x);
          outputs.push(y.toArray());
          const [, grads] = valueAndGrad((p: { x: Tensor }) => sum(mul(op(p.x), g)))({ x });
          outputs.push(grads.x.toArray());
          grads.x.dispose();
        }
        const [loss, grads] = valueAndGrad((p: { x: Tensor }) => crossEntropy(p.x, labels))({ x });
        outputs.push(Float32Array.of(loss as number), grads.x.toArray());
        grads.x.dispose();
        runs.push(outputs);
      } finally {
        setThreads(0);
      }
    }
    for (let i = 0; i < runs[0]!.length; i++) expect(runs[1]![i]!).toEqual(runs[0]![i]!);
  });
});

describe("crossEntropy properties", () => {
  test("crossEntropy() gradients with randomly ignored rows match finite differences of the mean over kept rows", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 5 }),
        fc.integer({ min: 1, max: 6 }),
        fc.array(fc.boolean(), { minLength: 5, maxLength: 5 }),
        fc.nat(1000),
        (rows, width, ignored, seed) => {
          const labels = Array.from({ length: rows }, (_, r) => (ignored[r] && r > 0 ? -100 : (r * 5 + seed) % width));
          const kept = labels.filter((l) => l !== -100).length;
          gradCheck(
            ([x]) => crossEntropy(x!, labels),
            ([x]) => {
              const lp = rowwise(x!, width, logSoftmax64);
              let total = 0;
              for (let r = 0; r < rows; r++) if (labels[r] !== -100) total -= lp[r * width + labels[r]!]!;
              return Float64Array.of(total / kept);
            },
            [[rows, width]],
            seed,
          );
        },
      ),
      { numRuns: 20 },
    );
  });

  test("the native kernel itself refuses an out-of-range label with a MixprecError, so a caller that skips the op's checks cannot read out of bounds", () => {
    using x = tensor([[0, 1]]);
    using mean = tensor(0);
    expect(() => backendOf("cpu").crossEntropyForward(x, Int32Array.of(2), -100, null, mean)).toThrow(
      /invalid_argument/,
    );
    expect(() => backendOf("cpu").crossEntropyForward(x, Int32Array.of(-1), -100, null, mean)).toThrow(
      /invalid_argument/,
    );
    expect(mean.toArray()[0]).toBe(0);
  });
});
