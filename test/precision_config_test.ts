import { describe, expect, test } from "bun:test";
import { devices, validatePrecisionConfig } from "../src/mod.ts";

const SM75 = { kind: "cuda", computeCapability: [7, 5] } as const;
const SM80 = { kind: "cuda", computeCapability: [8, 0] } as const;
const SM89 = { kind: "cuda", computeCapability: [8, 9] } as const;

describe("validatePrecisionConfig()", () => {
  test("fills jmp's defaults: params float32, compute follows params, output follows compute", () => {
    const { config, notices } = validatePrecisionConfig({});
    expect(config).toEqual({
      params: "float32",
      compute: "float32",
      output: "float32",
      lossScale: "none",
      quantization: null,
      device: "cpu",
      lora: null,
      scaledGradients: "none",
    });
    expect(notices).toEqual([]);
    expect(validatePrecisionConfig({ compute: "bf16" }).config.output).toBe("bfloat16");
    expect(validatePrecisionConfig({ params: "bf16" }).config.compute).toBe("bfloat16");
  });

  test("float16 training gets dynamic loss scaling by default, over all gradients", () => {
    const { config } = validatePrecisionConfig({ compute: "float16", output: "float32" });
    expect(config.lossScale).toBe("dynamic");
    expect(config.scaledGradients).toBe("all");
  });

  test("bfloat16 with dynamic loss scaling turns scaling off with a notice", () => {
    const { config, notices } = validatePrecisionConfig({ compute: "bfloat16", lossScale: "dynamic" });
    expect(config.lossScale).toBe("none");
    expect(config.scaledGradients).toBe("none");
    expect(notices.join()).toMatch(/lossScale=dynamic with bfloat16.*loss scaling is off/);
  });

  test("a static scale with bfloat16 is kept, with a notice", () => {
    const { config, notices } = validatePrecisionConfig({ compute: "bf16", lossScale: "static" });
    expect(config.lossScale).toBe("static");
    expect(notices.join()).toMatch(/needs no loss scaling/);
  });

  test("int8 or int4 weights with mixed-precision autocast or loss scaling are errors naming the fix", () => {
    expect(() => validatePrecisionConfig({ quantization: "int8", compute: "bfloat16" })).toThrow(
      "quantization int8 cannot be combined with compute=bfloat16 autocast: train the adapters in float32 without autocast",
    );
    expect(() => validatePrecisionConfig({ quantization: "int4", lossScale: "dynamic" })).toThrow(
      /quantization int4 cannot be combined with lossScale=dynamic loss scaling.*or drop quantization/,
    );
    expect(() => validatePrecisionConfig({ quantization: "int8", compute: "float16" })).toThrow(
      /compute=float16 autocast or lossScale=dynamic loss scaling/,
    );
    expect(() => validatePrecisionConfig({ lora: { base: "int4", adapters: "float32" }, compute: "bf16" })).toThrow(
      /quantization int4/,
    );
    const ok = validatePrecisionConfig({ quantization: "int8", lora: { base: "int8", adapters: "float32" } });
    expect(ok.config.quantization).toBe("int8");
    expect(ok.config.lossScale).toBe("none");
    expect(() => validatePrecisionConfig({ quantization: "int8", lora: { base: "int4", adapters: "f32" } })).toThrow(
      /disagree/,
    );
  });

  test("LoRA with a bfloat16 base and float16 adapters scales only the trainable gradients", () => {
    const f16 = validatePrecisionConfig({ lora: { base: "bfloat16", adapters: "float16" }, compute: "float16" });
    expect(f16.config.lossScale).toBe("dynamic");
    expect(f16.config.scaledGradients).toBe("trainable");
    expect(f16.config.lora).toEqual({ base: "bfloat16", adapters: "float16" });
    const f32 = validatePrecisionConfig({
      lora: { base: "bf16", adapters: "f32" },
      compute: "bfloat16",
      lossScale: "dynamic",
    });
    expect(f32.config.lossScale).toBe("none");
    expect(f32.notices.join()).toMatch(/loss scaling is off/);
  });

  test("bfloat16 on a GPU below sm_80 is an error suggesting float16", () => {
    expect(() => validatePrecisionConfig({ compute: "bfloat16", device: "cuda:0", deviceInfo: SM75 })).toThrow(
      /compute=bfloat16 needs bfloat16, which cuda:0 \(compute capability 7.5, sm_75\) lacks.*use float16 instead/,
    );
    expect(() => validatePrecisionConfig({ lora: { base: "bf16", adapters: "f32" }, deviceInfo: SM75 })).toThrow(
      /lora.base=bfloat16/,
    );
    expect(validatePrecisionConfig({ compute: "float16", deviceInfo: SM75 }).config.lossScale).toBe("dynamic");
    expect(validatePrecisionConfig({ compute: "bfloat16", deviceInfo: SM80 }).config.device).toBe("cuda:0");
  });

  test("fp8 needs sm_89 or newer", () => {
    expect(() => validatePrecisionConfig({ compute: "float8_e4m3fn", deviceInfo: SM80 })).toThrow(
      /compute=float8_e4m3fn needs fp8, which cuda:0 \(compute capability 8.0, sm_80\) lacks/,
    );
    expect(validatePrecisionConfig({ compute: "e4m3", deviceInfo: SM89 }).config.compute).toBe("float8_e4m3fn");
    expect(
      validatePrecisionConfig({ compute: "e5m2", deviceInfo: { kind: "cuda", computeCapability: [9, 0] } }).ok,
    ).toBe(true);
  });

  test("the CPU always accepts bfloat16 and says when it is emulated", () => {
    const cpu = devices()[0]!;
    const { notices } = validatePrecisionConfig({ compute: "bfloat16" });
    const emulated = cpu.kind === "cpu" && !cpu.bf16Native;
    expect(notices.some((n) => n.includes("emulated"))).toBe(emulated);
    const simulated = validatePrecisionConfig({ compute: "bf16", deviceInfo: { kind: "cpu", bf16Native: false } });
    expect(simulated.notices.join()).toMatch(/emulated \(no AVX512-BF16\)/);
  });

  test("an unknown device, setting or value is refused with the setting's name", () => {
    expect(() => validatePrecisionConfig({ device: "cuda:7" })).toThrow(/device=cuda:7 is not available/);
    expect(() => validatePrecisionConfig({ device: "tpu" })).toThrow(/device="tpu"/);
    expect(() => validatePrecisionConfig({ compute: "f33" })).toThrow(/compute="f33" is not a dtype/);
    expect(() => validatePrecisionConfig({ lossScale: "auto" as never })).toThrow(/lossScale="auto"/);
    expect(() => validatePrecisionConfig({ quantization: "int2" as never })).toThrow(/quantization="int2"/);
    expect(() => validatePrecisionConfig({ lossscale: "none" } as never)).toThrow(TypeError);
    expect(() => validatePrecisionConfig({ deviceInfo: { kind: "cuda" } })).toThrow(/computeCapability/);
    expect(() => validatePrecisionConfig(null as never)).toThrow(TypeError);
  });
});
