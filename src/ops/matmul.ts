/**
 * Matrix products on the backend of the operands' device (zig/src/cpu/matmul.zig on the CPU,
 * cuBLAS and the PTX epilogue on cuda tensors): float32, float16 and bfloat16 inputs, float32
 * accumulation, the result rounded once to the compute dtype that autocast picks ("matmul",
 * "linear", "bmm").
 *
 * @module
 */

import { record } from "../autodiff.ts";
import { backendOf } from "../backend/backend.ts";
import { MatmulFlag } from "../backend/cpu/layout.ts";
import type { DtypeName } from "../dtype.ts";
import { type Shape, Tensor } from "../tensor.ts";
import { autocastDtype } from "./_autocast.ts";
import { checkSameDevice, checkTensor, empty, shapeText, toDtype } from "./_util.ts";
import { sumToShape } from "./elementwise.ts";

/**
 * op(A) op(B) (+ bias) in `dtype`, accumulated in float32 and rounded once. On the CPU the
 * micro-kernels write the result with its bias straight into `out`; a float32 scratch (freed at
 * once) holds partial sums only where the backend asks for one (a 16-bit result with a K deeper
 * than one slab on the CPU, any 16-bit result of cuBLAS on a GPU).
 */
function product(
  a: Tensor,
  b: Tensor,
  bias: Tensor | null,
  shape: Shape,
  dtype: DtypeName,
  dims: readonly [batch: number, m: number, n: number, k: number],
  flags: number,
): Tensor {
  const backend = backendOf(a.device);
  const out = empty(shape, dtype, a.device);
  const [batch, m, n, k] = dims;
  using scratch = backend.matmulOutNeedsScratch(dtype, k) ? new Tensor("float32", shape, a.device, false) : null;
  backend.matmulOut(a, b, scratch, bias, out, batch, m, n, k, flags);
  return out;
}

/**
 * Matrix product `a @ b`: a is [..., M, K]; b is [K, N] (shared by every batch element) or
 * [..., K, N] with the same batch dimensions as a. Computes in autocast's "matmul" dtype.
 *
 * @param a Left operand, at least 2-D.
 * @param b Right operand, 2-D or batched like a.
 * @returns [..., M, N] in the compute dtype.
 * @example
 * ```ts
 * import { matmul } from "./matmul.ts";
 * import { tensor } from "../tensor.ts";
 * using a = tensor([[1, 2], [3, 4]]);
 * using b = tensor([[1, 0], [0, 1]]);
 * using c = matmul(a, b);
 * if (c.toArray().join() !== "1,2,3,4") throw new Error("identity");
 * ```
 */
export function matmul(a: Tensor, b: Tensor): Tensor {
  checkTensor(a, "matmul", "a");
  checkTensor(b, "matmul", "b");
  if (a.ndim < 2 || b.ndim < 2) {
    throw new TypeError(
      `matmul needs operands of at least 2 dimensions, got ${shapeText(a.shape)} and ${shapeText(b.shape)}: reshape vectors to [1, n] or [n, 1]`,
    );
  }
  const m = a.shape[a.ndim - 2]!;
  const k = a.shape[a.ndim - 1]!;
  const n = b.shape[b.ndim - 1]!;
  const shared = b.ndim === 2;
  const batchShape = a.shape.slice(0, -2);
  const sameBatch = b.ndim === a.ndim && b.shape.slice(0, -2).every((d, i) => d === batchShape[i]);
  if (b.shape[b.ndim - 2] !== k || (!shared && !sameBatch)) {
    throw new TypeError(
      `matmul: shapes ${shapeText(a.shape)} and ${shapeText(b.shape)} do not multiply: a is [..., M, K], b is [K, N] or [..., K, N] with a's batch dimensions`,
    );
  }
  const batch = a.size / Math.max(m * k, 1) || batchShape.reduce((x, y) => x * y, 1);
  checkSameDevice("matmul", a, b);
  const dtype = autocastDtype("matmul", [a.dtype, b.dtype], a.device);
  const ac = toDtype(a, dtype);
  const bc = toDtype(b, dtype);
  const broadcast = shared ? MatmulFlag.broadcastB : 0;
  const result = product(ac, bc, null, [...batchShape, m, n], dtype, [batch, m, n, k], broadcast);
  return record(result, [ac, bc], [ac, bc], (g) => {
    // dA = g B^T (per batch element); dB = A^T g, summed over the batch when B is shared.
    const gradA = product(g, bc, null, ac.shape, dtype, [batch, m, k, n], MatmulFlag.transB | broadcast);
    const gradB = shared
      ? product(ac, g, null, bc.shape, dtype, [1, k, n, batch * m], MatmulFlag.transA)
      : product(ac, g, null, bc.shape, dtype, [batch, k, n, m], MatmulFlag.transA);
    return [gradA, gradB];
  });
}

