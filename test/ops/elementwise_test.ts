import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import { add, div, exp, gelu, log, mul, relu, scale, silu, sub, tanh, toDtype } from "../../src/ops/mod.ts";
import type { Tensor } from "../../src/tensor.ts";
import { tensor } from "../../src/tensor.ts";
import { gradCheck } from "../_gradcheck.ts";

/** float64 NumPy broadcasting of two flat arrays. */
function broadcast64(
  a: Float64Array,
  aShape: number[],
  b: Float64Array,
  bShape: number[],
  f: (x: number, y: number) => number,
): Float64Array {
  const ndim = Math.max(aShape.length, bShape.length);
  const pa = [...Array(ndim - aShape.length).fill(1), ...aShape];
  const pb = [...Array(ndim - bShape.length).fill(1), ...bShape];
  const shape = pa.map((d, i) => Math.max(d, pb[i]!));
  const size = shape.reduce((p, d) => p * d, 1);
  const out = new Float64Array(size);
  for (let i = 0; i < size; i++) {
    let rest = i;
    let ia = 0;
    let ib = 0;
    let sa = 1;
    let sb = 1;
    for (let d = ndim - 1; d >= 0; d--) {
      const c = rest % shape[d]!;
      rest = Math.floor(rest / shape[d]!);
      if (pa[d] !== 1) ia += c * sa;
      if (pb[d] !== 1) ib += c * sb;
      sa *= pa[d]!;
      sb *= pb[d]!;
    }
    out[i] = f(a[ia]!, b[ib]!);
  }
  return out;
}

/** Two shapes that broadcast: b takes a's trailing dims with some set to 1 or dropped. */
const broadcastPair = fc.array(fc.integer({ min: 1, max: 4 }), { minLength: 1, maxLength: 3 }).chain((aShape) =>
  fc
    .tuple(
      fc.array(fc.boolean(), { minLength: aShape.length, maxLength: aShape.length }),
      fc.integer({ min: 0, max: aShape.length - 1 }),
      fc.boolean(),
    )
    .map(([ones, drop, swap]) => {
      const bShape = aShape.map((d, i) => (ones[i] ? 1 : d)).slice(drop);
      return swap ? [bShape, aShape] : [aShape, bShape];
    }),
);

const BINARY = {
  add: [add, (x: number, y: number) => x + y],
  sub: [sub, (x: number, y: number) => x - y],
  mul: [mul, (x: number, y: number) => x * y],
  div: [div, (x: number, y: number) => x / y],
} as const;

describe("elementwise", () => {
  for (const [name, [op, f]] of Object.entries(BINARY)) {
    test(`${name}() gradients with broadcasting match finite differences`, () => {
      fc.assert(
        fc.property(broadcastPair, fc.nat(1000), ([aShape, bShape], seed) => {
          gradCheck(
            ([a, b]) => (name === "div" ? op(a!, add(mul(b!, b!), tensor(1))) : op(a!, b!)),
            ([a, b]) => broadcast64(a!, aShape!, name === "div" ? b!.map((v) => v * v + 1) : b!, bShape!, f),
            [aShape!, bShape!],
            seed,
          );
        }),
        { numRuns: 20 },
      );
    });
  }

  const UNARY: [string, (x: Tensor) => Tensor, (x: number) => number][] = [
    ["relu", relu, (x) => Math.max(x, 0)],
    ["tanh", tanh, Math.tanh],
    ["silu", silu, (x) => x / (1 + Math.exp(-x))],
    ["exp", exp, Math.exp],
    ["log", (x) => log(add(mul(x, x), tensor(0.5))), (x) => Math.log(x * x + 0.5)],
    ["gelu", gelu, (x) => 0.5 * x * (1 + erf64(x / Math.SQRT2))],
    [
      "gelu (tanh)",
      (x) => gelu(x, { approximate: "tanh" }),
      (x) => 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x ** 3))),
    ],
    ["scale", (x) => scale(x, -2.5), (x) => -2.5 * x],
  ];
  for (const [name, op, f] of UNARY) {
    test(`${name}() gradients match finite differences`, () => {
      fc.assert(
        fc.property(fc.integer({ min: 1, max: 12 }), fc.nat(1000), (n, seed) => {
          gradCheck(
            ([x]) => op(x!),
            ([x]) => x!.map(f),
            [[n]],
            seed,
          );
        }),
        { numRuns: 15 },
      );
    });
  }

  test("a bfloat16 tensor added to a float32 tensor computes in float32 and its gradient comes back in bfloat16", () => {
    using a = tensor([1, 2], { dtype: "bf16" });
    using b = tensor([0.5, 0.25]);
    using c = add(a, b);
    expect(c.dtype).toBe("float32");
    using d = toDtype(a, "float32");
    expect(d.dtype).toBe("float32");
  });

  test("shapes that do not broadcast are refused with both shapes named", () => {
    using a = tensor(new Float32Array(6), { shape: [2, 3] });
    using b = tensor(new Float32Array(2), { shape: [2] });
    expect(() => add(a, b)).toThrow(/\[2, 3\] and \[2\] do not broadcast/);
  });

  test("NaN and infinities pass through elementwise ops", () => {
    using x = tensor([Number.NaN, Infinity, -Infinity]);
    using y = relu(x);
    const v = y.toArray();
    expect(Number.isNaN(v[0])).toBe(true); // NaN must survive so loss scaling can see it
    expect(v[1]).toBe(Infinity);
    expect(v[2]).toBe(0);
    using t = tanh(x);
    expect(Number.isNaN(t.toArray()[0])).toBe(true);
    expect(t.toArray()[1]).toBe(1);
  });
});

