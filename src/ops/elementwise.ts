/**
 * Elementwise ops with NumPy broadcasting: add, sub, mul, div, scale and the activations relu,
 * gelu, silu, tanh, exp, log. Each computes in float32 with TypeScript loops over float32 views
 * (JIT-compiled; no FFI call per op) and rounds once to the dtype autocast picks. Only matmul is
 * native: it is where a small model's time goes.
 *
 * @module
 */

import { ptr } from "bun:ffi";
import { check, native } from "../_ffi.ts";
import { record } from "../autodiff.ts";
import type { Tensor } from "../tensor.ts";
import { autocastDtype } from "./_autocast.ts";
import {
  type Broadcast,
  broadcastPlan,
  broadcastShapes,
  checkTensor,
  fromValues,
  gather,
  output,
  reduceTo,
  toDtype,
  values,
} from "./_util.ts";

type BinaryName = "add" | "sub" | "mul" | "div";

function binary(op: BinaryName, a: Tensor, b: Tensor): Tensor {
  checkTensor(a, op, "a");
  checkTensor(b, op, "b");
  const shape = broadcastShapes(a.shape, b.shape, op);
  const dtype = autocastDtype(op, [a.dtype, b.dtype]);
  const ac = toDtype(a, dtype);
  const bc = toDtype(b, dtype);
  const planA = broadcastPlan(ac.shape, shape);
  const planB = broadcastPlan(bc.shape, shape);
  const av = values(ac);
  const bv = values(bc);
  const result = output(shape, dtype, (out) => {
    const n = out.length;
    const x = gather(planA, av, n);
    const y = planB.kind === "scalar" ? null : gather(planB, bv, n);
    const s = bv[0] ?? 0;
    if (op === "add") {
      if (y === null) for (let i = 0; i < n; i++) out[i] = x[i]! + s;
      else for (let i = 0; i < n; i++) out[i] = x[i]! + y[i]!;
    } else if (op === "sub") {
      if (y === null) for (let i = 0; i < n; i++) out[i] = x[i]! - s;
      else for (let i = 0; i < n; i++) out[i] = x[i]! - y[i]!;
    } else if (op === "mul") {
      if (y === null) for (let i = 0; i < n; i++) out[i] = x[i]! * s;
      else for (let i = 0; i < n; i++) out[i] = x[i]! * y[i]!;
    } else {
      if (y === null) for (let i = 0; i < n; i++) out[i] = x[i]! / s;
      else for (let i = 0; i < n; i++) out[i] = x[i]! / y[i]!;
    }
  });
  return record(result, [ac, bc], (g) => binaryBackward(op, g, ac, bc, planA, planB));
}

function binaryBackward(
  op: BinaryName,
  g: Tensor,
  a: Tensor,
  b: Tensor,
  planA: Broadcast,
  planB: Broadcast,
): (Tensor | null)[] {
  const gv = values(g);
  const n = gv.length;
  const dtype = g.dtype;
  if (op === "add" || op === "sub") {
    const ga = fromValues(reduceTo(planA, gv, a.size), a.shape, dtype);
    let gb = reduceTo(planB, gv, b.size);
    if (op === "sub") gb = gb === gv ? gv.map((v) => -v) : gb.map((v) => -v);
    return [ga, fromValues(gb, b.shape, dtype)];
  }
  const x = gather(planA, values(a), n);
  const y = gather(planB, values(b), n);
  const da = new Float32Array(n);
  const db = new Float32Array(n);
  if (op === "mul") {
    for (let i = 0; i < n; i++) {
      da[i] = gv[i]! * y[i]!;
      db[i] = gv[i]! * x[i]!;
    }
  } else {
    for (let i = 0; i < n; i++) {
      const yi = y[i]!;
      da[i] = gv[i]! / yi;
      db[i] = (-gv[i]! * x[i]!) / (yi * yi);
    }
  }
  return [
    fromValues(reduceTo(planA, da, a.size), a.shape, dtype),
    fromValues(reduceTo(planB, db, b.size), b.shape, dtype),
  ];
}

