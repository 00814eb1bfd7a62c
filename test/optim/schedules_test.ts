import { describe, expect, test } from "bun:test";
import { constantSchedule, cosineDecaySchedule, linearSchedule, warmupCosineDecaySchedule } from "../../src/mod.ts";

describe("schedules", () => {
  test("linearSchedule() holds, ramps and holds again", () => {
    const s = linearSchedule({ initValue: 1, endValue: 3, transitionSteps: 4, transitionBegin: 2 });
    expect([0, 2, 4, 6, 100].map(s)).toEqual([1, 1, 2, 3, 3]);
  });

  test("cosineDecaySchedule() ends at alpha * init", () => {
    const s = cosineDecaySchedule({ initValue: 2, decaySteps: 10, alpha: 0.1 });
    expect(s(0)).toBe(2);
    expect(s(10)).toBeCloseTo(0.2, 12);
    expect(s(1000)).toBeCloseTo(0.2, 12);
  });

  test("warmupCosineDecaySchedule() warms up linearly, peaks, and decays to endValue", () => {
    const s = warmupCosineDecaySchedule({ initValue: 0, peakValue: 1, warmupSteps: 4, decaySteps: 14, endValue: 0.1 });
    expect(s(2)).toBe(0.5);
    expect(s(4)).toBe(1);
    expect(s(9)).toBeCloseTo(0.55, 12);
    expect(s(14)).toBeCloseTo(0.1, 12);
    expect(constantSchedule(3)(7)).toBe(3);
  });

  test("bad schedule arguments are refused", () => {
    expect(() => linearSchedule({ initValue: 0, endValue: 1, transitionSteps: 0 })).toThrow(RangeError);
    expect(() => warmupCosineDecaySchedule({ initValue: 0, peakValue: 1, warmupSteps: 5, decaySteps: 5 })).toThrow(
      RangeError,
    );
    expect(() => constantSchedule(Number.NaN)).toThrow(TypeError);
  });
});
