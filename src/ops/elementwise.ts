/**
 * Elementwise ops with NumPy broadcasting: add, sub, mul, div (each also with a number for either
 * operand), scale, the activations relu, gelu, silu, tanh, exp, log, erf, and the fused gated MLP
 * swiglu. All are native (zig/src/ops/elementwise.zig through `backendOf(device)`): they compute
 * in float32 registers and store in the dtype autocast picks, so a bfloat16 or float16 tensor is
 * never widened to a float32 copy, and gradients (summed over broadcast dimensions in float64,
 * deterministically) come back in the input's dtype.
 *
 * @module
 */

import { record } from "../autodiff.ts";
import { backendOf } from "../backend/backend.ts";
import { Activation, type ActivationCode, MapOp, type MapOpCode } from "../backend/cpu/elementwise.ts";
import type { DtypeName } from "../dtype.ts";
import type { Device, Shape, Tensor } from "../tensor.ts";
import { autocastDtype } from "./_autocast.ts";
import { broadcastStrides, mapSpace, reducedDims } from "./_map.ts";
import { broadcastShapes, checkTensor, empty, shapeText, toDtype } from "./_util.ts";

type BinaryName = "add" | "sub" | "mul" | "div";

/** A tensor, or a number read as a float32 constant of the op's dtype everywhere. */
export type Operand = Tensor | number;

const BINARY_OP: Record<BinaryName, MapOpCode> = { add: MapOp.add, sub: MapOp.sub, mul: MapOp.mul, div: MapOp.div };

function checkOperand(value: unknown, op: string, name: string): Operand {
  if (typeof value === "number") return value;
  return checkTensor(value, op, name);
}

function shapeOf(x: Operand): Shape {
  return typeof x === "number" ? [] : x.shape;
}

/** Runs the map kernel into a new tensor of `shape` over `space`-shaped operands (no reduction). */
function mapInto(
  op: string,
  code: MapOpCode,
  shape: Shape,
  dtype: DtypeName,
  device: Device,
  operands: readonly Operand[],
  scale = 1,
): Tensor {
  const target = empty(shape, dtype, device);
  const space = mapSpace(
    op,
    shape,
    shape.map(() => false),
    operands.map((x) => broadcastStrides(shapeOf(x), shape)),
  );
  backendOf(device).elementwiseMap(code, target, operands, space, scale);
  return target;
}

/**
 * A new tensor of `targetShape`: scale * f(operands) over the broadcast space `space`, summed over
 * the dimensions the target broadcasts along (a gradient reduced to its input's shape).
 */
function reduceInto(
  op: string,
  code: MapOpCode,
  targetShape: Shape,
  space: readonly number[],
  dtype: DtypeName,
  device: Device,
  operands: readonly Operand[],
  scale: number,
): Tensor {
  const target = empty(targetShape, dtype, device);
  const layout = mapSpace(
    op,
    space,
    reducedDims(targetShape, space),
    operands.map((x) => broadcastStrides(shapeOf(x), space)),
  );
  backendOf(device).elementwiseMap(code, target, operands, layout, scale);
  return target;
}

function binary(op: BinaryName, a: Operand, b: Operand): Tensor {
  checkOperand(a, op, "a");
  checkOperand(b, op, "b");
  if (typeof a === "number" && typeof b === "number") {
    throw new TypeError(
      `${op}: a and b are both numbers (${a}, ${b}): pass at least one Tensor, or use plain arithmetic`,
    );
  }
  const tensors = [a, b].filter((x): x is Tensor => typeof x !== "number");
  const device = tensors[0]!.device;
  if (tensors.some((t) => t.device !== device)) {
    throw new TypeError(
      `${op}: a is on ${(a as Tensor).device} and b on ${(b as Tensor).device}: move both to one device with .to()`,
    );
  }
  const shape = broadcastShapes(shapeOf(a), shapeOf(b), op);
  const dtype = autocastDtype(
    op,
    tensors.map((t) => t.dtype),
    device,
  );
  const ac = typeof a === "number" ? a : toDtype(a, dtype);
  const bc = typeof b === "number" ? b : toDtype(b, dtype);
  const result = mapInto(op, BINARY_OP[op], shape, dtype, device, [ac, bc]);
  const inputs = [ac, bc].filter((x): x is Tensor => typeof x !== "number");
  // add and sub read no values in their backward pass; mul and div read both operands.
  const saved = op === "add" || op === "sub" ? [] : inputs;
  return record(result, inputs, saved, (g) => {
    const grads: Tensor[] = [];
    if (typeof ac !== "number") grads.push(binaryGrad(op, 0, g, ac, bc, shape));
    if (typeof bc !== "number") grads.push(binaryGrad(op, 1, g, ac, bc, shape));
    return grads;
  });
}