/**
 * `a + b` with NumPy broadcasting, in autocast's "add" dtype (the widest input by default).
 *
 * @param a A tensor.
 * @param b A tensor whose shape broadcasts with a's.
 * @returns The sum.
 * @example
 * ```ts
 * import { add } from "./elementwise.ts";
 * import { tensor } from "../tensor.ts";
 * using a = tensor([[1, 2], [3, 4]]);
 * using b = tensor([10, 20]);
 * using c = add(a, b);
 * if (c.toArray().join() !== "11,22,13,24") throw new Error("broadcast add");
 * ```
 */
export function add(a: Tensor, b: Tensor): Tensor {
  return binary("add", a, b);
}

/**
 * `a - b` with broadcasting.
 *
 * @param a A tensor.
 * @param b A tensor broadcasting with a.
 * @returns The difference.
 * @example
 * ```ts
 * import { sub } from "./elementwise.ts";
 * import { tensor } from "../tensor.ts";
 * using c = sub(tensor([5, 7]), tensor(2));
 * if (c.toArray().join() !== "3,5") throw new Error("broadcast sub");
 * ```
 */
export function sub(a: Tensor, b: Tensor): Tensor {
  return binary("sub", a, b);
}

/**
 * `a * b` with broadcasting.
 *
 * @param a A tensor.
 * @param b A tensor broadcasting with a.
 * @returns The product.
 * @example
 * ```ts
 * import { mul } from "./elementwise.ts";
 * import { tensor } from "../tensor.ts";
 * using c = mul(tensor([2, 3]), tensor([4, 5]));
 * if (c.toArray().join() !== "8,15") throw new Error("mul");
 * ```
 */
export function mul(a: Tensor, b: Tensor): Tensor {
  return binary("mul", a, b);
}

/**
 * `a / b` with broadcasting.
 *
 * @param a A tensor.
 * @param b A tensor broadcasting with a.
 * @returns The quotient.
 * @example
 * ```ts
 * import { div } from "./elementwise.ts";
 * import { tensor } from "../tensor.ts";
 * using c = div(tensor([1, 3]), tensor([2, 4]));
 * if (c.toArray().join() !== "0.5,0.75") throw new Error("div");
 * ```
 */
export function div(a: Tensor, b: Tensor): Tensor {
  return binary("div", a, b);
}

/**
 * `x * factor` for a number factor (rounded to float32), in x's dtype.
 *
 * @param x A tensor.
 * @param factor A finite number.
 * @returns The scaled tensor.
 * @example
 * ```ts
 * import { scale } from "./elementwise.ts";
 * import { tensor } from "../tensor.ts";
 * using y = scale(tensor([1, -2]), 0.5);
 * if (y.toArray().join() !== "0.5,-1") throw new Error("scale");
 * ```
 */
export function scale(x: Tensor, factor: number): Tensor {
  checkTensor(x, "scale", "x");
  if (typeof factor !== "number" || Number.isNaN(factor)) {
    throw new TypeError(`scale: factor must be a number, got ${String(factor)}`);
  }
  const f = Math.fround(factor);
  const xv = values(x);
  const result = output(x.shape, x.dtype, (out) => {
    for (let i = 0; i < out.length; i++) out[i] = xv[i]! * f;
  });
  return record(result, [x], (g) => {
    const gv = values(g);
    const d = new Float32Array(gv.length);
    for (let i = 0; i < d.length; i++) d[i] = gv[i]! * f;
    return [fromValues(d, x.shape, g.dtype)];
  });
}

/** d(out)/d(in) per element from the input value x and the output value y. */
type Derivative = (x: Float32Array, y: Float32Array, g: Float32Array, out: Float32Array) => void;

function unary(
  op: string,
  x: Tensor,
  forward: (x: Float32Array, out: Float32Array) => void,
  derivative: Derivative,
): Tensor {
  checkTensor(x, op, "x");
  const dtype = autocastDtype(op, [x.dtype]);
  const xc = toDtype(x, dtype);
  const xv = values(xc);
  const result = output(xc.shape, dtype, (out) => forward(xv, out));
  return record(result, [xc], (g) => {
    const d = new Float32Array(g.size);
    derivative(values(xc), values(result), values(g), d);
    return [fromValues(d, xc.shape, dtype)];
  });
}

