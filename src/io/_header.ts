/**
 * The safetensors header: parsing with full validation, and the writer's layout. Private to
 * src/io; the public API is in safetensors.ts.
 *
 * Format (https://github.com/huggingface/safetensors, README "Format"): 8 bytes N, a little-endian
 * u64; N bytes of UTF-8 JSON, an object mapping tensor names to `{ dtype, shape, data_offsets }`
 * plus an optional `__metadata__` string-to-string map; then the data buffer. `data_offsets` are
 * [begin, end) byte offsets into the data buffer. The reference reader accepts a file only when the
 * tensors, sorted by offset, tile the data buffer exactly (no gap, no overlap, no trailing bytes);
 * so does this one. The reference writer orders tensors by dtype (widest first, in its enum order)
 * then by name, and pads the header with spaces to a multiple of 8 bytes; so does this one, which
 * makes our files byte-identical to the Python package's for the same tensors and metadata.
 *
 * Errors (thrown by {@linkcode parseHeader}); every message names the source, the tensor and the
 * problem:
 * - RangeError: byte layout — file shorter than 8 bytes, header length beyond the file or above the
 *   100,000,000-byte limit the reference reader also enforces, data_offsets out of order, out of
 *   range, overlapping, leaving a gap or trailing bytes, shape x dtype size != byte length.
 * - SyntaxError: header text — invalid UTF-8, not starting with "{", invalid JSON, not an object,
 *   a duplicate tensor name.
 * - TypeError: entry kinds — unknown or unsupported dtype, shape or data_offsets not arrays of
 *   non-negative integers, `__metadata__` not a map of strings.
 *
 * @module
 */

import type { DtypeName } from "../dtype.ts";

/** The safetensors dtypes mixprec reads and writes. */
export type SafetensorsDtype = "F32" | "F16" | "BF16" | "F8_E4M3" | "F8_E5M2" | "I8" | "U8" | "I32" | "I64";

/** The integer safetensors dtypes (loaded as {@linkcode IntegerTensor}s, not Tensors). */
export type IntegerDtype = "I8" | "U8" | "I32" | "I64";

interface DtypeEntry {
  /** Bytes per element. */
  readonly bytes: number;
  /** Position in the reference writer's dtype enum: larger ranks are written first. */
  readonly rank: number;
  /** The mixprec float dtype, or null for integers. */
  readonly float: DtypeName | null;
}

/** The dtype table (ranks from the reference `Dtype` enum: U8 < I8 < F8_E5M2 < F8_E4M3 < ...). */
export const SAFETENSORS_DTYPES: Readonly<Record<SafetensorsDtype, DtypeEntry>> = Object.freeze({
  U8: { bytes: 1, rank: 4, float: null },
  I8: { bytes: 1, rank: 5, float: null },
  F8_E5M2: { bytes: 1, rank: 6, float: "float8_e5m2" },
  F8_E4M3: { bytes: 1, rank: 7, float: "float8_e4m3fn" },
  F16: { bytes: 2, rank: 11, float: "float16" },
  BF16: { bytes: 2, rank: 12, float: "bfloat16" },
  I32: { bytes: 4, rank: 13, float: null },
  F32: { bytes: 4, rank: 15, float: "float32" },
  I64: { bytes: 8, rank: 18, float: null },
});

/** The safetensors code of a mixprec float dtype. */
export const FLOAT_CODES: Readonly<Record<DtypeName, SafetensorsDtype>> = Object.freeze({
  float32: "F32",
  float16: "F16",
  bfloat16: "BF16",
  float8_e4m3fn: "F8_E4M3",
  float8_e5m2: "F8_E5M2",
});

/** The reference reader's header size limit (safetensors MAX_HEADER_SIZE). */
export const HEADER_SIZE_MAX = 100_000_000;

/** One tensor's header entry; offsets are relative to the start of the data buffer. */
export interface TensorInfo {
  readonly name: string;
  readonly dtype: SafetensorsDtype;
  readonly shape: readonly number[];
  readonly begin: number;
  readonly end: number;
}

/** A parsed, validated header. */
export interface Header {
  /** File offset of the data buffer: 8 + the header length. */
  readonly dataStart: number;
  /** Free-form string metadata (`__metadata__`), or null when the file has none. */
  readonly metadata: Readonly<Record<string, string>> | null;
  /** Entries in data order (ascending offsets). */
  readonly tensors: readonly TensorInfo[];
}

