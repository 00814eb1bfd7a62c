/**
 * Gradient checking for the op tests: an op's gradient (valueAndGrad through its backward pass,
 * float32 arithmetic) against central finite differences of a float64 reference of the same
 * function. The loss is sum(op(inputs) * r) for a fixed random r, so every output element matters.
 *
 * @module
 */

import { valueAndGrad } from "../src/autodiff.ts";
import { mul, reshape, sum } from "../src/ops/mod.ts";
import { randn, type Tensor, tensor } from "../src/tensor.ts";

/** A float64 reference: input value arrays -> output value array. */
export type Reference = (inputs: Float64Array[]) => Float64Array;

/** Float32-exact random inputs (so the reference sees exactly what the op sees). */
export function randomInputs(shapes: readonly (readonly number[])[], seed: number, spread = 1): Float32Array[] {
  return shapes.map((shape, i) => {
    using t = randn(shape, { seed: seed * 31 + i, std: spread });
    return t.toArray();
  });
}

export interface GradCheckOptions {
  /** Absolute and relative tolerance of |analytic - numeric| (defaults 2e-4, 2e-3). */
  readonly atol?: number;
  readonly rtol?: number;
  /** Finite-difference step (default 1e-5). */
  readonly step?: number;
  /** Which inputs to check (default all). */
  readonly check?: readonly number[];
}

/** Returns the worst violation (0 when all within tolerance) and throws with details otherwise. */
export function gradCheck(
  op: (inputs: Tensor[]) => Tensor,
  reference: Reference,
  shapes: readonly (readonly number[])[],
  seed: number,
  options: GradCheckOptions = {},
): void {
  const atol = options.atol ?? 2e-4;
  const rtol = options.rtol ?? 2e-3;
  const step = options.step ?? 1e-5;
  const data = randomInputs(shapes, seed);
  const inputs = data.map((values, i) => tensor(values, { shape: shapes[i] }));
  const f64 = data.map((values) => Float64Array.from(values));
  const outLength = reference(f64).length;
  const weights = randomInputs([[outLength]], seed + 1000)[0]!;
  const loss64 = (xs: Float64Array[]) => {
    const out = reference(xs);
    let total = 0;
    for (let i = 0; i < out.length; i++) total += out[i]! * weights[i]!;
    return total;
  };
  const r = tensor(weights);
  try {
    const [, grads] = valueAndGrad((params: { xs: Tensor[] }) => {
      const out = op(params.xs);
      if (out.size !== outLength) throw new Error(`op gives ${out.size} elements, reference ${outLength}`);
      return sum(mul(reshape(out, [-1]), r));
    })({ xs: inputs });
    const checked = options.check ?? shapes.map((_, i) => i);
    try {
      for (const i of checked) {
        const analytic = grads.xs[i]!.toArray();
        const x = f64[i]!;
        for (let j = 0; j < x.length; j++) {
          const saved = x[j]!;
          x[j] = saved + step;
          const plus = loss64(f64);
          x[j] = saved - step;
          const minus = loss64(f64);
          x[j] = saved;
          const numeric = (plus - minus) / (2 * step);
          if (!(Math.abs(analytic[j]! - numeric) <= atol + rtol * Math.abs(numeric))) {
            throw new Error(
              `gradient of input ${i} element ${j}: analytic ${analytic[j]} vs finite difference ${numeric} (shapes ${JSON.stringify(shapes)}, seed ${seed})`,
            );
          }
        }
      }
    } finally {
      for (const g of grads.xs) g.dispose();
    }
  } finally {
    r.dispose();
    for (const t of inputs) t.dispose();
  }
}

/** Forward values of an op against its float64 reference, within atol + rtol * |ref|. */
export function forwardCheck(
  op: (inputs: Tensor[]) => Tensor,
  reference: Reference,
  shapes: readonly (readonly number[])[],
  seed: number,
  atol = 1e-5,
  rtol = 1e-5,
): void {
  const data = randomInputs(shapes, seed);
  const inputs = data.map((values, i) => tensor(values, { shape: shapes[i] }));
  try {
    using out = op(inputs);
    const got = out.toArray();
    const want = reference(data.map((values) => Float64Array.from(values)));
    if (got.length !== want.length) throw new Error(`length ${got.length} vs ${want.length}`);
    for (let i = 0; i < got.length; i++) {
      if (!(Math.abs(got[i]! - want[i]!) <= atol + rtol * Math.abs(want[i]!))) {
        throw new Error(`element ${i}: ${got[i]} vs reference ${want[i]} (shapes ${JSON.stringify(shapes)})`);
      }
    }
  } finally {
    for (const t of inputs) t.dispose();
  }
}

/** float64 reference matmul of [batch, m, k] x [batch|1, k, n]. */
export function refMatmul(
  a: Float64Array,
  b: Float64Array,
  batch: number,
  m: number,
  k: number,
  n: number,
  shared: boolean,
): Float64Array {
  const out = new Float64Array(batch * m * n);
  for (let t = 0; t < batch; t++) {
    const bOff = shared ? 0 : t * k * n;
    for (let i = 0; i < m; i++) {
      for (let j = 0; j < n; j++) {
        let s = 0;
        for (let p = 0; p < k; p++) s += a[t * m * k + i * k + p]! * b[bOff + p * n + j]!;
        out[t * m * n + i * n + j] = s;
      }
    }
  }
  return out;
}
