/**
 * The CPU backend: every kernel family's CPU implementation (backend/cpu/*.ts) in one object.
 * The kernels are the Zig code of zig/src/ops/ and zig/src/cpu/, run with SIMD and the thread pool.
 *
 * @module
 */

import type { Backend } from "./backend.ts";
import { ampCpu } from "./cpu/amp.ts";
import { attentionCpu } from "./cpu/attention.ts";
import { elementwiseCpu } from "./cpu/elementwise.ts";
import { embeddingCpu } from "./cpu/embedding.ts";
import { layoutCpu } from "./cpu/layout.ts";
import { normCpu } from "./cpu/norm.ts";
import { ropeCpu } from "./cpu/rope.ts";
import { softmaxCpu } from "./cpu/softmax.ts";
import { storageCpu } from "./cpu/storage.ts";

export const cpuBackend: Backend = Object.freeze({
  kind: "cpu" as const,
  ...storageCpu,
  ...layoutCpu,
  ...ampCpu,
  ...elementwiseCpu,
  ...normCpu,
  ...softmaxCpu,
  ...embeddingCpu,
  ...attentionCpu,
  ...ropeCpu,
});