/** Reads the header length from the first 8 bytes, checking it against the file size. */
export function headerLength(prefix: Uint8Array, fileSize: number, source: string): number {
  if (fileSize < 8 || prefix.length < 8) {
    throw new RangeError(
      `Safetensors ${source} is ${fileSize} bytes long, shorter than the 8-byte header length: the file is truncated or not a safetensors file`,
    );
  }
  const length = new DataView(prefix.buffer, prefix.byteOffset, 8).getBigUint64(0, true);
  if (length > BigInt(HEADER_SIZE_MAX)) {
    throw new RangeError(
      `Safetensors ${source} declares a header of ${length} bytes, above the ${HEADER_SIZE_MAX}-byte limit: the file is corrupt or not a safetensors file`,
    );
  }
  if (8n + length > BigInt(fileSize)) {
    throw new RangeError(
      `Safetensors ${source} declares a header of ${length} bytes but the file has only ${fileSize - 8} after the length: the file is truncated`,
    );
  }
  return Number(length);
}

const DECODER = new TextDecoder("utf-8", { fatal: true });

/**
 * Parses and validates the header. `headerBytes` are the N bytes after the length; `dataLength`
 * is the size of the data buffer (file size - 8 - N).
 */
export function parseHeader(headerBytes: Uint8Array, dataLength: number, source: string): Header {
  const where = `Safetensors ${source}`;
  let text: string;
  try {
    text = DECODER.decode(headerBytes);
  } catch {
    throw new SyntaxError(`${where} has a header that is not valid UTF-8: the file is corrupt`);
  }
  if (!text.startsWith("{")) {
    throw new SyntaxError(`${where} has a header that does not start with "{": the file is corrupt or not safetensors`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (cause) {
    const reason = cause instanceof Error ? cause.message : String(cause);
    throw new SyntaxError(`${where} has a header that is not valid JSON (${reason}): the file is corrupt`);
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
    throw new SyntaxError(`${where} has a header that is not a JSON object: the file is corrupt`);
  }
  const duplicate = firstDuplicateKey(text);
  if (duplicate !== null) {
    throw new SyntaxError(
      `${where}: tensor ${JSON.stringify(duplicate)} appears twice in the header: names are unique`,
    );
  }
  const record = parsed as Record<string, unknown>;
  let metadata: Record<string, string> | null = null;
  const tensors: TensorInfo[] = [];
  for (const name of Object.keys(record)) {
    const entry = record[name];
    if (name === "__metadata__") {
      metadata = checkMetadata(entry, where);
      continue;
    }
    tensors.push(checkEntry(name, entry, dataLength, where));
  }
  tensors.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let previous: TensorInfo | null = null;
  let cursor = 0;
  for (const info of tensors) {
    if (info.begin < cursor) {
      throw new RangeError(
        `${where}: tensor ${JSON.stringify(info.name)} at bytes [${info.begin}, ${info.end}) overlaps tensor ${JSON.stringify(previous!.name)} at [${previous!.begin}, ${previous!.end}): the file is corrupt`,
      );
    }
    if (info.begin > cursor) {
      throw new RangeError(
        `${where}: tensor ${JSON.stringify(info.name)} starts at byte ${info.begin}, leaving a gap of ${info.begin - cursor} bytes before it: tensors must tile the data buffer`,
      );
    }
    cursor = info.end;
    previous = info;
  }
  if (cursor !== dataLength) {
    throw new RangeError(
      `${where}: the data buffer has ${dataLength - cursor} bytes after the last tensor: the file is corrupt or has trailing data`,
    );
  }
  return { dataStart: 8 + headerBytes.length, metadata, tensors };
}

function checkMetadata(entry: unknown, where: string): Record<string, string> {
  if (typeof entry !== "object" || entry === null || Array.isArray(entry)) {
    throw new TypeError(`${where}: __metadata__ is not an object: it must map strings to strings`);
  }
  const metadata: Record<string, string> = {};
  for (const [key, value] of Object.entries(entry)) {
    if (typeof value !== "string") {
      throw new TypeError(
        `${where}: __metadata__ entry ${JSON.stringify(key)} is a ${value === null ? "null" : typeof value}, not a string`,
      );
    }
    metadata[key] = value;
  }
  return metadata;
}

function isOffset(value: unknown): value is number {
  return typeof value === "number" && Number.isSafeInteger(value) && value >= 0;
}

function checkEntry(name: string, entry: unknown, dataLength: number, where: string): TensorInfo {
  const what = `${where}: tensor ${JSON.stringify(name)}`;
  if (typeof entry !== "object" || entry === null || Array.isArray(entry)) {
    throw new TypeError(`${what} is not an object with dtype, shape and data_offsets`);
  }
  const { dtype, shape, data_offsets: offsets } = entry as Record<string, unknown>;
  if (typeof dtype !== "string" || !Object.hasOwn(SAFETENSORS_DTYPES, dtype)) {
    throw new TypeError(
      `${what} has dtype ${JSON.stringify(dtype) ?? "undefined"}, which mixprec does not read: supported dtypes are ${Object.keys(SAFETENSORS_DTYPES).join(", ")}`,
    );
  }
  if (!Array.isArray(shape) || !shape.every(isOffset)) {
    throw new TypeError(`${what} has shape ${JSON.stringify(shape)}: a shape is an array of non-negative integers`);
  }
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isOffset)) {
    throw new TypeError(
      `${what} has data_offsets ${JSON.stringify(offsets)}: they are two non-negative integers [begin, end]`,
    );
  }
  const [begin, end] = offsets as [number, number];
  if (begin > end) {
    throw new RangeError(`${what} has data_offsets [${begin}, ${end}] out of order: begin must not exceed end`);
  }
  if (end > dataLength) {
    throw new RangeError(
      `${what} has data_offsets [${begin}, ${end}] beyond the ${dataLength}-byte data buffer: the file is truncated or corrupt`,
    );
  }
  const bytes = SAFETENSORS_DTYPES[dtype as SafetensorsDtype].bytes;
  // Multiply with an early exit so an absurd shape cannot overflow to a misleading size.
  let expected = bytes;
  let stopped = false;
  for (let i = 0; i < shape.length; i++) {
    expected *= shape[i] as number;
    if (expected > end - begin && i < shape.length - 1) {
      stopped = true;
      break;
    }
  }
  if ((shape as number[]).includes(0)) [expected, stopped] = [0, false];
  if (expected !== end - begin) {
    throw new RangeError(
      `${what} has shape [${shape.join(", ")}] of ${dtype}, which needs ${stopped ? "more than " : ""}${expected} bytes, but data_offsets [${begin}, ${end}] hold ${end - begin}`,
    );
  }
  return Object.freeze({ name, dtype: dtype as SafetensorsDtype, shape: Object.freeze([...shape]), begin, end });
}

