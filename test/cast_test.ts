import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import { cast, castInto, DTYPE_NAMES, type DtypeName, dtypeInfo, type StorageArray } from "../src/mod.ts";
import {
  bf16ToF32,
  f32Bits,
  f32FromBits,
  f32ToBf16,
  f32ToBf16Stochastic,
  f32ToF16,
  referenceCast,
  thresholdAt,
  toF32Bits,
} from "../src/_numerics.ts";
import { allocateStorage } from "../src/dtype.ts";

/** Special float32 bit patterns every property mixes in. */
const SPECIAL_F32 = [
  0x00000000, 0x80000000, 0x7f800000, 0xff800000, 0x7fc00000, 0xffc00000, 0x7f800001, 0xff800001, 0x7fffffff,
  0x00000001, 0x807fffff, 0x007fffff, 0x00800000, 0x7f7fffff, 0x7f7f8000, 0x7f7f7fff, 0x477fefff, 0x477ff000,
  0x477fe000, 0x33000000, 0x33000001, 0x33400000, 0x43e80000, 0x43e80001, 0x47700000, 0x3a800000, 0x37000000,
  0x3f808000, 0x3f818000, 0x38800000, 0x387fffff,
];

const f32Bit = fc.oneof(
  { weight: 3, arbitrary: fc.integer({ min: 0, max: 0xffffffff }) },
  { weight: 1, arbitrary: fc.constantFrom(...SPECIAL_F32) },
  // Values near the narrow formats' ranges, where rounding is interesting.
  { weight: 2, arbitrary: fc.integer({ min: 0x30000000, max: 0x48000000 }).map((x) => x | (x & 1 ? 0x80000000 : 0)) },
);

function bitsOf(dtype: DtypeName) {
  const bits = dtypeInfo(dtype).bits;
  return bits === 32 ? f32Bit : fc.integer({ min: 0, max: 2 ** bits - 1 });
}

function arrayOf(dtype: DtypeName, raw: number[]): StorageArray {
  const storage = allocateStorage(dtype, raw.length);
  if (storage instanceof Float32Array) new Uint32Array(storage.buffer).set(raw);
  else storage.set(raw);
  return storage;
}

function rawBits(array: StorageArray): number[] {
  if (array instanceof Float32Array) return [...new Uint32Array(array.buffer, array.byteOffset, array.length)];
  return [...array];
}

