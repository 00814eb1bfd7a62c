import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import { mean, sum } from "../../src/ops/mod.ts";
import { tensor } from "../../src/tensor.ts";
import { gradCheck } from "../_gradcheck.ts";

/** float64 reduction of a [d0, d1, d2] array over a set of axes (output in row-major kept order). */
function reduce64(x: Float64Array, shape: number[], axes: number[], average: boolean): Float64Array {
  const kept = shape.map((d, i) => (axes.includes(i) ? 1 : d));
  const size = kept.reduce((p, d) => p + 0 * d, 0) + kept.reduce((p, d) => p * d, 1);
  const out = new Float64Array(size);
  const count = axes.reduce((p, a) => p * shape[a]!, 1);
  for (let i = 0; i < x.length; i++) {
    let rest = i;
    let index = 0;
    let stride = 1;
    for (let d = shape.length - 1; d >= 0; d--) {
      const c = rest % shape[d]!;
      rest = Math.floor(rest / shape[d]!);
      if (!axes.includes(d)) {
        index += c * stride;
        stride *= shape[d]!;
      }
    }
    out[index]! += x[i]! / (average ? count : 1);
  }
  return out;
}

describe("reduce", () => {
  test("sum() and mean() over any set of axes have finite-difference gradients", () => {
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 1, max: 4 }), { minLength: 1, maxLength: 3 }),
        fc.nat(7),
        fc.boolean(),
        fc.boolean(),
        fc.nat(1000),
        (shape, mask, average, keepDims, seed) => {
          const axes = shape.map((_, i) => i).filter((i) => mask & (1 << i));
          const op = average ? mean : sum;
          gradCheck(
            ([x]) => op(x!, { axis: axes.length === 0 ? undefined : axes, keepDims }),
            ([x]) => reduce64(x!, shape, axes.length === 0 ? shape.map((_, i) => i) : axes, average),
            [shape],
            seed,
          );
        },
      ),
      { numRuns: 30 },
    );
  });

  test("sum() keeps reduced axes with keepDims and accumulates 2^24 + 1 ones exactly", () => {
    using x = tensor([[1, 2, 3]]);
    using s = sum(x, { axis: 1, keepDims: true });
    expect(s.shape).toEqual([1, 1]);
    using big = tensor(new Float32Array(2 ** 24 + 2).fill(1));
    using total = sum(big);
    expect(total.toArray()[0]).toBe(2 ** 24 + 2);
  });

  test("an axis out of range is refused", () => {
    using x = tensor([1, 2]);
    expect(() => sum(x, { axis: 1 })).toThrow(RangeError);
  });
});
