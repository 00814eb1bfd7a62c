/**
 * Checkpoint I/O throughput in GB/s of file bytes, on a float16 safetensors file of `--mb`
 * megabytes (8 tensors) in the temporary directory, page cache warm, beside the limits: reading the
 * same bytes (Bun.file().arrayBuffer(), readSync into a buffer, touching a mapping) and writing
 * them (writeSync + fsync). Measured: loadSafetensors (map + one copy into Tensor storage),
 * openSafetensors views (zero-copy), saveSafetensors, convertCheckpoint float16 -> bfloat16 (read,
 * cast, statistics, write, fsync, rename), and the statistics alone, native against the TypeScript
 * reference. Each row is the median of `--repeat` runs. The temporary files are removed at the end.
 *
 *   bun bench/io_bench.ts [--mb 64] [--repeat 3]       (make bench uses --mb 1024)
 */

import { closeSync, fsyncSync, mkdtempSync, openSync, readSync, renameSync, rmSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  castInto,
  convertCheckpoint,
  loadSafetensors,
  openSafetensors,
  saveSafetensors,
  Tensor,
  treeLeaves,
} from "../src/mod.ts";
import { accumulateStatistics, convertChunk, emptyAccumulator } from "../src/io/convert.ts";
import { flag, formatTable, gbPerSecond } from "./_harness.ts";

const megabytes = Number(flag("mb", "64"));
const repeat = Number(flag("repeat", "3"));
const directory = mkdtempSync(join(tmpdir(), "mixprec-io-bench-"));
const cleanup = () => rmSync(directory, { recursive: true, force: true });
process.on("SIGINT", () => {
  cleanup();
  process.exit(130);
});

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)]!;
}

/** Median nanoseconds of `repeat` runs of `fn` (after one warm-up run). */
function timeNs(fn: () => void): number {
  fn();
  const runs: number[] = [];
  for (let i = 0; i < repeat; i++) {
    const start = Bun.nanoseconds();
    fn();
    runs.push(Bun.nanoseconds() - start);
  }
  return median(runs);
}

async function timeNsAsync(fn: () => Promise<void>): Promise<number> {
  await fn();
  const runs: number[] = [];
  for (let i = 0; i < repeat; i++) {
    const start = Bun.nanoseconds();
    await fn();
    runs.push(Bun.nanoseconds() - start);
  }
  return median(runs);
}

