import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import { layerNorm, rmsNorm } from "../../src/ops/mod.ts";
import { tensor } from "../../src/tensor.ts";
import { gradCheck } from "../_gradcheck.ts";

function layerNorm64(x: Float64Array, w: Float64Array | null, b: Float64Array | null, width: number, eps: number) {
  const out = new Float64Array(x.length);
  for (let r = 0; r < x.length / width; r++) {
    const row = x.subarray(r * width, (r + 1) * width);
    const mean = row.reduce((p, v) => p + v, 0) / width;
    const variance = row.reduce((p, v) => p + (v - mean) ** 2, 0) / width;
    for (let j = 0; j < width; j++) {
      out[r * width + j] = ((row[j]! - mean) / Math.sqrt(variance + eps)) * (w ? w[j]! : 1) + (b ? b[j]! : 0);
    }
  }
  return out;
}

function rmsNorm64(x: Float64Array, w: Float64Array | null, width: number, eps: number) {
  const out = new Float64Array(x.length);
  for (let r = 0; r < x.length / width; r++) {
    const row = x.subarray(r * width, (r + 1) * width);
    const ms = row.reduce((p, v) => p + v * v, 0) / width;
    for (let j = 0; j < width; j++) out[r * width + j] = (row[j]! / Math.sqrt(ms + eps)) * (w ? w[j]! : 1);
  }
  return out;
}

describe("norm", () => {
  test("layerNorm() gradients (input, weight, bias) match finite differences", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 3 }),
        fc.integer({ min: 2, max: 6 }),
        fc.boolean(),
        fc.nat(1000),
        (rows, width, affine, seed) => {
          const shapes = affine ? [[rows, width], [width], [width]] : [[rows, width]];
          gradCheck(
            (xs) => layerNorm(xs[0]!, xs[1], xs[2], 1e-5),
            (xs) => layerNorm64(xs[0]!, xs[1] ?? null, xs[2] ?? null, width, 1e-5),
            shapes,
            seed,
            { atol: 1e-3, rtol: 5e-3 },
          );
        },
      ),
      { numRuns: 20 },
    );
  });

  test("rmsNorm() gradients (input, weight) match finite differences", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 3 }),
        fc.integer({ min: 1, max: 6 }),
        fc.boolean(),
        fc.nat(1000),
        (rows, width, affine, seed) => {
          const shapes = affine ? [[rows, width], [width]] : [[rows, width]];
          gradCheck(
            (xs) => rmsNorm(xs[0]!, xs[1], 1e-6),
            (xs) => rmsNorm64(xs[0]!, xs[1] ?? null, width, 1e-6),
            shapes,
            seed,
            { atol: 1e-3, rtol: 5e-3 },
          );
        },
      ),
      { numRuns: 20 },
    );
  });

  test("layerNorm() refuses a weight of the wrong width", () => {
    using x = tensor([[1, 2, 3]]);
    using w = tensor([1, 2]);
    expect(() => layerNorm(x, w)).toThrow(/must be \[3\]/);
  });
});
