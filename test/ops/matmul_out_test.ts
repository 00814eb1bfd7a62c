import { describe, expect, test } from "bun:test";
import { layoutCpu, MatmulFlag } from "../../src/backend/cpu/layout.ts";
import { randn, zeros } from "../../src/tensor.ts";

const WORKER = new URL("../_matmul_out_worker.ts", import.meta.url).pathname;

/** Runs test/_matmul_out_worker.ts with MIXPREC_CPU set to `cap` (or unset). */
function runWorker(cap: string | undefined): { kernels: string; cases: number; mismatches: string[] } {
  const env = { ...process.env };
  delete env.MIXPREC_CPU;
  if (cap !== undefined) env.MIXPREC_CPU = cap;
  const child = Bun.spawnSync([process.execPath, WORKER], { env, stdout: "pipe", stderr: "pipe" });
  if (child.exitCode !== 0) throw new Error(`worker failed: ${child.stderr.toString()}`);
  return JSON.parse(child.stdout.toString());
}

describe("the fused matmul (mp_matmul_out)", () => {
  // The micro-kernels round the result with its bias straight into the output; it must give the
  // bits of a float32 product followed by the epilogue on every kernel path the CPU can take.
  for (const cap of [undefined, "avx512", "baseline"]) {
    test(`gives the bits of matmul + epilogue for every output dtype, bias, slab count and split (MIXPREC_CPU=${cap ?? "unset"})`, () => {
      const run = runWorker(cap);
      if (cap !== undefined) expect(["baseline", cap]).toContain(run.kernels);
      expect(run.cases).toBe(162);
      expect(run.mismatches).toEqual([]);
    });
  }

  test("refuses accumulation, and a K deeper than the fused depth without a scratch, writing nothing", () => {
    using a = randn([4, 300], { seed: 1 });
    using b = randn([300, 3], { seed: 2 });
    using out = zeros([4, 3], { dtype: "bfloat16" });
    expect(layoutCpu.matmulOutNeedsScratch("bfloat16", 300)).toBe(true);
    expect(layoutCpu.matmulOutNeedsScratch("bfloat16", 256)).toBe(false);
    // A float32 output holds its own partial sums, at any depth.
    expect(layoutCpu.matmulOutNeedsScratch("float32", 300)).toBe(false);
    expect(() => layoutCpu.matmulOut(a, b, null, null, out, 1, 4, 3, 300, 0)).toThrow(/mp_matmul_out/);
    expect(() => layoutCpu.matmulOut(a, b, null, null, out, 1, 4, 3, 300, MatmulFlag.accumulate)).toThrow(
      /mp_matmul_out/,
    );
    expect(Array.from(out.bits())).toEqual(new Array(12).fill(0));
  });
});
