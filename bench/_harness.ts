/**
 * Shared benchmark helpers: mitata's measure() for timing, and plain-text tables.
 *
 * @module
 */

import { measure } from "mitata";

/** Median nanoseconds per call of `fn`, measured by mitata for about `budgetMs` of CPU time. */
export async function medianNs(fn: () => unknown, budgetMs = 250): Promise<number> {
  const stats = await measure(fn, { min_cpu_time: budgetMs * 1e6, min_samples: 5, max_samples: 10_000 });
  return (stats as { p50?: number; avg: number }).p50 ?? stats.avg;
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
