/**
 * The scalar TypeScript reference for every conversion (shared/REFERENCE.md), written to mirror
 * zig/src/numerics.zig line for line. Bits are read and written as unsigned integers: reading a
 * Float32Array element as a number can change a NaN's payload, so nothing here does.
 *
 * @module
 */

import { type DtypeName, dtypeInfo } from "./dtype.ts";

/** Rounding threshold source for stochastic rounding: the element's hash. */
export type Threshold = number | null;

const F32_BITS = new Uint32Array(1);
const F32_VIEW = new Float32Array(F32_BITS.buffer);

/** float32 bits of a JavaScript number (rounded to float32 first). */
export function f32Bits(value: number): number {
  F32_VIEW[0] = value;
  return F32_BITS[0]!;
}

/** The float32 value of some bits, as a number (NaN payloads are not kept by numbers). */
export function f32FromBits(bits: number): number {
  F32_BITS[0] = bits >>> 0;
  return F32_VIEW[0]!;
}

/** float32 bits -> bfloat16 bits, nearest even; NaN -> sign | 0x7FC0. */
export function f32ToBf16(u: number): number {
  u >>>= 0;
  if ((u & 0x7fffffff) >>> 0 > 0x7f800000) return ((u >>> 16) & 0x8000) | 0x7fc0;
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}

/** float32 bits -> bfloat16 bits with stochastic rounding against `threshold`'s low 16 bits. */
export function f32ToBf16Stochastic(u: number, threshold: number): number {
  u >>>= 0;
  if ((u & 0x7fffffff) >>> 0 >= 0x7f800000) return f32ToBf16(u);
  const up = (u & 0xffff) > (threshold & 0xffff);
  return ((u >>> 16) + (up ? 1 : 0)) & 0xffff;
}

/** bfloat16 bits -> float32 bits (exact). */
export function bf16ToF32(h: number): number {
  return (h << 16) >>> 0;
}

/** Round value >> shift to nearest even (shift in [1, 31]; >= 32 gives 0). */
function shiftRoundNearest(value: number, shift: number): number {
  if (shift > 31) return 0;
  const halfMinusOne = 2 ** (shift - 1) - 1;
  const lsb = Math.floor(value / 2 ** shift) & 1;
  return Math.floor((value + halfMinusOne + lsb) / 2 ** shift);
}

/** Round value >> shift up when the dropped bits exceed threshold's (masked alike), else truncate. */
function shiftRoundStochastic(value: number, shift: number, threshold: number): number {
  if (shift > 31) return 0;
  const unit = 2 ** shift;
  const up = value % unit > (threshold >>> 0) % unit;
  return Math.floor(value / unit) + (up ? 1 : 0);
}

interface Narrow {
  readonly bias: number;
  readonly mbits: number;
}

const F16: Narrow = { bias: 15, mbits: 10 };
const E4M3: Narrow = { bias: 7, mbits: 3 };
const E5M2: Narrow = { bias: 15, mbits: 2 };

/** Magnitude bits of |x| (a = float32 magnitude bits, not NaN) in a narrow format, nearest even. */
function narrowAbsNearest(f: Narrow, a: number): number {
  const drop = 23 - f.mbits;
  const minNormalBits = (127 - f.bias + 1) * 2 ** 23;
  if (a >= minNormalBits) {
    const rebased = a - (127 - f.bias) * 2 ** 23;
    const lsb = Math.floor(a / 2 ** drop) & 1;
    return Math.floor((rebased + 2 ** (drop - 1) - 1 + lsb) / 2 ** drop);
  }
  const exponent = Math.floor(a / 2 ** 23);
  const significand = (a % 2 ** 23) + 2 ** 23;
  const base = 151 - f.bias - f.mbits;
  return shiftRoundNearest(significand, base - Math.min(exponent, base - 1));
}