/**
 * max(x, 0); NaN stays NaN (so non-finite checks still see it).
 *
 * @param x A tensor.
 * @returns relu(x).
 * @example
 * ```ts
 * import { relu } from "./elementwise.ts";
 * import { tensor } from "../tensor.ts";
 * using y = relu(tensor([-1, 2]));
 * if (y.toArray().join() !== "0,2") throw new Error("relu");
 * ```
 */
export function relu(x: Tensor): Tensor {
  return unary(
    "relu",
    x,
    (v, out) => {
      for (let i = 0; i < v.length; i++) out[i] = v[i]! <= 0 ? 0 : v[i]!; // NaN passes through
    },
    (v, _y, g, out) => {
      for (let i = 0; i < v.length; i++) out[i] = v[i]! > 0 ? g[i]! : 0;
    },
  );
}

/**
 * tanh(x).
 *
 * @param x A tensor.
 * @returns tanh(x).
 * @example
 * ```ts
 * import { tanh } from "./elementwise.ts";
 * import { tensor } from "../tensor.ts";
 * using y = tanh(tensor([0]));
 * if (y.toArray()[0] !== 0) throw new Error("tanh");
 * ```
 */
export function tanh(x: Tensor): Tensor {
  return unary(
    "tanh",
    x,
    (v, out) => {
      for (let i = 0; i < v.length; i++) out[i] = Math.tanh(v[i]!);
    },
    (_v, y, g, out) => {
      for (let i = 0; i < y.length; i++) out[i] = g[i]! * (1 - y[i]! * y[i]!);
    },
  );
}

/**
 * SiLU (swish): x * sigmoid(x).
 *
 * @param x A tensor.
 * @returns silu(x).
 * @example
 * ```ts
 * import { silu } from "./elementwise.ts";
 * import { tensor } from "../tensor.ts";
 * using y = silu(tensor([0]));
 * if (y.toArray()[0] !== 0) throw new Error("silu");
 * ```
 */
export function silu(x: Tensor): Tensor {
  return unary(
    "silu",
    x,
    (v, out) => {
      for (let i = 0; i < v.length; i++) out[i] = v[i]! / (1 + Math.exp(-v[i]!));
    },
    (v, _y, g, out) => {
      for (let i = 0; i < v.length; i++) {
        const s = 1 / (1 + Math.exp(-v[i]!));
        out[i] = g[i]! * s * (1 + v[i]! * (1 - s));
      }
    },
  );
}

/**
 * exp(x).
 *
 * @param x A tensor.
 * @returns exp(x).
 * @example
 * ```ts
 * import { exp } from "./elementwise.ts";
 * import { tensor } from "../tensor.ts";
 * using y = exp(tensor([0]));
 * if (y.toArray()[0] !== 1) throw new Error("exp");
 * ```
 */
export function exp(x: Tensor): Tensor {
  return unary(
    "exp",
    x,
    (v, out) => {
      for (let i = 0; i < v.length; i++) out[i] = Math.exp(v[i]!);
    },
    (_v, y, g, out) => {
      for (let i = 0; i < y.length; i++) out[i] = g[i]! * y[i]!;
    },
  );
}

/**
 * Natural log.
 *
 * @param x A tensor.
 * @returns log(x).
 * @example
 * ```ts
 * import { log } from "./elementwise.ts";
 * import { tensor } from "../tensor.ts";
 * using y = log(tensor([1]));
 * if (y.toArray()[0] !== 0) throw new Error("log");
 * ```
 */
export function log(x: Tensor): Tensor {
  return unary(
    "log",
    x,
    (v, out) => {
      for (let i = 0; i < v.length; i++) out[i] = Math.log(v[i]!);
    },
    (v, _y, g, out) => {
      for (let i = 0; i < v.length; i++) out[i] = g[i]! / v[i]!;
    },
  );
}

const SQRT_HALF = Math.SQRT1_2;
const INV_SQRT_2PI = 1 / Math.sqrt(2 * Math.PI);
const GELU_TANH_C = Math.sqrt(2 / Math.PI);

