import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import { valueAndGrad } from "../../src/autodiff.ts";
import { type DtypeName, dtypeInfo } from "../../src/dtype.ts";
import { setThreads } from "../../src/mod.ts";
import { layerNorm, mul, rmsNorm, sum } from "../../src/ops/mod.ts";
import { type Tensor, tensor } from "../../src/tensor.ts";
import { gradCheck, randomInputs } from "../_gradcheck.ts";

function layerNorm64(x: Float64Array, w: Float64Array | null, b: Float64Array | null, width: number, eps: number) {
  const out = new Float64Array(x.length);
  for (let r = 0; r < x.length / width; r++) {
    const row = x.subarray(r * width, (r + 1) * width);
    const mean = row.reduce((p, v) => p + v, 0) / width;
    const variance = row.reduce((p, v) => p + (v - mean) ** 2, 0) / width;
    for (let j = 0; j < width; j++) {
      out[r * width + j] = ((row[j]! - mean) / Math.sqrt(variance + eps)) * (w ? w[j]! : 1) + (b ? b[j]! : 0);
    }
  }
  return out;
}

function rmsNorm64(x: Float64Array, w: Float64Array | null, width: number, eps: number) {
  const out = new Float64Array(x.length);
  for (let r = 0; r < x.length / width; r++) {
    const row = x.subarray(r * width, (r + 1) * width);
    const ms = row.reduce((p, v) => p + v * v, 0) / width;
    for (let j = 0; j < width; j++) out[r * width + j] = (row[j]! / Math.sqrt(ms + eps)) * (w ? w[j]! : 1);
  }
  return out;
}

describe("norm", () => {
  test("layerNorm() gradients (input, weight, bias) match finite differences", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 3 }),
        fc.integer({ min: 2, max: 6 }),
        fc.boolean(),
        fc.nat(1000),
        (rows, width, affine, seed) => {
          const shapes = affine ? [[rows, width], [width], [width]] : [[rows, width]];
          gradCheck(
            (xs) => layerNorm(xs[0]!, xs[1], xs[2], 1e-5),
            (xs) => layerNorm64(xs[0]!, xs[1] ?? null, xs[2] ?? null, width, 1e-5),
            shapes,
            seed,
            { atol: 1e-3, rtol: 5e-3 },
          );
        },
      ),
      { numRuns: 20 },
    );
  });

  test("rmsNorm() gradients (input, weight) match finite differences", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 3 }),
        fc.integer({ min: 1, max: 6 }),
        fc.boolean(),
        fc.nat(1000),
        (rows, width, affine, seed) => {
          const shapes = affine ? [[rows, width], [width]] : [[rows, width]];
          gradCheck(
            (xs) => rmsNorm(xs[0]!, xs[1], 1e-6),
            (xs) => rmsNorm64(xs[0]!, xs[1] ?? null, width, 1e-6),
            shapes,
            seed,
            { atol: 1e-3, rtol: 5e-3 },
          );
        },
      ),
      { numRuns: 20 },
    );
  });

  test("layerNorm() refuses a weight of the wrong width", () => {
    using x = tensor([[1, 2, 3]]);
    using w = tensor([1, 2]);
    expect(() => layerNorm(x, w)).toThrow(/must be \[3\]/);
  });

  test("layerNorm() and rmsNorm() accept any eps, such as LLaMA's 1e-5 and 1e-6, and refuse a negative one", () => {
    using x = tensor([[1, 2, 3, 4]]);
    for (const eps of [0, 1e-6, 1e-5, 0.5]) {
      using y = rmsNorm(x, null, eps);
      const rms = Math.sqrt(7.5 + eps);
      expect(Math.abs(y.toArray()[3]! - 4 / rms)).toBeLessThan(1e-6);
      using z = layerNorm(x, null, null, eps);
      expect(Math.abs(z.toArray()[3]! - 1.5 / Math.sqrt(1.25 + eps))).toBeLessThan(1e-6);
    }
    expect(() => rmsNorm(x, null, -1)).toThrow(/eps must be a finite number >= 0/);
    expect(() => layerNorm(x, null, null, Number.NaN)).toThrow(RangeError);
  });
});