/** Magnitude bits of |x| in a narrow format, stochastic rounding against `threshold`. */
function narrowAbsStochastic(f: Narrow, a: number, threshold: number): number {
  const drop = 23 - f.mbits;
  const minNormalBits = (127 - f.bias + 1) * 2 ** 23;
  if (a >= minNormalBits) {
    return shiftRoundStochastic(a - (127 - f.bias) * 2 ** 23, drop, threshold);
  }
  const exponent = Math.floor(a / 2 ** 23);
  const significand = (a % 2 ** 23) + (exponent !== 0 ? 2 ** 23 : 0);
  const base = 151 - f.bias - f.mbits;
  return shiftRoundStochastic(significand, base - Math.min(Math.max(exponent, 1), base - 1), threshold);
}

/** float32 bits -> float16 bits; nearest even, or stochastic when `threshold` is a number. */
export function f32ToF16(u: number, threshold: Threshold = null): number {
  u >>>= 0;
  const sign = (u >>> 16) & 0x8000;
  const a = (u & 0x7fffffff) >>> 0;
  if (a > 0x7f800000) return sign | 0x7e00;
  let magnitude: number;
  if (threshold === null) magnitude = narrowAbsNearest(F16, a);
  else magnitude = a >= 0x47800000 ? 0x7c00 : narrowAbsStochastic(F16, a, threshold);
  return sign | Math.min(magnitude, 0x7c00);
}

/** float16 bits -> float32 bits: exact; NaN payload kept with the quiet bit set. */
export function f16ToF32(h: number): number {
  const sign = (h & 0x8000) << 16;
  const exponent = (h >>> 10) & 0x1f;
  const mantissa = h & 0x3ff;
  let magnitude: number;
  if (exponent === 0) magnitude = f32Bits(mantissa * 2 ** -24);
  else if (exponent === 0x1f) magnitude = 0x7f800000 | (mantissa << 13) | (mantissa !== 0 ? 0x400000 : 0);
  else magnitude = ((exponent + 112) << 23) | (mantissa << 13);
  return (sign | magnitude) >>> 0;
}

/** float32 bits -> float8_e4m3fn bits (no inf: overflow -> NaN 0x7F, or 0x7E when saturating). */
export function f32ToE4m3(u: number, saturate = false): number {
  u >>>= 0;
  const sign = (u >>> 24) & 0x80;
  const a = (u & 0x7fffffff) >>> 0;
  if (a > 0x7f800000) return sign | 0x7f;
  const magnitude = narrowAbsNearest(E4M3, a);
  return sign | (magnitude > 0x7e ? (saturate ? 0x7e : 0x7f) : magnitude);
}

/** float32 bits -> float8_e5m2 bits (overflow -> inf 0x7C, or 0x7B when saturating). */
export function f32ToE5m2(u: number, saturate = false): number {
  u >>>= 0;
  const sign = (u >>> 24) & 0x80;
  const a = (u & 0x7fffffff) >>> 0;
  if (a > 0x7f800000) return sign | 0x7f;
  return sign | Math.min(narrowAbsNearest(E5M2, a), saturate ? 0x7b : 0x7c);
}

/** float8_e4m3fn bits -> float32 bits (exact; NaN -> sign | 0x7FC00000). */
export function e4m3ToF32(b: number): number {
  const sign = (b & 0x80) << 24;
  if ((b & 0x7f) === 0x7f) return (sign | 0x7fc00000) >>> 0;
  const exponent = (b >>> 3) & 0xf;
  const mantissa = b & 7;
  const magnitude = exponent === 0 ? f32Bits(mantissa * 2 ** -9) : ((exponent + 120) << 23) | (mantissa << 20);
  return (sign | magnitude) >>> 0;
}

/** float8_e5m2 bits -> float32 bits: e5m2 is the top byte of a float16. */
export function e5m2ToF32(b: number): number {
  return f16ToF32(b << 8);
}

