import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import { valueAndGrad } from "../../src/autodiff.ts";
import { autocast } from "../../src/autocast.ts";
import { combine, freezeWeight, INT4_GROUP_SIZE, loraLinear, partition } from "../../src/nn/mod.ts";
import { mean } from "../../src/ops/mod.ts";
import { getPolicy } from "../../src/policy.ts";
import { randn, type Tensor, tensor } from "../../src/tensor.ts";
import { randomInputs, refMatmul } from "../_gradcheck.ts";

describe("loraLinear", () => {
  test("the forward pass equals base + (alpha / rank) * x A^T B^T for every base storage", () => {
    for (const base of ["float32", "bfloat16", "int8", "int4"] as const) {
      const layer = loraLinear({ inFeatures: 70, outFeatures: 5, rank: 3, alpha: 6, base });
      const params = layer.init({ seed: 2 });
      // Give B non-zero values so the update shows.
      params.b.dispose();
      const b = randn([5, 3], { seed: 9 });
      const p = { ...params, b };
      using x = randn([4, 70], { seed: 3 });
      using y = layer.apply(p, x);
      const w = Float64Array.from(p.base.dequantize());
      const wT = new Float64Array(70 * 5);
      for (let o = 0; o < 5; o++) for (let i = 0; i < 70; i++) wT[i * 5 + o] = w[o * 70 + i]!;
      const x64 = Float64Array.from(x.toArray());
      const a = p.a.toArray();
      const aT = new Float64Array(70 * 3);
      for (let r = 0; r < 3; r++) for (let i = 0; i < 70; i++) aT[i * 3 + r] = a[r * 70 + i]!;
      const bv = b.toArray();
      const bT = new Float64Array(3 * 5);
      for (let o = 0; o < 5; o++) for (let r = 0; r < 3; r++) bT[r * 5 + o] = bv[o * 3 + r]!;
      const baseOut = refMatmul(x64, wT, 1, 4, 70, 5, true);
      const update = refMatmul(refMatmul(x64, aT, 1, 4, 70, 3, true), bT, 1, 4, 3, 5, true);
      const got = y.toArray();
      for (let i = 0; i < got.length; i++) {
        expect(Math.abs(got[i]! - (baseOut[i]! + 2 * update[i]!))).toBeLessThan(1e-4);
      }
      p.base.dispose();
      p.a.dispose();
      b.dispose();
    }
  });

  test("a fresh adapter (B = 0) leaves the base output unchanged", () => {
    const layer = loraLinear({ inFeatures: 8, outFeatures: 4, rank: 2, base: "bfloat16" });
    using w = randn([4, 8], { seed: 1 });
    const params = layer.init({ seed: 0, weight: w });
    using x = randn([2, 8], { seed: 4 });
    using y = layer.apply(params, x);
    expect(params.base.tensor!.dtype).toBe("bfloat16");
    const want = refMatmul(
      Float64Array.from(x.toArray()),
      Float64Array.from({ length: 32 }, (_, i) => params.base.dequantize()[(i % 4) * 8 + Math.floor(i / 4)]!),
      1,
      2,
      8,
      4,
      true,
    );
    y.toArray().forEach((v, i) => expect(Math.abs(v - want[i]!)).toBeLessThan(1e-5));
    params.base.dispose();
    params.a.dispose();
    params.b.dispose();
  });

  test("int8 and int4 dequantization stays within half a quantization step of every weight", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 6 }),
        fc.integer({ min: 1, max: 200 }),
        fc.nat(1000),
        (rows, cols, seed) => {
          const [values] = randomInputs([[rows, cols]], seed);
          values![0] = 0;
          using w = tensor(values!, { shape: [rows, cols] });
          for (const kind of ["int8", "int4"] as const) {
            const frozen = freezeWeight(w, kind);
            const back = frozen.dequantize();
            const groups = Math.ceil(cols / INT4_GROUP_SIZE);
            for (let r = 0; r < rows; r++) {
              for (let c = 0; c < cols; c++) {
                const s =
                  kind === "int8" ? frozen.scales![r]! : frozen.scales![r * groups + Math.floor(c / INT4_GROUP_SIZE)]!;
                const error = Math.abs(back[r * cols + c]! - values![r * cols + c]!);
                if (!(error <= s / 2 + 1e-6 * Math.abs(values![r * cols + c]!))) {
                  throw new Error(`${kind} [${r}, ${c}]: error ${error} > half step ${s / 2}`);
                }
              }
            }
            expect(back[0]).toBe(0);
          }
          const int4 = freezeWeight(w, "int4");
          expect(int4.quantized!.byteLength).toBe((rows * Math.ceil(cols / 64) * 64) / 2);
        },
      ),
      { numRuns: 30 },
    );
  });

  test("only the adapters are trained: partition, differentiate, combine", () => {
    const layer = loraLinear({ inFeatures: 6, outFeatures: 3, rank: 2, base: "int4", adapters: "float16" });
    const params = layer.init({ seed: 5 });
    const { trainable, frozen } = partition(params);
    using x = randn([4, 6], { seed: 6 });
    const [loss, grads] = valueAndGrad((t: typeof trainable, f: typeof frozen) => mean(layer.apply(combine(t, f), x)))(
      trainable,
      frozen,
    );
    expect(Number.isFinite(loss as number)).toBe(true);
    expect(grads.base).toBeNull();
    expect((grads.a as Tensor).dtype).toBe("float16");
    expect((grads.b as Tensor).dtype).toBe("float16");
    // B = 0 at init, so dL/dA = 0 and dL/dB is not.
    expect((grads.a as Tensor).toArray().every((v) => v === 0)).toBe(true);
    expect((grads.b as Tensor).toArray().some((v) => v !== 0)).toBe(true);
    (grads.a as Tensor).dispose();
    (grads.b as Tensor).dispose();
    params.a.dispose();
    params.b.dispose();
  });

  test("a quantized base under mixed-precision autocast or with loss scaling is refused with validatePrecisionConfig's error", () => {
    expect(() => loraLinear({ inFeatures: 4, outFeatures: 4, base: "int8", precision: { compute: "bf16" } })).toThrow(
      RangeError,
    );
    expect(() =>
      loraLinear({ inFeatures: 4, outFeatures: 4, base: "int4", precision: { lossScale: "dynamic" } }),
    ).toThrow(RangeError);
    const layer = loraLinear({ inFeatures: 4, outFeatures: 4, rank: 1, base: "int8" });
    const params = layer.init({ seed: 0 });
    using x = randn([1, 4], { seed: 1 });
    const run = autocast(getPolicy("mixed_bf16"), () => layer.apply(params, x));
    expect(run).toThrow(/int8/);
    params.a.dispose();
    params.b.dispose();
  });
});
