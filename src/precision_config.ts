/**
 * One check for a whole precision configuration before training starts: which combinations are
 * errors (with the fix in the message), which are adjusted with a notice, and the normalized
 * configuration every entry point (GradScaler, training loops, the CLI) then works from.
 *
 * @module
 */

import { canonicalDtype, describeKind, type DtypeName } from "./dtype.ts";
import { cudaCapabilities, type DeviceInfo, devices } from "./device.ts";

/** Quantized storage for frozen weights. */
export type Quantization = "int8" | "int4";

/** A LoRA setup: the frozen base's storage and the trainable adapters' dtype. */
export interface LoraPrecision {
  /** The frozen base weights: a dtype, or "int8" / "int4" quantized storage. */
  readonly base: string;
  /** The trainable adapters' dtype. */
  readonly adapters: string;
}

/** Device capabilities given explicitly (tests simulate devices this way). */
export interface DeviceCapabilities {
  readonly kind: "cpu" | "cuda";
  readonly name?: string;
  /** For CUDA: [major, minor]; bf16 and fp8 follow from it unless given. */
  readonly computeCapability?: readonly [number, number];
  readonly bf16?: boolean;
  readonly fp8?: boolean;
  /** For the CPU: whether bf16 runs natively (AVX512-BF16). */
  readonly bf16Native?: boolean;
}

/** What {@linkcode validatePrecisionConfig} takes. */
export interface PrecisionConfig {
  /** Parameter storage dtype (default float32). */
  readonly params?: string;
  /** Compute dtype (default: params). */
  readonly compute?: string;
  /** Output dtype (default: compute). */
  readonly output?: string;
  /** Loss scaling (default: "dynamic" when float16 gradients are involved, else "none"). */
  readonly lossScale?: "none" | "static" | "dynamic";
  /** Quantized frozen weights (default none). */
  readonly quantization?: Quantization | null;
  /** "cpu" (default) or "cuda:N". */
  readonly device?: string;
  /** Capabilities of the device, instead of looking it up in devices(). */
  readonly deviceInfo?: DeviceCapabilities;
  /** LoRA: base storage and adapter dtype. */
  readonly lora?: LoraPrecision | null;
}

/** The normalized configuration: every default filled in, every adjustment applied. */
export interface NormalizedPrecisionConfig {
  readonly params: DtypeName;
  readonly compute: DtypeName;
  readonly output: DtypeName;
  readonly lossScale: "none" | "static" | "dynamic";
  readonly quantization: Quantization | null;
  readonly device: string;
  readonly lora: { readonly base: DtypeName | Quantization; readonly adapters: DtypeName } | null;
  /**
   * Which gradients the loss scaler covers: "all", "trainable" (LoRA: the adapters only, the base
   * is frozen), or "none" (no loss scaling).
   */
  readonly scaledGradients: "all" | "trainable" | "none";
}

/** The result of a valid configuration. */
export interface PrecisionCheck {
  readonly ok: true;
  /** Sentences about adjustments and facts worth knowing (e.g. loss scaling turned off for bf16). */
  readonly notices: readonly string[];
  readonly config: NormalizedPrecisionConfig;
}

const KNOWN_KEYS = new Set([
  "params",
  "compute",
  "output",
  "lossScale",
  "quantization",
  "device",
  "deviceInfo",
  "lora",
]);
const LOSS_SCALES = new Set(["none", "static", "dynamic"]);
const QUANTIZATIONS = new Set(["int8", "int4"]);
const FP8: ReadonlySet<DtypeName> = new Set(["float8_e4m3fn", "float8_e5m2"]);

function dtypeSetting(name: string, value: unknown): DtypeName {
  try {
    return canonicalDtype(value);
  } catch {
    throw new RangeError(
      `${name}=${JSON.stringify(value) ?? String(value)} is not a dtype: use float32, float16 or bfloat16 (or f32, f16, bf16)`,
    );
  }
}

interface ResolvedDevice {
  readonly name: string;
  readonly bf16: boolean;
  readonly fp8: boolean;
  readonly bf16Native: boolean | null;
  readonly computeCapability: readonly [number, number] | null;
}