describe("cast()", () => {
  const pairs = DTYPE_NAMES.flatMap((from) => DTYPE_NAMES.map((to) => [from, to] as const));

  for (const [from, to] of pairs) {
    test(`native ${from} -> ${to} equals the TypeScript reference bit for bit`, () => {
      fc.assert(
        fc.property(
          fc.array(bitsOf(from), { maxLength: 100 }),
          fc.nat({ max: 3 }),
          fc.boolean(),
          (raw, offset, saturate) => {
            // A subarray at an element offset checks unaligned starts; lengths hit every vector tail.
            const backing = arrayOf(from, [...Array(offset).fill(0), ...raw]);
            const source = backing.subarray(offset) as StorageArray;
            const fp8 = to === "float8_e4m3fn" || to === "float8_e5m2";
            const options = fp8 && saturate ? { saturate: true } : {};
            const native = cast(source, from, to, options);
            const expected = allocateStorage(to, raw.length);
            referenceCast(
              rawBits(source),
              expected instanceof Float32Array ? new Uint32Array(expected.buffer) : expected,
              from,
              to,
              options,
            );
            expect(rawBits(native)).toEqual(rawBits(expected));
          },
        ),
        { numRuns: 150 },
      );
    });
  }

  test("native stochastic rounding equals the reference for float16 and bfloat16 targets", () => {
    for (const to of ["float16", "bfloat16"] as const) {
      fc.assert(
        fc.property(fc.array(f32Bit, { maxLength: 80 }), fc.nat({ max: 0xffffffff }), (raw, seed) => {
          const source = arrayOf("float32", raw);
          const native = cast(source, "float32", to, { rounding: "stochastic", seed }) as Uint16Array;
          const expected = new Uint16Array(raw.length);
          referenceCast(raw, expected, "float32", to, { stochastic: true, seed });
          expect([...native]).toEqual([...expected]);
        }),
        { numRuns: 300 },
      );
    }
  });

  test("lengths 0 to 70 cover every remainder of the vector width", () => {
    for (let length = 0; length <= 70; length++) {
      const source = new Float32Array(length).map((_, i) => (i - 20) * 1.37e-5 + 0.1 * i);
      const native = cast(source, "float32", "float16") as Uint16Array;
      expect([...native]).toEqual([...source].map((x) => f32ToF16(f32Bits(x))));
    }
  });

  test("large arrays split across threads give the same bits as the reference", () => {
    const length = (1 << 21) + 13;
    const raw = new Uint32Array(length);
    for (let i = 0; i < length; i++) raw[i] = Math.imul(i, 2654435761) >>> 0;
    const source = new Float32Array(raw.buffer);
    const native = cast(source, "float32", "bfloat16", { rounding: "stochastic", seed: 9 }) as Uint16Array;
    for (let i = 0; i < length; i += 997) {
      const expected = new Uint16Array(1);
      referenceCast([raw[i]!], expected, "float32", "bfloat16", { stochastic: true, seed: 9 });
      // The reference indexes from 0, so compare the rule directly at index i.
      const t = thresholdAt(9, i);
      const u = raw[i]!;
      const special = (u & 0x7fffffff) >>> 0 >= 0x7f800000;
      const want = special ? f32ToBf16(u) : ((u >>> 16) + ((u & 0xffff) > (t & 0xffff) ? 1 : 0)) & 0xffff;
      expect(native[i]).toBe(want);
    }
  });
});

describe("bfloat16 keeps float32's exponent range", () => {
  const threshold = 0x7f7f8000;

  test("every finite float32 below the overflow threshold rounds to a finite bfloat16 with its sign and exponent", () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: threshold - 1 }), fc.boolean(), (magnitude, negative) => {
        const u = (magnitude | (negative ? 0x80000000 : 0)) >>> 0;
        const [h] = cast(arrayOf("float32", [u]), "float32", "bfloat16") as Uint16Array;
        const back = bf16ToF32(h!);
        expect((back & 0x7f800000) >>> 0).not.toBe(0x7f800000); // finite
        expect(back >>> 31).toBe(u >>> 31); // sign kept
        const exponent = (u >>> 23) & 0xff;
        const backExponent = (back >>> 23) & 0xff;
        // Its own exponent, or one more after a rounding carry.
        expect(backExponent === exponent || backExponent === exponent + 1).toBe(true);
        const x = f32FromBits(u);
        const y = f32FromBits(back);
        if (Math.abs(x) >= 2 ** -126) {
          expect(Math.abs(y - x) / Math.abs(x)).toBeLessThanOrEqual(2 ** -8);
        } else {
          expect(Math.abs(y - x)).toBeLessThanOrEqual(2 ** -134);
        }
      }),
      { numRuns: 20000 },
    );
  });

  test("values at or above the threshold become inf with their sign", () => {
    fc.assert(
      fc.property(fc.integer({ min: threshold, max: 0x7f800000 }), fc.boolean(), (magnitude, negative) => {
        const u = (magnitude | (negative ? 0x80000000 : 0)) >>> 0;
        const [h] = cast(arrayOf("float32", [u]), "float32", "bfloat16") as Uint16Array;
        expect(h).toBe(negative ? 0xff80 : 0x7f80);
      }),
    );
  });

  test("bfloat16 -> float32 -> bfloat16 is the identity on all 65,536 non-NaN patterns", () => {
    const all = new Uint16Array(65536).map((_, i) => i);
    const wide = cast(all, "bfloat16", "float32");
    const back = cast(wide, "float32", "bfloat16") as Uint16Array;
    for (let h = 0; h < 65536; h++) {
      if ((h & 0x7fff) > 0x7f80) continue; // NaN
      if (back[h] !== h) throw new Error(`0x${h.toString(16)} came back as 0x${back[h]!.toString(16)}`);
    }
  });

  test("REFERENCE.md's named edge cases give the named bits", () => {
    const cases: [number, number][] = [
      [0x80000000, 0x8000],
      [0x7f800000, 0x7f80],
      [0xff800000, 0xff80],
      [0x007fffff, 0x0080],
      [0x7f7f8000, 0x7f80],
      [0x7f7f7fff, 0x7f7f],
      [0x7f800001, 0x7fc0],
      [0x7fffffff, 0x7fc0],
      [0xffffffff, 0xffc0],
    ];
    const out = cast(
      arrayOf(
        "float32",
        cases.map((c) => c[0]),
      ),
      "float32",
      "bfloat16",
    ) as Uint16Array;
    expect([...out]).toEqual(cases.map((c) => c[1]));
  });
});

