/**
 * Matmul kernels of the CUDA backend: the product through cuBLAS (zig/src/cuda/cublas.zig,
 * `cublasGemmStridedBatchedEx` with float32 accumulation into a float32 C) and the epilogue (bias
 * add and one rounding into the op's dtype) as our PTX kernel (zig/src/cuda/ops_matmul.zig), both
 * queued on the device's stream without waiting. libcublas is opened on the first matmul; where it
 * is missing, the error says which library and how to install it (MIXPREC_LIBCUBLAS names it).
 *
 * The CPU kernel multiplies operands of different dtypes; cuBLAS takes one input type, so an
 * operand that is not float32 is widened to a float32 device copy first (exact), and the product
 * is the CPU's float32-accumulated product of the same values.
 *
 * @module
 */

import { native } from "../_ffi.ts";
import { addressOf, cudaOrdinalOf } from "./_args.ts";
import { type DtypeName, dtypeInfo } from "../dtype.ts";
import type { Tensor } from "../tensor.ts";
import type { LayoutKernels } from "./cpu/layout.ts";
import { checkCuda } from "./cuda.ts";

/** C (float32) = op(A) op(B) per batch element on the device; see LayoutKernels.matmul. */
function matmul(a: Tensor, b: Tensor, c: Tensor, batch: number, m: number, n: number, k: number, flags: number): void {
  if (a.dtype !== b.dtype) {
    // Only the bias gradient mixes dtypes (float32 ones times a 16-bit gradient): widen, exactly.
    const narrow = a.dtype === "float32" ? b : a;
    const wide = narrow.to("float32");
    try {
      if (narrow === a) matmul(wide, b, c, batch, m, n, k, flags);
      else matmul(a, wide, c, batch, m, n, k, flags);
    } finally {
      wide.dispose();
    }
    return;
  }
  checkCuda(
    native().mp_cuda_matmul(
      cudaOrdinalOf(c),
      addressOf(a),
      addressOf(b),
      addressOf(c),
      batch,
      m,
      n,
      k,
      dtypeInfo(a.dtype).code,
      dtypeInfo(b.dtype).code,
      flags,
    ),
    `Matmul (${a.dtype}, ${batch} x ${m} x ${n} x ${k}) on ${c.device}`,
  );
}

/** out = product (float32) + bias, rounded once into out's dtype, on the device. */
function matmulEpilogue(product: Tensor, bias: Tensor | null, out: Tensor): void {
  const cols = out.shape[out.ndim - 1] ?? 1;
  const rows = cols === 0 ? 0 : out.size / cols;
  checkCuda(
    native().mp_cuda_launch_matmul_epilogue(
      cudaOrdinalOf(out),
      addressOf(product),
      bias === null ? 0 : addressOf(bias),
      addressOf(out),
      rows,
      cols,
      dtypeInfo(out.dtype).code,
    ),
    `The matmul epilogue into ${out}`,
  );
}

/**
 * out = op(A) op(B) + bias, rounded once: cuBLAS writes a float32 product (into out itself where
 * out is float32, else into `scratch`) and the epilogue adds the bias and rounds.
 */
const matmulOut: LayoutKernels["matmulOut"] = (a, b, scratch, bias, out, batch, m, n, k, flags) => {
  const product = out.dtype === "float32" ? out : scratch;
  if (product === null) throw new Error(`matmulOut into ${out.dtype} on ${out.device} needs a float32 scratch`);
  matmul(a, b, product, batch, m, n, k, flags);
  if (product !== out || bias !== null) matmulEpilogue(product, bias, out);
};

/** The CUDA backend's matmul and epilogue kernels. */
export const cudaMatmulKernels: Pick<
  LayoutKernels,
  "matmul" | "matmulEpilogue" | "matmulOut" | "matmulOutNeedsScratch"
> = Object.freeze({
  matmul,
  matmulEpilogue,
  matmulOut,
  matmulOutNeedsScratch: (outDtype: DtypeName) => outDtype !== "float32",
});
