/**
 * LoRA (Hu et al., 2021): a frozen base weight plus a trainable low-rank update,
 * y = x W^T + (alpha / rank) * (x A^T) B^T, with A [rank, in] and B [out, rank] (PEFT's layout:
 * lora_A.weight, lora_B.weight). B starts at zero, so a fresh adapter leaves the base output
 * unchanged. The base is stored frozen in bfloat16 (or float32), or quantized: int8 with one scale
 * per output channel, or int4 in groups of 64 inputs with two values per byte, dequantized to
 * float32 on the fly. Quantized bases do not combine with mixed-precision autocast or loss
 * scaling: validatePrecisionConfig refuses that, and so does this layer.
 *
 * @module
 */

import { tidy, track } from "../autodiff.ts";
import { currentPolicy } from "../autocast.ts";
import { canonicalDtype, type DtypeName } from "../dtype.ts";
import * as ops from "../ops/mod.ts";
import { type PrecisionConfig, validatePrecisionConfig } from "../precision_config.ts";
import { isTensor, type Tensor, tensor } from "../tensor.ts";
import { checkSeed, filled, subSeed, uniform } from "./_init.ts";
import type { Layer } from "./layers.ts";

/** How a frozen base weight is stored. */
export type BaseStorage = "float32" | "bfloat16" | "float16" | "int8" | "int4";

/** Inputs per int4 scale group. */
export const INT4_GROUP_SIZE = 64;

/**
 * A frozen weight [out, in]: not a Tensor leaf, so valueAndGrad refuses it as a parameter and
 * nn.partition puts it on the frozen side. Holds a float tensor (float32 / bfloat16 / float16) or quantized
 * integers with float32 scales.
 */
export class FrozenWeight {
  /** Storage kind. */
  readonly kind: BaseStorage;
  /** [out, in]. */
  readonly shape: readonly [number, number];
  /** The float tensor (float32 / bfloat16 / float16 kinds). */
  readonly tensor: Tensor | null;
  /** int8: one value per element; int4: two per byte (low nibble first), rows padded to whole groups. */
  readonly quantized: Int8Array | Uint8Array | null;
  /** int8: one scale per output row; int4: one per row and group. */
  readonly scales: Float32Array | null;

  /** @internal Use {@linkcode freezeWeight}. */
  constructor(
    kind: BaseStorage,
    shape: readonly [number, number],
    t: Tensor | null,
    quantized: Int8Array | Uint8Array | null,
    scales: Float32Array | null,
  ) {
    this.kind = kind;
    this.shape = Object.freeze([...shape]) as unknown as readonly [number, number];
    this.tensor = t;
    this.quantized = quantized;
    this.scales = scales;
  }

  /** Storage bytes (weights plus scales). */
  get sizeBytes(): number {
    if (this.tensor !== null) return this.tensor.sizeBytes;
    return this.quantized!.byteLength + this.scales!.byteLength;
  }

  /** The weight's values in float32 (dequantized: q * scale). */
  dequantize(): Float32Array {
    if (this.tensor !== null) return this.tensor.toArray();
    const [rows, cols] = this.shape;
    const out = new Float32Array(rows * cols);
    const scales = this.scales!;
    if (this.kind === "int8") {
      const q = this.quantized as Int8Array;
      for (let r = 0; r < rows; r++) {
        const s = scales[r]!;
        for (let c = 0; c < cols; c++) out[r * cols + c] = q[r * cols + c]! * s;
      }
      return out;
    }
    const q = this.quantized as Uint8Array;
    const groups = Math.ceil(cols / INT4_GROUP_SIZE);
    const rowBytes = (groups * INT4_GROUP_SIZE) / 2;
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < cols; c++) {
        const byte = q[r * rowBytes + (c >> 1)]!;
        const nibble = c & 1 ? byte >> 4 : byte & 0xf;
        const value = nibble >= 8 ? nibble - 16 : nibble;
        out[r * cols + c] = value * scales[r * groups + Math.floor(c / INT4_GROUP_SIZE)]!;
      }
    }
    return out;
  }

  /** Frees the float tensor (quantized storage is garbage collected). */
  dispose(): void {
    this.tensor?.dispose();
  }

  /** e.g. `FrozenWeight(int4, [64, 128])`. */
  toString(): string {
    return `FrozenWeight(${this.kind}, [${this.shape.join(", ")}])`;
  }
}

