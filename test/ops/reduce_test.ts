import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import { valueAndGrad } from "../../src/autodiff.ts";
import { cast } from "../../src/cast.ts";
import { type DtypeName, dtypeInfo } from "../../src/dtype.ts";
import { mean, sum } from "../../src/ops/mod.ts";
import { type Tensor, tensor } from "../../src/tensor.ts";
import { gradCheck, randomInputs } from "../_gradcheck.ts";

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

  test("sum(x, axes) and mean(x, axis) take the axes alone, as torch.sum's dim; unknown options are refused, not ignored", () => {
    using x = tensor(
      Float32Array.from({ length: 24 }, (_, i) => i),
      { shape: [2, 3, 4] },
    );
    using byArray = sum(x, [0, 1]);
    using byOptions = sum(x, { axis: [0, 1] });
    expect(byArray.shape).toEqual([4]);
    expect([...byArray.toArray()]).toEqual([...byOptions.toArray()]);
    using last = mean(x, -1);
    expect([...last.toArray()]).toEqual([1.5, 5.5, 9.5, 13.5, 17.5, 21.5]);
    expect(() => sum(x, { dim: 0 } as never)).toThrow(
      /unknown option "dim": use \{ axis, keepDims \} \(PyTorch's dim and keepdim\)/,
    );
    expect(() => mean(x, "0" as never)).toThrow(/expected an axis, an array of axes or \{ axis, keepDims \}, got 0/);
    expect(() => sum(x, [0, 3])).toThrow(/axis 3 is out of range for 3 dimensions/);
  });

  for (const dtype of ["float32", "float16", "bfloat16"] as DtypeName[]) {
    test(`sum() and mean() of ${dtype} tensors match float64 within (eps / 2 + 2 eps32) of the summed magnitudes, and their gradient is the broadcast seed`, () => {
      const eps = dtypeInfo(dtype).eps;
      const eps32 = dtypeInfo("float32").eps;
      fc.assert(
        fc.property(
          fc.array(fc.integer({ min: 1, max: 6 }), { minLength: 1, maxLength: 3 }),
          fc.nat(7),
          fc.boolean(),
          fc.nat(1000),
          (shape, mask, average, seed) => {
            const axes = shape.map((_, i) => i).filter((i) => mask & (1 << i));
            const all = axes.length === 0 ? shape.map((_, i) => i) : axes;
            const raw = randomInputs([shape], seed)[0]!;
            const x = dtype === "float32" ? raw : (cast(cast(raw, "float32", dtype), dtype, "float32") as Float32Array);
            using xt = tensor(x, { shape, dtype });
            const op = average ? mean : sum;
            const [[, y], grads] = valueAndGrad(
              (p: { x: Tensor }) => {
                const out = op(p.x, { axis: axes.length === 0 ? undefined : axes });
                return [sum(out), out];
              },
              { hasAux: true },
            )({ x: xt });
            const want = reduce64(Float64Array.from(x), shape, all, average);
            const magnitude = reduce64(Float64Array.from(x, Math.abs), shape, all, average);
            const got = y.toArray();
            got.forEach((v, i) => {
              const bound = (eps / 2 + 2 * eps32) * magnitude[i]! + 1e-30;
              if (!(Math.abs(v - want[i]!) <= bound)) throw new Error(`${dtype} ${op.name}[${i}]: ${v} vs ${want[i]}`);
            });
            // d/dx of a sum of sums is 1 per element, of means 1 / count (float32, then the dtype).
            const count = all.reduce((p, a) => p * shape[a]!, 1);
            const seedGrad = average ? Math.fround(1 / count) : 1;
            const expected =
              dtype === "float32"
                ? seedGrad
                : cast(cast(Float32Array.of(seedGrad), "float32", dtype), dtype, "float32")[0];
            expect(grads.x.dtype).toBe(dtype);
            expect(Array.from(grads.x.toArray()).every((v) => v === expected)).toBe(true);
            y.dispose();
            grads.x.dispose();
          },
        ),
        { numRuns: 25 },
      );
    });
  }
});
