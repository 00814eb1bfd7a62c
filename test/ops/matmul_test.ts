import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import { type DtypeName, dtypeInfo } from "../../src/dtype.ts";
import { linear, matmul } from "../../src/ops/mod.ts";
import { MatmulFlag, matmulInto } from "../../src/backend/cpu/layout.ts";
import { tensor } from "../../src/tensor.ts";
import { gradCheck, randomInputs, refMatmul } from "../_gradcheck.ts";

const dim = fc.integer({ min: 1, max: 5 });

describe("matmul", () => {
  test("matmul() gradients match float64 finite differences for batched and shared right operands", () => {
    fc.assert(
      fc.property(
        dim,
        dim,
        dim,
        fc.integer({ min: 1, max: 3 }),
        fc.boolean(),
        fc.nat(1000),
        (m, k, n, batch, shared, seed) => {
          const bShape = shared ? [k, n] : [batch, k, n];
          gradCheck(
            ([a, b]) => matmul(a!, b!),
            ([a, b]) => refMatmul(a!, b!, batch, m, k, n, shared),
            [[batch, m, k], bShape],
            seed,
          );
        },
      ),
      { numRuns: 25 },
    );
  });

  test("linear() gradients match finite differences with and without bias", () => {
    fc.assert(
      fc.property(dim, dim, dim, fc.boolean(), fc.nat(1000), (rows, inF, outF, withBias, seed) => {
        const shapes = withBias
          ? [[rows, inF], [outF, inF], [outF]]
          : [
              [rows, inF],
              [outF, inF],
            ];
        gradCheck(
          (xs) => linear(xs[0]!, xs[1]!, xs[2]),
          ([x, w, b]) => {
            const out = new Float64Array(rows * outF);
            for (let r = 0; r < rows; r++) {
              for (let o = 0; o < outF; o++) {
                let s = b ? b[o]! : 0;
                for (let i = 0; i < inF; i++) s += x![r * inF + i]! * w![o * inF + i]!;
                out[r * outF + o] = s;
              }
            }
            return out;
          },
          shapes,
          seed,
        );
      }),
      { numRuns: 25 },
    );
  });

  // Error bound for float32 accumulation of exactly representable inputs:
  // |C - ref| <= gamma_k * sum_p |a_ip b_pj| + u_out * |ref|, gamma_k = k u / (1 - k u), u = 2^-24.
  for (const dtype of ["float32", "float16", "bfloat16"] as DtypeName[]) {
    test(`matmul() in ${dtype} is within the float32-accumulation bound of a float64 reference`, () => {
      for (const [m, k, n] of [
        [3, 7, 5],
        [33, 300, 47],
        [130, 513, 70],
      ] as const) {
        const [av, bv] = randomInputs(
          [
            [m, k],
            [k, n],
          ],
          m + k + n,
        );
        using a = tensor(av!, { shape: [m, k], dtype });
        using b = tensor(bv!, { shape: [k, n], dtype });
        using c = matmul(a, b);
        expect(c.dtype).toBe(dtype);
        const a64 = Float64Array.from(a.toArray());
        const b64 = Float64Array.from(b.toArray());
        const want = refMatmul(a64, b64, 1, m, k, n, true);
        const absSum = refMatmul(a64.map(Math.abs), b64.map(Math.abs), 1, m, k, n, true);
        const u = 2 ** -24;
        const gamma = (k * u) / (1 - k * u);
        const uOut = dtypeInfo(dtype).eps / 2;
        const got = c.toArray();
        for (let i = 0; i < got.length; i++) {
          const bound = gamma * absSum[i]! + uOut * Math.abs(want[i]!) * (1 + gamma) + 1e-30;
          if (!(Math.abs(got[i]! - want[i]!) <= bound)) {
            throw new Error(`${dtype} ${m}x${k}x${n} element ${i}: ${got[i]} vs ${want[i]} (bound ${bound})`);
          }
        }
      }
    });
  }

  test("the AVX512-BF16 path and the widening path agree within the accumulation bound", () => {
    const [m, k, n] = [37, 301, 45];
    const [av, bv] = randomInputs(
      [
        [m, k],
        [k, n],
      ],
      5,
    );
    using a = tensor(av!, { shape: [m, k], dtype: "bf16" });
    using b = tensor(bv!, { shape: [k, n], dtype: "bf16" });
    const dot = matmulInto(
      a.data,
      "bfloat16",
      b.data,
      "bfloat16",
      new Float32Array(m * n),
      1,
      m,
      n,
      k,
      MatmulFlag.bf16Dot,
    );
    const wide = matmulInto(a.data, "bfloat16", b.data, "bfloat16", new Float32Array(m * n), 1, m, n, k, 0);
    const absSum = refMatmul(
      Float64Array.from(a.toArray(), Math.abs),
      Float64Array.from(b.toArray(), Math.abs),
      1,
      m,
      k,
      n,
      true,
    );
    for (let i = 0; i < dot.length; i++)
      expect(Math.abs(dot[i]! - wide[i]!)).toBeLessThanOrEqual(2 * k * 2 ** -24 * absSum[i]!);
  });

  test("matmul() refuses shapes that do not multiply, naming both", () => {
    using a = tensor(new Float32Array(6), { shape: [2, 3] });
    using b = tensor(new Float32Array(6), { shape: [2, 3] });
    expect(() => matmul(a, b)).toThrow(/\[2, 3\] and \[2, 3\] do not multiply/);
    using w = tensor(new Float32Array(6), { shape: [3, 2] });
    expect(() => linear(a, w)).toThrow(/do not fit: weight is \[out, in\]/);
  });

  test("matmul() with k = 0 gives zeros and a mixed float16 x bfloat16 product computes in float32", () => {
    using a = tensor(new Float32Array(0), { shape: [2, 0] });
    using b = tensor(new Float32Array(0), { shape: [0, 3] });
    using c = matmul(a, b);
    expect([...c.toArray()]).toEqual([0, 0, 0, 0, 0, 0]);
    using h = tensor([[1, 2]], { dtype: "f16" });
    using g = tensor([[3], [4]], { dtype: "bf16" });
    using hg = matmul(h, g);
    expect(hg.dtype).toBe("float32");
    expect(hg.toArray()[0]).toBe(11);
  });
});

