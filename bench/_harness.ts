/**
 * Shared benchmark helpers: mitata's measure() for timing, and plain-text tables.
 *
 * @module
 */

import { ptr } from "bun:ffi";
import { measure } from "mitata";
import { check, native } from "../src/_ffi.ts";

/**
 * Median nanoseconds per call of `fn`, measured by mitata for about `budgetMs` of CPU time, or,
 * when `samples` is given, over exactly that many calls (after mitata's warm-up call): short runs.
 */
export async function medianNs(fn: () => unknown, budgetMs = 250, samples?: number): Promise<number> {
  const options =
    samples === undefined
      ? { min_cpu_time: budgetMs * 1e6, min_samples: 5, max_samples: 10_000 }
      : { min_cpu_time: 0, min_samples: samples, max_samples: samples };
  const stats = await measure(fn, options);
  return (stats as { p50?: number; avg: number }).p50 ?? stats.avg;
}

/**
 * The float32 FMA peak in GFLOP/s on `threads` threads (mp_peak_fma: independent vector FMA chains
 * on every thread): the best of `runs` runs of about 10 ms each (short runs, so a busy machine's
 * quiet moments count). The limit matmul is measured against.
 */
export function peakFmaGflops(threads: number, runs = 40): number {
  const flops = new Float64Array(1);
  const checksum = new Float32Array(1);
  let best = 0;
  for (let run = 0; run < runs; run++) {
    const start = performance.now();
    check(native().mp_peak_fma(2_000_000, threads, ptr(flops), ptr(checksum)), "mp_peak_fma");
    const seconds = (performance.now() - start) / 1000;
    best = Math.max(best, flops[0]! / seconds / 1e9);
  }
  return best;
}

/** GB/s for `bytes` moved in `ns` nanoseconds. */
export function gbPerSecond(bytes: number, ns: number): number {
  return bytes / ns;
}

/** Formats a row-major table with right-aligned columns, as Markdown. */
export function formatTable(headers: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: readonly string[]) => `| ${cells.map((c, i) => c.padStart(widths[i]!)).join(" | ")} |`;
  return [line(headers), `|${widths.map((w) => `${"-".repeat(w + 1)}:`).join("|")}|`, ...rows.map(line)].join("\n");
}

/** A human element count: 1K, 64K, 1M, 64M. */
export function countLabel(count: number): string {
  if (count >= 1 << 20) return `${count / (1 << 20)}M`;
  if (count >= 1 << 10) return `${count / (1 << 10)}K`;
  return String(count);
}

/** Parses `--name value` flags from Bun.argv. */
export function flag(name: string, fallback: string): string {
  const index = Bun.argv.indexOf(`--${name}`);
  return index >= 0 && index + 1 < Bun.argv.length ? Bun.argv[index + 1]! : fallback;
}
