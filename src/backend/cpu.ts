/**
 * The CPU backend: every kernel family's CPU implementation (backend/cpu/*.ts) in one object.
 * The kernels are the Zig code of zig/src/ops/ and zig/src/cpu/, run with SIMD and the thread pool.
 *
 * @module
 */

import type { Backend } from "./backend.ts";
import { attentionCpu } from "./cpu/attention.ts";
import { ropeCpu } from "./cpu/rope.ts";
import { storageCpu } from "./cpu/storage.ts";

export const cpuBackend: Backend = Object.freeze({
  kind: "cpu" as const,
  ...storageCpu,
  ...attentionCpu,
  ...ropeCpu,
});