/** The gradient of operand `which` of `a op b`, summed to its shape, in g's dtype. */
function binaryGrad(op: BinaryName, which: 0 | 1, g: Tensor, a: Operand, b: Operand, shape: Shape): Tensor {
  const x = (which === 0 ? a : b) as Tensor;
  const other = which === 0 ? b : a;
  const into = (code: MapOpCode, operands: Operand[], scale: number) =>
    reduceInto(`${op} backward`, code, x.shape, shape, g.dtype, g.device, operands, scale);
  // An operand of the output's shape gets the output's gradient itself: the tape lets one
  // gradient be held twice (autodiff.ts), so a residual add copies nothing.
  const whole = x.shape.length === shape.length && x.shape.every((d, i) => d === shape[i]);
  if (op === "add") return whole ? g : into(MapOp.copy, [g], 1);
  if (op === "sub") return whole && which === 0 ? g : into(MapOp.copy, [g], which === 0 ? 1 : -1);
  if (op === "mul") return into(MapOp.mul, [g, other], 1);
  // d(a / b)/da = 1 / b; d(a / b)/db = -a / b^2.
  if (which === 0) return into(MapOp.div, [g, b], 1);
  return into(MapOp.divGrad, [g, a, b], -1);
}

/**
 * `a + b` of two tensors of one shape and dtype, in that dtype, without autocast or recording: the
 * gradient accumulation of autodiff.ts. @internal
 */
export function addSame(a: Tensor, b: Tensor): Tensor {
  return mapInto("add", MapOp.add, a.shape, a.dtype, a.device, [a, b]);
}

/**
 * `g` summed down to `shape` (a shape that broadcasts to g's, e.g. a bias's [out] from [..., out]),
 * in g's dtype, without autocast or recording: each element sums its terms in order in float64
 * and is rounded once. For backward passes (a linear layer's bias gradient). @internal
 */
export function sumToShape(g: Tensor, shape: Shape): Tensor {
  return reduceInto("sum to shape", MapOp.copy, shape, g.shape, g.dtype, g.device, [g], 1);
}

/**
 * `a + b` with NumPy broadcasting, in autocast's "add" dtype (the widest input by default).
 *
 * @param a A tensor, or a number.
 * @param b A tensor whose shape broadcasts with a's, or a number.
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
export function add(a: Operand, b: Operand): Tensor {
  return binary("add", a, b);
}

/**
 * `a - b` with broadcasting.
 *
 * @param a A tensor, or a number.
 * @param b A tensor broadcasting with a, or a number (at least one of a and b is a tensor).
 * @returns The difference.
 * @example
 * ```ts
 * import { sub } from "./elementwise.ts";
 * import { tensor } from "../tensor.ts";
 * using c = sub(tensor([5, 7]), tensor(2));
 * if (c.toArray().join() !== "3,5") throw new Error("broadcast sub");
 * ```
 */
export function sub(a: Operand, b: Operand): Tensor {
  return binary("sub", a, b);
}

/**
 * `a * b` with broadcasting.
 *
 * @param a A tensor, or a number.
 * @param b A tensor broadcasting with a, or a number (at least one of a and b is a tensor).
 * @returns The product.
 * @example
 * ```ts
 * import { mul } from "./elementwise.ts";
 * import { tensor } from "../tensor.ts";
 * using c = mul(tensor([2, 3]), tensor([4, 5]));
 * if (c.toArray().join() !== "8,15") throw new Error("mul");
 * ```
 */
export function mul(a: Operand, b: Operand): Tensor {
  return binary("mul", a, b);
}

/**
 * `a / b` with broadcasting.
 *
 * @param a A tensor, or a number.
 * @param b A tensor broadcasting with a, or a number (at least one of a and b is a tensor).
 * @returns The quotient.
 * @example
 * ```ts
 * import { div } from "./elementwise.ts";
 * import { tensor } from "../tensor.ts";
 * using c = div(tensor([1, 3]), tensor([2, 4]));
 * if (c.toArray().join() !== "0.5,0.75") throw new Error("div");
 * ```
 */
export function div(a: Operand, b: Operand): Tensor {
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
  const result = mapInto("scale", MapOp.mul, x.shape, x.dtype, x.device, [x, f]);
  return record(result, [x], [], (g) => [mapInto("scale backward", MapOp.mul, x.shape, g.dtype, g.device, [g, f])]);
}

