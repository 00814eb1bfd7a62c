/**
 * Checkpoint conversion: rewrite a safetensors file with its floating tensors in another dtype
 * (float16 -> bfloat16 to continue an fp16 model in bf16, bfloat16 -> float16 for fp16 inference,
 * float32 -> bfloat16, fp8 ...), with a report of what the rounding did to every tensor.
 *
 * Streaming: the input is mapped, the output header is written first (every size is known from
 * the input header), then each tensor is cast in chunks of {@linkcode CHUNK_ELEMENTS} elements
 * and appended. Memory is a few chunk buffers, whatever the file or tensor size. The output is
 * written to a temporary file and renamed into place, so converting a file onto itself works and
 * a refused or failed conversion leaves nothing behind.
 *
 * Report, per tensor and in total (values counted over the source's finite elements):
 * - overflow: finite values whose result is not finite (inf; NaN for float8_e4m3fn, which has no inf);
 * - underflow: nonzero values that became zero;
 * - subnormal: nonzero results below the target's smallest normal (they keep fewer mantissa bits);
 * - max and mean relative error |y - x| / |x| (float32 arithmetic, summed in float64) over finite
 *   nonzero x with finite y (an underflow counts as error 1); NaN and inf inputs stay NaN and inf
 *   and are not counted.
 *
 * @module
 */

