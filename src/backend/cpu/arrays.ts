/**
 * Kernels over host arrays (the microbenchmark surface and checkpoint conversion): casts between
 * typed arrays (zig/src/cpu/cast.zig) and the cast fused with conversion statistics
 * (zig/src/cpu/convert.zig). Callers validate lengths and overlap first.
 *
 * @module
 */

import { ptr } from "bun:ffi";
import { CastFlag, check, native } from "../../_ffi.ts";

export { CastFlag };

/** Casts `count` elements between host arrays by dtype code (see mp_cast for flags). */
export function castArrays(
  source: NodeJS.TypedArray,
  target: NodeJS.TypedArray,
  count: number,
  fromCode: number,
  toCode: number,
  flags: number,
  seed: number,
  what: string,
): void {
  if (count === 0) return;
  check(native().mp_cast(ptr(source), ptr(target), count, fromCode, toCode, flags, seed), what);
}

/**
 * Casts `count` elements and writes the conversion statistics into `stats` (4 u64 counts then two
 * float64 errors: mp_convert_stats' layout).
 */
export function convertArrays(
  source: Uint8Array,
  target: Uint8Array,
  count: number,
  fromCode: number,
  toCode: number,
  stats: ArrayBuffer,
  what: string,
): void {
  if (count === 0) return;
  check(native().mp_convert_stats(ptr(source), ptr(target), count, fromCode, toCode, ptr(stats)), what);
}
