import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import { squirrel5 } from "../../src/_numerics.ts";
import { dropout, embedding } from "../../src/ops/mod.ts";
import { ones, tensor } from "../../src/tensor.ts";
import { gradCheck } from "../_gradcheck.ts";

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