function unary(op: string, code: ActivationCode, x: Tensor): Tensor {
  checkTensor(x, op, "x");
  const dtype = autocastDtype(op, [x.dtype], x.device);
  const xc = toDtype(x, dtype);
  const backend = backendOf(xc.device);
  const result = empty(xc.shape, dtype, xc.device);
  backend.activationForward(code, xc, result);
  // tanh and exp differentiate from their output, the others from their input: keep only that.
  const saved = code === Activation.tanh || code === Activation.exp ? result : xc;
  return record(result, [xc], [saved], (g) => {
    const dx = empty(xc.shape, dtype, xc.device);
    backendOf(dx.device).activationBackward(code, saved, g, dx);
    return [dx];
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
  return unary("relu", Activation.relu, x);
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
  return unary("tanh", Activation.tanh, x);
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
  return unary("silu", Activation.silu, x);
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
  return unary("exp", Activation.exp, x);
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
  return unary("log", Activation.log, x);
}

const SQRT_HALF = Math.SQRT1_2;
const INV_SQRT_2PI = 1 / Math.sqrt(2 * Math.PI);

/**
 * erf: of a number, to within 1.5e-7 absolute (Abramowitz and Stegun 7.1.26: one exp and a
 * degree-5 polynomial; the reference the gelu tests use); of a tensor, elementwise and native
 * (polynomial fits with no division: x S(x^2) below |x| = 1, 1 - exp(P(|x|) - x^2) beyond; within
 * 3 float32 ulp + 1.5e-7), differentiable.
 *
 * @param x A number, or a tensor.
 * @returns erf(x), a number or a tensor of x's dtype.
 * @example
 * ```ts
 * import { erf } from "./elementwise.ts";
 * import { tensor } from "../tensor.ts";
 * if (Math.abs(erf(1) - 0.8427007929497149) > 2e-7) throw new Error("erf");
 * using y = erf(tensor([0, 1]));
 * if (y.toArray()[0] !== 0 || Math.abs(y.toArray()[1]! - 0.8427007929497149) > 2e-7) throw new Error("erf");
 * ```
 */
export function erf(x: number): number;
export function erf(x: Tensor): Tensor;
export function erf(x: number | Tensor): number | Tensor {
  if (typeof x !== "number") return unary("erf", Activation.erf, x);
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
  return unary("gelu", approximate === "tanh" ? Activation.geluTanh : Activation.gelu, x);
}

/**
 * The gated MLP activation of LLaMA-style models, fused: `silu(a) * b` in one pass (and da, db in
 * one backward pass), without materializing silu(a).
 *
 * @param a The gate projection.
 * @param b The up projection, of a's shape.
 * @returns silu(a) * b, in autocast's "swiglu" dtype (the wider input's by default).
 * @example
 * ```ts
 * import { swiglu } from "./elementwise.ts";
 * import { tensor } from "../tensor.ts";
 * using y = swiglu(tensor([0, 10]), tensor([3, 2]));
 * if (y.toArray()[0] !== 0 || Math.abs(y.toArray()[1]! - 20) > 1e-3) throw new Error("swiglu");
 * ```
 */
export function swiglu(a: Tensor, b: Tensor): Tensor {
  checkTensor(a, "swiglu", "a");
  checkTensor(b, "swiglu", "b");
  if (a.shape.length !== b.shape.length || a.shape.some((d, i) => d !== b.shape[i])) {
    throw new TypeError(
      `swiglu: a ${shapeText(a.shape)} and b ${shapeText(b.shape)} must have one shape: split the gate and up projections into equal halves`,
    );
  }
  if (a.device !== b.device) {
    throw new TypeError(`swiglu: a is on ${a.device} and b on ${b.device}: move both to one device with .to()`);
  }
  const dtype = autocastDtype("swiglu", [a.dtype, b.dtype], a.device);
  const ac = toDtype(a, dtype);
  const bc = toDtype(b, dtype);
  const result = empty(ac.shape, dtype, ac.device);
  backendOf(ac.device).swigluForward(ac, bc, result);
  return record(result, [ac, bc], [ac, bc], (g) => {
    const da = empty(ac.shape, dtype, ac.device);
    const db = empty(ac.shape, dtype, ac.device);
    backendOf(ac.device).swigluBackward(ac, bc, g, da, db);
    return [da, db];
  });
}

export { toDtype };