/**
 * The first top-level key of a (valid) JSON object text that appears twice, or null. JSON.parse
 * keeps the last of duplicate keys silently; a safetensors file with two tensors of one name is
 * ambiguous, so we look. The text is known to be valid JSON, so a small scanner suffices.
 */
function firstDuplicateKey(text: string): string | null {
  const seen = new Set<string>();
  let depth = 0;
  let expectKey = false;
  let i = 0;
  while (i < text.length) {
    const c = text.charCodeAt(i);
    if (c === 0x22) {
      // A string: find its end, honouring backslash escapes.
      let j = i + 1;
      while (text.charCodeAt(j) !== 0x22) j += text.charCodeAt(j) === 0x5c ? 2 : 1;
      if (depth === 1 && expectKey) {
        const key = JSON.parse(text.slice(i, j + 1)) as string;
        if (seen.has(key)) return key;
        seen.add(key);
        expectKey = false;
      }
      i = j + 1;
      continue;
    }
    if (c === 0x7b || c === 0x5b) {
      depth++;
      expectKey = c === 0x7b && depth === 1;
    } else if (c === 0x7d || c === 0x5d) {
      depth--;
    } else if (c === 0x2c && depth === 1) {
      expectKey = true;
    }
    i++;
  }
  return null;
}

/** A tensor to write: its name, dtype, shape and bytes. */
export interface WriteEntry {
  readonly name: string;
  readonly dtype: SafetensorsDtype;
  readonly shape: readonly number[];
  readonly byteLength: number;
}

/** Compares names as UTF-8 bytes, as the reference writer (Rust `str::cmp`) does. */
function compareNames(a: string, b: string): number {
  if (a === b) return 0;
  return Buffer.compare(Buffer.from(a, "utf8"), Buffer.from(b, "utf8"));
}

/**
 * Lays entries out as the reference writer does: sorted by dtype (widest rank first) then by
 * name, and returns them in that order with the header bytes (length prefix and space padding
 * included) and the data offsets.
 */
export function layout<E extends WriteEntry>(
  entries: readonly E[],
  metadata: Readonly<Record<string, string>> | null,
): { readonly prefix: Uint8Array; readonly ordered: readonly E[]; readonly offsets: readonly number[] } {
  const ordered = [...entries].sort(
    (a, b) => SAFETENSORS_DTYPES[b.dtype].rank - SAFETENSORS_DTYPES[a.dtype].rank || compareNames(a.name, b.name),
  );
  const parts: string[] = [];
  if (metadata !== null) parts.push(`"__metadata__":${JSON.stringify(metadata)}`);
  const offsets: number[] = [];
  let cursor = 0;
  for (const entry of ordered) {
    offsets.push(cursor);
    const end = cursor + entry.byteLength;
    parts.push(
      `${JSON.stringify(entry.name)}:{"dtype":"${entry.dtype}","shape":[${entry.shape.join(",")}],"data_offsets":[${cursor},${end}]}`,
    );
    cursor = end;
  }
  const json = new TextEncoder().encode(`{${parts.join(",")}}`);
  const padded = Math.ceil(json.length / 8) * 8;
  const prefix = new Uint8Array(8 + padded);
  new DataView(prefix.buffer).setBigUint64(0, BigInt(padded), true);
  prefix.set(json, 8);
  prefix.fill(0x20, 8 + json.length);
  return { prefix, ordered, offsets };
}