describe("float16", () => {
  test("float32 -> float16 equals Bun's Float16Array on every non-NaN input", () => {
    fc.assert(
      fc.property(fc.array(f32Bit, { maxLength: 64 }), (raw) => {
        const finite = raw.filter((u) => (u & 0x7fffffff) >>> 0 <= 0x7f800000);
        const source = arrayOf("float32", finite) as Float32Array;
        const native = cast(source, "float32", "float16") as Uint16Array;
        const oracle = new Uint16Array(new Float16Array(source).buffer);
        expect([...native]).toEqual([...oracle]);
      }),
      { numRuns: 2000 },
    );
  });

  test("NaN keeps its sign as the canonical quiet NaN (checked with integer code)", () => {
    const out = cast(arrayOf("float32", [0x7f800001, 0xffc00000, 0x7fffffff]), "float32", "float16") as Uint16Array;
    expect([...out]).toEqual([0x7e00, 0xfe00, 0x7e00]);
  });

  test("REFERENCE.md's named edge cases give the named bits", () => {
    const cases: [number, number][] = [
      [f32Bits(65519.99), 0x7bff],
      [f32Bits(65520), 0x7c00],
      [f32Bits(2 ** -25), 0x0000],
      [(f32Bits(2 ** -25) + 1) >>> 0, 0x0001],
      [f32Bits(3 * 2 ** -26), 0x0001],
      [0x80000000, 0x8000],
    ];
    const out = cast(
      arrayOf(
        "float32",
        cases.map((c) => c[0]),
      ),
      "float32",
      "float16",
    ) as Uint16Array;
    expect([...out]).toEqual(cases.map((c) => c[1]));
  });

  test("float16 -> float32 is exact and keeps NaN payloads with the quiet bit", () => {
    const all = new Uint16Array(65536).map((_, i) => i);
    const wide = new Uint32Array(cast(all, "float16", "float32").buffer);
    const oracle = new Float32Array(new Float16Array(all.buffer));
    for (let h = 0; h < 65536; h++) {
      if ((h & 0x7fff) > 0x7c00) {
        const expected = (((h & 0x8000) << 16) | 0x7fc00000 | ((h & 0x3ff) << 13)) >>> 0;
        if (wide[h] !== expected) throw new Error(`NaN 0x${h.toString(16)} widened to 0x${wide[h]!.toString(16)}`);
      } else if (f32FromBits(wide[h]!) !== oracle[h] || wide[h]! >>> 31 !== h >>> 15) {
        throw new Error(`0x${h.toString(16)} widened to 0x${wide[h]!.toString(16)}`);
      }
    }
  });
});

