/**
 * Pre-flight check for mixed precision: from one step's float32 gradients (or any float tensors),
 * record each tensor's largest magnitude and how many of its values would overflow, become
 * subnormal or underflow to zero in float16 — at scale 1 and at the loss scale it recommends — and
 * recommend bfloat16 (no loss scaling) where the device supports it, or float16 with an initial
 * loss scale that keeps the largest gradient finite with headroom.
 *
 * Counting works on exponent histograms of the float32 bits, so the share that would underflow at
 * any power-of-two scale is exact and costs one pass over the gradients.
 *
 * @module
 */

import { devices } from "./device.ts";
import { describeKind } from "./dtype.ts";
import { type Device, isTensor, type Tensor } from "./tensor.ts";
import { type Tree, treeLeaves } from "./tree.ts";

/** What one tensor would do in float16. */
export interface PreflightTensor {
  /** The tensor's position in the tree (dotted path). */
  readonly name: string;
  readonly count: number;
  /** Largest finite magnitude (0 for an empty or all-zero tensor). */
  readonly amax: number;
  readonly nonFinite: number;
  /** Non-zero values that round to 0 in float16 at scale 1. */
  readonly f16Underflow: number;
  /** Values that become float16 subnormals (precision loss) at scale 1. */
  readonly f16Subnormal: number;
  /** Finite values that overflow float16 at scale 1. */
  readonly f16Overflow: number;
}

/** The pre-flight report. */
export interface PreflightReport {
  readonly tensors: readonly PreflightTensor[];
  /** Non-zero finite values in all tensors. */
  readonly nonZero: number;
  readonly amax: number;
  /** Shares of the non-zero values that underflow to 0 in float16 at scale 1 and at `initialScale`. */
  readonly f16UnderflowShare: number;
  readonly f16UnderflowShareScaled: number;
  readonly f16SubnormalShare: number;
  /** The recommended float16 initial loss scale (a power of two). */
  readonly initialScale: number;
  readonly recommendation: {
    readonly dtype: "bfloat16" | "float16";
    readonly lossScale: "none" | "dynamic";
    readonly initialScale: number;
    readonly reason: string;
  };
}

/** Options of {@linkcode preflight}. */
export interface PreflightOptions {
  /** The device to train on (default "cpu"): bfloat16 is recommended where it supports it. */
  readonly device?: Device;
  /** Headroom below float16's max for the largest scaled gradient, as a power of two (default 2^-4). */
  readonly headroom?: number;
  /** Whether the device supports bfloat16 (overrides the device lookup; for tests). */
  readonly bf16Supported?: boolean;
}

const F16_MAX = 65504;
// float32 biased exponents: 2^-25 has 102 (it ties to 0 in float16, values above it do not);
// 2^-14 (float16's smallest normal) has 113.
const F16_ZERO_EXPONENT = 102;
const F16_NORMAL_EXPONENT = 113;

interface Histogram {
  /** Counts of non-zero finite values by float32 biased exponent. */
  readonly byExponent: Float64Array;
  /** Counts of exact powers of two by exponent (they tie to even at the underflow boundary). */
  readonly powersOfTwo: Float64Array;
}

function leafNames(tree: Tree<Tensor>): string[] {
  const names: string[] = [];
  const stack: [unknown, string][] = [[tree, ""]];
  while (stack.length > 0) {
    const [node, path] = stack.pop()!;
    if (node === null || node === undefined) continue;
    if (Array.isArray(node)) {
      for (let i = node.length - 1; i >= 0; i--) stack.push([node[i], path ? `${path}.${i}` : String(i)]);
    } else if (isTensor(node)) {
      names.push(path || "(root)");
    } else if (typeof node === "object") {
      const keys = Object.keys(node).sort();
      for (let i = keys.length - 1; i >= 0; i--) {
        stack.push([(node as Record<string, unknown>)[keys[i]!], path ? `${path}.${keys[i]}` : keys[i]!]);
      }
    } else {
      throw new TypeError(`preflight takes a tree of tensors, found a ${describeKind(node)} at ${path || "the root"}`);
    }
  }
  return names;
}

/** Underflowing non-zero values (|x| <= 2^-25 after scaling by 2^shift) from a histogram. */
function underflowAt(histogram: Histogram, shift: number): number {
  let count = 0;
  const boundary = F16_ZERO_EXPONENT - shift;
  for (let e = 1; e < Math.min(boundary, 256); e++) count += histogram.byExponent[e]!;
  // float32 subnormals (exponent 0) scale up too: treat them as below exponent 1.
  if (boundary > 0) count += histogram.byExponent[0]!;
  if (boundary >= 1 && boundary < 256) count += histogram.powersOfTwo[boundary]!;
  return count;
}

/**
 * Measures what float16 would do to a tree of gradients and recommends a precision recipe.
 *
 * @param grads A tree of float tensors (float32 gradients of one step are the intended input).
 * @param options device, headroom.
 * @returns Per-tensor counts, shares and the recommendation.
 * @example
 * ```ts
 * import { preflight } from "./preflight.ts";
 * import { tensor } from "./tensor.ts";
 * using g = tensor([1e-9, 1e-3, 2]);
 * const report = preflight({ g }, { bf16Supported: false });
 * if (report.f16UnderflowShare !== 1 / 3 || report.recommendation.dtype !== "float16") throw new Error("preflight");
 * ```
 */