/**
 * Freezes a weight [out, in] in the given storage. int8: per output row, scale = max|w| / 127 and
 * q = round(w / scale) in [-127, 127]; int4: per row and group of 64 inputs, scale = max|w| / 7 and
 * q = round(w / scale) in [-7, 7]. Round to nearest, so every dequantized value is within half a
 * step (scale / 2) of the original.
 *
 * @param weight A float tensor [out, in] (not consumed; the result owns its own storage).
 * @param kind "float32", "bfloat16", "float16", "int8" or "int4".
 * @returns The frozen weight.
 * @example
 * ```ts
 * import { freezeWeight } from "./lora.ts";
 * import { tensor } from "../tensor.ts";
 * using w = tensor([[0.5, -1, 0.25]]);
 * const frozen = freezeWeight(w, "int8");
 * const back = frozen.dequantize();
 * if (Math.abs(back[1]! + 1) > 1e-6 || Math.abs(back[0]! - 0.5) > 1 / 254) throw new Error("half a step");
 * ```
 */
export function freezeWeight(weight: Tensor, kind: BaseStorage): FrozenWeight {
  if (!isTensor(weight) || weight.ndim !== 2) {
    throw new TypeError(`freezeWeight takes a 2-D weight tensor [out, in], got ${String(weight)}`);
  }
  const [rows, cols] = weight.shape as [number, number];
  if (kind === "float32" || kind === "bfloat16" || kind === "float16") {
    return new FrozenWeight(kind, [rows, cols], weight.to(kind), null, null);
  }
  const values = weight.toArray();
  if (kind === "int8") {
    const q = new Int8Array(rows * cols);
    const scales = new Float32Array(rows);
    for (let r = 0; r < rows; r++) {
      let max = 0;
      for (let c = 0; c < cols; c++) max = Math.max(max, Math.abs(values[r * cols + c]!));
      const s = Math.fround(max / 127) || 1;
      scales[r] = s;
      for (let c = 0; c < cols; c++)
        q[r * cols + c] = Math.max(-127, Math.min(127, Math.round(values[r * cols + c]! / s)));
    }
    return new FrozenWeight(kind, [rows, cols], null, q, scales);
  }
  if (kind === "int4") {
    const groups = Math.ceil(cols / INT4_GROUP_SIZE);
    const rowBytes = (groups * INT4_GROUP_SIZE) / 2;
    const q = new Uint8Array(rows * rowBytes);
    const scales = new Float32Array(rows * groups);
    for (let r = 0; r < rows; r++) {
      for (let g = 0; g < groups; g++) {
        const start = g * INT4_GROUP_SIZE;
        const end = Math.min(cols, start + INT4_GROUP_SIZE);
        let max = 0;
        for (let c = start; c < end; c++) max = Math.max(max, Math.abs(values[r * cols + c]!));
        const s = Math.fround(max / 7) || 1;
        scales[r * groups + g] = s;
        for (let c = start; c < end; c++) {
          const value = Math.max(-7, Math.min(7, Math.round(values[r * cols + c]! / s)));
          q[r * rowBytes + (c >> 1)]! |= (value & 0xf) << (c & 1 ? 4 : 0);
        }
      }
    }
    return new FrozenWeight(kind, [rows, cols], null, q, scales);
  }
  throw new RangeError(
    `freezeWeight: storage ${JSON.stringify(kind)} is unknown: use float32, bfloat16, float16, int8 or int4`,
  );
}

/** Options of {@linkcode loraLinear}. */
export interface LoraLinearOptions {
  readonly inFeatures: number;
  readonly outFeatures: number;
  /** Adapter rank r (default 8). */
  readonly rank?: number;
  /** Scaling numerator: the update is multiplied by alpha / rank (default: rank, i.e. 1). */
  readonly alpha?: number;
  /** Base storage (default "bfloat16"). */
  readonly base?: BaseStorage;
  /** Adapter dtype: "float32" (default) or "float16". */
  readonly adapters?: "float32" | "float16";
  /** The training precision, checked with validatePrecisionConfig against the base storage. */
  readonly precision?: PrecisionConfig;
}

/** Parameters of a LoRA layer: the frozen base and the trainable adapters. */
export interface LoraLinearParams {
  readonly base: FrozenWeight;
  readonly a: Tensor;
  readonly b: Tensor;
}

