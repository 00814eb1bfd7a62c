/**
 * Array-level casts between every pair of dtypes, on the CPU through the native kernels. Arrays hold
 * raw bits: Float32Array for float32, Uint16Array for float16 and bfloat16, Uint8Array for fp8.
 *
 * @module
 */

import { CastFlag, castArrays } from "./backend/cpu/arrays.ts";
import {
  allocateStorage,
  canonicalDtype,
  describeKind,
  type Dtype,
  type DtypeName,
  dtypeInfo,
  isStorageOf,
  type StorageArray,
} from "./dtype.ts";

/** Options of {@linkcode cast} and {@linkcode castInto}. */
export interface CastOptions {
  /** "nearest" (ties to even, the default) or "stochastic" (float16 and bfloat16 targets only). */
  readonly rounding?: "nearest" | "stochastic";
  /** Seed of the stochastic-rounding hash: an integer in [0, 2^32). Default 0. */
  readonly seed?: number;
  /** Clamp finite overflow and infinities to the largest finite value (fp8 targets only). */
  readonly saturate?: boolean;
}

interface ResolvedCast {
  readonly from: DtypeName;
  readonly to: DtypeName;
  readonly flags: number;
  readonly seed: number;
}

function resolve(source: unknown, from: Dtype, to: Dtype, options: CastOptions): ResolvedCast {
  const fromName = canonicalDtype(from);
  const toName = canonicalDtype(to);
  if (!isStorageOf(source, fromName)) {
    throw new TypeError(
      `Cannot cast a ${describeKind(source)} as ${fromName}: pass a ${dtypeInfo(fromName).storage} of ${fromName} bits`,
    );
  }
  if (typeof options !== "object" || options === null) {
    throw new TypeError(`Cast options must be an object, got ${describeKind(options)}`);
  }
  const rounding = options.rounding ?? "nearest";
  if (rounding !== "nearest" && rounding !== "stochastic") {
    throw new RangeError(`Unknown rounding ${JSON.stringify(rounding)}: use "nearest" or "stochastic"`);
  }
  if (rounding === "stochastic" && toName !== "float16" && toName !== "bfloat16") {
    throw new RangeError(
      `Stochastic rounding applies to float16 and bfloat16 targets, not ${toName}: use rounding "nearest"`,
    );
  }
  const seed = options.seed ?? 0;
  if (!Number.isInteger(seed) || seed < 0 || seed >= 2 ** 32) {
    throw new RangeError(`Seed ${seed} is not an integer in [0, 2^32): pass e.g. seed: 42`);
  }
  const saturate = options.saturate ?? false;
  if (typeof saturate !== "boolean") throw new TypeError(`saturate must be a boolean, got ${describeKind(saturate)}`);
  if (saturate && toName !== "float8_e4m3fn" && toName !== "float8_e5m2") {
    throw new RangeError(`saturate applies to fp8 targets, not ${toName}: drop the option`);
  }
  const flags = (rounding === "stochastic" ? CastFlag.stochastic : 0) | (saturate ? CastFlag.saturate : 0);
  return { from: fromName, to: toName, flags, seed };
}

/**
 * Validates cast options as {@linkcode cast} does and returns the native flags and seed, for casts
 * that run elsewhere (the CUDA kernel of a device tensor's `to(dtype)`).
 * @internal
 */
export function castFlags(from: Dtype, to: Dtype, options: CastOptions): { flags: number; seed: number } {
  const resolved = resolve(allocateStorage(canonicalDtype(from), 0), from, to, options);
  return { flags: resolved.flags, seed: resolved.seed };
}

function overlaps(a: ArrayBufferView, b: ArrayBufferView): boolean {
  if (a.buffer !== b.buffer) return false;
  return a.byteOffset < b.byteOffset + b.byteLength && b.byteOffset < a.byteOffset + a.byteLength;
}

function run(source: StorageArray, target: StorageArray, count: number, resolved: ResolvedCast): void {
  castArrays(
    source,
    target,
    count,
    dtypeInfo(resolved.from).code,
    dtypeInfo(resolved.to).code,
    resolved.flags,
    resolved.seed,
    `cast(${resolved.from} -> ${resolved.to})`,
  );
}

/**
 * Casts an array of `from` bits to a new array of `to` bits, exactly as shared/REFERENCE.md says
 * (nearest-even by default; NaN, inf, -0 and subnormals kept; fp8 non-saturating unless asked).
 *
 * @param source A Float32Array (float32), Uint16Array (float16, bfloat16) or Uint8Array (fp8).
 * @param from The source dtype (name or alias).
 * @param to The target dtype.
 * @param options Rounding ("nearest" | "stochastic"), seed, saturate.
 * @returns A new array of the target's storage kind with the same length.
 * @example
 * ```ts
 * import { cast } from "./cast.ts";
 * const bits = cast(new Float32Array([1, -0, Infinity]), "float32", "bf16") as Uint16Array;
 * if (bits[0] !== 0x3f80 || bits[1] !== 0x8000 || bits[2] !== 0x7f80) throw new Error("wrong bits");
 * ```
 */
export function cast(source: StorageArray, from: Dtype, to: Dtype, options: CastOptions = {}): StorageArray {
  const resolved = resolve(source, from, to, options);
  const target = allocateStorage(resolved.to, source.length);
  run(source, target, source.length, resolved);
  return target;
}

/**
 * Casts `source` into the first `source.length` elements of `target`, which the caller owns.
 * Nothing is written when an argument is rejected.
 *
 * @param source The source bits (see {@linkcode cast}).
 * @param target An array of the target's storage kind, at least as long as `source`, not
 *   overlapping it.
 * @param from The source dtype.
 * @param to The target dtype.
 * @param options Rounding, seed, saturate.
 * @returns `target`.
 * @example
 * ```ts
 * import { castInto } from "./cast.ts";
 * const target = new Uint16Array(2);
 * castInto(new Float32Array([65504, 1e6]), target, "f32", "f16");
 * if (target[0] !== 0x7bff || target[1] !== 0x7c00) throw new Error("wrong bits");
 * ```
 */
export function castInto<T extends StorageArray>(
  source: StorageArray,
  target: T,
  from: Dtype,
  to: Dtype,
  options: CastOptions = {},
): T {
  const resolved = resolve(source, from, to, options);
  if (!isStorageOf(target, resolved.to)) {
    throw new TypeError(
      `Cannot write ${resolved.to} into a ${describeKind(target)}: pass a ${dtypeInfo(resolved.to).storage}`,
    );
  }
  if (target.length < source.length) {
    throw new RangeError(
      `Target holds ${target.length} elements but the source has ${source.length}: pass a target of at least ${source.length}`,
    );
  }
  if (overlaps(source, target)) {
    throw new RangeError("Source and target overlap in the same buffer: cast into a separate array");
  }
  run(source, target, source.length, resolved);
  return target;
}