/** SquirrelNoise5, the counter-based hash behind stochastic rounding (as llm.c uses). */
export function squirrel5(position: number, seed: number): number {
  let bits = Math.imul(position >>> 0, 0xd2a80a3f) >>> 0;
  bits = (bits + (seed >>> 0)) >>> 0;
  bits = (bits ^ (bits >>> 9)) >>> 0;
  bits = (bits + 0xa884f197) >>> 0;
  bits = (bits ^ (bits >>> 11)) >>> 0;
  bits = Math.imul(bits, 0x6c736f4b) >>> 0;
  bits = (bits ^ (bits >>> 13)) >>> 0;
  bits = (bits + 0xb79f3abb) >>> 0;
  bits = (bits ^ (bits >>> 15)) >>> 0;
  bits = Math.imul(bits, 0x1b56c4f5) >>> 0;
  bits = (bits ^ (bits >>> 17)) >>> 0;
  return bits;
}

/** The stochastic-rounding threshold of element `index` under `seed` (see numerics.zig). */
export function thresholdAt(seed: number, index: number): number {
  const low = index >>> 0;
  const high = Math.floor(index / 2 ** 32) >>> 0;
  const seedMixed = (seed + Math.imul(high, 0x9e3779b9)) >>> 0;
  return squirrel5(low, seedMixed);
}

/** Any dtype's bits -> float32 bits. */
export function toF32Bits(dtype: DtypeName, bits: number): number {
  switch (dtype) {
    case "float32":
      return bits >>> 0;
    case "float16":
      return f16ToF32(bits);
    case "bfloat16":
      return bf16ToF32(bits);
    case "float8_e4m3fn":
      return e4m3ToF32(bits);
    case "float8_e5m2":
      return e5m2ToF32(bits);
  }
}

/** float32 bits -> any dtype's bits; `threshold` for float16/bfloat16 stochastic rounding. */
export function fromF32Bits(dtype: DtypeName, u: number, threshold: Threshold, saturate: boolean): number {
  switch (dtype) {
    case "float32":
      return u >>> 0;
    case "float16":
      return f32ToF16(u, threshold);
    case "bfloat16":
      return threshold === null ? f32ToBf16(u) : f32ToBf16Stochastic(u, threshold);
    case "float8_e4m3fn":
      return f32ToE4m3(u, saturate);
    case "float8_e5m2":
      return f32ToE5m2(u, saturate);
  }
}

/** Options of the reference cast. */
export interface ReferenceCastOptions {
  readonly stochastic?: boolean;
  readonly saturate?: boolean;
  readonly seed?: number;
}

/**
 * The reference cast over whole arrays of raw bits: what the native kernels must equal bit for bit.
 * Same-dtype casts copy bits unchanged.
 */
export function referenceCast(
  source: ArrayLike<number>,
  target: { [index: number]: number; length: number },
  from: DtypeName,
  to: DtypeName,
  options: ReferenceCastOptions = {},
): void {
  const sourceBits =
    source instanceof Float32Array ? new Uint32Array(source.buffer, source.byteOffset, source.length) : source;
  const targetBits =
    target instanceof Float32Array ? new Uint32Array(target.buffer, target.byteOffset, target.length) : target;
  const stochastic = options.stochastic === true && (to === "float16" || to === "bfloat16");
  const saturate = options.saturate === true;
  const seed = (options.seed ?? 0) >>> 0;
  for (let i = 0; i < sourceBits.length; i++) {
    const bits = sourceBits[i]!;
    if (from === to) {
      targetBits[i] = bits;
      continue;
    }
    const threshold = stochastic ? thresholdAt(seed, i) : null;
    targetBits[i] = fromF32Bits(to, toF32Bits(from, bits), threshold, saturate);
  }
}

/** Whether float32 bits are inf or NaN. */
export function isNonFiniteBits(u: number): boolean {
  return ((u >>> 23) & 0xff) === 0xff;
}

/** The numeric value of a dtype's bits (NaN payloads are lost: compare bits where they matter). */
export function valueOf(dtype: DtypeName, bits: number): number {
  return f32FromBits(toF32Bits(dtype, bits));
}

/** The info record, re-exported for reference users. */
export { dtypeInfo };