function resolveDevice(device: unknown, given: DeviceCapabilities | undefined): ResolvedDevice {
  if (device !== undefined && (typeof device !== "string" || !/^(cpu|cuda:\d+)$/.test(device))) {
    throw new RangeError(`device=${JSON.stringify(device) ?? String(device)} is not a device: use "cpu" or "cuda:N"`);
  }
  if (given !== undefined) {
    if (typeof given !== "object" || given === null || (given.kind !== "cpu" && given.kind !== "cuda")) {
      throw new TypeError(`deviceInfo must be { kind: "cpu" | "cuda", computeCapability?, bf16?, fp8? }`);
    }
    const name = (device as string | undefined) ?? given.name ?? (given.kind === "cpu" ? "cpu" : "cuda:0");
    if (given.kind === "cpu") {
      return {
        name,
        bf16: given.bf16 ?? true,
        fp8: given.fp8 ?? true,
        bf16Native: given.bf16Native ?? null,
        computeCapability: null,
      };
    }
    const cc = given.computeCapability ?? null;
    if (cc === null && (given.bf16 === undefined || given.fp8 === undefined)) {
      throw new TypeError(`deviceInfo for a CUDA device needs computeCapability (e.g. [8, 0]) or both bf16 and fp8`);
    }
    const derived = cc === null ? { bf16: false, fp8: false } : cudaCapabilities(cc);
    return {
      name,
      bf16: given.bf16 ?? derived.bf16,
      fp8: given.fp8 ?? derived.fp8,
      bf16Native: null,
      computeCapability: cc,
    };
  }
  const name = (device as string | undefined) ?? "cpu";
  const list: DeviceInfo[] = devices();
  const found = list.find((d) => d.name === name);
  if (found === undefined) {
    throw new RangeError(
      `device=${name} is not available (found: ${list.map((d) => d.name).join(", ")}): use device "cpu", or check that the CUDA driver sees the GPU`,
    );
  }
  if (found.kind === "cpu") {
    return { name, bf16: found.bf16, fp8: found.fp8, bf16Native: found.bf16Native, computeCapability: null };
  }
  return { name, bf16: found.bf16, fp8: found.fp8, bf16Native: null, computeCapability: found.computeCapability };
}

function describeDevice(device: ResolvedDevice): string {
  if (device.computeCapability === null) return device.name;
  const [major, minor] = device.computeCapability;
  return `${device.name} (compute capability ${major}.${minor}, sm_${major}${minor})`;
}

/**
 * Checks a precision configuration and returns it normalized.
 *
 * Errors (RangeError, naming the settings and the fix):
 * - int8 / int4 quantized weights combined with mixed-precision autocast (compute other than
 *   float32) or with loss scaling;
 * - bfloat16 on a device without it (CUDA below sm_80), fp8 on a device without it (below sm_89).
 *
 * Adjustments (with a notice): bfloat16 training with dynamic loss scaling turns loss scaling off
 * (bfloat16 has float32's exponent range). Defaults follow jmp: params float32, compute follows
 * params, output follows compute; loss scaling defaults to "dynamic" exactly when float16
 * gradients are involved. With LoRA the scaler covers only the trainable (adapter) gradients.
 *
 * @param config params, compute, output, lossScale, quantization, device, deviceInfo, lora.
 * @returns `{ ok: true, notices, config }`.
 * @throws {RangeError} For an invalid combination or value.
 * @throws {TypeError} For an unknown setting or a value of the wrong kind.
 * @example
 * ```ts
 * import { validatePrecisionConfig } from "./precision_config.ts";
 * const { config, notices } = validatePrecisionConfig({ compute: "bf16", lossScale: "dynamic" });
 * if (config.lossScale !== "none" || notices.length === 0) throw new Error("bf16 needs no loss scaling");
 * ```
 */