/**
 * A dense layer's product, PyTorch's `F.linear`: `x @ w^T + bias`, with w stored [out, in].
 * Computes in autocast's "linear" dtype; the bias is added in float32 before the one rounding.
 *
 * @param x Input [..., in].
 * @param weight Weight [out, in].
 * @param bias Optional bias [out].
 * @returns [..., out] in the compute dtype.
 * @example
 * ```ts
 * import { linear } from "./matmul.ts";
 * import { tensor } from "../tensor.ts";
 * using x = tensor([[1, 2]]);
 * using w = tensor([[1, 1], [2, 0]]);
 * using b = tensor([10, 20]);
 * using y = linear(x, w, b);
 * if (y.toArray().join() !== "13,22") throw new Error("x w^T + b");
 * ```
 */
export function linear(x: Tensor, weight: Tensor, bias?: Tensor | null): Tensor {
  checkTensor(x, "linear", "x");
  checkTensor(weight, "linear", "weight");
  if (bias != null) checkTensor(bias, "linear", "bias");
  if (weight.ndim !== 2 || x.ndim < 1 || x.shape[x.ndim - 1] !== weight.shape[1]) {
    throw new TypeError(
      `linear: x ${shapeText(x.shape)} and weight ${shapeText(weight.shape)} do not fit: weight is [out, in] and x is [..., in]`,
    );
  }
  const [outFeatures, inFeatures] = weight.shape as [number, number];
  if (bias != null && (bias.ndim !== 1 || bias.shape[0] !== outFeatures)) {
    throw new TypeError(`linear: bias ${shapeText(bias.shape)} must be [${outFeatures}]`);
  }
  checkSameDevice("linear", x, weight, ...(bias != null ? [bias] : []));
  const rows = inFeatures === 0 ? x.size : x.size / inFeatures;
  const dtype = autocastDtype(
    "linear",
    bias != null ? [x.dtype, weight.dtype, bias.dtype] : [x.dtype, weight.dtype],
    x.device,
  );
  const xc = toDtype(x, dtype);
  const wc = toDtype(weight, dtype);
  const bc = bias != null ? toDtype(bias, dtype) : null;
  const dims = [1, rows, outFeatures, inFeatures] as const;
  const result = product(xc, wc, bc, [...x.shape.slice(0, -1), outFeatures], dtype, dims, MatmulFlag.transB);
  const inputs = bc !== null ? [xc, wc, bc] : [xc, wc];
  // The backward pass reads x and w (of the bias, only its shape).
  return record(result, inputs, [xc, wc], (g) => {
    const gradX = product(g, wc, null, xc.shape, dtype, [1, rows, inFeatures, outFeatures], 0);
    const gradW = product(g, xc, null, wc.shape, dtype, [1, outFeatures, inFeatures, rows], MatmulFlag.transA);
    if (bc === null) return [gradX, gradW];
    // The bias gradient sums g over its rows: a column reduction of the map engine (float64
    // sums, rounded once), several times as fast as a one-row product ones^T g.
    return [gradX, gradW, sumToShape(g, bc.shape)];
  });
}
