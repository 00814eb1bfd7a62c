import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import { adamw, applyIfFinite, applyUpdates, disposeTree, type Tensor, tensor } from "../../src/mod.ts";
import { bitsOfTree } from "./_helpers.ts";

describe("applyIfFinite()", () => {
  test("a non-finite step changes neither params nor state, wherever the inf or NaN is", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 40 }),
        fc.nat(),
        fc.constantFrom(Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY),
        fc.constantFrom("float32", "bfloat16", "float16"),
        (size, where, bad, dtype) => {
          const params = [
            tensor(
              Float32Array.from({ length: size }, (_, i) => i / 7),
              { dtype: "float32" },
            ),
          ];
          const opt = applyIfFinite(adamw({ lr: 0.1 }), 2);
          let state = opt.init(params);
          using g0 = tensor(
            Float32Array.from({ length: size }, (_, i) => 1 - i / 5),
            { dtype },
          );
          const [u0, s0] = opt.update([g0], state, params);
          applyUpdates(params, u0);
          disposeTree(u0);
          state = s0;
          const paramBits = bitsOfTree(params);
          const stateBits = bitsOfTree(state.inner);
          const values = Float32Array.from({ length: size }, () => 0.5);
          values[where % size] = bad;
          using g = tensor(values, { dtype });
          const [u, next] = opt.update([g], state, params);
          expect([...(u as Tensor[])[0]!.toArray()].every((x) => x === 0)).toBe(true);
          applyUpdates(params, u);
          disposeTree(u);
          expect(bitsOfTree(params)).toEqual(paramBits);
          expect(bitsOfTree(next.inner)).toEqual(stateBits);
          expect(next.inner).toBe(state.inner);
          expect(next.notFiniteCount).toBe(1);
          expect(next.totalNotFinite).toBe(1);
          disposeTree([params, next]);
        },
      ),
      { numRuns: 40 },
    );
  });

  test("applyIfFinite() throws after maxConsecutiveErrors non-finite steps in a row, and a finite step resets the count", () => {
    using p = tensor([1]);
    using bad = tensor([Number.NaN]);
    using good = tensor([1]);
    const opt = applyIfFinite(adamw(), 2);
    let s = opt.init([p]);
    for (const g of [bad, bad, good, bad, bad]) {
      const [u, next] = opt.update([g], s, [p]);
      disposeTree(u);
      s = next;
    }
    expect(s.notFiniteCount).toBe(2);
    expect(s.totalNotFinite).toBe(4);
    expect(() => opt.update([bad], s, [p])).toThrow(
      /non-finite \(inf or NaN\) on 3 consecutive steps.*maxConsecutiveErrors = 2/,
    );
    disposeTree(s);
  });
});
