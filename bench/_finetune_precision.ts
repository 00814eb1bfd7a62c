/**
 * `--precision auto`: bfloat16 where the device computes it natively (a CPU with AVX512-BF16, a
 * GPU of compute capability 8.0+), else float16 with dynamic loss scaling; with the reason.
 *
 * @module
 */

import type { DeviceInfo } from "../src/mod.ts";

/** The recipe `--precision auto` picks, and why. */
export interface PrecisionChoice {
  readonly choice: "mixed_bf16" | "fp16_dynamic";
  readonly reason: string;
}

/**
 * Chooses the mixed-precision recipe for a device from its capabilities (src/device.ts).
 *
 * @param device The device's entry in devices().
 * @returns The recipe and a sentence saying why.
 */
export function choosePrecision(device: DeviceInfo): PrecisionChoice {
  if (device.kind === "cpu") {
    if (device.bf16Native) {
      return {
        choice: "mixed_bf16",
        reason: `cpu has AVX512-BF16 (matmul kernels "${device.kernels}"): bfloat16 runs natively and needs no loss scaling`,
      };
    }
    return {
      choice: "fp16_dynamic",
      reason: `cpu lacks AVX512-BF16 (matmul kernels "${device.kernels}"; features ${device.features.join(", ") || "none"}): bfloat16 would be emulated, so float16 with dynamic loss scaling`,
    };
  }
  const [major, minor] = device.computeCapability;
  if (device.bf16) {
    return {
      choice: "mixed_bf16",
      reason: `${device.name} (${device.model}) is sm_${major}${minor}, at least sm_80: bfloat16 runs natively and needs no loss scaling`,
    };
  }
  return {
    choice: "fp16_dynamic",
    reason: `${device.name} (${device.model}) is sm_${major}${minor}, below sm_80: no bfloat16 arithmetic, so float16 with dynamic loss scaling`,
  };
}
