import { describe, expect, test } from "bun:test";
import { cudaCapabilities, type DeviceInfo, devices, registerDeviceProvider } from "../src/mod.ts";

describe("devices()", () => {
  test("lists the CPU first with its bf16 and fp8 support and its threads", () => {
    const cpu = devices()[0]!;
    expect(cpu.name).toBe("cpu");
    if (cpu.kind !== "cpu") throw new Error("the first device is not the CPU");
    expect(cpu.bf16).toBe(true);
    expect(cpu.fp8).toBe(true);
    expect(cpu.fp8Native).toBe(false);
    expect(typeof cpu.bf16Native).toBe("boolean");
    expect(cpu.bf16Native).toBe(cpu.features.includes("avx512bf16"));
    expect(cpu.f16Native).toBe(cpu.features.includes("f16c"));
    expect(cpu.threads).toBeGreaterThanOrEqual(1);
    for (const feature of cpu.features) expect(["avx2", "avx512f", "avx512bf16", "f16c"]).toContain(feature);
  });

  test("providers add CUDA entries, and a failing provider never hides the CPU", () => {
    const fake: DeviceInfo = {
      name: "cuda:3",
      kind: "cuda",
      computeCapability: [7, 5],
      ...cudaCapabilities([7, 5]),
      memoryBytes: 16e9,
      model: "simulated T4",
    };
    const removeFake = registerDeviceProvider(() => [fake]);
    const removeBroken = registerDeviceProvider(() => {
      throw new Error("driver gone");
    });
    try {
      const list = devices();
      expect(list[0]!.name).toBe("cpu");
      expect(list.find((d) => d.name === "cuda:3")).toEqual(fake);
    } finally {
      removeFake();
      removeBroken();
    }
    expect(devices().some((d) => d.name === "cuda:3")).toBe(false);
  });
});

describe("cudaCapabilities()", () => {
  test("bf16 starts at sm_80 and fp8 at sm_89", () => {
    expect(cudaCapabilities([7, 5])).toEqual({ bf16: false, fp8: false });
    expect(cudaCapabilities([8, 0])).toEqual({ bf16: true, fp8: false });
    expect(cudaCapabilities([8, 6])).toEqual({ bf16: true, fp8: false });
    expect(cudaCapabilities([8, 9])).toEqual({ bf16: true, fp8: true });
    expect(cudaCapabilities([9, 0])).toEqual({ bf16: true, fp8: true });
  });
});
