import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import { type GradientRow, tensor, unscaleAndCheck } from "../src/mod.ts";
import { f32Bits, f32FromBits, fromF32Bits, isNonFiniteBits, toF32Bits } from "../src/_numerics.ts";

type GradDtype = "float32" | "float16" | "bfloat16";
const DTYPES: readonly GradDtype[] = ["float32", "float16", "bfloat16"];

/** Exponent field layout per dtype: [mantissa bits, exponent bits]. */
const LAYOUT: Readonly<Record<GradDtype, readonly [number, number]>> = {
  float32: [23, 8],
  float16: [10, 5],
  bfloat16: [7, 8],
};

function compose(dtype: GradDtype, sign: number, exponent: number, mantissa: number): number {
  const [m, e] = LAYOUT[dtype];
  return (((sign << (m + e)) | (exponent << m) | mantissa) >>> 0) as number;
}

/** Finite bit patterns of a dtype: zeros, subnormals, normals up to the largest finite. */
function finiteBits(dtype: GradDtype) {
  const [m, e] = LAYOUT[dtype];
  return fc
    .tuple(
      fc.integer({ min: 0, max: 1 }),
      fc.integer({ min: 0, max: 2 ** e - 2 }),
      fc.integer({ min: 0, max: 2 ** m - 1 }),
    )
    .map(([s, x, f]) => compose(dtype, s, x, f));
}

/** inf, -inf and NaNs with any payload (quiet and signalling) and either sign. */
function nonFiniteBits(dtype: GradDtype) {
  const [m, e] = LAYOUT[dtype];
  const top = 2 ** e - 1;
  return fc.oneof(
    fc.integer({ min: 0, max: 1 }).map((s) => compose(dtype, s, top, 0)),
    fc
      .tuple(fc.integer({ min: 0, max: 1 }), fc.integer({ min: 1, max: 2 ** m - 1 }))
      .map(([s, f]) => compose(dtype, s, top, f)),
  );
}

/** Inverse scales: 1 (check only), powers of two, arbitrary positive float32 values. */
const invScale = fc.oneof(
  fc.constant(1),
  fc.integer({ min: -30, max: 10 }).map((k) => 2 ** k),
  fc.float({ min: Math.fround(2 ** -40), max: Math.fround(2 ** 20), noNaN: true, noDefaultInfinity: true }),
);

/** What the kernel must do, element by element (shared/REFERENCE.md, loss scaling). */
function referenceUnscale(dtype: GradDtype, bits: readonly number[], inv: number): { bits: number[]; found: boolean } {
  let found = false;
  const out = bits.map((b) => {
    const u = toF32Bits(dtype, b);
    if (isNonFiniteBits(u)) found = true;
    if (inv === 1) return b;
    // A NaN times a number is that NaN, quieted, payload and sign kept.
    const product = (u & 0x7fffffff) > 0x7f800000 ? (u | 0x00400000) >>> 0 : f32Bits(f32FromBits(u) * inv);
    return fromF32Bits(dtype, product, null, false);
  });
  return { bits: out, found };
}

function storageOf(dtype: GradDtype, bits: readonly number[]): Float32Array | Uint16Array {
  if (dtype === "float32") return new Float32Array(new Uint32Array(bits).buffer);
  return new Uint16Array(bits);
}

function bitsOf(data: Float32Array | Uint16Array): number[] {
  if (data instanceof Float32Array) return [...new Uint32Array(data.buffer, data.byteOffset, data.length)];
  return [...data];
}

interface Case {
  readonly dtype: GradDtype;
  readonly bits: number[];
}

/**
 * One gradient: finite values with non-finite ones planted first, last, in the scalar tail after
 * the last whole vector, or anywhere.
 */
