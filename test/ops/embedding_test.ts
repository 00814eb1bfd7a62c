import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import { squirrel5 } from "../../src/_numerics.ts";
import { valueAndGrad } from "../../src/autodiff.ts";
import { backendOf } from "../../src/backend/backend.ts";
import { dtypeInfo } from "../../src/dtype.ts";
import { setThreads } from "../../src/mod.ts";
import { dropout, embedding, mul, sum } from "../../src/ops/mod.ts";
import { ones, type Tensor, tensor } from "../../src/tensor.ts";
import { gradCheck, randomInputs } from "../_gradcheck.ts";

describe("embedding", () => {
  test("embedding() gathers rows and scatter-adds repeated ids in the backward pass", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 5 }),
        fc.integer({ min: 1, max: 4 }),
        fc.array(fc.nat(100), { minLength: 1, maxLength: 8 }),
        fc.nat(1000),
        (vocab, dim, raw, seed) => {
          const ids = Int32Array.from(raw, (v) => v % vocab);
          gradCheck(
            ([t]) => embedding(t!, ids),
            ([t]) => {
              const out = new Float64Array(ids.length * dim);
              ids.forEach((id, i) => out.set(t!.subarray(id * dim, (id + 1) * dim), i * dim));
              return out;
            },
            [[vocab, dim]],
            seed,
          );
        },
      ),
      { numRuns: 20 },
    );
  });

  test("dropout() gradients follow its seeded mask", () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 20 }), fc.nat(1000), (n, seed) => {
        const rate = 0.3;
        const threshold = Math.floor(rate * 2 ** 32);
        gradCheck(
          ([x]) => dropout(x!, { rate, seed }),
          ([x]) => x!.map((v, i) => (squirrel5(i, seed) >= threshold ? v / (1 - rate) : 0)),
          [[n]],
          seed,
        );
      }),
      { numRuns: 15 },
    );
  });

  test("dropout() with the same seed drops the same elements, and rate 0 is the identity", () => {
    using x = ones([64]);
    using a = dropout(x, { rate: 0.5, seed: 7 });
    using b = dropout(x, { rate: 0.5, seed: 7 });
    expect([...a.toArray()]).toEqual([...b.toArray()]);
    expect(dropout(x, { rate: 0, seed: 1 })).toBe(x);
    expect(() => dropout(x, { rate: 1, seed: 1 })).toThrow(RangeError);
  });

  test("embedding() refuses ids outside the vocabulary", () => {
    using t = tensor([[1], [2]]);
    expect(() => embedding(t, [2])).toThrow(/outside \[0, 2\)/);
  });
});

describe("embedding in float32, float16 and bfloat16", () => {
  for (const dtype of ["float32", "float16", "bfloat16"] as const) {
    test(`embedding() of a ${dtype} table copies the rows' bits and sums repeated ids' gradients within half an ulp`, () => {
      const vocabulary = 6;
      const dim = 70;
      const ids = Int32Array.of(4, 1, 4, 0, 4, 5, 1);
      const [tv, gv] = randomInputs(
        [
          [vocabulary, dim],
          [ids.length, dim],
        ],
        3,
      );
      using table = tensor(tv!, { dtype, shape: [vocabulary, dim] });
      using g = tensor(gv!, { dtype, shape: [ids.length, dim] });
      using rows = embedding(table, ids);
      expect(rows.dtype).toBe(dtype);
      const bits = table.data;
      const out = rows.data;
      for (let i = 0; i < ids.length; i++) {
        expect([...out.subarray(i * dim, (i + 1) * dim)]).toEqual([
          ...bits.subarray(ids[i]! * dim, (ids[i]! + 1) * dim),
        ]);
      }
      const [, grads] = valueAndGrad((p: { t: Tensor }) => sum(mul(embedding(p.t, ids), g)))({ t: table });
      try {
        expect(grads.t.dtype).toBe(dtype);
        const got = grads.t.toArray();
        const gr = g.toArray();
        const { eps, minSubnormal } = dtypeInfo(dtype);
        for (let v = 0; v < vocabulary; v++) {
          for (let j = 0; j < dim; j++) {
            let want = 0;
            let terms = 0;
            ids.forEach((id, i) => {
              if (id !== v) return;
              want += gr[i * dim + j]!;
              terms += Math.abs(gr[i * dim + j]!);
            });
            // One rounding into the dtype plus float32 additions (an ulp of the summed magnitude each).
            const bound = Math.max((eps / 2) * Math.abs(want), minSubnormal / 2) + 2 ** -23 * terms;
            expect(Math.abs(got[v * dim + j]! - want)).toBeLessThanOrEqual(bound);
          }
        }
        // Ids 2 and 3 have no tokens: zero rows.
        expect(got.subarray(2 * dim, 4 * dim).every((x) => x === 0)).toBe(true);
      } finally {
        grads.t.dispose();
      }
    });
  }

  test("embedding() gives the same gradient bits on 1 and 2 threads", () => {
    const vocabulary = 500;
    const dim = 160; // 80,000 table elements: above the pool's 65,536-element threshold.
    const ids = Int32Array.from({ length: 700 }, (_, i) => (i * 7919) % 450);
    const runs: Float32Array[] = [];
    for (const threads of [1, 2]) {
      setThreads(threads);
      try {
        const [tv, gv] = randomInputs(
          [
            [vocabulary, dim],
            [ids.length, dim],
          ],
          8,
        );
        using table = tensor(tv!, { dtype: "bfloat16", shape: [vocabulary, dim] });
        using g = tensor(gv!, { dtype: "bfloat16", shape: [ids.length, dim] });
        const [, grads] = valueAndGrad((p: { t: Tensor }) => sum(mul(embedding(p.t, ids), g)))({ t: table });
        runs.push(grads.t.toArray());
        grads.t.dispose();
      } finally {
        setThreads(0);
      }
    }
    expect(runs[1]!).toEqual(runs[0]!);
  });

  test("embedding() of no ids is empty, its gradient is zeros, and bad ids throw before anything is written", () => {
    using t = tensor([
      [1, 2],
      [3, 4],
    ]);
    using none = embedding(t, []);
    expect(none.shape).toEqual([0, 2]);
    const [, grads] = valueAndGrad((p: { t: Tensor }) => sum(embedding(p.t, [])))({ t });
    expect([...grads.t.toArray()]).toEqual([0, 0, 0, 0]);
    grads.t.dispose();
    expect(() => embedding(t, [0, -1])).toThrow(/id -1 at position 1 is outside \[0, 2\)/);
    expect(() => embedding(t, [0.5])).toThrow(RangeError);
    expect(() => embedding(t, [0, 1], [3])).toThrow(/does not hold 2 ids/);
    expect([...t.toArray()]).toEqual([1, 2, 3, 4]);
  });
});

describe("embedding kernel checks", () => {
  test("the native kernels themselves refuse an id outside the vocabulary with a MixprecError", () => {
    using t = tensor([[1, 2]]);
    using out = tensor([[0, 0]]);
    expect(() => backendOf("cpu").embeddingForward(t, Int32Array.of(1), out)).toThrow(/invalid_argument/);
    expect(() => backendOf("cpu").embeddingBackward(Int32Array.of(-1), out, t)).toThrow(/invalid_argument/);
    expect([...out.toArray()]).toEqual([0, 0]);
    expect([...t.toArray()]).toEqual([1, 2]);
  });
});