describe("fp8", () => {
  test("non-saturating overflow: e4m3fn gives NaN above 464, e5m2 gives inf from 61440", () => {
    const source = new Float32Array([448, 464, 464.1, Infinity, -Infinity, NaN, 57344, 61439, 61440, -1e9]);
    const e4m3 = cast(source, "float32", "e4m3") as Uint8Array;
    expect([...e4m3.slice(0, 6)]).toEqual([0x7e, 0x7e, 0x7f, 0x7f, 0xff, 0x7f]);
    const e5m2 = cast(source, "float32", "e5m2") as Uint8Array;
    expect([...e5m2.slice(3)]).toEqual([0x7c, 0xfc, 0x7f, 0x7b, 0x7b, 0x7c, 0xfc]);
  });

  test("saturate clamps finite overflow and inf but keeps NaN", () => {
    const source = new Float32Array([1000, -Infinity, NaN, 1e9, 1e5]);
    expect([...(cast(source, "float32", "e4m3", { saturate: true }) as Uint8Array)]).toEqual([
      0x7e, 0xfe, 0x7f, 0x7e, 0x7e,
    ]);
    // 1000 is in e5m2's range (it rounds to 1024 = 0x64); 1e5 and 1e9 are not.
    expect([...(cast(source, "float32", "e5m2", { saturate: true }) as Uint8Array)]).toEqual([
      0x64, 0xfb, 0x7f, 0x7b, 0x7b,
    ]);
  });

  test("every fp8 pattern widens exactly and comes back unchanged", () => {
    const all = new Uint8Array(256).map((_, i) => i);
    for (const dtype of ["float8_e4m3fn", "float8_e5m2"] as const) {
      const wide = cast(all, dtype, "float32");
      const back = cast(wide, "float32", dtype) as Uint8Array;
      for (let b = 0; b < 256; b++) {
        const nan = dtype === "float8_e4m3fn" ? (b & 0x7f) === 0x7f : (b & 0x7f) > 0x7c;
        if (!nan) expect(back[b]).toBe(b);
      }
      expect(f32FromBits(toF32Bits(dtype, dtype === "float8_e4m3fn" ? 0x7e : 0x7b))).toBe(dtypeInfo(dtype).max);
      expect(f32FromBits(toF32Bits(dtype, 1))).toBe(dtypeInfo(dtype).minSubnormal);
    }
  });
});

describe("stochastic rounding", () => {
  test("summing bfloat16 results over all 65,536 thresholds gives exactly 65536 * x", () => {
    // The rounding rule itself (native equals it bit for bit, tested above) over every threshold.
    fc.assert(
      fc.property(fc.integer({ min: 0x00010000, max: 0x7f7effff }), fc.boolean(), (magnitude, negative) => {
        const u = (magnitude | (negative ? 0x80000000 : 0)) >>> 0;
        let sum = 0;
        for (let t = 0; t < 65536; t++) sum += f32FromBits(bf16ToF32(f32ToBf16Stochastic(u, t)));
        // Every term has 8 significant bits and there are 2^16 of them: the float64 sum is exact.
        expect(sum).toBe(65536 * f32FromBits(u));
      }),
      { numRuns: 40 },
    );
  });

  test("the hash thresholds are spread so that the mean result approaches x", () => {
    const x = 1 + 3 * 2 ** -10; // between two bfloat16 neighbours
    const count = 1 << 16;
    const out = cast(new Float32Array(count).fill(x), "float32", "bfloat16", {
      rounding: "stochastic",
      seed: 5,
    }) as Uint16Array;
    let sum = 0;
    for (const h of out) sum += f32FromBits(bf16ToF32(h));
    expect(Math.abs(sum / count - x)).toBeLessThan(2 ** -7 / 64);
  });

  test("results are always one of the two neighbours and depend only on the seed", () => {
    fc.assert(
      fc.property(fc.array(f32Bit, { minLength: 1, maxLength: 50 }), fc.nat({ max: 0xffffffff }), (raw, seed) => {
        const source = arrayOf("float32", raw);
        for (const to of ["float16", "bfloat16"] as const) {
          const a = cast(source, "float32", to, { rounding: "stochastic", seed }) as Uint16Array;
          const b = cast(source, "float32", to, { rounding: "stochastic", seed }) as Uint16Array;
          expect([...a]).toEqual([...b]);
          const nearest = cast(source, "float32", to) as Uint16Array;
          raw.forEach((u, i) => {
            if ((u & 0x7fffffff) >>> 0 >= 0x7f800000) {
              expect(a[i]).toBe(nearest[i]);
              return;
            }
            // Allowed: the nearest value, or its neighbour on x's other side.
            const x = f32FromBits(u);
            const nb = nearest[i]!;
            const magnitude = nb & 0x7fff;
            const sign = nb & 0x8000;
            const neighbours = [
              sign | (magnitude + 1),
              magnitude > 0 ? sign | (magnitude - 1) : ((u >>> 31) << 15) | 1,
            ];
            if (a[i] !== nb) {
              expect(neighbours).toContain(a[i]!);
              const y = f32FromBits(toF32Bits(to, a[i]!));
              const n = f32FromBits(toF32Bits(to, nb));
              expect((y - x) * (n - x)).toBeLessThanOrEqual(0);
            }
          });
        }
      }),
      { numRuns: 300 },
    );
  });

  test("float16 stochastic rounding is unbiased over every threshold of its 13 dropped bits", () => {
    const u = f32Bits(1 + 2 ** -11 + 2 ** -14);
    const low = u & 0x1fff;
    let ups = 0;
    for (let t = 0; t < 0x2000; t++) if (f32ToF16(u, t) !== f32ToF16(u & ~0x1fff, 0)) ups++;
    expect(ups).toBe(low);
  });
});

