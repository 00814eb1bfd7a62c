/**
 * Rotary position embedding (RoPE) in the rotate-half form of Hugging Face's LLaMA
 * (`apply_rotary_pos_emb`, also GPT-NeoX), on one native kernel (zig/src/ops/rope.zig).
 *
 * For each head of x [B, T, H, D] with halves x1 = x[..., :D/2] and x2 = x[..., D/2:]:
 * `out = x * cos + rotate_half(x) * sin` with `rotate_half(x) = cat(-x2, x1)`, that is
 * out1 = x1 cos - x2 sin and out2 = x2 cos + x1 sin, where cos and sin repeat over the two halves.
 * Angles are computed as Hugging Face computes them: angle_i = float32(position * invFreq[i]) in
 * float32 (positions as float32, exact below 2^24), then cos and sin of that float32 angle.
 * Each element is computed in float32 and rounded once to x's dtype (Hugging Face in bfloat16
 * first rounds cos and sin to bfloat16 and rounds each product and the sum; in float32 the two
 * agree up to the cos/sin implementations). The backward pass is the rotation by -angle.
 *
 * @module
 */

import { record } from "../autodiff.ts";
import { backendOf } from "../backend/backend.ts";
import type { RopeProblem } from "../backend/cpu/rope.ts";
import type { Tensor } from "../tensor.ts";
import { autocastDtype } from "./_autocast.ts";
import { checkTensor, empty, shapeText, toDtype } from "./_util.ts";

/** The largest head size the kernel takes (zig/src/ops/rope.zig `head_dim_max`). */
export const ROPE_HEAD_DIM_MAX = 1024;

/** Options of {@linkcode rope}. */
export interface RopeOptions {
  /** The base of the default frequencies (default 10000): invFreq[i] = theta^(-2i / D). */
  readonly theta?: number;
  /**
   * Explicit inverse frequencies, D / 2 of them (overrides theta): e.g. llama3- or YaRN-scaled
   * frequencies computed by the model's config.
   */
  readonly invFreq?: Float32Array | readonly number[];
  /** Position of step 0 (default 0): positions are offset .. offset + T - 1 (a KV-cache's length). */
  readonly offset?: number;
  /**
   * Explicit integer positions (overrides offset): T of them, shared by every batch element, or
   * B * T ([B, T] row-major, as Hugging Face's position_ids).
   */
  readonly positions?: Int32Array | readonly number[];
}

/** Positions must be exact in float32, as Hugging Face's position_ids.float(). */
const POSITION_MAX = 2 ** 24;

/**
 * The default inverse frequencies, as Hugging Face computes them in float32:
 * `1 / theta ** (arange(0, D, 2).float() / D)`, each step rounded to float32 (pow itself to within
 * float32 rounding of torch's powf).
 *
 * @param headDim The head size D (even).
 * @param theta The base (default 10000).
 * @returns D / 2 float32 inverse frequencies.
 * @example
 * ```ts
 * import { ropeInvFreq } from "./rope.ts";
 * const f = ropeInvFreq(4);
 * if (f[0] !== 1 || f[1] !== Math.fround(0.01)) throw new Error("10000^-(2i/4)");
 * ```
 */
export function ropeInvFreq(headDim: number, theta = 10000): Float32Array {
  if (!Number.isInteger(headDim) || headDim < 2 || headDim % 2 !== 0) {
    throw new RangeError(`ropeInvFreq: head size ${headDim} must be an even integer >= 2`);
  }
  if (typeof theta !== "number" || !Number.isFinite(theta) || theta <= 0) {
    throw new RangeError(`ropeInvFreq: theta must be a positive finite number, got ${String(theta)}: e.g. 10000`);
  }
  const base = Math.fround(theta);
  return Float32Array.from({ length: headDim / 2 }, (_, i) => {
    const exponent = Math.fround((2 * i) / headDim);
    return Math.fround(1 / Math.fround(base ** exponent));
  });
}

function checkInteger(value: unknown, op: string, name: string, limit: number): number {
  if (typeof value !== "number" || !Number.isInteger(value) || Math.abs(value) > limit) {
    throw new RangeError(`${op}: ${name} must be an integer within +-2^24 (exact in float32), got ${String(value)}`);
  }
  return value;
}