export function preflight(grads: Tree<Tensor>, options: PreflightOptions = {}): PreflightReport {
  const leaves = treeLeaves(grads);
  const names = leafNames(grads);
  const histogram: Histogram = { byExponent: new Float64Array(256), powersOfTwo: new Float64Array(256) };
  const tensors: PreflightTensor[] = [];
  let amax = 0;
  let nonZero = 0;
  let subnormal = 0;
  leaves.forEach((leaf, index) => {
    if (!isTensor(leaf)) throw new TypeError(`preflight takes a tree of tensors, found a ${describeKind(leaf)}`);
    // Float32 values on the host: a CPU float32 tensor's bits (a copy unless a view exists), any
    // other dtype or device widened or read back (toArray waits for the device once).
    const values = leaf.dtype === "float32" ? (leaf.bits() as Float32Array) : leaf.toArray();
    const bits = new Uint32Array(values.buffer, values.byteOffset, values.length);
    let tensorMax = 0;
    let nonFinite = 0;
    let underflow = 0;
    let tensorSubnormal = 0;
    let overflow = 0;
    for (let i = 0; i < bits.length; i++) {
      const magnitude = bits[i]! & 0x7fffffff;
      if (magnitude === 0) continue;
      const exponent = magnitude >>> 23;
      if (exponent === 255) {
        nonFinite++;
        continue;
      }
      histogram.byExponent[exponent]!++;
      if ((magnitude & 0x7fffff) === 0) histogram.powersOfTwo[exponent]!++;
      const absolute = Math.abs(values[i]!);
      if (absolute > tensorMax) tensorMax = absolute;
      if (exponent < F16_ZERO_EXPONENT || (exponent === F16_ZERO_EXPONENT && (magnitude & 0x7fffff) === 0)) underflow++;
      else if (exponent < F16_NORMAL_EXPONENT) tensorSubnormal++;
      if (absolute >= 65520) overflow++;
    }
    const finiteNonZero = bits.length - nonFinite - countZeros(bits);
    nonZero += finiteNonZero;
    subnormal += tensorSubnormal;
    amax = Math.max(amax, tensorMax);
    tensors.push({
      name: names[index]!,
      count: bits.length,
      amax: tensorMax,
      nonFinite,
      f16Underflow: underflow,
      f16Subnormal: tensorSubnormal,
      f16Overflow: overflow,
    });
  });
  const headroom = options.headroom ?? 2 ** -4;
  if (!(headroom > 0 && headroom <= 1)) throw new RangeError(`headroom ${headroom} must be in (0, 1]: e.g. 2 ** -4`);
  // The largest power of two that keeps amax * scale below float16's max times the headroom,
  // capped at 2^24 (PyTorch's default start is 2^16).
  const shift = amax === 0 ? 16 : Math.max(0, Math.min(24, Math.floor(Math.log2((F16_MAX * headroom) / amax))));
  const initialScale = 2 ** shift;
  const share = (count: number) => (nonZero === 0 ? 0 : count / nonZero);
  const f16UnderflowShare = share(underflowAt(histogram, 0));
  const f16UnderflowShareScaled = share(underflowAt(histogram, shift));
  const bf16Supported = options.bf16Supported ?? bf16OnDevice(options.device ?? "cpu");
  const percent = (x: number) => `${(100 * x).toFixed(2)}%`;
  const recommendation = bf16Supported
    ? {
        dtype: "bfloat16" as const,
        lossScale: "none" as const,
        initialScale: 1,
        reason: `bfloat16 keeps float32's exponent range, so none of these gradients underflow and no loss scaling is needed (in float16, ${percent(f16UnderflowShare)} would underflow to zero unscaled)`,
      }
    : {
        dtype: "float16" as const,
        lossScale: "dynamic" as const,
        initialScale,
        reason: `the device lacks bfloat16; float16 with dynamic loss scaling from ${initialScale} cuts underflow from ${percent(f16UnderflowShare)} to ${percent(f16UnderflowShareScaled)} while the largest gradient (${amax.toExponential(2)}) stays below ${F16_MAX} * ${headroom}`,
      };
  return {
    tensors,
    nonZero,
    amax,
    f16UnderflowShare,
    f16UnderflowShareScaled,
    f16SubnormalShare: share(subnormal),
    initialScale,
    recommendation,
  };
}

function countZeros(bits: Uint32Array): number {
  let zeros = 0;
  for (let i = 0; i < bits.length; i++) if ((bits[i]! & 0x7fffffff) === 0) zeros++;
  return zeros;
}

function bf16OnDevice(device: Device): boolean {
  const info = devices().find((d) => d.name === device);
  if (info === undefined)
    throw new RangeError(
      `Unknown device ${device}: use one of ${devices()
        .map((d) => d.name)
        .join(", ")}`,
    );
  return info.bf16;
}