/** Options of a LoRA layer's init. */
export interface LoraInitOptions {
  readonly seed: number;
  /** A pretrained weight [out, in] to freeze as the base (default: a random nn.Linear init). */
  readonly weight?: Tensor;
}

function quantizedUnderMixedPrecision(kind: BaseStorage): void {
  if (kind !== "int8" && kind !== "int4") return;
  const policy = currentPolicy();
  if (policy === null) return;
  validatePrecisionConfig({ params: policy.param, compute: policy.compute, output: policy.output, quantization: kind });
}

/**
 * A LoRA dense layer over a frozen base. Differentiate the adapters only: split the params with
 * nn.partition and pass the frozen part as a later argument.
 *
 * @param options inFeatures, outFeatures, rank, alpha, base, adapters, precision.
 * @returns The layer; init takes an optional pretrained `weight`.
 * @example
 * ```ts
 * import { loraLinear } from "./lora.ts";
 * import { ones } from "../tensor.ts";
 * const layer = loraLinear({ inFeatures: 4, outFeatures: 2, rank: 2, base: "int8" });
 * const params = layer.init({ seed: 0 });
 * using y = layer.apply(params, ones([3, 4]));
 * if (y.shape.join() !== "3,2") throw new Error("shape");
 * ```
 */
export function loraLinear(options: LoraLinearOptions): Layer<LoraLinearParams> & {
  init(options: LoraInitOptions): LoraLinearParams;
} {
  const inFeatures = options?.inFeatures;
  const outFeatures = options?.outFeatures;
  if (!Number.isInteger(inFeatures) || inFeatures < 1 || !Number.isInteger(outFeatures) || outFeatures < 1) {
    throw new RangeError(`loraLinear: inFeatures and outFeatures must be positive integers`);
  }
  const rank = options.rank ?? 8;
  if (!Number.isInteger(rank) || rank < 1)
    throw new RangeError(`loraLinear: rank must be a positive integer, got ${rank}`);
  const alpha = options.alpha ?? rank;
  if (typeof alpha !== "number" || !Number.isFinite(alpha)) throw new RangeError(`loraLinear: alpha must be finite`);
  const kind = options.base ?? "bfloat16";
  if (!["float32", "bfloat16", "int8", "int4"].includes(kind)) {
    throw new RangeError(`loraLinear: base ${JSON.stringify(kind)} is unknown: use float32, bfloat16, int8 or int4`);
  }
  const adapterDtype: DtypeName = canonicalDtype(options.adapters ?? "float32");
  if (adapterDtype !== "float32" && adapterDtype !== "float16") {
    throw new RangeError(`loraLinear: adapters must be float32 or float16, got ${adapterDtype}`);
  }
  // Refuse a quantized base with mixed precision or loss scaling up front, with the validator's error.
  if (options.precision !== undefined || kind === "int8" || kind === "int4") {
    validatePrecisionConfig({
      ...options.precision,
      quantization: kind === "int8" || kind === "int4" ? kind : (options.precision?.quantization ?? null),
    });
  }
  const factor = alpha / rank;
  return {
    init({ seed, weight }: LoraInitOptions) {
      checkSeed(seed, "loraLinear.init");
      const bound = 1 / Math.sqrt(inFeatures);
      let base: FrozenWeight;
      if (weight !== undefined) {
        if (!isTensor(weight) || weight.shape[0] !== outFeatures || weight.shape[1] !== inFeatures) {
          throw new TypeError(`loraLinear.init: weight must be [${outFeatures}, ${inFeatures}]`);
        }
        base = freezeWeight(weight, kind);
      } else {
        const initial = uniform([outFeatures, inFeatures], bound, subSeed(seed, 0), "float32");
        base = freezeWeight(initial, kind);
        initial.dispose();
      }
      return {
        base,
        a: uniform([rank, inFeatures], bound, subSeed(seed, 1), adapterDtype),
        b: filled([outFeatures, rank], 0, adapterDtype),
      };
    },
    apply(params, x) {
      quantizedUnderMixedPrecision(params.base.kind);
      return tidy(() => {
        // A quantized base is dequantized on the fly into a float32 tensor the scope frees.
        const weight = params.base.tensor ?? track(tensor(params.base.dequantize(), { shape: params.base.shape }));
        const baseOut = ops.linear(x, weight);
        const update = ops.linear(ops.linear(x, params.a), params.b);
        return ops.add(baseOut, ops.scale(update, factor));
      });
    },
  };
}
