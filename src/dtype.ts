/**
 * The dtype table: every floating-point storage format mixprec knows, its constants, its storage
 * typed array and its code at the native boundary. Precision is data: code that needs a property
 * of a dtype reads it here instead of switching on names.
 *
 * @module
 */

/** Canonical dtype names. */
export type DtypeName = "float32" | "float16" | "bfloat16" | "float8_e4m3fn" | "float8_e5m2";

/** Short aliases accepted wherever a dtype is named. */
export type DtypeAlias = "f32" | "f16" | "bf16" | "e4m3" | "e5m2";

/** A dtype given by its name or an alias. */
export type Dtype = DtypeName | DtypeAlias;

/** The typed array that stores a dtype's raw bits. */
export type StorageArray = Float32Array | Uint16Array | Uint8Array;

/** Constants of a dtype. */
export interface DtypeInfo {
  /** Canonical name. */
  readonly name: DtypeName;
  /** Bits per element. */
  readonly bits: 32 | 16 | 8;
  /** Exponent and explicit mantissa bits. */
  readonly exponentBits: number;
  readonly mantissaBits: number;
  /** Largest finite value. */
  readonly max: number;
  /** Smallest positive normal value. */
  readonly minNormal: number;
  /** Smallest positive subnormal value. */
  readonly minSubnormal: number;
  /** Distance from 1 to the next larger representable value. */
  readonly eps: number;
  /** Whether the format has infinities (float8_e4m3fn does not). */
  readonly hasInfinity: boolean;
  /** Typed-array kind that holds the raw bits: Float32Array for float32, else unsigned bits. */
  readonly storage: "Float32Array" | "Uint16Array" | "Uint8Array";
  /** Code at the native boundary (zig/src/numerics.zig `Dtype`). */
  readonly code: number;
}

const TABLE: Readonly<Record<DtypeName, DtypeInfo>> = Object.freeze({
  float32: {
    name: "float32",
    bits: 32,
    exponentBits: 8,
    mantissaBits: 23,
    max: 3.4028234663852886e38,
    minNormal: 2 ** -126,
    minSubnormal: 2 ** -149,
    eps: 2 ** -23,
    hasInfinity: true,
    storage: "Float32Array",
    code: 0,
  },
  float16: {
    name: "float16",
    bits: 16,
    exponentBits: 5,
    mantissaBits: 10,
    max: 65504,
    minNormal: 2 ** -14,
    minSubnormal: 2 ** -24,
    eps: 2 ** -10,
    hasInfinity: true,
    storage: "Uint16Array",
    code: 1,
  },
  bfloat16: {
    name: "bfloat16",
    bits: 16,
    exponentBits: 8,
    mantissaBits: 7,
    max: 3.3895313892515355e38,
    minNormal: 2 ** -126,
    minSubnormal: 2 ** -133,
    eps: 2 ** -7,
    hasInfinity: true,
    storage: "Uint16Array",
    code: 2,
  },
  float8_e4m3fn: {
    name: "float8_e4m3fn",
    bits: 8,
    exponentBits: 4,
    mantissaBits: 3,
    max: 448,
    minNormal: 2 ** -6,
    minSubnormal: 2 ** -9,
    eps: 2 ** -3,
    hasInfinity: false,
    storage: "Uint8Array",
    code: 3,
  },
  float8_e5m2: {
    name: "float8_e5m2",
    bits: 8,
    exponentBits: 5,
    mantissaBits: 2,
    max: 57344,
    minNormal: 2 ** -14,
    minSubnormal: 2 ** -16,
    eps: 2 ** -2,
    hasInfinity: true,
    storage: "Uint8Array",
    code: 4,
  },
});

const ALIASES: Readonly<Record<DtypeAlias, DtypeName>> = Object.freeze({
  f32: "float32",
  f16: "float16",
  bf16: "bfloat16",
  e4m3: "float8_e4m3fn",
  e5m2: "float8_e5m2",
});

/** Every canonical dtype name, in native-code order. */
export const DTYPE_NAMES: readonly DtypeName[] = Object.freeze(Object.keys(TABLE) as DtypeName[]);

/**
 * Resolves a dtype name or alias to its canonical name.
 *
 * @param dtype A name such as "bfloat16" or an alias such as "bf16".
 * @returns The canonical name.
 * @throws {TypeError} When `dtype` is not a known dtype.
 * @example
 * ```ts
 * import { canonicalDtype } from "./dtype.ts";
 * if (canonicalDtype("bf16") !== "bfloat16") throw new Error("alias not resolved");
 * ```
 */
export function canonicalDtype(dtype: unknown): DtypeName {
  if (typeof dtype === "string") {
    if (Object.hasOwn(TABLE, dtype)) return dtype as DtypeName;
    if (Object.hasOwn(ALIASES, dtype)) return ALIASES[dtype as DtypeAlias];
  }
  const known = [...DTYPE_NAMES, ...Object.keys(ALIASES)].join(", ");
  throw new TypeError(`Unknown dtype ${JSON.stringify(dtype) ?? String(dtype)}: use one of ${known}`);
}

/**
 * The constants of a dtype.
 *
 * @param dtype A dtype name or alias.
 * @returns Its bits, max, minNormal, minSubnormal, eps, storage kind and native code.
 * @example
 * ```ts
 * import { dtypeInfo } from "./dtype.ts";
 * if (dtypeInfo("f16").max !== 65504) throw new Error("wrong float16 max");
 * ```
 */
export function dtypeInfo(dtype: Dtype): DtypeInfo {
  return TABLE[canonicalDtype(dtype)];
}

/**
 * Allocates a zeroed storage array of `length` elements for a dtype.
 *
 * @param dtype A dtype name or alias.
 * @param length Element count.
 * @returns A Float32Array, Uint16Array or Uint8Array.
 */
export function allocateStorage(dtype: Dtype, length: number): StorageArray {
  const storage = dtypeInfo(dtype).storage;
  if (storage === "Float32Array") return new Float32Array(length);
  if (storage === "Uint16Array") return new Uint16Array(length);
  return new Uint8Array(length);
}

/** Whether `array` is the storage kind of `dtype` (a Float32Array for float32, and so on). */
export function isStorageOf(array: unknown, dtype: DtypeName): array is StorageArray {
  const storage = TABLE[dtype].storage;
  if (storage === "Float32Array") return array instanceof Float32Array;
  if (storage === "Uint16Array") return array instanceof Uint16Array;
  return array instanceof Uint8Array;
}

/** A short description of a value's kind for error messages, e.g. "Int32Array" or "string". */
export function describeKind(value: unknown): string {
  if (value === null) return "null";
  if (ArrayBuffer.isView(value)) return value.constructor.name;
  if (Array.isArray(value)) return "Array";
  return typeof value;
}
