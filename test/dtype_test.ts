import { describe, expect, test } from "bun:test";
import { DTYPE_NAMES, dtypeInfo } from "../src/mod.ts";
import { f32FromBits, toF32Bits } from "../src/_numerics.ts";

describe("dtypeInfo()", () => {
  test("aliases resolve to the canonical names", () => {
    expect(dtypeInfo("f32").name).toBe("float32");
    expect(dtypeInfo("f16").name).toBe("float16");
    expect(dtypeInfo("bf16").name).toBe("bfloat16");
    expect(dtypeInfo("e4m3").name).toBe("float8_e4m3fn");
    expect(dtypeInfo("e5m2").name).toBe("float8_e5m2");
  });

  test("max, minNormal and minSubnormal are the values of the formats' bit patterns", () => {
    const patterns: Record<string, [number, number, number]> = {
      float16: [0x7bff, 0x0400, 0x0001],
      bfloat16: [0x7f7f, 0x0080, 0x0001],
      float8_e4m3fn: [0x7e, 0x08, 0x01],
      float8_e5m2: [0x7b, 0x04, 0x01],
    };
    for (const [name, [max, minNormal, minSubnormal]] of Object.entries(patterns)) {
      const info = dtypeInfo(name as never);
      expect(f32FromBits(toF32Bits(info.name, max))).toBe(info.max);
      expect(f32FromBits(toF32Bits(info.name, minNormal))).toBe(info.minNormal);
      expect(f32FromBits(toF32Bits(info.name, minSubnormal))).toBe(info.minSubnormal);
      expect(info.eps).toBe(2 ** -info.mantissaBits);
    }
    expect(dtypeInfo("float32").max).toBe(f32FromBits(0x7f7fffff));
  });

  test("every dtype names its storage and a distinct native code", () => {
    const codes = DTYPE_NAMES.map((name) => dtypeInfo(name).code);
    expect(new Set(codes).size).toBe(DTYPE_NAMES.length);
    expect(dtypeInfo("bf16").storage).toBe("Uint16Array");
    expect(dtypeInfo("e5m2").storage).toBe("Uint8Array");
  });

  test("an unknown name throws TypeError listing the known ones", () => {
    expect(() => dtypeInfo("half" as never)).toThrow(/Unknown dtype "half": use one of float32/);
  });
});