describe("bad input", () => {
  test("a typed array of the wrong kind for the dtype throws TypeError and writes nothing", () => {
    expect(() => cast(new Int32Array(4) as never, "float32", "bfloat16")).toThrow(/Int32Array as float32/);
    expect(() => cast(new Float32Array(4) as never, "bfloat16", "float32")).toThrow(TypeError);
    const target = new Float32Array([7, 7]);
    expect(() => castInto(new Uint16Array(2), target as never, "f16", "bf16")).toThrow(/Float32Array/);
    expect([...target]).toEqual([7, 7]);
  });

  test("an unknown dtype name throws TypeError naming it", () => {
    expect(() => cast(new Float32Array(1), "float32", "float12" as never)).toThrow(/Unknown dtype "float12"/);
  });

  test("a short target throws RangeError and writes nothing", () => {
    const target = new Uint16Array([1, 2]);
    expect(() => castInto(new Float32Array(3), target, "f32", "bf16")).toThrow(RangeError);
    expect([...target]).toEqual([1, 2]);
  });

  test("overlapping source and target throw RangeError", () => {
    const buffer = new ArrayBuffer(64);
    const source = new Float32Array(buffer, 0, 8);
    const target = new Uint16Array(buffer, 16, 8);
    expect(() => castInto(source, target, "f32", "bf16")).toThrow(/overlap/);
  });

  test("non-arrays, bad seeds and misplaced options throw", () => {
    expect(() => cast([1, 2] as never, "f32", "bf16")).toThrow(/Array as float32/);
    expect(() => cast(new Float32Array(1), "f32", "bf16", { rounding: "stochastic", seed: -1 })).toThrow(RangeError);
    expect(() => cast(new Float32Array(1), "f32", "e4m3", { rounding: "stochastic" })).toThrow(/float16 and bfloat16/);
    expect(() => cast(new Float32Array(1), "f32", "bf16", { saturate: true })).toThrow(/fp8 targets/);
    expect(() => cast(new Float32Array(1), "f32", "bf16", { rounding: "up" as never })).toThrow(/Unknown rounding/);
  });

  test("empty arrays cast to empty arrays", () => {
    for (const to of DTYPE_NAMES) expect(cast(new Float32Array(0), "f32", to).length).toBe(0);
  });
});
