/**
 * Elementwise kernels of the CPU backend (zig/src/ops/elementwise.zig): the broadcast map-reduce
 * engine behind add/sub/mul/div, their gradients, sum, mean and the broadcast copy; the
 * activations; and swiglu. Every tensor of one call has the call's dtype (float32, float16 or
 * bfloat16) and is read and written in it: nothing is widened outside the kernel's registers.
 *
 * @module
 */

import { ptr } from "bun:ffi";
import { check, native, Status } from "../../_ffi.ts";
import { dtypeInfo } from "../../dtype.ts";
import type { Tensor } from "../../tensor.ts";

/** The engine's f(x0, x1, x2), mirrored from `MapOp` in zig/src/ops/elementwise.zig. */
export const MapOp = Object.freeze({ copy: 0, add: 1, sub: 2, mul: 3, div: 4, divGrad: 5 } as const);
export type MapOpCode = (typeof MapOp)[keyof typeof MapOp];

/** Unary op codes, mirrored from `Activation` in zig/src/ops/elementwise.zig. */
export const Activation = Object.freeze({
  relu: 0,
  tanh: 1,
  silu: 2,
  exp: 3,
  log: 4,
  gelu: 5,
  geluTanh: 6,
  erf: 7,
} as const);
export type ActivationCode = (typeof Activation)[keyof typeof Activation];

/** Most dimensions the kept or the reduced part of a map's iteration space may have. */
export const MAP_DIMS_MAX = 8;

/**
 * An iteration space: target[j] = scale * sum over r of f(operands at (j, r)), j row-major over
 * the kept dimensions (the target is contiguous over them), r row-major over the reduced ones.
 * Strides are in elements, one list per operand (0 where an operand broadcasts).
 */
export interface MapSpace {
  readonly keptShape: readonly number[];
  readonly keptStrides: readonly (readonly number[])[];
  readonly reducedShape: readonly number[];
  readonly reducedStrides: readonly (readonly number[])[];
}

/** Elementwise kernels every backend offers. */
export interface ElementwiseKernels {
  /**
   * Runs the map-reduce engine into `target`; a number operand is read everywhere as that float32
   * value. Tensor operands and the target share one dtype.
   */
  elementwiseMap(
    op: MapOpCode,
    target: Tensor,
    operands: readonly (Tensor | number)[],
    space: MapSpace,
    scale: number,
  ): void;
  /** out = f(x) elementwise (same size and dtype). */
  activationForward(op: ActivationCode, x: Tensor, out: Tensor): void;
  /** dx = g f'(saved): saved is the output for tanh and exp, the input otherwise. */
  activationBackward(op: ActivationCode, saved: Tensor, g: Tensor, dx: Tensor): void;
  /** out = silu(a) * b. */
  swigluForward(a: Tensor, b: Tensor, out: Tensor): void;
  /** da = g b silu'(a) and db = g silu(a) in one pass. */
  swigluBackward(a: Tensor, b: Tensor, g: Tensor, da: Tensor, db: Tensor): void;
}

// One layout buffer reused by every call (the kernel reads it before returning).
const LAYOUT = new BigUint64Array(2 + 2 * MAP_DIMS_MAX + 6 * MAP_DIMS_MAX + 3);

/**
 * Packs a map space into the elementwise.Layout words the native map kernels read (one buffer,
 * reused by every call: the kernel reads it before the call returns).
 */
export function packLayout(space: MapSpace, operands: readonly (Tensor | number)[]): BigUint64Array {
  LAYOUT.fill(0n);
  const kept = space.keptShape.length === 0 ? [1] : space.keptShape;
  LAYOUT[0] = BigInt(kept.length);
  LAYOUT[1] = BigInt(space.reducedShape.length);
  kept.forEach((d, i) => {
    LAYOUT[2 + i] = BigInt(d);
  });
  space.reducedShape.forEach((d, i) => {
    LAYOUT[2 + MAP_DIMS_MAX + i] = BigInt(d);
  });
  const keptBase = 2 + 2 * MAP_DIMS_MAX;
  const reducedBase = keptBase + 3 * MAP_DIMS_MAX;
  operands.forEach((operand, o) => {
    if (typeof operand === "number") return;
    (space.keptShape.length === 0 ? [0] : space.keptStrides[o]!).forEach((s, i) => {
      LAYOUT[keptBase + o * MAP_DIMS_MAX + i] = BigInt(s);
    });
    space.reducedStrides[o]!.forEach((s, i) => {
      LAYOUT[reducedBase + o * MAP_DIMS_MAX + i] = BigInt(s);
    });
    LAYOUT[reducedBase + 3 * MAP_DIMS_MAX + o] = BigInt(operand.size);
  });
  return LAYOUT;
}

export const elementwiseCpu: ElementwiseKernels = {
  elementwiseMap(op, target, operands, space, scale) {
    if (target.size === 0) return;
    packLayout(space, operands);
    const addresses = [0, 0, 0];
    let flags = 0;
    let scalar = 0;
    operands.forEach((operand, i) => {
      if (typeof operand === "number") {
        flags |= 1 << i;
        scalar = operand;
      } else addresses[i] = operand.address;
    });
    const status = native().mp_elementwise_map(
      op,
      dtypeInfo(target.dtype).code,
      target.address,
      addresses[0]!,
      addresses[1]!,
      addresses[2]!,
      ptr(LAYOUT),
      scalar,
      scale,
      flags,
    );
    if (status !== Status.ok)
      check(status, `mp_elementwise_map(op ${op}, ${target.dtype}, [${target.shape.join(", ")}])`);
  },
  activationForward(op, x, out) {
    if (x.size === 0) return;
    const status = native().mp_elementwise_forward(op, dtypeInfo(x.dtype).code, x.address, out.address, x.size);
    if (status !== Status.ok) check(status, `mp_elementwise_forward(op ${op}, ${x.dtype})`);
  },
  activationBackward(op, saved, g, dx) {
    if (saved.size === 0) return;
    const code = dtypeInfo(saved.dtype).code;
    const status = native().mp_elementwise_backward(op, code, saved.address, g.address, dx.address, saved.size);
    if (status !== Status.ok) check(status, `mp_elementwise_backward(op ${op}, ${saved.dtype})`);
  },
  swigluForward(a, b, out) {
    if (a.size === 0) return;
    const code = dtypeInfo(a.dtype).code;
    check(
      native().mp_elementwise_swiglu_forward(code, a.address, b.address, out.address, a.size),
      `mp_elementwise_swiglu_forward(${a.dtype})`,
    );
  },
  swigluBackward(a, b, g, da, db) {
    if (a.size === 0) return;
    const code = dtypeInfo(a.dtype).code;
    check(
      native().mp_elementwise_swiglu_backward(code, a.address, b.address, g.address, da.address, db.address, a.size),
      `mp_elementwise_swiglu_backward(${a.dtype})`,
    );
  },
};
