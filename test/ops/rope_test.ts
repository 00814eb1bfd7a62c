import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import { valueAndGrad } from "../../src/autodiff.ts";
import { type DtypeName, dtypeInfo } from "../../src/dtype.ts";
import { setThreads } from "../../src/mod.ts";
import { mul, reshape, rope, ropeInvFreq, sum } from "../../src/ops/mod.ts";
import { liveTensorCount, randn, type Tensor, tensor } from "../../src/tensor.ts";
import { gradCheck } from "../_gradcheck.ts";

/**
 * Hugging Face's apply_rotary_pos_emb transcribed in float64, except the angles, which HF computes
 * in float32: angle = float32(float32(position) * invFreq[i]).
 */
function rope64(
  x: ArrayLike<number>,
  [batch, steps, heads, dim]: readonly [number, number, number, number],
  invFreq: Float32Array,
  positions: (b: number, t: number) => number,
): Float64Array {
  const half = dim / 2;
  const out = new Float64Array(x.length);
  for (let b = 0; b < batch; b++)
    for (let t = 0; t < steps; t++)
      for (let h = 0; h < heads; h++) {
        const base = ((b * steps + t) * heads + h) * dim;
        for (let i = 0; i < half; i++) {
          const angle = Math.fround(Math.fround(positions(b, t)) * invFreq[i]!);
          const [x1, x2] = [x[base + i]!, x[base + half + i]!];
          // x * cos + rotate_half(x) * sin, rotate_half(x) = cat(-x2, x1).
          out[base + i] = x1 * Math.cos(angle) + -x2 * Math.sin(angle);
          out[base + half + i] = x2 * Math.cos(angle) + x1 * Math.sin(angle);
        }
      }
  return out;
}

/** Largest |got - want| / (|x1| + |x2|) over every rotated pair (0 / 0 counts as 0). */
function worstPairError(got: Float32Array, want: Float64Array, x: Float32Array, dim: number): number {
  const half = dim / 2;
  let worst = 0;
  for (let i = 0; i < got.length; i++) {
    const lane = i % dim;
    const first = i - lane + (lane % half);
    const size = Math.abs(x[first]!) + Math.abs(x[first + half]!);
    const error = Math.abs(got[i]! - want[i]!);
    if (error > 0) worst = Math.max(worst, error / size);
  }
  return worst;
}

function random(shape: number[], seed: number, dtype: DtypeName): Tensor {
  using t = randn(shape, { seed });
  return t.to(dtype);
}