/** float64 forward and analytic backward of layer norm (kind "layer") or RMS norm ("rms"). */
function norm64(
  kind: "layer" | "rms",
  x: Float32Array,
  w: Float32Array,
  b: Float32Array,
  g: Float32Array,
  width: number,
  eps: number,
) {
  const rows = x.length / width;
  const y = new Float64Array(x.length);
  const dx = new Float64Array(x.length);
  const dw = new Float64Array(width);
  const db = new Float64Array(width);
  // Magnitudes of the summed terms, for the float32 arithmetic's share of the tolerance.
  const dwScale = new Float64Array(width);
  const dbScale = new Float64Array(width);
  for (let r = 0; r < rows; r++) {
    const o = r * width;
    let mean = 0;
    if (kind === "layer") {
      for (let j = 0; j < width; j++) mean += x[o + j]!;
      mean /= width;
    }
    let squares = 0;
    for (let j = 0; j < width; j++) squares += (x[o + j]! - mean) ** 2;
    const rstd = 1 / Math.sqrt(squares / width + eps);
    let sumDn = 0;
    let sumDnXhat = 0;
    for (let j = 0; j < width; j++) {
      const xhat = (x[o + j]! - mean) * rstd;
      y[o + j] = xhat * w[j]! + (kind === "layer" ? b[j]! : 0);
      const dn = g[o + j]! * w[j]!;
      sumDn += dn;
      sumDnXhat += dn * xhat;
      dw[j]! += g[o + j]! * xhat;
      db[j]! += g[o + j]!;
      dwScale[j]! += Math.abs(g[o + j]! * xhat);
      dbScale[j]! += Math.abs(g[o + j]!);
    }
    const meanDn = kind === "layer" ? sumDn / width : 0;
    for (let j = 0; j < width; j++) {
      const xhat = (x[o + j]! - mean) * rstd;
      dx[o + j] = rstd * (g[o + j]! * w[j]! - meanDn - (xhat * sumDnXhat) / width);
    }
  }
  return { y, dx, dw, db, dwScale, dbScale };
}

/** Values of `shape` rounded to `dtype` (returned as the exact float32 values of the rounded bits). */
function roundedInputs(shape: number[], dtype: DtypeName, seed: number): Float32Array {
  const [values] = randomInputs([shape], seed);
  using t = tensor(values!, { dtype, shape });
  return t.toArray();
}

/**
 * |got - want| within half an ulp of the dtype (the one rounding on store) plus the float32
 * arithmetic's share: `terms` (the size of what was summed) times 2^-20, 16 float32 ulp (2^-24).
 */
function expectClose(
  got: Float32Array,
  want: Float64Array,
  dtype: DtypeName,
  terms: (i: number) => number,
  what: string,
) {
  const { eps, minSubnormal } = dtypeInfo(dtype);
  for (let i = 0; i < want.length; i++) {
    // Half an ulp: eps / 2 relative for normal values, half the subnormal spacing below them.
    const half = Math.max((eps / 2) * Math.abs(want[i]!), minSubnormal / 2);
    const bound = half + 2 ** -20 * terms(i);
    if (!(Math.abs(got[i]! - want[i]!) <= bound)) {
      throw new Error(`${what} element ${i} in ${dtype}: ${got[i]} vs float64 ${want[i]} (bound ${bound})`);
    }
  }
}

