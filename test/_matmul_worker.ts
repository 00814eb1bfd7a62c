/**
 * A worker process for test/device_test.ts (not a test itself): runs fixed float32 and bfloat16
 * matmuls in whatever kernels MIXPREC_CPU lets the library choose, and prints the kernels and the
 * results' bits as JSON.
 *
 *   MIXPREC_CPU=baseline bun test/_matmul_worker.ts
 */

import { cast } from "../src/cast.ts";
import { cpuDevice } from "../src/device.ts";
import { matmulInto } from "../src/backend/cpu/layout.ts";

/** The shape: rows mode on two threads, several K slabs, partial tiles (M x N x K). */
export const SHAPE = [203, 77, 601] as const;

/** Deterministic inputs in [-1, 1) (a small linear congruential generator). */
export function inputs(count: number, seed: number): Float32Array {
  const out = new Float32Array(count);
  let state = seed >>> 0;
  for (let i = 0; i < count; i++) {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    out[i] = state / 2 ** 31 - 1;
  }
  return out;
}

if (import.meta.main) {
  const [m, n, k] = SHAPE;
  const a = inputs(m * k, 1);
  const b = inputs(k * n, 2);
  const f32 = matmulInto(a, "float32", b, "float32", new Float32Array(m * n), 1, m, n, k, 0);
  const a16 = cast(a, "float32", "bfloat16");
  const b16 = cast(b, "float32", "bfloat16");
  const bf16 = matmulInto(a16, "bfloat16", b16, "bfloat16", new Float32Array(m * n), 1, m, n, k, 0);
  const bits = (x: Float32Array) => Array.from(new Uint32Array(x.buffer));
  console.log(JSON.stringify({ kernels: cpuDevice().kernels, f32: bits(f32), bf16: bits(bf16) }));
}