describe("rope", () => {
  for (const dtype of ["float32", "float16", "bfloat16"] as const) {
    test(`rope() in ${dtype} matches a float64 transcription of Hugging Face's apply_rotary_pos_emb`, () => {
      // Error bounds per pair, relative to |x1| + |x2|: float32 rounds cos, sin, two products and
      // a sum (under 2 eps; 4 allowed); a 16-bit result adds one rounding of half its eps.
      const eps = dtypeInfo(dtype).eps;
      const bound = dtype === "float32" ? 4 * eps : eps;
      const shape: [number, number, number, number] = [2, 37, 3, 34];
      using x = random(shape, 1, dtype);
      const values = x.toArray();
      const explicit = Int32Array.from({ length: 2 * 37 }, (_, i) => (i * 7919) % 4096);
      const llama3 = Float32Array.from(ropeInvFreq(34, 500000), (f, i) => (i > 8 ? f / 8 : f));
      const cases: [Parameters<typeof rope>[1], Float32Array, (b: number, t: number) => number][] = [
        [{}, ropeInvFreq(34), (_b, t) => t],
        [{ offset: 1000, theta: 500000 }, ropeInvFreq(34, 500000), (_b, t) => 1000 + t],
        [{ positions: explicit.subarray(0, 37) }, ropeInvFreq(34), (_b, t) => explicit[t]!],
        [{ positions: explicit, invFreq: llama3 }, llama3, (b, t) => explicit[b * 37 + t]!],
      ];
      for (const [options, invFreq, positions] of cases) {
        using y = rope(x, options);
        expect(y.dtype).toBe(dtype);
        const want = rope64(values, shape, invFreq, positions);
        expect(worstPairError(y.toArray(), want, values, 34)).toBeLessThanOrEqual(bound);
      }
    });
  }

  test("ropeInvFreq() follows theta^(-2i / D) to float32 rounding", () => {
    const f = ropeInvFreq(128, 10000);
    expect(f.length).toBe(64);
    for (let i = 0; i < 64; i++) {
      const exact = 10000 ** (-(2 * i) / 128);
      expect(Math.abs(f[i]! - exact)).toBeLessThanOrEqual(2 * dtypeInfo("float32").eps * exact);
    }
  });

  test("rope() gradients match finite differences of the float64 reference", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 2 }),
        fc.integer({ min: 1, max: 4 }),
        fc.integer({ min: 1, max: 2 }),
        fc.integer({ min: 1, max: 4 }),
        fc.integer({ min: -20, max: 20 }),
        fc.nat(1000),
        (batch, steps, heads, half, offset, seed) => {
          const shape: [number, number, number, number] = [batch, steps, heads, 2 * half];
          const invFreq = ropeInvFreq(2 * half, 100);
          gradCheck(
            ([x]) => rope(x!, { offset, theta: 100 }),
            ([x]) => rope64(x!, shape, invFreq, (_b, t) => offset + t),
            [shape],
            seed,
          );
        },
      ),
      { numRuns: 20 },
    );
  });

  test("rope()'s backward pass is rope() at the negated positions, bit for bit", () => {
    fc.assert(
      fc.property(
        fc.constantFrom<DtypeName>("float32", "float16", "bfloat16"),
        fc.array(fc.integer({ min: -5000, max: 5000 }), { minLength: 6, maxLength: 6 }),
        fc.nat(1000),
        (dtype, positions, seed) => {
          using x = random([2, 3, 2, 18], seed, dtype);
          using r = random([2, 3, 2, 18], seed + 1, dtype);
          const [, g] = valueAndGrad((p: { x: Tensor }) =>
            sum(mul(reshape(rope(p.x, { positions }), [-1]), reshape(r, [-1]))),
          )({ x });
          using back = rope(r, { positions: positions.map((p) => -p) });
          expect(g.x.bits()).toEqual(back.bits());
          g.x.dispose();
        },
      ),
      { numRuns: 15 },
    );
  });

  test("rope() at the negated positions undoes rope() to float32 rounding", () => {
    fc.assert(
      fc.property(fc.integer({ min: -100000, max: 100000 }), fc.nat(1000), (offset, seed) => {
        using x = random([1, 4, 2, 16], seed, "float32");
        const positions = Int32Array.from({ length: 4 }, (_, t) => offset + 37 * t);
        using y = rope(x, { positions });
        using back = rope(y, { positions: positions.map((p) => -p) });
        const values = x.toArray();
        const twice = Float64Array.from(values);
        expect(worstPairError(back.toArray(), twice, values, 16)).toBeLessThanOrEqual(8 * dtypeInfo("float32").eps);
      }),
      { numRuns: 20 },
    );
  });

  test("rope() with an offset gives the bits of the same explicit positions", () => {
    using x = random([2, 9, 2, 8], 3, "bfloat16");
    using a = rope(x, { offset: 12 });
    using b = rope(x, { positions: Array.from({ length: 9 }, (_, t) => 12 + t) });
    using c = rope(x, { positions: Array.from({ length: 18 }, (_, i) => 12 + (i % 9)) });
    expect(a.bits()).toEqual(b.bits());
    expect(a.bits()).toEqual(c.bits());
  });

  test("rope() gives the same bits on 1 and 2 threads, forward and backward", () => {
    const run = (dtype: DtypeName) => {
      // 2 * 130 * 8 * 64 elements: above the parallel threshold, rows split unevenly.
      using x = random([2, 130, 8, 64], 4, dtype);
      using r = randn([2 * 130 * 8 * 64], { seed: 5 });
      const [, g] = valueAndGrad((p: { x: Tensor }) => sum(mul(reshape(rope(p.x, { offset: 3 }), [-1]), r)))({ x });
      using y = rope(x, { offset: 3 });
      const bits = [y.bits(), g.x.bits()];
      g.x.dispose();
      return bits;
    };
    try {
      for (const dtype of ["float32", "bfloat16"] as const) {
        setThreads(1);
        const one = run(dtype);
        setThreads(2);
        const two = run(dtype);
        expect(two).toEqual(one);
      }
    } finally {
      setThreads(0);
    }
  });

  test("rope() rejects odd head sizes, wrong frequency and position counts, and bad options, creating nothing", () => {
    using x = tensor(new Float32Array(2 * 3 * 2 * 8), { shape: [2, 3, 2, 8] });
    using odd = tensor(new Float32Array(2 * 3 * 2 * 7), { shape: [2, 3, 2, 7] });
    using flat = tensor(new Float32Array(6 * 8), { shape: [6, 8] });
    const before = liveTensorCount();
    expect(() => rope(odd)).toThrow(/head size 7 of x \[2, 3, 2, 7\] must be even/);
    expect(() => rope(flat)).toThrow(/x \[6, 8\] must be 4-D \[B, T, H, D\]/);
    expect(() => rope(x, { invFreq: new Float32Array(3) })).toThrow(/invFreq has 3 values but the head size 8 needs 4/);
    expect(() => rope(x, { positions: [1, 2] })).toThrow(
      /2 positions fit neither \[T\] = \[3\] nor \[B, T\] = \[2, 3\]/,
    );
    expect(() => rope(x, { positions: [0, 1.5, 2] })).toThrow(/positions\[1\] must be an integer/);
    expect(() => rope(x, { offset: 2 ** 25 })).toThrow(RangeError);
    expect(() => rope(x, { theta: -1 })).toThrow(/theta must be a positive finite number/);
    expect(() => rope(x, { invFreq: [1, 2, Number.NaN, 4] })).toThrow(/not finite/);
    expect(liveTensorCount()).toBe(before);
  });
});
