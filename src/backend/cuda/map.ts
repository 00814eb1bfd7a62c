/**
 * The elementwise and layout kernel families on CUDA tensors (zig/src/cuda/ops_map.zig): the
 * broadcast map-reduce engine (add/sub/mul/div with broadcasting and numbers, their gradients,
 * sum, mean, broadcast copies), the activations and swiglu forward and backward, and strided
 * copies (transpose, slice, concat, reshape copies). Each is one launch on the device's stream
 * with the CPU kernel's arguments: outputs come from the device allocator (the op allocated them),
 * nothing is copied to or from the host and nothing waits for the device. The kernels run the
 * element functions of zig/src/ops/ with the CPU's operation and summation order, so a cuda tensor
 * gets the same bits as a CPU tensor.
 *
 * Matmul and its epilogue are not here (cuBLAS, elsewhere).
 *
 * @module
 */

import { ptr } from "bun:ffi";
import { cudaOrdinalOf } from "../_args.ts";
import { lastError, native, Status } from "../../_ffi.ts";
import { dtypeInfo } from "../../dtype.ts";
import { MixprecError } from "../../errors.ts";
import type { Tensor } from "../../tensor.ts";
import { type ElementwiseKernels, packLayout } from "../cpu/elementwise.ts";
import type { LayoutKernels } from "../cpu/layout.ts";

const STATUS_NAMES: Record<number, string> = Object.fromEntries(
  Object.entries(Status).map(([name, code]) => [code, name]),
);

/** Throws a MixprecError named by the status, with the driver's reason when there is one. */
function checkLaunch(code: number, what: string): void {
  if (code === Status.ok) return;
  const name = STATUS_NAMES[code] ?? `unknown status ${code}`;
  const reason = code === Status.cuda_error || code === Status.cuda_unavailable ? lastError() : "";
  throw new MixprecError(name, `${what} failed: ${reason || name}`);
}

/** Throws unless every tensor lives on `device` (the op allocated its outputs there). */
function checkDevice(what: string, device: string, tensors: readonly Tensor[]): void {
  for (const t of tensors) {
    if (t.device !== device) {
      throw new TypeError(`${what}: ${t} is on ${t.device}, not ${device}: move it with .to("${device}") first`);
    }
  }
}

const SHAPE = new BigUint64Array(8);
const FROM = new BigUint64Array(8);
const TO = new BigUint64Array(8);

/** The elementwise family and the strided copy on cuda tensors. */
export const cudaMapKernels: ElementwiseKernels & Pick<LayoutKernels, "stridedCopy"> = {
  elementwiseMap(op, target, operands, space, scale) {
    if (target.size === 0) return;
    const tensors = operands.filter((x): x is Tensor => typeof x !== "number");
    checkDevice("elementwiseMap", target.device, tensors);
    const layout = packLayout(space, operands);
    const addresses = [0, 0, 0];
    let flags = 0;
    let scalar = 0;
    operands.forEach((operand, i) => {
      if (typeof operand === "number") {
        flags |= 1 << i;
        scalar = operand;
      } else addresses[i] = operand.address;
    });
    checkLaunch(
      native().mp_cuda_launch_map(
        cudaOrdinalOf(target),
        op,
        dtypeInfo(target.dtype).code,
        target.address,
        addresses[0]!,
        addresses[1]!,
        addresses[2]!,
        ptr(layout),
        scalar,
        scale,
        flags,
      ),
      `the map kernel (op ${op}, ${target.dtype}, [${target.shape.join(", ")}]) on ${target.device}`,
    );
  },
  activationForward(op, x, out) {
    if (x.size === 0) return;
    checkDevice("activationForward", x.device, [out]);
    checkLaunch(
      native().mp_cuda_launch_activation_forward(
        cudaOrdinalOf(x),
        op,
        dtypeInfo(x.dtype).code,
        x.address,
        out.address,
        x.size,
      ),
      `activation ${op} forward (${x.dtype}) on ${x.device}`,
    );
  },
  activationBackward(op, saved, g, dx) {
    if (saved.size === 0) return;
    checkDevice("activationBackward", saved.device, [g, dx]);
    checkLaunch(
      native().mp_cuda_launch_activation_backward(
        cudaOrdinalOf(saved),
        op,
        dtypeInfo(saved.dtype).code,
        saved.address,
        g.address,
        dx.address,
        saved.size,
      ),
      `activation ${op} backward (${saved.dtype}) on ${saved.device}`,
    );
  },
  swigluForward(a, b, out) {
    if (a.size === 0) return;
    checkDevice("swigluForward", a.device, [b, out]);
    checkLaunch(
      native().mp_cuda_launch_swiglu_forward(
        cudaOrdinalOf(a),
        dtypeInfo(a.dtype).code,
        a.address,
        b.address,
        out.address,
        a.size,
      ),
      `swiglu forward (${a.dtype}) on ${a.device}`,
    );
  },
  swigluBackward(a, b, g, da, db) {
    if (a.size === 0) return;
    checkDevice("swigluBackward", a.device, [b, g, da, db]);
    checkLaunch(
      native().mp_cuda_launch_swiglu_backward(
        cudaOrdinalOf(a),
        dtypeInfo(a.dtype).code,
        a.address,
        b.address,
        g.address,
        da.address,
        db.address,
        a.size,
      ),
      `swiglu backward (${a.dtype}) on ${a.device}`,
    );
  },
  stridedCopy(source, from, target, to, shape) {
    const ndim = shape.length;
    if (ndim > 8) throw new RangeError(`stridedCopy: ${ndim} dimensions, at most 8 are supported`);
    if (shape.some((d) => d === 0)) return;
    checkDevice("stridedCopy", source.device, [target]);
    for (let d = 0; d < 8; d++) {
      SHAPE[d] = BigInt(shape[d] ?? 0);
      FROM[d] = BigInt(from.strides[d] ?? 0);
      TO[d] = BigInt(to.strides[d] ?? 0);
    }
    const bytes = dtypeInfo(source.dtype).bits / 8;
    checkLaunch(
      native().mp_cuda_launch_strided_copy(
        cudaOrdinalOf(source),
        source.address + from.offset * bytes,
        target.address + to.offset * bytes,
        bytes,
        ndim,
        ptr(SHAPE),
        ptr(FROM),
        ptr(TO),
      ),
      `copying ${source} into ${target} on ${source.device}`,
    );
  },
};
