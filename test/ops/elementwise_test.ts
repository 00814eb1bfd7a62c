import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import { valueAndGrad } from "../../src/autodiff.ts";
import { cast } from "../../src/cast.ts";
import { type DtypeName, dtypeInfo } from "../../src/dtype.ts";
import { setThreads } from "../../src/mod.ts";
import {
  add,
  div,
  erf,
  exp,
  gelu,
  log,
  mean,
  mul,
  relu,
  reshape,
  scale,
  silu,
  sub,
  sum,
  swiglu,
  tanh,
  toDtype,
} from "../../src/ops/mod.ts";
import type { Tensor } from "../../src/tensor.ts";
import { liveTensorCount, tensor } from "../../src/tensor.ts";
import { gradCheck, randomInputs } from "../_gradcheck.ts";

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
    ["erf", (x) => erf(x), erf64],
    ["add with a number", (x) => add(x, 2.5), (x) => x + 2.5],
    ["sub from a number", (x) => sub(1.5, x), (x) => 1.5 - x],
    ["mul by a number", (x) => mul(x, -0.75), (x) => -0.75 * x],
    ["div of a number", (x) => div(3, add(mul(x, x), 1)), (x) => 3 / (x * x + 1)],
    ["div by a number", (x) => div(x, 4), (x) => x / 4],
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
  test("native gelu and its backward agree with the TypeScript reference within 4e-7 * (1 + |x| + |g|)", async () => {
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

const DTYPES: readonly DtypeName[] = ["float32", "float16", "bfloat16"];
const EPS32 = dtypeInfo("float32").eps;

/** float32 values rounded to `dtype` (nearest even) and widened back: what a tensor of it holds. */
function exact(values: Float32Array, dtype: DtypeName): Float32Array {
  if (dtype === "float32") return Float32Array.from(values);
  return cast(cast(values, "float32", dtype), dtype, "float32") as Float32Array;
}

function expectBits(got: Float32Array, want: Float32Array, what: string): void {
  const g = new Uint32Array(got.buffer, got.byteOffset, got.length);
  const w = new Uint32Array(want.buffer, want.byteOffset, want.length);
  for (let i = 0; i < w.length; i++) {
    if (g[i] !== w[i]) throw new Error(`${what}: element ${i} is ${got[i]}, want ${want[i]}`);
  }
  expect(got.length).toBe(want.length);
}

/** For each output element of a broadcast, the element of a and of b it reads. */
function broadcastIndex(aShape: number[], bShape: number[]): { ia: number[]; ib: number[] } {
  const ndim = Math.max(aShape.length, bShape.length);
  const pa = [...Array(ndim - aShape.length).fill(1), ...aShape];
  const pb = [...Array(ndim - bShape.length).fill(1), ...bShape];
  const shape = pa.map((d, i) => Math.max(d, pb[i]!));
  const size = shape.reduce((p, d) => p * d, 1);
  const ia: number[] = [];
  const ib: number[] = [];
  for (let i = 0; i < size; i++) {
    let rest = i;
    let a = 0;
    let b = 0;
    let sa = 1;
    let sb = 1;
    for (let d = ndim - 1; d >= 0; d--) {
      const c = rest % shape[d]!;
      rest = Math.floor(rest / shape[d]!);
      if (pa[d] !== 1) a += c * sa;
      if (pb[d] !== 1) b += c * sb;
      sa *= pa[d]!;
      sb *= pb[d]!;
    }
    ia.push(a);
    ib.push(b);
  }
  return { ia, ib };
}

/** d(a op b)/da and d(a op b)/db in float64. */
const PARTIALS: Record<string, (x: number, y: number) => [number, number]> = {
  add: () => [1, 1],
  sub: () => [1, -1],
  mul: (x, y) => [y, x],
  div: (x, y) => [1 / y, -x / (y * y)],
};

describe("native elementwise ops in float32, float16 and bfloat16", () => {
  test("add, sub, mul and div with broadcasting are float32 arithmetic rounded once to the dtype, bit for bit", () => {
    fc.assert(
      fc.property(
        broadcastPair,
        fc.nat(1000),
        fc.constantFrom(...DTYPES),
        fc.constantFrom("add", "sub", "mul", "div"),
        ([aShape, bShape], seed, dtype, name) => {
          const [op, f] = BINARY[name as keyof typeof BINARY];
          const [ra, rb] = randomInputs([aShape!, bShape!], seed);
          const a = exact(ra!, dtype);
          const b = exact(rb!, dtype);
          using at = tensor(a, { shape: aShape, dtype });
          using bt = tensor(b, { shape: bShape, dtype });
          using c = op(at, bt);
          expect(c.dtype).toBe(dtype);
          const want = broadcast64(Float64Array.from(a), aShape!, Float64Array.from(b), bShape!, (x, y) =>
            Math.fround(f(x, y)),
          );
          expectBits(c.toArray(), exact(Float32Array.from(want), dtype), `${name} ${dtype}`);
        },
      ),
      { numRuns: 80 },
    );
  });

  test("a number operand is read as its float32 value on either side, bit for bit, in every dtype", () => {
    for (const dtype of DTYPES) {
      const x = exact(randomInputs([[37]], 5)[0]!, dtype);
      using xt = tensor(x, { dtype });
      const cases: [Tensor, (v: number) => number][] = [
        [add(xt, 0.1), (v) => v + Math.fround(0.1)],
        [sub(2.5, xt), (v) => 2.5 - v],
        [mul(xt, 1 / 3), (v) => v * Math.fround(1 / 3)],
        [div(7, xt), (v) => 7 / v],
        [scale(xt, 0.3), (v) => v * Math.fround(0.3)],
      ];
      for (const [got, f] of cases) {
        expect(got.dtype).toBe(dtype);
        expectBits(
          got.toArray(),
          exact(
            x.map((v) => Math.fround(f(v))),
            dtype,
          ),
          `${dtype} number operand`,
        );
        got.dispose();
      }
    }
  });

  test("broadcast gradients are summed to each input's shape within (eps + 2 eps32) times the summed magnitudes", () => {
    fc.assert(
      fc.property(
        broadcastPair,
        fc.nat(1000),
        fc.constantFrom(...DTYPES),
        fc.constantFrom("add", "sub", "mul", "div"),
        ([aShape, bShape], seed, dtype, name) => {
          const [op] = BINARY[name as keyof typeof BINARY];
          const [ra, rb] = randomInputs([aShape!, bShape!], seed);
          const a = exact(ra!, dtype);
          // Divisors kept away from zero.
          const b = exact(name === "div" ? rb!.map((v) => Math.abs(v) + 0.5) : rb!, dtype);
          const { ia, ib } = broadcastIndex(aShape!, bShape!);
          const r = exact(randomInputs([[ia.length]], seed + 7)[0]!, dtype);
          using at = tensor(a, { shape: aShape, dtype });
          using bt = tensor(b, { shape: bShape, dtype });
          using rt = tensor(r, { dtype });
          const [, grads] = valueAndGrad((p: { a: Tensor; b: Tensor }) => sum(mul(reshape(op(p.a, p.b), [-1]), rt)))({
            a: at,
            b: bt,
          });
          const want = [new Float64Array(a.length), new Float64Array(b.length)];
          const magnitude = [new Float64Array(a.length), new Float64Array(b.length)];
          ia.forEach((j, i) => {
            const [da, db] = PARTIALS[name]!(a[j]!, b[ib[i]!]!);
            want[0]![j]! += r[i]! * da;
            want[1]![ib[i]!]! += r[i]! * db;
            magnitude[0]![j]! += Math.abs(r[i]! * da);
            magnitude[1]![ib[i]!]! += Math.abs(r[i]! * db);
          });
          const tolerance = dtypeInfo(dtype).eps + 2 * EPS32;
          [grads.a, grads.b].forEach((grad, k) => {
            expect(grad.dtype).toBe(dtype);
            const got = grad.toArray();
            grad.dispose();
            got.forEach((v, j) => {
              const bound = tolerance * magnitude[k]![j]! + 1e-30;
              if (!(Math.abs(v - want[k]![j]!) <= bound)) {
                throw new Error(`${name} ${dtype} grad ${k}[${j}]: ${v} vs ${want[k]![j]} (bound ${bound})`);
              }
            });
          });
        },
      ),
      { numRuns: 80 },
    );
  });

  const ACTIVATIONS: [string, (x: Tensor) => Tensor, (x: number) => number, (x: number) => number, number?][] = [
    ["relu", relu, (x) => Math.max(x, 0), (x) => (x > 0 ? 1 : 0)],
    ["tanh", tanh, Math.tanh, (x) => 1 - Math.tanh(x) ** 2],
    [
      "silu",
      silu,
      (x) => x / (1 + Math.exp(-x)),
      (x) => {
        const s = 1 / (1 + Math.exp(-x));
        return s * (1 + x * (1 - s));
      },
    ],
    ["exp", exp, Math.exp, Math.exp],
    ["log", log, Math.log, (x) => 1 / x, 0.25],
    [
      "gelu",
      gelu,
      (x) => 0.5 * x * (1 + erf64(x / Math.SQRT2)),
      (x) => 0.5 * (1 + erf64(x / Math.SQRT2)) + (x * Math.exp(-0.5 * x * x)) / Math.sqrt(2 * Math.PI),
    ],
    [
      "gelu (tanh)",
      (x) => gelu(x, { approximate: "tanh" }),
      (x) => 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x ** 3))),
      (x) => {
        const c = Math.sqrt(2 / Math.PI);
        const t = Math.tanh(c * (x + 0.044715 * x ** 3));
        return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * c * (1 + 3 * 0.044715 * x * x);
      },
    ],
    ["erf", (x) => erf(x), erf64, (x) => (2 / Math.sqrt(Math.PI)) * Math.exp(-x * x)],
  ];
  for (const [name, op, f, df, positive] of ACTIVATIONS) {
    test(`${name}() and its gradient match float64 within the dtype's rounding plus 8 eps32 of approximation`, () => {
      for (const dtype of DTYPES) {
        const eps = dtypeInfo(dtype).eps;
        const raw = randomInputs([[301]], 11, 2)[0]!;
        const x = exact(positive === undefined ? raw : raw.map((v) => Math.abs(v) + positive), dtype);
        const g = exact(randomInputs([[301]], 12)[0]!, dtype);
        using xt = tensor(x, { dtype });
        using gt = tensor(g, { dtype });
        const [, grads] = valueAndGrad((p: { x: Tensor }) => sum(mul(op(p.x), gt)))({ x: xt });
        using y = op(xt);
        expect(y.dtype).toBe(dtype);
        const got = y.toArray();
        const dx = grads.x.toArray();
        grads.x.dispose();
        for (let i = 0; i < x.length; i++) {
          const want = f(x[i]!);
          // The float32 approximation (8 eps32, relative, and absolute for erf's 1.5e-7), then one
          // rounding into the dtype.
          const approximation = 8 * EPS32 * (Math.abs(want) + 1);
          const bound = 0.5 * eps * (Math.abs(want) + approximation) + approximation;
          if (!(Math.abs(got[i]! - want) <= bound)) throw new Error(`${name}(${x[i]}) ${dtype}: ${got[i]} vs ${want}`);
          // The gradient also sees the saved output rounded to the dtype (tanh, exp).
          const wantGrad = g[i]! * df(x[i]!);
          const gradBound = (eps + 8 * EPS32) * Math.abs(g[i]!) * (Math.abs(df(x[i]!)) + Math.abs(want) + 1);
          if (!(Math.abs(dx[i]! - wantGrad) <= gradBound)) {
            throw new Error(`${name}'(${x[i]}) ${dtype}: ${dx[i]} vs ${wantGrad}`);
          }
        }
      }
    });
  }

  test("swiglu(a, b) = silu(a) * b and its gradients match float64 in every dtype, and finite differences", () => {
    gradCheck(
      ([a, b]) => swiglu(a!, b!),
      ([a, b]) => a!.map((v, i) => (v / (1 + Math.exp(-v))) * b![i]!),
      [
        [5, 7],
        [5, 7],
      ],
      3,
    );
    for (const dtype of DTYPES) {
      const eps = dtypeInfo(dtype).eps;
      const [ra, rb, rg] = randomInputs([[203], [203], [203]], 21, 2);
      const a = exact(ra!, dtype);
      const b = exact(rb!, dtype);
      const g = exact(rg!, dtype);
      using at = tensor(a, { dtype });
      using bt = tensor(b, { dtype });
      using gt = tensor(g, { dtype });
      const [, grads] = valueAndGrad((p: { a: Tensor; b: Tensor }) => sum(mul(swiglu(p.a, p.b), gt)))({ a: at, b: bt });
      using y = swiglu(at, bt);
      const got = y.toArray();
      const da = grads.a.toArray();
      const db = grads.b.toArray();
      grads.a.dispose();
      grads.b.dispose();
      for (let i = 0; i < a.length; i++) {
        const s = 1 / (1 + Math.exp(-a[i]!));
        const silu64 = a[i]! * s;
        const want = [silu64 * b[i]!, g[i]! * b[i]! * s * (1 + a[i]! * (1 - s)), g[i]! * silu64];
        const values = [got[i]!, da[i]!, db[i]!];
        const scales = [Math.abs(silu64 * b[i]!), Math.abs(g[i]! * b[i]!) * 1.2, Math.abs(g[i]! * silu64)];
        values.forEach((v, k) => {
          const bound = (eps + 8 * EPS32) * (scales[k]! + 1e-3);
          if (!(Math.abs(v - want[k]!) <= bound))
            throw new Error(`swiglu ${dtype} output ${k} at ${i}: ${v} vs ${want[k]}`);
        });
      }
    }
  });

  test("every elementwise kernel and reduction gives the same bits on one and on two threads", () => {
    // 400 x 400 = 160,000 elements: above the pool's parallel threshold and the chunked full sum's.
    const shape = [400, 400];
    const runs: Uint16Array[][] | Float32Array[][] = [];
    for (const threads of [1, 2]) {
      setThreads(threads);
      const results: (Float32Array | Uint16Array)[] = [];
      for (const dtype of DTYPES) {
        const [rx, ry, rb] = randomInputs([shape, shape, [400]], 31, 2);
        using x = tensor(exact(rx!, dtype), { shape, dtype });
        using y = tensor(exact(ry!, dtype), { shape, dtype });
        using b = tensor(exact(rb!, dtype), { dtype });
        const [, grads] = valueAndGrad((p: { x: Tensor; b: Tensor }) =>
          mean(mul(swiglu(gelu(add(p.x, p.b)), y), div(tanh(p.x), add(mul(p.b, p.b), 1)))),
        )({ x, b });
        const outputs = [
          grads.x,
          grads.b,
          sum(x),
          sum(x, { axis: 0 }),
          mean(x, { axis: 1 }),
          silu(x),
          exp(x),
          erf(x),
          sub(x, b),
        ];
        for (const t of outputs) {
          results.push((t.data as Float32Array | Uint16Array).slice());
          t.dispose();
        }
      }
      (runs as (Float32Array | Uint16Array)[][]).push(results);
    }
    setThreads(0);
    const [one, two] = runs as (Float32Array | Uint16Array)[][];
    one!.forEach((r, i) => {
      expect(two![i]!.length).toBe(r.length);
      const a = new Uint8Array(r.buffer, r.byteOffset, r.byteLength);
      const b = new Uint8Array(two![i]!.buffer, two![i]!.byteOffset, two![i]!.byteLength);
      expect(Buffer.compare(a, b)).toBe(0);
    });
  });

  test("bad operands are refused with messages that name them, and nothing is allocated", () => {
    using x = tensor([1, 2, 3]);
    using y = tensor([1, 2]);
    using e4 = tensor([1, 2, 3], { dtype: "float8_e4m3fn" });
    const before = liveTensorCount();
    expect(() => add(2 as unknown as Tensor, 3)).toThrow(/both numbers/);
    expect(() => mul(x, "2" as unknown as number)).toThrow(TypeError);
    expect(() => add(x, y)).toThrow(/\[3\] and \[2\] do not broadcast/);
    expect(() => add(x, e4)).toThrow(/float8_e4m3fn: cast it to float32, float16 or bfloat16/);
    expect(() => gelu(e4)).toThrow(TypeError);
    expect(() => gelu(x, { approximate: "erf" as "none" })).toThrow(RangeError);
    expect(() => swiglu(x, y)).toThrow(/a \[3\] and b \[2\] must have one shape/);
    expect(() => scale(x, Number.NaN)).toThrow(/factor must be a number/);
    expect(() => sum(x, { axis: 2 })).toThrow(RangeError);
    expect(liveTensorCount()).toBe(before);
  });

  test("empty tensors give empty results, and sums over an empty axis are 0 (means NaN)", () => {
    using x = tensor(new Float32Array(0), { shape: [0, 3] });
    using y = add(x, 1);
    expect(y.shape).toEqual([0, 3]);
    using s = sum(x, { axis: 0 });
    expect(Array.from(s.toArray())).toEqual([0, 0, 0]);
    using m = mean(x, { axis: 0 });
    expect(Array.from(m.toArray()).every(Number.isNaN)).toBe(true);
  });
});