export function validatePrecisionConfig(config: PrecisionConfig = {}): PrecisionCheck {
  if (typeof config !== "object" || config === null) {
    throw new TypeError(`validatePrecisionConfig takes an object, got ${describeKind(config)}`);
  }
  for (const key of Object.keys(config)) {
    if (!KNOWN_KEYS.has(key)) {
      throw new TypeError(`Unknown precision setting "${key}": use ${[...KNOWN_KEYS].join(", ")}`);
    }
  }
  const notices: string[] = [];
  const params = config.params === undefined ? "float32" : dtypeSetting("params", config.params);
  const compute = config.compute === undefined ? params : dtypeSetting("compute", config.compute);
  const output = config.output === undefined ? compute : dtypeSetting("output", config.output);

  let lora: NormalizedPrecisionConfig["lora"] = null;
  let quantization: Quantization | null = null;
  if (config.quantization != null) {
    if (!QUANTIZATIONS.has(config.quantization)) {
      throw new RangeError(
        `quantization=${JSON.stringify(config.quantization)} is not supported: use "int8", "int4" or null`,
      );
    }
    quantization = config.quantization;
  }
  if (config.lora != null) {
    if (typeof config.lora !== "object")
      throw new TypeError(`lora must be { base, adapters }, got ${describeKind(config.lora)}`);
    const base = QUANTIZATIONS.has(config.lora.base)
      ? (config.lora.base as Quantization)
      : dtypeSetting("lora.base", config.lora.base);
    const adapters = dtypeSetting("lora.adapters", config.lora.adapters ?? "float32");
    if (base === "int8" || base === "int4") {
      if (quantization !== null && quantization !== base) {
        throw new RangeError(
          `quantization=${quantization} and lora.base=${base} disagree: give the base's storage once`,
        );
      }
      quantization = base;
    }
    lora = Object.freeze({ base, adapters });
  }

  if (config.lossScale !== undefined && !LOSS_SCALES.has(config.lossScale)) {
    throw new RangeError(
      `lossScale=${JSON.stringify(config.lossScale)} is not supported: use "none", "static" or "dynamic"`,
    );
  }
  // The dtypes gradients flow through: float16 among them is what makes loss scaling necessary.
  const trainable = lora === null ? [params, compute] : [compute, lora.adapters];
  const float16Gradients = trainable.includes("float16");
  const uses = [params, compute, output, ...(lora === null ? [] : [lora.base, lora.adapters])];
  let lossScale = config.lossScale ?? (float16Gradients ? "dynamic" : "none");

  if (quantization !== null) {
    const conflicts: string[] = [];
    if (compute !== "float32") conflicts.push(`compute=${compute} autocast`);
    if (lossScale !== "none") conflicts.push(`lossScale=${lossScale} loss scaling`);
    if (conflicts.length > 0) {
      throw new RangeError(
        `quantization ${quantization} cannot be combined with ${conflicts.join(" or ")}: train the adapters in float32 without autocast (compute=float32, lossScale=none), or drop quantization`,
      );
    }
  }

  if (lossScale === "dynamic" && !float16Gradients && uses.includes("bfloat16")) {
    notices.push(
      "lossScale=dynamic with bfloat16: bfloat16 has float32's exponent range, so gradients do not underflow and need no loss scaling; loss scaling is off (lossScale=none)",
    );
    lossScale = "none";
  } else if (lossScale === "static" && !float16Gradients && uses.includes("bfloat16")) {
    notices.push("lossScale=static with bfloat16: bfloat16 needs no loss scaling; the static scale is kept as asked");
  }

  const device = resolveDevice(config.device, config.deviceInfo);
  const bf16Settings = settingsUsing(config, params, compute, output, lora, (d) => d === "bfloat16");
  if (bf16Settings.length > 0 && !device.bf16) {
    throw new RangeError(
      `${bf16Settings.join(", ")} needs bfloat16, which ${describeDevice(device)} lacks (CUDA GPUs have it from sm_80): use float16 instead (e.g. compute=float16 with lossScale=dynamic), or run on a device with bfloat16`,
    );
  }
  const fp8Settings = settingsUsing(config, params, compute, output, lora, (d) => FP8.has(d as DtypeName));
  if (fp8Settings.length > 0 && !device.fp8) {
    throw new RangeError(
      `${fp8Settings.join(", ")} needs fp8, which ${describeDevice(device)} lacks (CUDA GPUs have it from sm_89): use bfloat16 or float16 instead, or run on an sm_89+ GPU`,
    );
  }
  if (bf16Settings.length > 0 && device.bf16Native === false) {
    notices.push(
      "bfloat16 on this CPU is emulated (no AVX512-BF16): conversions use integer SIMD code, results are identical",
    );
  }

  const scaledGradients = lossScale === "none" ? "none" : lora !== null ? "trainable" : "all";
  return Object.freeze({
    ok: true as const,
    notices: Object.freeze(notices),
    config: Object.freeze({
      params,
      compute,
      output,
      lossScale,
      quantization,
      device: device.name,
      lora,
      scaledGradients,
    }),
  });
}

function settingsUsing(
  config: PrecisionConfig,
  params: DtypeName,
  compute: DtypeName,
  output: DtypeName,
  lora: NormalizedPrecisionConfig["lora"],
  predicate: (dtype: string) => boolean,
): string[] {
  const named: [string, string, boolean][] = [
    ["params", params, config.params !== undefined],
    ["compute", compute, config.compute !== undefined],
    ["output", output, config.output !== undefined],
  ];
  if (lora !== null) named.push(["lora.base", lora.base, true], ["lora.adapters", lora.adapters, true]);
  const hits = named.filter(([, dtype]) => predicate(dtype));
  // Prefer the settings that were written out over the ones that followed by default.
  const explicit = hits.filter(([, , given]) => given);
  return (explicit.length > 0 ? explicit : hits).map(([name, dtype]) => `${name}=${dtype}`);
}