/**
 * erf(x) to within 1.5e-7 absolute (Abramowitz and Stegun 7.1.26: one exp and a degree-5
 * polynomial), enough for float32 results.
 *
 * @param x A number.
 * @returns erf(x).
 * @example
 * ```ts
 * import { erf } from "./elementwise.ts";
 * if (Math.abs(erf(1) - 0.8427007929497149) > 2e-7) throw new Error("erf");
 * ```
 */
export function erf(x: number): number {
  const z = x < 0 ? -x : x;
  const t = 1 / (1 + 0.3275911 * z);
  const poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
  const r = 1 - poly * Math.exp(-z * z);
  return x < 0 ? -r : r;
}

/**
 * The TypeScript reference of the native exact GELU: out = x * Phi(x), cdf = Phi(x), and the
 * gradient g * (Phi(x) + x * phi(x)). @internal
 */
export function geluReference(x: Float32Array, g: Float32Array): { out: Float32Array; grad: Float32Array } {
  const out = new Float32Array(x.length);
  const grad = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) {
    const u = x[i]!;
    const p = 0.5 * (1 + erf(u * SQRT_HALF));
    out[i] = u * p;
    grad[i] = g[i]! * (p + u * INV_SQRT_2PI * Math.exp(-0.5 * u * u));
  }
  return { out, grad };
}

/** Options of {@linkcode gelu}. */
export interface GeluOptions {
  /** "none": x Phi(x) with the exact normal CDF (PyTorch's default); "tanh": GPT-2's approximation. */
  readonly approximate?: "none" | "tanh";
}

/**
 * GELU, exact (x * Phi(x)) or with the tanh approximation.
 *
 * @param x A tensor.
 * @param options approximate: "none" (default) or "tanh".
 * @returns gelu(x).
 * @example
 * ```ts
 * import { gelu } from "./elementwise.ts";
 * import { tensor } from "../tensor.ts";
 * using y = gelu(tensor([0, 10]));
 * if (y.toArray()[0] !== 0 || Math.abs(y.toArray()[1]! - 10) > 1e-5) throw new Error("gelu");
 * ```
 */
export function gelu(x: Tensor, options: GeluOptions = {}): Tensor {
  const approximate = options.approximate ?? "none";
  if (approximate !== "none" && approximate !== "tanh") {
    throw new RangeError(`gelu: approximate must be "none" or "tanh", got ${JSON.stringify(approximate)}`);
  }
  if (approximate === "tanh") {
    return unary(
      "gelu",
      x,
      (v, out) => {
        for (let i = 0; i < v.length; i++) {
          const u = v[i]!;
          out[i] = 0.5 * u * (1 + Math.tanh(GELU_TANH_C * (u + 0.044715 * u * u * u)));
        }
      },
      (v, _y, g, out) => {
        for (let i = 0; i < v.length; i++) {
          const u = v[i]!;
          const th = Math.tanh(GELU_TANH_C * (u + 0.044715 * u * u * u));
          const dinner = GELU_TANH_C * (1 + 3 * 0.044715 * u * u);
          out[i] = g[i]! * (0.5 * (1 + th) + 0.5 * u * (1 - th * th) * dinner);
        }
      },
    );
  }
  checkTensor(x, "gelu", "x");
  const dtype = autocastDtype("gelu", [x.dtype]);
  const xc = toDtype(x, dtype);
  const xv = values(xc);
  // The normal CDF of every element, kept for the backward pass (so erf runs once per element).
  // Native SIMD (zig/src/cpu/activation.zig); geluReference below is the TypeScript reference.
  const cdf = new Float32Array(xv.length);
  const result = output(xc.shape, dtype, (out) => {
    if (out.length > 0) check(native().mp_gelu(ptr(xv), ptr(out), ptr(cdf), out.length), "gelu");
  });
  return record(result, [xc], (g) => {
    const gv = values(g);
    const v = values(xc);
    return [
      output(xc.shape, dtype, (d) => {
        if (d.length > 0)
          check(native().mp_gelu_backward(ptr(v), ptr(cdf), ptr(gv), ptr(d), d.length), "gelu backward");
      }),
    ];
  });
}

export { toDtype };
