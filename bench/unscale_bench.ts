/**
 * Multi-tensor unscale throughput: GB/s (bytes read + written) of unscaleAndCheck over 1 to 1,000
 * tensors totalling 1M to 256M elements, per dtype, beside a plain copy of the same bytes
 * (TypedArray.set on one thread, and the library's own memcpy on every thread: the memory-bandwidth
 * limit for a kernel that reads and writes every byte once; the faster of the two is the ratio's base).
 * Then the cost of one call over 1,000 small tensors against 1,000 separate calls, and, when torch
 * imports, torch._amp_foreach_non_finite_check_and_unscale_ on the CPU (bench/compare_torch_unscale.py).
 *
 *   bun bench/unscale_bench.ts [--max 268435456] [--budget-ms 250] [--threads N] [--torch yes|no]
 *
 * --threads sets the threads of both libraries (default: every CPU); 1 compares single cores,
 * which is what holds up on a machine shared with other work.
 */

import { type GradientRow, type Tensor, tensor, unscaleAndCheck } from "../src/mod.ts";
import { allocateStorage, type DtypeName, dtypeInfo } from "../src/dtype.ts";
import { castInto } from "../src/cast.ts";
import { check, native } from "../src/_ffi.ts";
import { countLabel, flag, formatTable, gbPerSecond, medianNs } from "./_harness.ts";

type GradDtype = "float32" | "float16" | "bfloat16";
const DTYPES: readonly GradDtype[] = ["float32", "float16", "bfloat16"];
const maxCount = Number(flag("max", String(1 << 28)));
const budgetMs = Number(flag("budget-ms", "250"));
const totals = [1 << 20, 1 << 24, 1 << 26, 1 << 28].filter((c) => c <= maxCount);
const tensorCounts = [1, 10, 1000];
const threads = Number(flag("threads", String(navigator.hardwareConcurrency)));
check(native().mp_set_threads(threads), "mp_set_threads");

/** Gradient-like values (|x| up to 300), stored in `dtype`; power-of-two scales keep them exact. */
function filled(dtype: GradDtype, count: number) {
  const values = new Float32Array(count);
  for (let i = 0; i < count; i++) values[i] = Math.sin(i) * 300;
  if (dtype === "float32") return values;
  return castInto(values, allocateStorage(dtype, count), "float32", dtype);
}

/** Splits one buffer into `parts` rows of nearly equal length (views, no copies). */
function rowsOf(dtype: GradDtype, data: Float32Array | Uint16Array, parts: number): GradientRow[] {
  const rows: GradientRow[] = [];
  const base = Math.floor(data.length / parts);
  let offset = 0;
  for (let i = 0; i < parts; i++) {
    const length = i === parts - 1 ? data.length - offset : base;
    rows.push({ dtype, data: data.subarray(offset, offset + length) });
    offset += length;
  }
  return rows;
}

const rows: string[][] = [];
for (const total of totals) {
  for (const dtype of DTYPES) {
    const data = filled(dtype, total) as Float32Array | Uint16Array;
    const bytes = total * (dtypeInfo(dtype as DtypeName).bits / 8);
    // Two copies of the same bytes: TypedArray.set (one thread) and the native copy mp_cast does
    // for a same-dtype cast (memcpy on every thread). The faster one is the limit.
    const copySource = new Uint8Array(data.buffer, data.byteOffset, bytes);
    const copyTarget = new Uint8Array(bytes);
    const setGb = gbPerSecond(2 * bytes, await medianNs(() => copyTarget.set(copySource), budgetMs));
    const nativeTarget = allocateStorage(dtype, total);
    const nativeGb = gbPerSecond(2 * bytes, await medianNs(() => castInto(data, nativeTarget, dtype, dtype), budgetMs));
    const copyGb = Math.max(setGb, nativeGb);
    for (const parts of tensorCounts) {
      const grads = rowsOf(dtype, data, parts);
      // Alternate 1/2 and 2 so the values stay where they started; 1 would skip the multiply.
      let flip = false;
      const ns = await medianNs(() => {
        flip = !flip;
        return unscaleAndCheck(grads, flip ? 0.5 : 2);
      }, budgetMs);
      const checkNs = await medianNs(() => unscaleAndCheck(grads, 1), budgetMs);
      const gb = gbPerSecond(2 * bytes, ns);
      rows.push([
        dtype,
        countLabel(total),
        String(parts),
        gb.toFixed(2),
        gbPerSecond(bytes, checkNs).toFixed(2),
        setGb.toFixed(2),
        nativeGb.toFixed(2),
        `${((100 * gb) / copyGb).toFixed(0)}%`,
      ]);
    }
  }
}

console.log(
  `unscaleAndCheck throughput, GB/s of bytes read + written (${threads} threads, ${navigator.hardwareConcurrency} CPUs)\n`,
);
console.log(
  formatTable(
    [
      "dtype",
      "elements",
      "tensors",
      "unscale",
      "check only (read)",
      "copy: set()",
      "copy: native",
      "unscale/best copy",
    ],
    rows,
  ),
);

// The per-call cost: 1,000 small tensors in one call versus 1,000 calls of one tensor each.
const small: Tensor[] = Array.from({ length: 1000 }, (_, i) =>
  tensor(filled("float32", 64) as Float32Array, { dtype: DTYPES[i % 3]! }),
);
let flip = false;
const oneCallNs = await medianNs(() => {
  flip = !flip;
  return unscaleAndCheck(small, flip ? 0.5 : 2);
}, budgetMs);
const separateNs = await medianNs(() => {
  flip = !flip;
  let found = false;
  for (const t of small) found = unscaleAndCheck([t], flip ? 0.5 : 2) || found;
  return found;
}, budgetMs);
console.log("\n1,000 tensors of 64 elements (float32, float16, bfloat16 in turn), one unscale step\n");
console.log(
  formatTable(
    ["how", "native calls", "time per step (us)"],
    [
      ["unscaleAndCheck(all 1,000)", "1", (oneCallNs / 1000).toFixed(1)],
      ["unscaleAndCheck([t]) per tensor", "1,000", (separateNs / 1000).toFixed(1)],
    ],
  ),
);
console.log(`\none call is ${(separateNs / oneCallNs).toFixed(1)}x faster than one call per tensor`);
for (const t of small) t.dispose();

// PyTorch, when it is installed: the same sizes through torch._amp_foreach_non_finite_check_and_unscale_.
if (flag("torch", "yes") === "yes") {
  const script = new URL("./compare_torch_unscale.py", import.meta.url).pathname;
  const probe = Bun.spawnSync(["python3", "-c", "import torch"], { stderr: "pipe" });
  if (probe.exitCode !== 0) {
    console.log("\ntorch is not installed: PyTorch comparison skipped (pip install torch to add it)");
  } else {
    console.log("");
    const run = Bun.spawnSync(["python3", script, "--max", String(maxCount), "--threads", String(threads)], {
      stdout: "inherit",
      stderr: "inherit",
    });
    if (run.exitCode !== 0) console.log(`compare_torch_unscale.py failed with exit code ${run.exitCode}`);
  }
}