describe("norm in float32, float16 and bfloat16", () => {
  for (const dtype of ["float32", "float16", "bfloat16"] as const) {
    for (const kind of ["layer", "rms"] as const) {
      test(`${kind === "layer" ? "layerNorm" : "rmsNorm"}() in ${dtype} matches float64 within half an ulp plus float32 arithmetic, forward and backward`, () => {
        const rows = 6;
        const width = 37;
        const x = roundedInputs([rows, width], dtype, 11);
        const w = roundedInputs([width], dtype, 12);
        const b = roundedInputs([width], dtype, 13);
        const g = roundedInputs([rows, width], dtype, 14);
        const eps = 1e-5;
        const want = norm64(kind, x, w, b, g, width, eps);
        using xt = tensor(x, { dtype, shape: [rows, width] });
        using wt = tensor(w, { dtype });
        using bt = tensor(b, { dtype });
        using gt = tensor(g, { dtype, shape: [rows, width] });
        const apply = (p: { x: Tensor; w: Tensor; b: Tensor }) =>
          kind === "layer" ? layerNorm(p.x, p.w, p.b, eps) : rmsNorm(p.x, p.w, eps);
        using y = apply({ x: xt, w: wt, b: bt });
        expect(y.dtype).toBe(dtype);
        const scale = (i: number) => 1 + Math.abs(w[i % width]!) * 4 + Math.abs(b[i % width]!);
        expectClose(y.toArray(), want.y, dtype, scale, "y");
        const [, grads] = valueAndGrad((p: { x: Tensor; w: Tensor; b: Tensor }) => sum(mul(apply(p), gt)))({
          x: xt,
          w: wt,
          b: bt,
        });
        try {
          expect(grads.x.dtype).toBe(dtype);
          expect(grads.w.dtype).toBe(dtype);
          // dx sums width products of magnitude about |g w| rstd: a width-sized float32 term.
          expectClose(grads.x.toArray(), want.dx, dtype, () => width * 4, "dx");
          expectClose(grads.w.toArray(), want.dw, dtype, (j) => 1 + want.dwScale[j]!, "dweight");
          if (kind === "layer") expectClose(grads.b.toArray(), want.db, dtype, (j) => 1 + want.dbScale[j]!, "dbias");
        } finally {
          grads.x.dispose();
          grads.w.dispose();
          grads.b.dispose();
        }
      });
    }
  }
});

describe("norm threads", () => {
  test("layerNorm() and rmsNorm() give the same bits, forward and backward, on 1 and 2 threads", () => {
    const rows = 300;
    const width = 520; // 156,000 elements: above the pool's 65,536-element threshold.
    const runs: Float32Array[][] = [];
    for (const threads of [1, 2]) {
      setThreads(threads);
      try {
        const [xv, wv, bv, gv] = randomInputs([[rows, width], [width], [width], [rows, width]], 5);
        using x = tensor(xv!, { dtype: "bfloat16", shape: [rows, width] });
        using w = tensor(wv!, { dtype: "bfloat16" });
        using b = tensor(bv!, { dtype: "bfloat16" });
        using g = tensor(gv!, { dtype: "bfloat16", shape: [rows, width] });
        const outputs: Float32Array[] = [];
        for (const kind of ["layer", "rms"]) {
          const apply = (p: { x: Tensor; w: Tensor; b: Tensor }) =>
            kind === "layer" ? layerNorm(p.x, p.w, p.b) : rmsNorm(p.x, p.w, 1e-5);
          using y = apply({ x, w, b });
          outputs.push(y.toArray());
          const [, grads] = valueAndGrad((p: { x: Tensor; w: Tensor; b: Tensor }) => sum(mul(apply(p), g)))({
            x,
            w,
            b,
          });
          for (const t of [grads.x, grads.w, grads.b]) {
            outputs.push(t.toArray());
            t.dispose();
          }
        }
        runs.push(outputs);
      } finally {
        setThreads(0);
      }
    }
    for (let i = 0; i < runs[0]!.length; i++) expect(runs[1]![i]!).toEqual(runs[0]![i]!);
  });
});

describe("norm negative space", () => {
  test("layerNorm() refuses a float8 input, a bias of the wrong shape and a scalar, before writing anything", () => {
    using x = tensor([[1, 2, 3]]);
    using x8 = tensor([[1, 2, 3]], { dtype: "float8_e4m3fn" });
    using bias = tensor([[1, 2, 3]]);
    const before = [...x.toArray()];
    expect(() => layerNorm(x8)).toThrow(/cast it to float32, float16 or bfloat16/);
    expect(() => layerNorm(x, null, bias)).toThrow(/bias \[1, 3\] must be \[3\]/);
    expect(() => rmsNorm(tensor(1))).toThrow(/at least one dimension/);
    expect([...x.toArray()]).toEqual(before);
  });

  test("norms of zero rows are empty and a constant row normalizes to the bias", () => {
    using empty = tensor(new Float32Array(0), { shape: [0, 4] });
    using y = layerNorm(empty);
    expect(y.shape).toEqual([0, 4]);
    using x = tensor([[2, 2, 2]], { dtype: "bfloat16" });
    using b = tensor([1, -1, 0.5], { dtype: "bfloat16" });
    using z = layerNorm(x, null, b);
    expect([...z.toArray()]).toEqual([1, -1, 0.5]);
  });
});
