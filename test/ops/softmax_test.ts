import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import { valueAndGrad } from "../../src/autodiff.ts";
import { crossEntropy, logSoftmax, softmax } from "../../src/ops/mod.ts";
import { type Tensor, tensor } from "../../src/tensor.ts";
import { gradCheck } from "../_gradcheck.ts";

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