function positionsOf(options: RopeOptions, batch: number, steps: number, op: string): Int32Array | null {
  const given = options.positions;
  if (given === undefined) return null;
  if (!(given instanceof Int32Array) && !Array.isArray(given)) {
    throw new TypeError(`${op}: positions must be an Int32Array or an array of integers`);
  }
  if (given.length !== steps && given.length !== batch * steps) {
    throw new TypeError(
      `${op}: ${given.length} positions fit neither [T] = [${steps}] nor [B, T] = [${batch}, ${steps}]: give one per step`,
    );
  }
  // A private copy: the backward pass runs later and must see the positions of the forward.
  const positions = new Int32Array(given.length);
  for (let i = 0; i < given.length; i++) positions[i] = checkInteger(given[i], op, `positions[${i}]`, POSITION_MAX);
  return positions;
}

function invFreqOf(options: RopeOptions, headDim: number, op: string): Float32Array {
  const given = options.invFreq;
  if (given === undefined) return ropeInvFreq(headDim, options.theta ?? 10000);
  if (!(given instanceof Float32Array) && !Array.isArray(given)) {
    throw new TypeError(`${op}: invFreq must be a Float32Array or an array of numbers`);
  }
  if (given.length !== headDim / 2) {
    throw new TypeError(`${op}: invFreq has ${given.length} values but the head size ${headDim} needs ${headDim / 2}`);
  }
  const invFreq = Float32Array.from(given);
  if (!invFreq.every(Number.isFinite)) throw new RangeError(`${op}: invFreq has a value that is not finite`);
  return invFreq;
}

/**
 * Rotary position embedding of x [B, T, H, D] (rotate-half form, as Hugging Face's LLaMA; see the
 * module docs for the exact arithmetic). Apply it to queries and keys before {@linkcode attention}.
 *
 * @param x Queries or keys [B, T, H, D], D even.
 * @param options theta, invFreq, offset, positions.
 * @returns The rotated tensor, same shape and dtype as x.
 * @example
 * ```ts
 * import { rope } from "./rope.ts";
 * import { tensor } from "../tensor.ts";
 * // D = 2, position 1, invFreq [1]: (1, 0) rotates by 1 radian to (cos 1, sin 1).
 * using x = tensor([1, 0], { shape: [1, 1, 1, 2] });
 * using y = rope(x, { offset: 1 });
 * if (Math.abs(y.toArray()[0]! - Math.cos(1)) > 1e-7) throw new Error("rotated");
 * ```
 */
export function rope(x: Tensor, options: RopeOptions = {}): Tensor {
  const op = "rope";
  checkTensor(x, op, "x");
  if (typeof options !== "object" || options === null) {
    throw new TypeError(`${op}: options must be an object such as { theta: 10000 }, got ${String(options)}`);
  }
  if (x.ndim !== 4) throw new TypeError(`${op}: x ${shapeText(x.shape)} must be 4-D [B, T, H, D]`);
  const [batch, steps, heads, headDim] = x.shape as [number, number, number, number];
  if (headDim % 2 !== 0 || headDim < 2 || headDim > ROPE_HEAD_DIM_MAX) {
    throw new RangeError(
      `${op}: head size ${headDim} of x ${shapeText(x.shape)} must be even, 2..${ROPE_HEAD_DIM_MAX}`,
    );
  }
  if (steps > POSITION_MAX) throw new RangeError(`${op}: ${steps} steps exceed 2^24 positions`);
  const offset = checkInteger(options.offset ?? 0, op, "offset", POSITION_MAX);
  const positions = positionsOf(options, batch, steps, op);
  const invFreq = invFreqOf(options, headDim, op);
  const dtype = autocastDtype("rope", [x.dtype], x.device);
  const source = toDtype(x, dtype);
  const problem: RopeProblem = { batch, steps, heads, headDim, invFreq, offset, positions };
  const backend = backendOf(source.device);
  const out = empty(source.shape, dtype, source.device);
  backend.ropeForward(problem, source, out);
  return record(out, [source], [], (g) => {
    const dx = empty(source.shape, dtype, source.device);
    try {
      backend.ropeBackward(problem, g, dx);
    } catch (error) {
      dx.dispose();
      throw error;
    }
    return [dx];
  });
}
