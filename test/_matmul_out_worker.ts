/**
 * A worker process for test/ops/matmul_out_test.ts (not a test itself): in whatever kernels
 * MIXPREC_CPU lets the library choose, compares the fused matmul (mp_matmul_out: the micro-kernels
 * round the result with its bias straight into the output) with a float32 product followed by the
 * epilogue, bit for bit, over shapes that cover whole and partial micro-tiles, one and several K
 * slabs, transposes, a shared B, batches, K = 0, each output dtype, with and without a bias. Prints
 * the kernels, the number of cases and the mismatches as JSON.
 *
 *   MIXPREC_CPU=baseline bun test/_matmul_out_worker.ts
 */

import { layoutCpu, MatmulFlag } from "../src/backend/cpu/layout.ts";
import { cpuDevice } from "../src/device.ts";
import type { DtypeName } from "../src/dtype.ts";
import { randn, type Tensor, zeros } from "../src/tensor.ts";

const DTYPES: readonly DtypeName[] = ["float32", "float16", "bfloat16"];
/** [batch, m, n, k, flags]: one slab and several, partial tiles, the rows, static and batch splits. */
const SHAPES: readonly (readonly [number, number, number, number, number])[] = [
  [1, 203, 77, 101, 0],
  [1, 203, 77, 601, 0],
  [1, 512, 344, 128, MatmulFlag.transB],
  [1, 344, 128, 512, MatmulFlag.transA],
  [1, 1024, 64, 40, 0],
  [3, 33, 65, 70, MatmulFlag.transA | MatmulFlag.transB],
  [4, 37, 41, 300, MatmulFlag.broadcastB],
  [1, 7, 5, 0, 0],
  [1, 1, 1, 1, 0],
];

function bits(t: Tensor): number[] {
  return Array.from(t.bits());
}

let cases = 0;
const mismatches: string[] = [];
for (const [batch, m, n, k, flags] of SHAPES) {
  for (const inputDtype of DTYPES) {
    const aShape = flags & MatmulFlag.transA ? [batch, k, m] : [batch, m, k];
    const bRows = flags & MatmulFlag.transB ? [n, k] : [k, n];
    const bShape = flags & MatmulFlag.broadcastB ? bRows : [batch, ...bRows];
    using a = randn(aShape, { seed: 1 + m }).to(inputDtype);
    using b = randn(bShape, { seed: 2 + n }).to(inputDtype);
    for (const outDtype of DTYPES) {
      for (const withBias of [false, true]) {
        using bias = withBias ? randn([n], { seed: 3 }).to(outDtype) : null;
        using product = zeros([batch, m, n]);
        using expected = zeros([batch, m, n], { dtype: outDtype });
        layoutCpu.matmul(a, b, product, batch, m, n, k, flags);
        layoutCpu.matmulEpilogue(product, bias, expected);
        using scratch = layoutCpu.matmulOutNeedsScratch(outDtype, k) ? zeros([batch, m, n]) : null;
        using fused = zeros([batch, m, n], { dtype: outDtype });
        layoutCpu.matmulOut(a, b, scratch, bias, fused, batch, m, n, k, flags);
        cases++;
        const want = bits(expected);
        const got = bits(fused);
        const wrong = want.findIndex((value, i) => value !== got[i]);
        if (wrong >= 0) {
          mismatches.push(
            `${batch}x${m}x${n}x${k} flags ${flags} ${inputDtype} -> ${outDtype} bias ${withBias}: element ${wrong}`,
          );
        }
      }
    }
  }
}
console.log(JSON.stringify({ kernels: cpuDevice().kernels, cases, mismatches }));