try {
  // A float16 checkpoint: 8 tensors of finite values with every exponent (bits hashed, exponent < 31).
  const tensorCount = 8;
  const elements = Math.floor((megabytes * (1 << 20)) / 2 / tensorCount);
  const params: Record<string, Tensor> = {};
  for (let t = 0; t < tensorCount; t++) {
    const tensor = new Tensor("float16", [elements], "cpu");
    const bits = tensor.data as Uint16Array;
    for (let i = 0; i < elements; i++) bits[i] = Math.imul(i + t * elements, 40503) & 0xfbff;
    params[`layers.${t}.weight`] = tensor;
  }
  const input = join(directory, "model_f16.safetensors");
  const output = join(directory, "model_bf16.safetensors");
  saveSafetensors(input, { layers: Object.values(params).map((weight) => ({ weight })) });
  const fileBytes = Bun.file(input).size;
  const rows: string[][] = [];
  const add = (name: string, ns: number, limit: number | null, note: string) => {
    const gb = gbPerSecond(fileBytes, ns);
    rows.push([name, gb.toFixed(2), limit === null ? "-" : `${((100 * gb) / limit).toFixed(0)}%`, note]);
    return gb;
  };

  // Limits: reading the same bytes.
  const arrayBufferGb = add(
    "read: Bun.file().arrayBuffer()",
    await timeNsAsync(async () => {
      await Bun.file(input).arrayBuffer();
    }),
    null,
    "limit (allocates, copies from the page cache)",
  );
  const buffer = new Uint8Array(fileBytes);
  const readGb = add(
    "read: readSync into a buffer",
    timeNs(() => {
      const fd = openSync(input, "r");
      let offset = 0;
      while (offset < fileBytes) offset += readSync(fd, buffer, offset, fileBytes - offset, offset);
      closeSync(fd);
    }),
    null,
    "memory copy bound (buffer reused)",
  );
  const freshGb = add(
    "read: readSync into a new buffer",
    timeNs(() => {
      const fresh = new Uint8Array(new ArrayBuffer(fileBytes));
      const fd = openSync(input, "r");
      let offset = 0;
      while (offset < fileBytes) offset += readSync(fd, fresh, offset, fileBytes - offset, offset);
      closeSync(fd);
    }),
    null,
    "limit for a load (new memory: page faults)",
  );
  // A load fills new memory, so its limit is a read into new memory, not into a warm buffer.
  const readLimit = Math.max(arrayBufferGb, freshGb);
  add(
    "read: Bun.mmap + touch every page",
    timeNs(() => {
      const map = Bun.mmap(input, { shared: false });
      let sum = 0;
      for (let i = 0; i < map.length; i += 4096) sum += map[i]!;
      if (sum < 0) throw new Error("unreachable");
    }),
    readLimit,
    "mapping, no copy",
  );

  // Loading.
  add(
    "loadSafetensors (mmap + copy into Tensors)",
    timeNs(() => {
      const { tree } = loadSafetensors(input);
      for (const leaf of treeLeaves(tree)) if (leaf instanceof Tensor) leaf.dispose();
    }),
    readLimit,
    "vs the faster read into new memory",
  );
  add(
    "openSafetensors views + touch pages",
    timeNs(() => {
      const file = openSafetensors(input);
      let sum = 0;
      for (const name of file.names) {
        const view = file.raw(name);
        for (let i = 0; i < view.length; i += 4096) sum += view[i]!;
      }
      if (sum < 0) throw new Error("unreachable");
    }),
    readLimit,
    "zero-copy",
  );

  // Writing: the limit is writing the same bytes and fsyncing them.
  const scratch = join(directory, "scratch.bin");
  const writeGb = add(
    "write: writeSync + fsync",
    timeNs(() => {
      const fd = openSync(scratch, "w");
      let offset = 0;
      while (offset < fileBytes) offset += writeSync(fd, buffer, offset, fileBytes - offset);
      fsyncSync(fd);
      closeSync(fd);
    }),
    null,
    "limit",
  );
  let round = 0;
  const atomicGb = add(
    "write: new file + fsync + rename over",
    timeNs(() => {
      const temporary = join(directory, `scratch-${round++}.bin`);
      const fd = openSync(temporary, "w");
      let offset = 0;
      while (offset < fileBytes) offset += writeSync(fd, buffer, offset, fileBytes - offset);
      fsyncSync(fd);
      closeSync(fd);
      renameSync(temporary, join(directory, "atomic.bin"));
    }),
    writeGb,
    "limit for an atomic save",
  );
  add(
    "saveSafetensors (temp + fsync + rename)",
    timeNs(() => saveSafetensors(join(directory, "saved.safetensors"), params)),
    atomicGb,
    "vs new file + fsync + rename",
  );
  const copyGb = add(
    "copy: read + write + fsync",
    timeNs(() => {
      const map = Bun.mmap(input, { shared: false });
      const fd = openSync(scratch, "w");
      let offset = 0;
      while (offset < fileBytes) offset += writeSync(fd, map, offset, fileBytes - offset);
      fsyncSync(fd);
      closeSync(fd);
    }),
    null,
    "limit for a conversion",
  );
  let report: ReturnType<typeof convertCheckpoint> | undefined;
  // Anonymous (non-file) resident memory: mapped file pages do not count, chunk buffers do.
  const rssAnonBytes = () => {
    const match = /RssAnon:\s+(\d+) kB/.exec(require("node:fs").readFileSync("/proc/self/status", "utf8"));
    return match ? Number(match[1]) * 1024 : Number.NaN;
  };
  Bun.gc(true);
  const anonBefore = rssAnonBytes();
  convertCheckpoint(input, output, { to: "bfloat16" });
  const anonGrowth = rssAnonBytes() - anonBefore;
  add(
    "convertCheckpoint f16 -> bf16",
    timeNs(() => {
      report = convertCheckpoint(input, output, { to: "bfloat16" });
    }),
    copyGb,
    "vs copy (same bytes in and out)",
  );

  // The statistics alone on one 64 MB slice: the fused native kernel against the TypeScript reference.
  const sliceElements = Math.min(elements, 1 << 25);
  const source = params["layers.0.weight"]!.data.subarray(0, sliceElements) as Uint16Array;
  const sourceBytes = new Uint8Array(source.buffer, source.byteOffset, source.byteLength);
  const target = new Uint8Array(sliceElements * 2);
  const nativeNs = timeNs(() =>
    convertChunk(sourceBytes, target, sliceElements, "float16", "bfloat16", emptyAccumulator()),
  );
  const wideSource = castInto(source, new Float32Array(sliceElements), "f16", "f32");
  const wideResult = castInto(new Uint16Array(target.buffer), new Float32Array(sliceElements), "bf16", "f32");
  const referenceNs = timeNs(() =>
    accumulateStatistics(emptyAccumulator(), wideSource, wideResult, sliceElements, 2 ** -126),
  );
  const statsRows = [
    ["native cast + statistics (fused)", gbPerSecond(sliceElements * 2, nativeNs).toFixed(2)],
    ["TypeScript statistics only (reference)", gbPerSecond(sliceElements * 2, referenceNs).toFixed(2)],
  ];

  console.log(
    `checkpoint I/O, GB/s of file bytes: ${(fileBytes / 1e9).toFixed(2)} GB float16 file, ${tensorCount} tensors, page cache warm, median of ${repeat} (${navigator.hardwareConcurrency} CPUs)\n`,
  );
  console.log(formatTable(["operation", "GB/s", "of limit", "note"], rows));
  console.log(`\nconversion statistics on ${(sliceElements * 2) / (1 << 20)} MB of float16 (GB/s of source bytes)\n`);
  console.log(formatTable(["statistics", "GB/s"], statsRows));
  console.log(
    `\nconvertCheckpoint memory: anonymous RSS grew by ${(anonGrowth / (1 << 20)).toFixed(1)} MB while converting the ${(fileBytes / (1 << 20)).toFixed(0)} MB file (chunk buffers; the mapped input is page cache)`,
  );
  if (report !== undefined) {
    const total = report.total;
    console.log(
      `\nf16 -> bf16 report: ${total.elements} elements, overflow ${total.overflow}, underflow ${total.underflow}, subnormal ${total.subnormal}, max rel err ${total.maxRelativeError.toExponential(3)}, mean ${total.meanRelativeError.toExponential(3)}`,
    );
  }
  for (const t of Object.values(params)) t.dispose();
} finally {
  cleanup();
}