describe("matmul negative space", () => {
  test("NaN and infinity in an input reach exactly the outputs that use them, on both bfloat16 paths", () => {
    for (const flags of [0, MatmulFlag.bf16Dot]) {
      for (const dtype of ["float32", "bfloat16"] as DtypeName[]) {
        const m = 5;
        const k = 7;
        const n = 3;
        const a = new Float32Array(m * k).fill(0.5);
        a[2 * k + 3] = Number.NaN; // row 2
        a[4 * k + 1] = Infinity; // row 4
        using at = tensor(a, { shape: [m, k], dtype });
        using bt = tensor(new Float32Array(k * n).fill(0.25), { shape: [k, n], dtype });
        const c = matmulInto(at.data, dtype, bt.data, dtype, new Float32Array(m * n), 1, m, n, k, flags);
        for (let i = 0; i < m; i++) {
          for (let j = 0; j < n; j++) {
            const v = c[i * n + j]!;
            if (i === 2) expect(Number.isNaN(v)).toBe(true);
            else if (i === 4) expect(v).toBe(Infinity);
            else expect(v).toBe(0.5 * 0.25 * k);
          }
        }
      }
    }
  });

  test("the native call refuses fp8 inputs and unknown flags with a MixprecError", () => {
    const a = new Uint8Array(4);
    const c = new Float32Array(4);
    expect(() => matmulInto(a, "float8_e4m3fn", a, "float8_e4m3fn", c, 1, 2, 2, 1, 0)).toThrow(/invalid_dtype/);
    const f = new Float32Array(4);
    expect(() => matmulInto(f, "float32", f, "float32", c, 1, 2, 2, 1, 64)).toThrow(/invalid_argument/);
  });

  test("linear() over zero rows gives an empty result and zero weight gradients", async () => {
    const { valueAndGrad } = await import("../../src/autodiff.ts");
    const { sum } = await import("../../src/ops/mod.ts");
    using x = tensor(new Float32Array(0), { shape: [0, 3] });
    using w = tensor(new Float32Array(6).fill(1), { shape: [2, 3] });
    const [value, grads] = valueAndGrad((p: { w: typeof w }) => sum(linear(x, p.w)))({ w });
    expect(value).toBe(0);
    expect([...grads.w.toArray()]).toEqual([0, 0, 0, 0, 0, 0]);
    grads.w.dispose();
  });
});