import {
  copyFileSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { basename, join } from "node:path";
import { convertArrays } from "../backend/cpu/arrays.ts";
import { canonicalDtype, describeKind, type Dtype, type DtypeName, dtypeInfo } from "../dtype.ts";
import { FLOAT_CODES, layout, SAFETENSORS_DTYPES, type SafetensorsDtype } from "./_header.ts";
import { openSafetensors, writeAll, writeAtomically } from "./safetensors.ts";

/** Elements cast per chunk: bounds the memory a conversion uses (at most 16 MB of scratch). */
export const CHUNK_ELEMENTS = 1 << 22;

/** Options of {@linkcode convertCheckpoint}. */
export interface ConvertOptions {
  /** The target dtype of the floating tensors (a name or alias: "bfloat16", "bf16", "f16", ...). */
  readonly to: Dtype;
  /**
   * Which tensors to convert: a glob on names (`*` any run of characters, `?` one character,
   * matched against the whole name, e.g. "model.layers.*.weight") or a RegExp. Default: every
   * floating tensor. Integer tensors and unmatched tensors are copied unchanged.
   */
  readonly include?: string | RegExp;
  /** Write the file even when finite values overflow to inf (or NaN in float8_e4m3fn). */
  readonly allowOverflow?: boolean;
}

/** Statistics of one tensor's conversion. */
export interface TensorConversion {
  readonly name: string;
  /** The source dtype (safetensors code) and the written one. */
  readonly from: SafetensorsDtype;
  readonly to: SafetensorsDtype;
  /** Whether the tensor was cast (false: copied unchanged, already the target, unmatched or integer). */
  readonly converted: boolean;
  readonly elements: number;
  readonly overflow: number;
  readonly underflow: number;
  readonly subnormal: number;
  readonly maxRelativeError: number;
  readonly meanRelativeError: number;
}

/** What {@linkcode convertCheckpoint} did. */
export interface ConversionReport {
  readonly input: string;
  readonly output: string;
  readonly to: DtypeName;
  /** Per tensor, in file order. */
  readonly tensors: readonly TensorConversion[];
  /** Sums over converted tensors; max of maxima; element-weighted mean of means. */
  readonly total: Omit<TensorConversion, "name" | "from" | "to" | "converted"> & { readonly converted: number };
  readonly bytesRead: number;
  readonly bytesWritten: number;
}

/** Running statistics of one tensor: counts, max error, and the sum and count of errors. */
export interface Accumulator {
  elements: number;
  overflow: number;
  underflow: number;
  subnormal: number;
  maxRelativeError: number;
  errorSum: number;
  errorCount: number;
}

/** A zeroed accumulator. @internal */
export function emptyAccumulator(): Accumulator {
  return { elements: 0, overflow: 0, underflow: 0, subnormal: 0, maxRelativeError: 0, errorSum: 0, errorCount: 0 };
}

/**
 * Adds one chunk's statistics: `source` and `result` hold the values before and after the cast,
 * both widened to float32 (exactly). The TypeScript reference of the report's definitions, which
 * the native kernel (zig/src/cpu/convert.zig) must match.
 * @internal
 */
export function accumulateStatistics(
  stats: Accumulator,
  source: Float32Array,
  result: Float32Array,
  count: number,
  minNormal: number,
): void {
  for (let i = 0; i < count; i++) {
    const x = source[i]!;
    if (x - x !== 0) continue; // NaN or inf: passes through, not counted.
    const y = result[i]!;
    if (y - y !== 0) {
      stats.overflow++;
      continue;
    }
    if (x === 0) continue;
    const ay = Math.abs(y);
    let error: number;
    if (ay === 0) {
      stats.underflow++;
      error = 1;
    } else {
      if (ay < minNormal) stats.subnormal++;
      // float32 arithmetic, as the native kernel: each operation rounded once to float32.
      error = Math.fround(Math.abs(Math.fround(y - x)) / Math.abs(x));
    }
    if (error > stats.maxRelativeError) stats.maxRelativeError = error;
    stats.errorSum += error;
    stats.errorCount++;
  }
  stats.elements += count;
}

const STATS = new ArrayBuffer(48);
const STATS_COUNTS = new BigUint64Array(STATS, 0, 4);
const STATS_ERRORS = new Float64Array(STATS, 32, 2);

/**
 * Casts `count` elements of `from` bits in `source` to `to` bits in `target` (nearest even, the
 * cast.ts rules) and adds the statistics to `stats`, in one native pass (zig/src/cpu/convert.zig).
 * Buffers may be unaligned. @internal
 */
export function convertChunk(
  source: Uint8Array,
  target: Uint8Array,
  count: number,
  from: DtypeName,
  to: DtypeName,
  stats: Accumulator,
): void {
  if (count === 0) return;
  if (source.length < count * (dtypeInfo(from).bits / 8) || target.length < count * (dtypeInfo(to).bits / 8)) {
    throw new RangeError(`convertChunk: buffers hold fewer than ${count} elements`);
  }
  convertArrays(
    source,
    target,
    count,
    dtypeInfo(from).code,
    dtypeInfo(to).code,
    STATS,
    `convertCheckpoint(${from} -> ${to})`,
  );
  stats.elements += count;
  stats.overflow += Number(STATS_COUNTS[0]);
  stats.underflow += Number(STATS_COUNTS[1]);
  stats.subnormal += Number(STATS_COUNTS[2]);
  stats.errorCount += Number(STATS_COUNTS[3]);
  stats.maxRelativeError = Math.max(stats.maxRelativeError, STATS_ERRORS[0]!);
  stats.errorSum += STATS_ERRORS[1]!;
}

/** Compiles `include` into a name test. */
function matcher(include: string | RegExp | undefined): (name: string) => boolean {
  if (include === undefined) return () => true;
  if (include instanceof RegExp) {
    // A /g or /y RegExp keeps lastIndex between test() calls: reset it so every name is tested whole.
    return (name) => {
      include.lastIndex = 0;
      return include.test(name);
    };
  }
  if (typeof include !== "string") {
    throw new TypeError(`include must be a glob string or a RegExp, got ${describeKind(include)}`);
  }
  const source = include
    .split("")
    .map((c) => (c === "*" ? ".*" : c === "?" ? "." : c.replace(/[\\^$.|+()[\]{}]/g, "\\$&")))
    .join("");
  const pattern = new RegExp(`^${source}$`, "s");
  return (name) => pattern.test(name);
}

/**
 * Converts the floating tensors of a safetensors file to another dtype, streaming tensor by
 * tensor in bounded memory, and reports what the rounding did (see module docs). Conversions
 * that would overflow finite values to inf (bfloat16 or float32 -> float16 with values above
 * 65504, or to fp8) are refused with a RangeError listing the tensors, and nothing is written,
 * unless `allowOverflow` is set. Casts are the native nearest-even casts (src/cast.ts rules).
 *
 * @param input The source file.
 * @param output The file to write (may equal `input`; replaced atomically).
 * @param options `to` (required), `include`, `allowOverflow`.
 * @returns The report.
 * @example
 * ```ts
 * import { convertCheckpoint } from "./convert.ts";
 * import { loadSafetensors, saveSafetensors } from "./safetensors.ts";
 * import { tensor, type Tensor } from "../tensor.ts";
 * const path = `${require("node:os").tmpdir()}/mixprec-convert-doc-${process.pid}.safetensors`;
 * using w = tensor([1, 1 / 3, 65504], { dtype: "f16" });
 * saveSafetensors(path, { w });
 * const report = convertCheckpoint(path, path, { to: "bf16" });
 * if (report.total.overflow !== 0 || report.total.maxRelativeError > 2 ** -8) throw new Error("unexpected");
 * const loaded = (loadSafetensors(path).tree as { w: Tensor }).w;
 * if (loaded.dtype !== "bfloat16") throw new Error("not converted");
 * loaded.dispose();
 * require("node:fs").rmSync(path);
 * ```
 */
export function convertCheckpoint(input: string, output: string, options: ConvertOptions): ConversionReport {
  if (typeof input !== "string" || typeof output !== "string") {
    throw new TypeError(
      `convertCheckpoint takes input and output paths, got ${describeKind(input)} and ${describeKind(output)}`,
    );
  }
  if (typeof options !== "object" || options === null) {
    throw new TypeError(`convertCheckpoint needs options { to }, got ${describeKind(options)}`);
  }
  if (!existsSync(input))
    throw new TypeError(`convert: ${input} does not exist: give a safetensors file or a model directory`);
  const outputIsDirectory = existsSync(output) && statSync(output).isDirectory();
  if (statSync(input).isDirectory()) return convertDirectory(input, output, options);
  if (outputIsDirectory) {
    throw new TypeError(
      `convert: ${input} is a file but ${output} is a directory: name the output file, e.g. ${join(output, basename(input))}`,
    );
  }
  return convertFile(input, output, options);
}

/** The safetensors files of a model directory: the shards its index lists, or model.safetensors. */
function weightFiles(dir: string): string[] {
  const index = join(dir, "model.safetensors.index.json");
  if (existsSync(index)) {
    const parsed = JSON.parse(readFileSync(index, "utf8")) as { weight_map?: Record<string, string> };
    if (parsed.weight_map === undefined)
      throw new SyntaxError(`${index} has no weight_map: is it a safetensors index?`);
    return [...new Set(Object.values(parsed.weight_map))];
  }
  const files = readdirSync(dir).filter((name) => name.endsWith(".safetensors"));
  if (files.length === 0)
    throw new TypeError(`convert: ${dir} holds no .safetensors file and no model.safetensors.index.json`);
  return files.sort();
}

/**
 * Converts a model directory: every safetensors file (single or sharded) into the same name under
 * `output`, config.json's dtype (`dtype`, and `torch_dtype` where present) rewritten, every other
 * file copied. Written into a temporary directory first, so a refused conversion writes nothing.
 */
function convertDirectory(input: string, output: string, options: ConvertOptions): ConversionReport {
  if (existsSync(output) && !statSync(output).isDirectory()) {
    throw new TypeError(`convert: ${input} is a model directory but ${output} is a file: name an output directory`);
  }
  const to = canonicalDtype(options.to);
  const files = weightFiles(input);
  const staging = `${output.replace(/\/+$/, "")}.tmp-${process.pid}-${Math.random().toString(36).slice(2)}`;
  mkdirSync(staging, { recursive: true });
  try {
    const reports = files.map((file) => convertFile(join(input, file), join(staging, file), options));
    for (const name of readdirSync(input)) {
      if (files.includes(name) || !statSync(join(input, name)).isFile()) continue;
      if (name === "config.json") {
        const config = JSON.parse(readFileSync(join(input, name), "utf8")) as Record<string, unknown>;
        config.dtype = to;
        if ("torch_dtype" in config) config.torch_dtype = to;
        writeFileSync(join(staging, name), `${JSON.stringify(config, null, 2)}\n`);
      } else {
        copyFileSync(join(input, name), join(staging, name));
      }
    }
    mkdirSync(output, { recursive: true });
    for (const name of readdirSync(staging)) renameSync(join(staging, name), join(output, name));
    return combineReports(input, output, to, reports);
  } finally {
    rmSync(staging, { recursive: true, force: true });
  }
}

function combineReports(input: string, output: string, to: DtypeName, reports: ConversionReport[]): ConversionReport {
  const tensors = reports.flatMap((r) => r.tensors);
  const converted = tensors.filter((t) => t.converted);
  const elements = converted.reduce((sum, t) => sum + t.elements, 0);
  const total = Object.freeze({
    converted: converted.length,
    elements,
    overflow: converted.reduce((sum, t) => sum + t.overflow, 0),
    underflow: converted.reduce((sum, t) => sum + t.underflow, 0),
    subnormal: converted.reduce((sum, t) => sum + t.subnormal, 0),
    maxRelativeError: converted.reduce((max, t) => Math.max(max, t.maxRelativeError), 0),
    meanRelativeError:
      elements === 0 ? 0 : converted.reduce((sum, t) => sum + t.meanRelativeError * t.elements, 0) / elements,
  });
  return Object.freeze({
    input,
    output,
    to,
    tensors: Object.freeze(tensors),
    total,
    bytesRead: reports.reduce((sum, r) => sum + r.bytesRead, 0),
    bytesWritten: reports.reduce((sum, r) => sum + r.bytesWritten, 0),
  });
}

function convertFile(input: string, output: string, options: ConvertOptions): ConversionReport {
  const to = canonicalDtype(options.to);
  const toCode = FLOAT_CODES[to];
  const included = matcher(options.include);
  const allowOverflow = options.allowOverflow ?? false;
  if (typeof allowOverflow !== "boolean") {
    throw new TypeError(`allowOverflow must be a boolean, got ${describeKind(allowOverflow)}`);
  }
  const file = openSafetensors(input);
  const plans = file.names.map((name) => {
    const info = file.info(name);
    const from = SAFETENSORS_DTYPES[info.dtype].float;
    const converted = from !== null && from !== to && included(name);
    const dtype: SafetensorsDtype = converted ? toCode : info.dtype;
    const elements = info.shape.reduce((a, b) => a * b, 1);
    return {
      name,
      info,
      from,
      converted,
      dtype,
      shape: info.shape,
      elements,
      byteLength: elements * SAFETENSORS_DTYPES[dtype].bytes,
    };
  });
  const metadata = Object.keys(file.metadata).length > 0 ? file.metadata : null;
  const { prefix, ordered } = layout(plans, metadata);
  const targetBytes = dtypeInfo(to).bits / 8;
  const chunkTarget = new Uint8Array(CHUNK_ELEMENTS * targetBytes);
  const statistics = new Map<string, Accumulator>();
  let bytesWritten = prefix.length;
  writeAtomically(output, (fd) => {
    writeAll(fd, prefix);
    for (const plan of ordered) {
      const raw = file.raw(plan.name);
      const stats = emptyAccumulator();
      statistics.set(plan.name, stats);
      if (!plan.converted) {
        writeAll(fd, raw);
        stats.elements = plan.elements;
        bytesWritten += raw.length;
        continue;
      }
      const from = plan.from!;
      const sourceBytes = dtypeInfo(from).bits / 8;
      for (let start = 0; start < plan.elements; start += CHUNK_ELEMENTS) {
        const count = Math.min(CHUNK_ELEMENTS, plan.elements - start);
        const source = raw.subarray(start * sourceBytes, (start + count) * sourceBytes);
        const target = chunkTarget.subarray(0, count * targetBytes);
        convertChunk(source, target, count, from, to, stats);
        writeAll(fd, target);
        bytesWritten += target.length;
      }
    }
    const overflowing = ordered.filter((plan) => statistics.get(plan.name)!.overflow > 0);
    if (overflowing.length > 0 && !allowOverflow) {
      const list = overflowing.map((plan) => `${plan.name} (${statistics.get(plan.name)!.overflow} values)`).join(", ");
      throw new RangeError(
        `Converting ${input} to ${to} overflows finite values to ${dtypeInfo(to).hasInfinity ? "inf" : "NaN"} in ${overflowing.length} tensor(s): ${list}. Nothing was written: pass allowOverflow (--allow-overflow) to write it anyway, or convert to bfloat16, which keeps float32's range`,
      );
    }
  });
  const tensors = plans.map((plan): TensorConversion => {
    const s = statistics.get(plan.name)!;
    return Object.freeze({
      name: plan.name,
      from: plan.info.dtype,
      to: plan.dtype,
      converted: plan.converted,
      elements: plan.elements,
      overflow: s.overflow,
      underflow: s.underflow,
      subnormal: s.subnormal,
      maxRelativeError: s.maxRelativeError,
      meanRelativeError: s.errorCount === 0 ? 0 : s.errorSum / s.errorCount,
    });
  });
  const convertedTensors = plans.filter((plan) => plan.converted).map((plan) => statistics.get(plan.name)!);
  const errorCount = convertedTensors.reduce((a, s) => a + s.errorCount, 0);
  const total = Object.freeze({
    converted: convertedTensors.length,
    elements: convertedTensors.reduce((a, s) => a + s.elements, 0),
    overflow: convertedTensors.reduce((a, s) => a + s.overflow, 0),
    underflow: convertedTensors.reduce((a, s) => a + s.underflow, 0),
    subnormal: convertedTensors.reduce((a, s) => a + s.subnormal, 0),
    maxRelativeError: convertedTensors.reduce((a, s) => Math.max(a, s.maxRelativeError), 0),
    meanRelativeError: errorCount === 0 ? 0 : convertedTensors.reduce((a, s) => a + s.errorSum, 0) / errorCount,
  });
  return Object.freeze({
    input,
    output,
    to,
    tensors: Object.freeze(tensors),
    total,
    bytesRead: file.bytes.length,
    bytesWritten,
  });
}

function formatError(value: number): string {
  if (value === 0) return "0";
  return value >= 1e-6 ? `${(100 * value).toPrecision(3)}%` : value.toExponential(2);
}

/**
 * What a dtype change does to range and precision, in one sentence, e.g. for float16 ->
 * bfloat16: "bfloat16 keeps float16's range (max 3.39e+38 >= 65504) and drops 3 of 10 mantissa
 * bits: relative rounding error up to 2^-8 (0.391%) instead of 2^-11".
 *
 * @param from The source dtype.
 * @param to The target dtype.
 * @returns The sentence.
 * @example
 * ```ts
 * import { describeConversion } from "./convert.ts";
 * if (!describeConversion("f16", "bf16").includes("drops 3 of 10 mantissa bits")) throw new Error("wrong");
 * ```
 */
export function describeConversion(from: Dtype, to: Dtype): string {
  const a = dtypeInfo(from);
  const b = dtypeInfo(to);
  const range =
    b.max >= a.max
      ? `keeps ${a.name}'s range (max ${b.max.toPrecision(3)} >= ${a.max.toPrecision(5)})`
      : `narrows the range to +-${b.max} (${a.name} reaches ${a.max.toPrecision(3)}): larger values overflow`;
  const bits =
    b.mantissaBits < a.mantissaBits
      ? `drops ${a.mantissaBits - b.mantissaBits} of ${a.mantissaBits} mantissa bits: relative rounding error up to 2^-${b.mantissaBits + 1} (${(100 * 2 ** -(b.mantissaBits + 1)).toPrecision(3)}%) instead of 2^-${a.mantissaBits + 1}`
      : `keeps every mantissa bit (${a.mantissaBits} fit in ${b.mantissaBits}): values in ${b.name}'s normal range convert exactly`;
  return `${b.name} ${range} and ${bits}`;
}

/**
 * Formats a conversion report as a Markdown table with a total row and, per source dtype, a
 * sentence on what the conversion does to range and precision.
 *
 * @param report From {@linkcode convertCheckpoint}.
 * @returns The text.
 * @example
 * ```ts
 * import { convertCheckpoint, formatConversionReport } from "./convert.ts";
 * import { saveSafetensors } from "./safetensors.ts";
 * import { tensor } from "../tensor.ts";
 * const path = `${require("node:os").tmpdir()}/mixprec-format-doc-${process.pid}.safetensors`;
 * using w = tensor([1e5], { dtype: "bf16" });
 * saveSafetensors(path, { w });
 * const text = formatConversionReport(convertCheckpoint(path, path, { to: "f16", allowOverflow: true }));
 * if (!/\| w +\| BF16 \| F16 \| +1 \| +1 \|/.test(text)) throw new Error(text);
 * require("node:fs").rmSync(path);
 * ```
 */
export function formatConversionReport(report: ConversionReport): string {
  const headers = [
    "tensor",
    "from",
    "to",
    "elements",
    "overflow",
    "underflow",
    "subnormal",
    "max rel err",
    "mean rel err",
  ];
  const row = (
    name: string,
    from: string,
    to: string,
    s: Omit<TensorConversion, "name" | "from" | "to" | "converted">,
  ) => [
    name,
    from,
    to,
    String(s.elements),
    String(s.overflow),
    String(s.underflow),
    String(s.subnormal),
    formatError(s.maxRelativeError),
    formatError(s.meanRelativeError),
  ];
  const rows = report.tensors.map((t) =>
    t.converted
      ? row(t.name, t.from, t.to, t)
      : [t.name, t.from, t.to, String(t.elements), "-", "-", "-", "kept", "kept"],
  );
  rows.push(row(`total (${report.total.converted} converted)`, "", FLOAT_CODES[report.to], report.total));
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: readonly string[]) =>
    `| ${cells.map((c, i) => (i < 3 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(" | ")} |`;
  const rule = `|${widths.map((w, i) => (i < 3 ? `${"-".repeat(w + 2)}` : `${"-".repeat(w + 1)}:`)).join("|")}|`;
  const sources = [...new Set(report.tensors.filter((t) => t.converted).map((t) => SAFETENSORS_DTYPES[t.from].float!))];
  const notes = sources.map((from) => `${from} -> ${report.to}: ${describeConversion(from, report.to)}.`);
  return [line(headers), rule, ...rows.map(line), "", ...notes].join("\n").trimEnd();
}
