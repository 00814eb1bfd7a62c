/**
 * Cast throughput: GB/s (bytes read + bytes written) of native casts at 1K to 64M elements, beside
 * a plain copy that moves the same bytes (reads and writes half of the cast's bytes read + written;
 * the memory-bandwidth limit: the faster of TypedArray.set and the library's own threaded memcpy,
 * so the limit uses as many threads as the cast), the TypeScript reference and, for float16, Bun's
 * Float16Array.
 *
 *   bun bench/cast_bench.ts [--max 67108864] [--budget-ms 250]
 */

import { castInto, type DtypeName, dtypeInfo, type StorageArray } from "../src/mod.ts";
import { referenceCast } from "../src/_numerics.ts";
import { allocateStorage } from "../src/dtype.ts";
import { countLabel, flag, formatTable, gbPerSecond, medianNs } from "./_harness.ts";

const maxCount = Number(flag("max", String(1 << 26)));
const budgetMs = Number(flag("budget-ms", "250"));
const referenceMax = 1 << 20;
const counts = [1 << 10, 1 << 16, 1 << 20, 1 << 22, 1 << 24, 1 << 26].filter((c) => c <= maxCount);

interface Case {
  readonly name: string;
  readonly from: DtypeName;
  readonly to: DtypeName;
  readonly stochastic?: boolean;
}

const CASES: readonly Case[] = [
  { name: "f32->bf16", from: "float32", to: "bfloat16" },
  { name: "f32->bf16 SR", from: "float32", to: "bfloat16", stochastic: true },
  { name: "bf16->f32", from: "bfloat16", to: "float32" },
  { name: "f32->f16", from: "float32", to: "float16" },
  { name: "f16->f32", from: "float16", to: "float32" },
  { name: "f32->e4m3", from: "float32", to: "float8_e4m3fn" },
  { name: "f32->e5m2", from: "float32", to: "float8_e5m2" },
];

function filled(dtype: DtypeName, count: number): StorageArray {
  const values = new Float32Array(count);
  for (let i = 0; i < count; i++) values[i] = Math.sin(i) * 300;
  if (dtype === "float32") return values;
  return castInto(values, allocateStorage(dtype, count), "float32", dtype);
}

const rows: string[][] = [];
for (const count of counts) {
  const sources = new Map<DtypeName, StorageArray>();
  for (const c of CASES) if (!sources.has(c.from)) sources.set(c.from, filled(c.from, count));
  for (const c of CASES) {
    const source = sources.get(c.from)!;
    const target = allocateStorage(c.to, count);
    const readBytes = count * (dtypeInfo(c.from).bits / 8);
    const bytes = readBytes + count * (dtypeInfo(c.to).bits / 8);
    const options = c.stochastic ? { rounding: "stochastic" as const, seed: 1 } : {};
    const nativeNs = await medianNs(() => castInto(source, target, c.from, c.to, options), budgetMs);
    // The limit: a plain copy of the source's bytes (read + write the same number of bytes).
    // The limit moves the same bytes as the cast: it reads and writes (read + written) / 2 bytes.
    const copyBytes = bytes / 2;
    const copySource = new Uint8Array(copyBytes).fill(1);
    const copyTarget = new Uint8Array(copyBytes).fill(2);
    const setNs = await medianNs(() => copyTarget.set(copySource), budgetMs);
    // A same-dtype cast is a memcpy split across the same worker threads as the casts.
    const threadedNs = await medianNs(() => castInto(copySource, copyTarget, "e4m3", "e4m3"), budgetMs);
    const copyGb = gbPerSecond(bytes, Math.min(setNs, threadedNs));
    let referenceGb = "-";
    if (count <= referenceMax) {
      const raw = source instanceof Float32Array ? new Uint32Array(source.buffer) : source;
      const out = target instanceof Float32Array ? new Uint32Array(target.buffer) : target;
      const ns = await medianNs(() => referenceCast(raw, out, c.from, c.to, { stochastic: c.stochastic }), budgetMs);
      referenceGb = gbPerSecond(bytes, ns).toFixed(2);
    }
    let f16Gb = "-";
    if (c.name === "f32->f16") {
      const half = new Float16Array(count);
      f16Gb = gbPerSecond(bytes, await medianNs(() => half.set(source as Float32Array), budgetMs)).toFixed(2);
    }
    const nativeGb = gbPerSecond(bytes, nativeNs);
    rows.push([
      c.name,
      countLabel(count),
      nativeGb.toFixed(2),
      copyGb.toFixed(2),
      `${((100 * nativeGb) / copyGb).toFixed(0)}%`,
      referenceGb,
      f16Gb,
    ]);
  }
}

console.log(`cast throughput, GB/s of bytes read + written (${navigator.hardwareConcurrency} CPUs)\n`);
console.log(
  formatTable(["cast", "elements", "native", "copy (limit)", "native/copy", "TS reference", "Float16Array"], rows),
);