/** erf to float64 accuracy (Abramowitz-Stegun 7.1.26 is not enough; use the series / continued fraction). */
function erf64(x: number): number {
  const z = Math.abs(x);
  let result: number;
  if (z < 3) {
    let term = z;
    let total = z;
    for (let n = 1; n < 80; n++) {
      term *= (-z * z) / n;
      total += term / (2 * n + 1);
    }
    result = (2 / Math.sqrt(Math.PI)) * total;
  } else {
    // erfc continued fraction (Lentz) for large z.
    let f = z;
    for (let n = 60; n >= 1; n--) f = z + n / 2 / f;
    result = 1 - Math.exp(-z * z) / Math.sqrt(Math.PI) / f;
  }
  return x < 0 ? -result : result;
}

describe("native gelu", () => {
  test("mp_gelu and its backward agree with the TypeScript reference within 4e-7 * (1 + |x| + |g|)", async () => {
    const { valueAndGrad } = await import("../../src/autodiff.ts");
    const { geluReference } = await import("../../src/ops/elementwise.ts");
    const { sum } = await import("../../src/ops/mod.ts");
    fc.assert(
      fc.property(fc.array(fc.float({ min: -20, max: 20, noNaN: true }), { minLength: 0, maxLength: 70 }), (raw) => {
        const x = Float32Array.from(raw);
        using xt = tensor(x);
        const ones = new Float32Array(x.length).fill(1);
        const want = geluReference(x, ones);
        const [, grads] = valueAndGrad((p: { x: Tensor }) => sum(gelu(p.x)))({ x: xt });
        using y = gelu(xt);
        const got = y.toArray();
        const gg = grads.x.toArray();
        grads.x.dispose();
        for (let i = 0; i < x.length; i++) {
          const bound = 4e-7 * (1 + Math.abs(x[i]!));
          if (!(Math.abs(got[i]! - want.out[i]!) <= bound))
            throw new Error(`gelu(${x[i]}): ${got[i]} vs ${want.out[i]}`);
          if (!(Math.abs(gg[i]! - want.grad[i]!) <= bound))
            throw new Error(`gelu'(${x[i]}): ${gg[i]} vs ${want.grad[i]}`);
        }
      }),
      { numRuns: 50 },
    );
  });

  test("gelu keeps every non-finite input non-finite (NaN, inf -> inf, -inf -> NaN as -inf * 0)", () => {
    // PyTorch's CPU gelu gives NaN for all three; what matters for loss scaling is that none
    // becomes finite.
    using x = tensor([Number.NaN, Infinity, -Infinity]);
    using y = gelu(x);
    const v = y.toArray();
    expect(Number.isNaN(v[0])).toBe(true);
    expect(v[1]).toBe(Infinity);
    expect(Number.isNaN(v[2])).toBe(true);
  });
});
