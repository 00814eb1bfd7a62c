import { describe, expect, test } from "bun:test";
import { applyUpdates, tensor } from "../../src/mod.ts";

describe("applyUpdates()", () => {
  test("applyUpdates() adds in float32 and rounds float16 / bfloat16 params to nearest even", () => {
    using p32 = tensor([1, 2]);
    using p16 = tensor([1, 2], { dtype: "f16" });
    using pbf = tensor([1, 256], { dtype: "bf16" });
    using u = tensor([2 ** -12, 1.5]);
    applyUpdates({ a: p32, b: p16, c: pbf }, { a: u, b: u, c: u });
    expect([...p32.toArray()]).toEqual([Math.fround(1 + 2 ** -12), 3.5]);
    // 1 + 2^-12 is below half a float16 ulp at 1 (2^-11): stays 1. 256 + 1.5 ties in bf16 -> 258.
    expect([...p16.toArray()]).toEqual([1, 3.5]);
    expect([...pbf.toArray()]).toEqual([1, 258]);
  });

  test("applyUpdates() with stochastic rounding moves a bfloat16 param in expectation", () => {
    using p = tensor(new Float32Array(4096).fill(1), { dtype: "bf16" });
    using u = tensor(new Float32Array(4096).fill(2 ** -10));
    applyUpdates([p], [u], { rounding: "stochastic", seed: 3 });
    const values = p.toArray();
    const mean = values.reduce((a, b) => a + b, 0) / values.length;
    // bf16 ulp at 1 is 2^-7: a quarter of the elements round up to 1 + 2^-7.
    expect(new Set(values)).toEqual(new Set([1, 1 + 2 ** -7]));
    expect(Math.abs(mean - (1 + 2 ** -10))).toBeLessThan(2 ** -12);
  });

  test("applyUpdates() refuses updates that do not match the params", () => {
    using p = tensor([1, 2]);
    using u = tensor([1]);
    expect(() => applyUpdates([p], [u])).toThrow(/leaf 0 has 2 elements against 1/);
    expect(() => applyUpdates([p], [])).toThrow(TypeError);
    expect(() => applyUpdates([p], [p], { rounding: "up" as never })).toThrow(RangeError);
    expect([...p.toArray()]).toEqual([1, 2]);
  });
});
