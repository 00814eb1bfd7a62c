import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import { causalSelfAttention } from "../../src/ops/mod.ts";
import { tensor } from "../../src/tensor.ts";
import { gradCheck } from "../_gradcheck.ts";

function attention64(qkv: Float64Array, batch: number, steps: number, channels: number, heads: number): Float64Array {
  const hd = channels / heads;
  const out = new Float64Array(batch * steps * channels);
  const at = (b: number, t: number, part: number, h: number, d: number) =>
    qkv[(b * steps + t) * 3 * channels + part * channels + h * hd + d]!;
  for (let b = 0; b < batch; b++)
    for (let h = 0; h < heads; h++)
      for (let t = 0; t < steps; t++) {
        const scores: number[] = [];
        for (let j = 0; j <= t; j++) {
          let s = 0;
          for (let d = 0; d < hd; d++) s += at(b, t, 0, h, d) * at(b, j, 1, h, d);
          scores.push(s / Math.sqrt(hd));
        }
        const max = Math.max(...scores);
        const e = scores.map((s) => Math.exp(s - max));
        const total = e.reduce((p, v) => p + v, 0);
        for (let d = 0; d < hd; d++) {
          let s = 0;
          for (let j = 0; j <= t; j++) s += (e[j]! / total) * at(b, j, 2, h, d);
          out[(b * steps + t) * channels + h * hd + d] = s;
        }
      }
  return out;
}

describe("attention", () => {
  test("causalSelfAttention() gradients match finite differences of a float64 reference", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 2 }),
        fc.integer({ min: 1, max: 5 }),
        fc.integer({ min: 1, max: 2 }),
        fc.integer({ min: 1, max: 3 }),
        fc.nat(1000),
        (batch, steps, heads, headDim, seed) => {
          const channels = heads * headDim;
          gradCheck(
            ([x]) => causalSelfAttention(x!, heads),
            ([x]) => attention64(x!, batch, steps, channels, heads),
            [[batch, steps, 3 * channels]],
            seed,
            { atol: 5e-4, rtol: 5e-3 },
          );
        },
      ),
      { numRuns: 20 },
    );
  });

  test("causalSelfAttention() in bfloat16 stays within bfloat16 rounding of float32", () => {
    const values = Float32Array.from({ length: 2 * 6 * 24 }, (_, i) => Math.sin(i) * 0.5);
    using x32 = tensor(values, { shape: [2, 6, 24] });
    using x16 = x32.to("bf16");
    using y32 = causalSelfAttention(x32, 2);
    using y16 = causalSelfAttention(x16, 2);
    expect(y16.dtype).toBe("bfloat16");
    const a = y32.toArray();
    const b = y16.toArray();
    for (let i = 0; i < a.length; i++) expect(Math.abs(a[i]! - b[i]!)).toBeLessThan(0.03);
  });

  test("the fused kernel (T <= 64) and the batched-matmul path (longer T) both match the float64 reference, gradients too", () => {
    // T = 64 runs the fused kernel, T = 66 the matmul path; both are checked the same way.
    for (const steps of [64, 66]) {
      const batch = 1;
      const heads = 2;
      const channels = 8;
      const values = Float64Array.from({ length: batch * steps * 3 * channels }, (_, i) => Math.sin(0.7 * i) * 0.8);
      using x = tensor(Float32Array.from(values), { shape: [batch, steps, 3 * channels] });
      using y = causalSelfAttention(x, heads);
      const expected = attention64(Float64Array.from(x.toArray()), batch, steps, channels, heads);
      const got = y.toArray();
      for (let i = 0; i < got.length; i++) expect(Math.abs(got[i]! - expected[i]!)).toBeLessThan(1e-5);
    }
    fc.assert(
      fc.property(fc.constantFrom(64, 66), fc.nat({ max: 1000 }), (steps, seed) => {
        gradCheck(
          ([x]) => causalSelfAttention(x!, 1),
          ([x]) => attention64(x!, 1, steps, 2, 1),
          [[1, steps, 6]],
          seed,
          { atol: 5e-4, rtol: 5e-3 },
        );
      }),
      { numRuns: 2 },
    );
  });

  test("causalSelfAttention() refuses heads that do not divide the channels", () => {
    using x = tensor(new Float32Array(9), { shape: [1, 1, 9] });
    expect(() => causalSelfAttention(x, 2)).toThrow(RangeError);
  });
});
