/**
 * Layout and matmul kernels of the CPU backend: strided copies (zig/src/ops/layout.zig), the
 * batched matmul with float32 accumulation (zig/src/cpu/matmul.zig) and its epilogue (bias add
 * and one rounding into the op's dtype).
 *
 * @module
 */

import { ptr } from "bun:ffi";
import { check, native, Status } from "../../_ffi.ts";
import { type DtypeName, dtypeInfo, type StorageArray } from "../../dtype.ts";
import type { Tensor } from "../../tensor.ts";

/** Flags of the matmul kernel (mp_matmul). */
export const MatmulFlag = Object.freeze({
  transA: 1,
  transB: 2,
  accumulate: 4,
  /** bfloat16 x bfloat16 through AVX512-BF16 dot products (opt-in; default widens to float32). */
  bf16Dot: 8,
  broadcastB: 16,
} as const);

/** A strided walk over a tensor's storage: element offset and per-dimension strides (elements). */
export interface StridedView {
  readonly offset: number;
  readonly strides: readonly number[];
}

export interface LayoutKernels {
  /**
   * Copies `shape` elements from `source` (read through `from`) to `target` (written through
   * `to`); same dtype. Bits move unchanged.
   */
  stridedCopy(source: Tensor, from: StridedView, target: Tensor, to: StridedView, shape: readonly number[]): void;
  /**
   * C (float32) = op(A) op(B) per batch element, float32 accumulation; A and B float32, float16
   * or bfloat16 (see MatmulFlag for transposes, accumulation and a shared B).
   */
  matmul(a: Tensor, b: Tensor, c: Tensor, batch: number, m: number, n: number, k: number, flags: number): void;
  /** out = product (float32) + bias (a row in out's dtype, or null), rounded once into out's dtype. */
  matmulEpilogue(product: Tensor, bias: Tensor | null, out: Tensor): void;
  /**
   * out = op(A) op(B) + bias (a row in out's dtype, or null), accumulated in float32 and rounded
   * once into out's dtype: the bits of matmul into a float32 C followed by matmulEpilogue.
   * `scratch` is a float32 tensor of out's shape where matmulOutNeedsScratch says so, else null.
   */
  matmulOut(
    a: Tensor,
    b: Tensor,
    scratch: Tensor | null,
    bias: Tensor | null,
    out: Tensor,
    batch: number,
    m: number,
    n: number,
    k: number,
    flags: number,
  ): void;
  /** Whether matmulOut into `outDtype` with depth k needs a float32 scratch. */
  matmulOutNeedsScratch(outDtype: DtypeName, k: number): boolean;
}

const SHAPE = new BigUint64Array(8);
const FROM = new BigUint64Array(8);
const TO = new BigUint64Array(8);

export const layoutCpu: LayoutKernels = {
  stridedCopy(source, from, target, to, shape) {
    const ndim = shape.length;
    if (ndim > 8) throw new RangeError(`stridedCopy: ${ndim} dimensions, at most 8 are supported`);
    for (let d = 0; d < 8; d++) {
      SHAPE[d] = BigInt(shape[d] ?? 0);
      FROM[d] = BigInt(from.strides[d] ?? 0);
      TO[d] = BigInt(to.strides[d] ?? 0);
    }
    const bytes = dtypeInfo(source.dtype).bits / 8;
    if (shape.some((d) => d === 0)) return;
    check(
      native().mp_layout_copy(
        source.address + from.offset * bytes,
        target.address + to.offset * bytes,
        bytes,
        ndim,
        ptr(SHAPE),
        ptr(FROM),
        ptr(TO),
      ),
      `copying ${source} into ${target}`,
    );
  },
  matmul(a, b, c, batch, m, n, k, flags) {
    const status = native().mp_matmul(
      a.size === 0 ? 0 : a.address,
      b.size === 0 ? 0 : b.address,
      c.size === 0 ? 0 : c.address,
      batch,
      m,
      n,
      k,
      dtypeInfo(a.dtype).code,
      dtypeInfo(b.dtype).code,
      flags,
    );
    if (status !== Status.ok) check(status, `mp_matmul(${a.dtype} x ${b.dtype}, ${batch} x ${m} x ${n} x ${k})`);
  },
  matmulEpilogue(product, bias, out) {
    const cols = out.shape[out.ndim - 1] ?? 1;
    const rows = cols === 0 ? 0 : out.size / cols;
    check(
      native().mp_matmul_epilogue(
        product.size === 0 ? 0 : product.address,
        bias === null || bias.size === 0 ? 0 : bias.address,
        out.size === 0 ? 0 : out.address,
        rows,
        cols,
        dtypeInfo(out.dtype).code,
      ),
      `the matmul epilogue into ${out}`,
    );
  },
  matmulOut(a, b, scratch, bias, out, batch, m, n, k, flags) {
    const status = native().mp_matmul_out(
      a.size === 0 ? 0 : a.address,
      b.size === 0 ? 0 : b.address,
      scratch === null || scratch.size === 0 ? 0 : scratch.address,
      bias === null || bias.size === 0 ? 0 : bias.address,
      out.size === 0 ? 0 : out.address,
      batch,
      m,
      n,
      k,
      dtypeInfo(a.dtype).code,
      dtypeInfo(b.dtype).code,
      dtypeInfo(out.dtype).code,
      flags,
    );
    if (status !== Status.ok)
      check(status, `mp_matmul_out(${a.dtype} x ${b.dtype} -> ${out.dtype}, ${batch} x ${m} x ${n} x ${k})`);
  },
  matmulOutNeedsScratch(outDtype, k) {
    // A float32 output holds its own partial sums.
    if (outDtype === "float32") return false;
    fusedDepth ??= Number(native().mp_matmul_fused_depth());
    return k > fusedDepth;
  },
};

/** mp_matmul_fused_depth(), asked once. */
let fusedDepth: number | undefined;

/**
 * C (float32, batch x m x n) = op(A) op(B) in one native call on raw storage: A and B of their
 * dtypes (float32, float16 or bfloat16), for benchmarks and kernel tests that work below tensors.
 * See mp_matmul for the layout and flags.
 */
export function matmulInto(
  a: StorageArray,
  aDtype: DtypeName,
  b: StorageArray,
  bDtype: DtypeName,
  c: Float32Array,
  batch: number,
  m: number,
  n: number,
  k: number,
  flags: number,
): Float32Array {
  const address = (data: StorageArray) => (data.length === 0 ? 0 : ptr(data));
  const status = native().mp_matmul(
    address(a),
    address(b),
    address(c),
    batch,
    m,
    n,
    k,
    dtypeInfo(aDtype).code,
    dtypeInfo(bDtype).code,
    flags,
  );
  if (status !== Status.ok) check(status, `mp_matmul(${aDtype} x ${bDtype}, ${batch} x ${m} x ${n} x ${k})`);
  return c;
}