function gradient(maxLength: number) {
  return fc.constantFrom(...DTYPES).chain((dtype) =>
    fc
      .tuple(
        fc.array(finiteBits(dtype), { maxLength, size: "max" }),
        fc.array(
          fc.tuple(
            fc.oneof(fc.constant("first"), fc.constant("last"), fc.constant("tail"), fc.nat()),
            nonFiniteBits(dtype),
          ),
          { maxLength: 4 },
        ),
      )
      .map(([bits, plants]): Case => {
        const planted = [...bits];
        for (const [where, value] of plants) {
          if (planted.length === 0) break;
          const n = planted.length;
          const index =
            where === "first" ? 0 : where === "last" ? n - 1 : where === "tail" ? n - 1 - ((n % 16) >> 1) : where % n;
          planted[index] = value;
        }
        return { dtype, bits: planted };
      }),
  );
}

describe("unscaleAndCheck()", () => {
  test("finds every inf and NaN and unscales finite values exactly as the reference, over lists of any dtypes", () => {
    fc.assert(
      fc.property(
        fc.array(fc.oneof({ weight: 4, arbitrary: gradient(70) }, { weight: 1, arbitrary: gradient(700) }), {
          maxLength: 8,
        }),
        invScale,
        (cases, inv) => {
          const rows: GradientRow[] = cases.map((c) => ({ dtype: c.dtype, data: storageOf(c.dtype, c.bits) }));
          const found = unscaleAndCheck(rows, inv);
          let expectedFound = false;
          cases.forEach((c, i) => {
            const expected = referenceUnscale(c.dtype, c.bits, inv);
            expectedFound ||= expected.found;
            expect(bitsOf(rows[i]!.data as Float32Array | Uint16Array)).toEqual(expected.bits);
          });
          expect(found).toBe(expectedFound);
        },
      ),
      { numRuns: 400 },
    );
  });

  test("an invScale of 1 leaves every bit untouched, NaN payloads included, and still reports them", () => {
    fc.assert(
      fc.property(
        fc
          .constantFrom(...DTYPES)
          .chain((dtype) =>
            fc.tuple(
              fc.constant(dtype),
              fc.array(fc.oneof(finiteBits(dtype), nonFiniteBits(dtype)), { maxLength: 100, size: "max" }),
            ),
          ),
        ([dtype, bits]) => {
          const data = storageOf(dtype, bits);
          const found = unscaleAndCheck([{ data, dtype }], 1);
          expect(bitsOf(data)).toEqual(bits);
          expect(found).toBe(bits.some((b) => isNonFiniteBits(toF32Bits(dtype, b))));
        },
      ),
      { numRuns: 300 },
    );
  });

  test("unaligned views are unscaled exactly and their neighbours are not touched", () => {
    fc.assert(
      fc.property(
        fc.constantFrom(...DTYPES),
        fc.integer({ min: 1, max: 7 }),
        fc.integer({ min: 0, max: 80 }),
        (dtype, offset, length) => {
          const bits = Array.from({ length: offset + length + 3 }, (_, i) => compose(dtype, i & 1, 3 + (i % 5), i % 7));
          const backing = storageOf(dtype, bits);
          const view = backing.subarray(offset, offset + length);
          const found = unscaleAndCheck([{ data: view, dtype }], 0.25);
          const expected = referenceUnscale(dtype, bits.slice(offset, offset + length), 0.25);
          expect(found).toBe(false);
          expect(bitsOf(backing)).toEqual([...bits.slice(0, offset), ...expected.bits, ...bits.slice(offset + length)]);
        },
      ),
      { numRuns: 100 },
    );
  });

  test("a NaN in the last element of a multi-threaded range is found", () => {
    // Above the thread pool's 2^20-element threshold, so several workers share the range.
    const n = (1 << 21) + 37;
    const data = new Float32Array(n).fill(8);
    const raw = new Uint32Array(data.buffer);
    raw[n - 1] = 0x7fa00001;
    expect(unscaleAndCheck([{ data, dtype: "float32" }], 0.5)).toBe(true);
    expect(data[0]).toBe(4);
    expect(data[n - 2]).toBe(4);
    expect(raw[n - 1]).toBe(0x7fe00001);
    // The same with the non-finite value at the start of the second worker's share.
    data.fill(8);
    raw[(n >> 1) + 64] = 0xff800000;
    expect(unscaleAndCheck([{ data, dtype: "float32" }], 1)).toBe(true);
    data.fill(1);
    expect(unscaleAndCheck([{ data, dtype: "float32" }], 1)).toBe(false);
  });

  test("an infinite invScale (PyTorch's inverse of a scale of 0) gives inf, or NaN for zeros, in every dtype", () => {
    for (const dtype of DTYPES) {
      // 20 elements: a whole vector and a scalar tail, so both paths see the infinite inverse.
      const values = Array.from({ length: 20 }, (_, i) => (i % 4 === 0 ? 0 : i % 3 === 0 ? -1.5 : 2));
      using t = tensor(values, { dtype });
      expect(unscaleAndCheck([t], Number.POSITIVE_INFINITY)).toBe(false);
      const out = t.toArray();
      values.forEach((v, i) => {
        if (v === 0) expect(Number.isNaN(out[i])).toBe(true);
        else expect(out[i]).toBe(v > 0 ? Infinity : -Infinity);
      });
    }
  });

  test("lists of 0, 1 and 1000 tensors work in one call", () => {
    expect(unscaleAndCheck([], 0.5)).toBe(false);
    using one = tensor([2, -4], { dtype: "bf16" });
    expect(unscaleAndCheck([one], 0.5)).toBe(false);
    expect([...one.toArray()]).toEqual([1, -2]);
    const many = Array.from({ length: 1000 }, (_, i) =>
      tensor(
        Array.from({ length: i % 13 }, (_, j) => j + i),
        { dtype: DTYPES[i % 3]! },
      ),
    );
    try {
      const before = many.map((t) => bitsOf(t.data as Float32Array | Uint16Array));
      expect(unscaleAndCheck(many, 0.5)).toBe(false);
      many.forEach((t, i) => {
        expect(bitsOf(t.data as Float32Array | Uint16Array)).toEqual(
          referenceUnscale(t.dtype as GradDtype, before[i]!, 0.5).bits,
        );
      });
      const last = many[999]!;
      last.data[last.size - 1] = last.dtype === "float32" ? Number.NaN : 0x7e00;
      expect(unscaleAndCheck(many, 1)).toBe(true);
    } finally {
      for (const t of many) t.dispose();
    }
  });

  test("bad inputs throw and write nothing", () => {
    const good = new Float32Array([2, 4]);
    const rows = (extra: unknown) => [{ data: good, dtype: "float32" }, extra] as GradientRow[];
    expect(() => unscaleAndCheck(rows({ data: new Uint8Array(2), dtype: "float8_e4m3fn" }), 0.5)).toThrow(TypeError);
    expect(() => unscaleAndCheck(rows({ data: new Uint16Array(2), dtype: "float32" }), 0.5)).toThrow(TypeError);
    expect(() => unscaleAndCheck(rows({ data: new Float32Array(2), dtype: "float64" }), 0.5)).toThrow(TypeError);
    expect(() => unscaleAndCheck(rows(new Float32Array(2)), 0.5)).toThrow(TypeError);
    const disposed = tensor([1]);
    disposed.dispose();
    expect(() => unscaleAndCheck(rows(disposed), 0.5)).toThrow(TypeError);
    expect(() => unscaleAndCheck(rows({ data: new Float32Array(2), dtype: "float32" }), Number.NaN)).toThrow(TypeError);
    expect(() =>
      unscaleAndCheck(rows({ data: new Float32Array(2), dtype: "float32" }), "0.5" as unknown as number),
    ).toThrow(TypeError);
    expect(() => unscaleAndCheck({ data: good, dtype: "float32" } as unknown as GradientRow[], 0.5)).toThrow(TypeError);
    expect([...good]).toEqual([2, 4]);
  });
});
