import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import { preflight } from "../src/preflight.ts";
import { tensor } from "../src/tensor.ts";
import { cast } from "../src/cast.ts";

/** Reference: values that round to zero in float16 after scaling, via the native cast itself. */
function underflowsAfterScaling(values: Float32Array, scale: number): number {
  const scaled = new Float32Array(values.length);
  for (let i = 0; i < values.length; i++) scaled[i] = values[i]! * scale;
  const halves = cast(scaled, "float32", "float16") as Uint16Array;
  let count = 0;
  for (let i = 0; i < values.length; i++) if (values[i] !== 0 && (halves[i]! & 0x7fff) === 0) count++;
  return count;
}

describe("preflight()", () => {
  test("counts the float16 underflow share exactly as the float16 cast does, at scale 1 and scaled", () => {
    fc.assert(
      fc.property(
        fc.array(fc.float({ min: Math.fround(-1e3), max: Math.fround(1e3), noNaN: true, noDefaultInfinity: true }), {
          minLength: 1,
          maxLength: 200,
        }),
        fc.array(fc.integer({ min: -60, max: 2 }), { minLength: 1, maxLength: 200 }),
        (mantissas, exponents) => {
          // Spread magnitudes over float16's underflow boundary.
          const values = new Float32Array(mantissas.map((m, i) => m * 2 ** exponents[i % exponents.length]!));
          using g = tensor(values);
          const report = preflight({ g }, { bf16Supported: false });
          const nonZero = values.filter((v) => v !== 0).length;
          expect(report.nonZero).toBe(nonZero);
          if (nonZero === 0) return;
          expect(report.f16UnderflowShare).toBeCloseTo(underflowsAfterScaling(values, 1) / nonZero, 12);
          expect(report.f16UnderflowShareScaled).toBeCloseTo(
            underflowsAfterScaling(values, report.initialScale) / nonZero,
            12,
          );
          expect(report.tensors[0]!.f16Underflow).toBe(underflowsAfterScaling(values, 1));
        },
      ),
      { numRuns: 200 },
    );
  });

  test("the recommended scale keeps the largest gradient below float16's max with headroom", () => {
    using g = tensor([3, -1500, 1e-6]);
    const report = preflight({ layer: { w: g } }, { bf16Supported: false, headroom: 0.5 });
    expect(report.amax).toBe(1500);
    expect(report.initialScale).toBe(16); // 1500 * 16 = 24000 <= 32752 < 1500 * 32
    expect(report.tensors[0]!.name).toBe("layer.w");
    expect(report.recommendation.dtype).toBe("float16");
    expect(report.recommendation.lossScale).toBe("dynamic");
  });

  test("2^-25 ties to zero in float16 but the next float32 up does not", () => {
    using g = tensor(new Float32Array([2 ** -25, 2 ** -25 * (1 + 2 ** -23)]));
    const report = preflight([g], { bf16Supported: false });
    expect(report.tensors[0]!.f16Underflow).toBe(1);
    expect(report.tensors[0]!.f16Subnormal).toBe(1);
  });

  test("recommends bfloat16 without loss scaling where the device supports it", () => {
    using g = tensor([1e-9, 1]);
    const report = preflight([g]);
    expect(report.recommendation.dtype).toBe("bfloat16");
    expect(report.recommendation.lossScale).toBe("none");
    expect(report.recommendation.reason).toContain("50.00% would underflow");
  });

  test("counts non-finite values and overflow separately", () => {
    using g = tensor([Number.NaN, Number.POSITIVE_INFINITY, 70000, 0, -0]);
    const report = preflight([g], { bf16Supported: false });
    expect(report.tensors[0]!.nonFinite).toBe(2);
    expect(report.tensors[0]!.f16Overflow).toBe(1);
    expect(report.nonZero).toBe(1);
  });

  test("rejects non-tensor leaves and a bad headroom", () => {
    expect(() => preflight({ g: [1, 2] as never })).toThrow(/tree of tensors/);
    using g = tensor([1]);
    expect(() => preflight([g], { headroom: 0 })).toThrow(RangeError);
  });
});
