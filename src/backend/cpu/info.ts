/**
 * What the CPU backend reports about itself and the one setting it takes: the ISA features the
 * native library found (cpuid/XCR0), the kernels it chose (zig/src/cpu/dispatch.zig) and the
 * thread pool's size. src/device.ts turns these into the public device entries.
 *
 * @module
 */

import { ptr } from "bun:ffi";
import { check, native } from "../../_ffi.ts";

const FLAGS_OUT = new Uint32Array(1);

/** mp_cpu_info's flag word: feature bits 0-7, threads in bits 8-15, the kernel path in bits 16-19. */
export function cpuInfoFlags(): number {
  check(native().mp_cpu_info(ptr(FLAGS_OUT)), "mp_cpu_info");
  return FLAGS_OUT[0]!;
}

/** Sizes the CPU thread pool (0: one thread per CPU); the caller has checked the range. */
export function setThreadCount(count: number): void {
  check(native().mp_set_threads(count), "mp_set_threads");
}
