/**
 * safetensors files (https://github.com/huggingface/safetensors): load, save and zero-copy views.
 *
 * Dtypes: F32, F16, BF16, F8_E4M3, F8_E5M2 load as {@linkcode Tensor}s (float32, float16,
 * bfloat16, float8_e4m3fn, float8_e5m2); I8, U8, I32, I64 load as {@linkcode IntegerTensor}s
 * (a shape and an Int8Array, Uint8Array, Int32Array or BigInt64Array), because Tensor is
 * float-only. Other safetensors dtypes (F64, BOOL, U16, ...) are refused with a TypeError.
 *
 * Memory: a path is mapped with `Bun.mmap` (MAP_PRIVATE), never read into a buffer. A Tensor owns
 * 64-byte aligned native storage that kernels rely on, so {@linkcode loadSafetensors} copies each
 * tensor once, from the mapping into its storage (one memcpy; reading the file into a buffer first
 * would cost a second). Without that copy, {@linkcode openSafetensors} returns the header, views
 * straight into the mapping, and tensors that live on the mapping (fromPretrained loads this way,
 * so weights whose dtype already matches are never copied). Truncating a file while it is mapped crashes Bun
 * (SIGBUS): mixprec itself only replaces files by rename, which leaves existing mappings intact.
 *
 * Names: a pytree saves with dotted names: object keys and array indices joined by ".", so
 * `{ layers: [{ weight }] }` is stored as `layers.0.weight`. Loading splits names on "." and turns
 * an object whose keys are exactly "0".."n-1" into an array. When that rule would not give the
 * saved tree back (empty containers, null leaves, objects with numeric keys, keys that contain
 * dots such as a flat `{ "layers.0.weight": t }` record), the writer also stores the tree's
 * structure as JSON in `__metadata__["mixprec.tree"]`, and the loader uses it. Keys must not be
 * empty; two paths that join to the same name (`{ "a.b": x, a: { b: y } }`) are refused; the
 * top-level key `__metadata__` is reserved.
 *
 * Errors for malformed files: see src/io/_header.ts (RangeError for byte layout, SyntaxError for
 * header text, TypeError for entry kinds); messages name the tensor and the problem. No allocation
 * is larger than the file.
 *
 * @module
 */

import { closeSync, fsyncSync, openSync, readFileSync, renameSync, rmSync, statSync, writeSync } from "node:fs";
import { dirname } from "node:path";
import { describeKind, type StorageArray } from "../dtype.ts";
import { Tensor, tensorOnBytes } from "../tensor.ts";
import { isNode, type Tree, type TreeStructure, treeStructure } from "../tree.ts";
import {
  FLOAT_CODES,
  type Header,
  headerLength,
  type IntegerDtype,
  layout,
  parseHeader,
  SAFETENSORS_DTYPES,
  type SafetensorsDtype,
  type TensorInfo,
} from "./_header.ts";

export type { IntegerDtype, SafetensorsDtype, TensorInfo };

/** The typed arrays that hold integer tensors. */
export type IntegerArray = Int8Array | Uint8Array | Int32Array | BigInt64Array;

const INTEGER_KINDS: Readonly<Record<IntegerDtype, { new (length: number): IntegerArray; name: string }>> = {
  I8: Int8Array,
  U8: Uint8Array,
  I32: Int32Array,
  I64: BigInt64Array,
};

/**
 * An integer tensor from a safetensors file (token ids, int8 quantized weights, step counters):
 * a dtype, a shape and a plain typed array that the value owns (JavaScript memory, not native
 * storage; nothing to dispose). A class only so that pytrees treat it as a leaf.
 */
export class IntegerTensor {
  /** "I8", "U8", "I32" or "I64". */
  readonly dtype: IntegerDtype;
  /** The dimensions. */
  readonly shape: readonly number[];
  /** The values. */
  readonly data: IntegerArray;

  /** @internal Use {@linkcode integerTensor}. */
  constructor(dtype: IntegerDtype, shape: readonly number[], data: IntegerArray) {
    this.dtype = dtype;
    this.shape = Object.freeze([...shape]);
    this.data = data;
  }

  /** A short description, e.g. `IntegerTensor(I32, [2, 3])`. */
  toString(): string {
    return `IntegerTensor(${this.dtype}, [${this.shape.join(", ")}])`;
  }
}

/**
 * Wraps an integer typed array as an {@linkcode IntegerTensor} to save in a safetensors file.
 *
 * @param data An Int8Array (I8), Uint8Array (U8), Int32Array (I32) or BigInt64Array (I64); kept, not copied.
 * @param shape Dimensions (default `[data.length]`); their product must equal `data.length`.
 * @returns The integer tensor.
 * @example
 * ```ts
 * import { integerTensor } from "./safetensors.ts";
 * const ids = integerTensor(new Int32Array([1, 2, 3, 4]), [2, 2]);
 * if (ids.dtype !== "I32" || ids.shape[1] !== 2) throw new Error("wrong integer tensor");
 * ```
 */
export function integerTensor(data: IntegerArray, shape?: readonly number[]): IntegerTensor {
  const dtype = (Object.keys(INTEGER_KINDS) as IntegerDtype[]).find(
    (key) => Object.getPrototypeOf(data) === INTEGER_KINDS[key].prototype,
  );
  if (dtype === undefined) {
    throw new TypeError(
      `integerTensor takes an Int8Array, Uint8Array, Int32Array or BigInt64Array, got ${describeKind(data)}`,
    );
  }
  const dims = shape ?? [data.length];
  if (!Array.isArray(dims) || !dims.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw new TypeError(`Shape ${JSON.stringify(dims)} is not an array of non-negative integers`);
  }
  const size = dims.reduce((a, b) => a * b, 1);
  if (size !== data.length) {
    throw new RangeError(`Shape [${dims.join(", ")}] holds ${size} elements but the data has ${data.length}`);
  }
  return new IntegerTensor(dtype, dims, data);
}

/** A leaf of a saved or loaded tree. */
export type SafetensorsLeaf = Tensor | IntegerTensor;

/** Where a file comes from: a path, or its bytes. */
export type SafetensorsSource = string | Uint8Array;

/** Metadata key under which the tree structure is stored when names alone would not restore it. */
export const TREE_METADATA_KEY = "mixprec.tree";

// ---------------------------------------------------------------------------------------------
// Opening: header + views into the mapping.

/** Maps a file (or takes bytes) and validates its header. */
function openBytes(source: SafetensorsSource): { bytes: Uint8Array; header: Header; label: string; mapped: boolean } {
  let bytes: Uint8Array;
  let label: string;
  let mapped = false;
  if (typeof source === "string") {
    label = JSON.stringify(source);
    const size = statSync(source).size;
    // Bun.mmap refuses empty files; tiny files are read (the header check then reports them).
    bytes = size < 8 ? new Uint8Array(readFileSync(source)) : Bun.mmap(source, { shared: false });
    mapped = size >= 8;
  } else if (source instanceof Uint8Array) {
    label = `buffer of ${source.length} bytes`;
    bytes = source;
  } else {
    throw new TypeError(`Expected a file path or a Uint8Array of safetensors bytes, got ${describeKind(source)}`);
  }
  const length = headerLength(bytes, bytes.length, label);
  const dataLength = bytes.length - 8 - length;
  const header = parseHeader(bytes.subarray(8, 8 + length), dataLength, label);
  return { bytes, header, label, mapped };
}

/** A safetensors file opened for raw, zero-copy access. */
export interface SafetensorsFile {
  /** The `__metadata__` map ({} when the file has none). */
  readonly metadata: Readonly<Record<string, string>>;
  /** Tensor names in data order. */
  readonly names: readonly string[];
  /** File offset of the data buffer (8 + header length). */
  readonly dataStart: number;
  /** The whole file's bytes (the mapping for a path). */
  readonly bytes: Uint8Array;
  /** A tensor's header entry (dtype, shape, begin/end relative to the data buffer). */
  info(name: string): TensorInfo;
  /** A tensor's bytes: a zero-copy view into the file. */
  raw(name: string): Uint8Array;
  /**
   * A tensor's elements as a typed array of its storage kind (Float32Array for F32, Uint16Array
   * bits for F16/BF16, Uint8Array for fp8, the integer arrays for integers). Zero-copy when the
   * tensor's file offset is aligned to its element size (always so for files written by the
   * reference writer or mixprec); otherwise a copy.
   */
  view(name: string): StorageArray | IntegerArray;
  /**
   * A tensor as a new Tensor (float dtypes) or IntegerTensor. From a file path, a float tensor
   * aligned to its element size is the private mapping itself (no copy; writes to it are
   * copy-on-write and never reach the file); from bytes, or unaligned, a copy.
   */
  tensor(name: string): SafetensorsLeaf;
}

/**
 * Opens a safetensors file for raw access: validates the header and returns views straight into
 * the mapped file, without copying any tensor. The mapping stays alive as long as a view does.
 *
 * @param source A path (mapped with Bun.mmap) or the file's bytes.
 * @returns The header and view functions.
 * @throws {RangeError | SyntaxError | TypeError} When the file is malformed (see module docs).
 * @example
 * ```ts
 * import { openSafetensors, serializeSafetensors } from "./safetensors.ts";
 * import { tensor } from "../tensor.ts";
 * using w = tensor([1, 2], { dtype: "bf16" });
 * const file = openSafetensors(serializeSafetensors({ w }));
 * if ((file.view("w") as Uint16Array)[1] !== 0x4000) throw new Error("wrong bits");
 * ```
 */
export function openSafetensors(source: SafetensorsSource): SafetensorsFile {
  const { bytes, header, label, mapped } = openBytes(source);
  const byName = new Map(header.tensors.map((info) => [info.name, info]));
  const info = (name: string): TensorInfo => {
    const found = byName.get(name);
    if (found === undefined) {
      throw new RangeError(`Safetensors ${label} has no tensor ${JSON.stringify(name)}: see .names for what it holds`);
    }
    return found;
  };
  const raw = (name: string): Uint8Array => {
    const entry = info(name);
    return bytes.subarray(header.dataStart + entry.begin, header.dataStart + entry.end);
  };
  const view = (name: string): StorageArray | IntegerArray => {
    const entry = info(name);
    return typedView(raw(name), entry.dtype);
  };
  // From a mapped file a float tensor is the mapping itself (copy-on-write), not a copy.
  const tensorOf = (name: string): SafetensorsLeaf => leafFromBytes(raw(name), info(name), mapped);
  return Object.freeze({
    metadata: Object.freeze({ ...(header.metadata ?? {}) }),
    names: Object.freeze(header.tensors.map((t) => t.name)),
    dataStart: header.dataStart,
    bytes,
    info,
    raw,
    view,
    tensor: tensorOf,
  });
}

function typedView(bytes: Uint8Array, dtype: SafetensorsDtype): StorageArray | IntegerArray {
  const size = SAFETENSORS_DTYPES[dtype].bytes;
  const aligned = bytes.byteOffset % size === 0 ? bytes : bytes.slice();
  const { buffer, byteOffset } = aligned;
  const length = bytes.length / size;
  switch (dtype) {
    case "F32":
      return new Float32Array(buffer, byteOffset, length);
    case "F16":
    case "BF16":
      return new Uint16Array(buffer, byteOffset, length);
    case "F8_E4M3":
    case "F8_E5M2":
    case "U8":
      return new Uint8Array(buffer, byteOffset, length);
    case "I8":
      return new Int8Array(buffer, byteOffset, length);
    case "I32":
      return new Int32Array(buffer, byteOffset, length);
    case "I64":
      return new BigInt64Array(buffer, byteOffset, length);
  }
}

function leafFromBytes(bytes: Uint8Array, info: TensorInfo, mapped = false): SafetensorsLeaf {
  const float = SAFETENSORS_DTYPES[info.dtype].float;
  if (float !== null) {
    const onMapping = mapped ? tensorOnBytes(float, info.shape, bytes) : null;
    if (onMapping !== null) return onMapping;
    const result = new Tensor(float, info.shape, "cpu");
    const data = result.data;
    new Uint8Array(data.buffer, data.byteOffset, bytes.length).set(bytes);
    return result;
  }
  const dtype = info.dtype as IntegerDtype;
  const data = new INTEGER_KINDS[dtype](bytes.length / SAFETENSORS_DTYPES[dtype].bytes);
  new Uint8Array(data.buffer).set(bytes);
  return new IntegerTensor(dtype, info.shape, data);
}

// ---------------------------------------------------------------------------------------------
// Loading a tree.

/** Options of {@linkcode loadSafetensors}. */
export interface LoadOptions {
  /** Return a flat record of name -> leaf instead of rebuilding the tree from dotted names. */
  readonly flat?: boolean;
}

/** What {@linkcode loadSafetensors} returns. */
export interface LoadedSafetensors {
  /** The tensors: a tree rebuilt from dotted names, or a flat record with `{ flat: true }`. */
  readonly tree: Tree<SafetensorsLeaf>;
  /** The file's `__metadata__` ({} when it has none). */
  readonly metadata: Readonly<Record<string, string>>;
}

/**
 * Loads every tensor of a safetensors file: float tensors as new Tensors (the caller owns and
 * disposes them), integer tensors as IntegerTensors, arranged in the tree their dotted names
 * describe (see module docs).
 *
 * @param source A path (mapped, then each tensor copied once into its storage) or the bytes.
 * @param options `{ flat: true }` for a flat name -> leaf record.
 * @returns `{ tree, metadata }`.
 * @throws {RangeError | SyntaxError | TypeError} When the file is malformed (see module docs).
 * @example
 * ```ts
 * import { loadSafetensors, serializeSafetensors } from "./safetensors.ts";
 * import { tensor, type Tensor } from "../tensor.ts";
 * using w = tensor([1.5, -2], { dtype: "f16" });
 * const { tree } = loadSafetensors(serializeSafetensors({ layers: [{ w }] }));
 * const loaded = (tree as { layers: { w: Tensor }[] }).layers[0]!.w;
 * if (loaded.dtype !== "float16" || loaded.toArray()[1] !== -2) throw new Error("wrong tensor");
 * loaded.dispose();
 * ```
 */
export function loadSafetensors(source: SafetensorsSource, options: LoadOptions = {}): LoadedSafetensors {
  const { bytes, header, label } = openBytes(source);
  const metadata = Object.freeze({ ...(header.metadata ?? {}) });
  const structureText = header.metadata?.[TREE_METADATA_KEY];
  const structure = options.flat || structureText === undefined ? null : parseStructure(structureText, label);
  const names = header.tensors.map((t) => t.name);
  if (!options.flat && structure === null) inferTree(names, label); // Refuse conflicts before copying.
  const leaves = new Map<string, SafetensorsLeaf>();
  try {
    for (const info of header.tensors) {
      const slice = bytes.subarray(header.dataStart + info.begin, header.dataStart + info.end);
      leaves.set(info.name, leafFromBytes(slice, info));
    }
    if (options.flat) return { tree: Object.fromEntries(leaves), metadata };
    const tree =
      structure === null ? buildTree(inferTree(names, label), leaves) : fillStructure(structure, leaves, label);
    return { tree, metadata };
  } catch (error) {
    for (const leaf of leaves.values()) if (leaf instanceof Tensor) leaf.dispose();
    throw error;
  }
}

function parseStructure(text: string, label: string): TreeStructure {
  try {
    return JSON.parse(text) as TreeStructure;
  } catch {
    throw new SyntaxError(`Safetensors ${label}: __metadata__["${TREE_METADATA_KEY}"] is not valid JSON`);
  }
}

/** A tree node under construction: a map from key to a child node or a leaf name. */
type Draft = Map<string, Draft | string>;

/** Builds the nested key map of dotted names; throws when a name is both a leaf and a node. */
function inferTree(names: readonly string[], label: string): Draft {
  const root: Draft = new Map();
  for (const name of names) {
    const parts = name.split(".");
    let node = root;
    for (let i = 0; i < parts.length; i++) {
      const key = parts[i]!;
      const existing = node.get(key);
      const last = i === parts.length - 1;
      if (last) {
        if (existing !== undefined) throw conflict(name, label);
        node.set(key, name);
      } else if (existing === undefined) {
        const child: Draft = new Map();
        node.set(key, child);
        node = child;
      } else if (typeof existing === "string") {
        throw conflict(name, label);
      } else {
        node = existing;
      }
    }
  }
  return root;
}

function conflict(name: string, label: string): TypeError {
  return new TypeError(
    `Safetensors ${label}: tensor name ${JSON.stringify(name)} is both a tensor and a prefix of another: load with { flat: true }`,
  );
}

/** Turns drafts into objects and arrays (keys exactly "0".."n-1" become arrays), iteratively. */
function buildTree(root: Draft, leaves: ReadonlyMap<string, SafetensorsLeaf>): Tree<SafetensorsLeaf> {
  const built = new Map<Draft, unknown>();
  const stack: [Draft, boolean][] = [[root, false]];
  while (stack.length > 0) {
    const [draft, expanded] = stack.pop()!;
    if (!expanded) {
      stack.push([draft, true]);
      for (const child of draft.values()) if (typeof child !== "string") stack.push([child, false]);
      continue;
    }
    const keys = [...draft.keys()];
    const value = (key: string) => {
      const child = draft.get(key)!;
      return typeof child === "string" ? leaves.get(child) : built.get(child);
    };
    const isArray = keys.length > 0 && keys.every((key) => /^(0|[1-9]\d*)$/.test(key) && Number(key) < keys.length);
    if (isArray) {
      built.set(
        draft,
        Array.from({ length: keys.length }, (_, i) => value(String(i))),
      );
    } else {
      const object: Record<string, unknown> = {};
      for (const key of keys) object[key] = value(key);
      built.set(draft, object);
    }
  }
  return built.get(root) as Tree<SafetensorsLeaf>;
}

/** Rebuilds a tree from a stored structure, looking leaves up by their dotted names. */
function fillStructure(
  structure: TreeStructure,
  leaves: ReadonlyMap<string, SafetensorsLeaf>,
  label: string,
): Tree<SafetensorsLeaf> {
  const used = new Set<string>();
  const walk = (node: unknown, path: string): unknown => {
    if (node === null) return null;
    if (node === "*") {
      const leaf = leaves.get(path);
      if (leaf === undefined) {
        throw new RangeError(
          `Safetensors ${label}: the stored tree structure names tensor "${path}", which is missing`,
        );
      }
      used.add(path);
      return leaf;
    }
    const prefix = path === "" ? "" : `${path}.`;
    if (Array.isArray(node)) return node.map((child, i) => walk(child, `${prefix}${i}`));
    if (typeof node === "object") {
      const object: Record<string, unknown> = {};
      for (const [key, child] of Object.entries(node)) object[key] = walk(child, `${prefix}${key}`);
      return object;
    }
    throw new TypeError(`Safetensors ${label}: the stored tree structure holds ${JSON.stringify(node)}`);
  };
  const tree = walk(structure, "") as Tree<SafetensorsLeaf>;
  for (const name of leaves.keys()) {
    if (!used.has(name)) {
      throw new RangeError(
        `Safetensors ${label}: tensor ${JSON.stringify(name)} is not in the stored tree structure: load with { flat: true }`,
      );
    }
  }
  return tree;
}

// ---------------------------------------------------------------------------------------------
// Saving.

interface NamedLeaf {
  readonly name: string;
  readonly dtype: SafetensorsDtype;
  readonly shape: readonly number[];
  readonly byteLength: number;
  readonly bytes: () => Uint8Array;
}

/** Flattens a tree to dotted names, checking keys and leaves. */
function flattenTree(tree: Tree<SafetensorsLeaf>): NamedLeaf[] {
  if (!isNode(tree)) {
    throw new TypeError(
      `saveSafetensors takes an object or array of tensors, got ${describeKind(tree)}: wrap a single tensor as { name: tensor }`,
    );
  }
  const named: NamedLeaf[] = [];
  const stack: [unknown, string][] = [[tree, ""]];
  while (stack.length > 0) {
    const [node, path] = stack.pop()!;
    if (node === null || node === undefined) continue;
    if (isNode(node)) {
      const entries = Array.isArray(node)
        ? node.map((child, i) => [String(i), child] as const)
        : Object.entries(node as Record<string, unknown>);
      for (const [key, child] of entries) {
        if (key === "") {
          throw new TypeError(
            `An empty key at ${path === "" ? "the top level" : JSON.stringify(path)} cannot be saved: names join keys with ".", so keys are non-empty`,
          );
        }
        if (path === "" && key === "__metadata__") {
          throw new TypeError(`The top-level key "__metadata__" is reserved by safetensors: rename it`);
        }
        stack.push([child, path === "" ? key : `${path}.${key}`]);
      }
      continue;
    }
    named.push(namedLeaf(node, path));
  }
  return named;
}

function namedLeaf(leaf: unknown, name: string): NamedLeaf {
  if (leaf instanceof Tensor) {
    const byteLength = leaf.sizeBytes; // Throws a TypeError naming the tensor when disposed.
    // Host tensors are written from their storage; device tensors are read back one at a time
    // (one wait each), as safetensors' save_file moves a CUDA tensor to the CPU.
    const view = (data: ArrayBufferView) => new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    return {
      name,
      dtype: FLOAT_CODES[leaf.dtype],
      shape: leaf.shape,
      byteLength,
      bytes: () => view(leaf.device === "cpu" ? leaf.data : leaf.bits()),
    };
  }
  if (leaf instanceof IntegerTensor) {
    const data = leaf.data;
    return {
      name,
      dtype: leaf.dtype,
      shape: leaf.shape,
      byteLength: data.byteLength,
      bytes: () => new Uint8Array(data.buffer, data.byteOffset, data.byteLength),
    };
  }
  throw new TypeError(
    `Leaf ${JSON.stringify(name)} is a ${describeKind(leaf)}: leaves are Tensors or IntegerTensors (see integerTensor())`,
  );
}

function checkMetadataArgument(metadata: unknown): Record<string, string> | null {
  if (metadata === undefined || metadata === null) return null;
  if (typeof metadata !== "object" || Array.isArray(metadata)) {
    throw new TypeError(`Metadata must be an object of strings, got ${describeKind(metadata)}`);
  }
  for (const [key, value] of Object.entries(metadata)) {
    if (typeof value !== "string") {
      throw new TypeError(`Metadata entry ${JSON.stringify(key)} is a ${describeKind(value)}: values are strings`);
    }
  }
  return { ...(metadata as Record<string, string>) };
}

/** Sorted-key JSON of a structure, for comparing a tree's shape with what names would rebuild. */
function canonical(structure: unknown): string {
  return JSON.stringify(structure, (_key, value) =>
    value !== null && typeof value === "object" && !Array.isArray(value)
      ? Object.fromEntries(Object.entries(value).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
      : value,
  );
}

/** Plans a save: checks everything, decides on the structure metadata, lays the file out. */
function plan(tree: Tree<SafetensorsLeaf>, metadataArgument: unknown) {
  const metadata = checkMetadataArgument(metadataArgument);
  const named = flattenTree(tree);
  const names = new Set<string>();
  for (const leaf of named) {
    if (names.has(leaf.name)) throw new TypeError(`Two leaves are both named ${JSON.stringify(leaf.name)}`);
    names.add(leaf.name);
  }
  const given = treeStructure(tree);
  const placeholders = new Map(named.map((leaf) => [leaf.name, "*" as unknown as SafetensorsLeaf]));
  const inferred = buildTree(inferTree([...names], "being written"), placeholders);
  let finalMetadata = metadata;
  if (canonical(inferred) !== canonical(given)) {
    if (metadata !== null && Object.hasOwn(metadata, TREE_METADATA_KEY)) {
      throw new TypeError(`Metadata key "${TREE_METADATA_KEY}" is reserved by mixprec for the tree structure`);
    }
    finalMetadata = { ...(metadata ?? {}), [TREE_METADATA_KEY]: JSON.stringify(given) };
  }
  return layout(named, finalMetadata);
}

/**
 * Serializes a pytree of tensors to safetensors bytes in memory (see {@linkcode saveSafetensors}).
 *
 * @param tree An object or array whose leaves are Tensors or IntegerTensors.
 * @param metadata Optional `__metadata__` map of strings.
 * @returns The file's bytes.
 * @example
 * ```ts
 * import { serializeSafetensors } from "./safetensors.ts";
 * import { tensor } from "../tensor.ts";
 * using w = tensor([1], { dtype: "f32" });
 * const bytes = serializeSafetensors({ w });
 * if (bytes.length % 8 !== 4) throw new Error("8-byte aligned header, then 4 data bytes");
 * ```
 */
export function serializeSafetensors(tree: Tree<SafetensorsLeaf>, metadata?: Record<string, string>): Uint8Array {
  const { prefix, ordered, offsets } = plan(tree, metadata);
  const total = prefix.length + ordered.reduce((sum, leaf) => sum + leaf.byteLength, 0);
  const out = new Uint8Array(total);
  out.set(prefix);
  ordered.forEach((leaf, i) => out.set(leaf.bytes(), prefix.length + offsets[i]!));
  return out;
}

/**
 * Writes bytes to `path` atomically: into a temporary file beside it, fsync'd, then renamed over
 * `path` (and the directory fsync'd), so a crash leaves either the old file or the new one.
 * @internal
 */
export function writeAtomically(path: string, write: (fd: number) => void): void {
  const temporary = `${path}.tmp-${process.pid}-${Math.random().toString(36).slice(2)}`;
  const fd = openSync(temporary, "w", 0o644);
  try {
    write(fd);
    fsyncSync(fd);
  } catch (error) {
    closeSync(fd);
    rmSync(temporary, { force: true });
    throw error;
  }
  closeSync(fd);
  try {
    renameSync(temporary, path);
  } catch (error) {
    rmSync(temporary, { force: true });
    throw error;
  }
  fsyncDirectory(dirname(path));
}

/** fsyncs a directory so a rename in it is durable. @internal */
export function fsyncDirectory(directory: string): void {
  const fd = openSync(directory, "r");
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** Writes all of `bytes` at the file's current position. @internal */
export function writeAll(fd: number, bytes: Uint8Array): void {
  let written = 0;
  while (written < bytes.length) written += writeSync(fd, bytes, written, bytes.length - written);
}

/**
 * Saves a pytree of tensors as a safetensors file that the Python `safetensors` package (and any
 * other reader) loads bit for bit: the reference writer's layout (widest dtype first, then by
 * name; header padded with spaces to 8 bytes), dotted names for nested trees. Written atomically
 * (temporary file, fsync, rename); nothing is written when an argument is rejected.
 *
 * @param path The file to write (replaced if it exists).
 * @param tree An object or array whose leaves are Tensors or IntegerTensors.
 * @param metadata Optional `__metadata__` map of strings.
 * @example
 * ```ts
 * import { loadSafetensors, saveSafetensors } from "./safetensors.ts";
 * import { tensor, type Tensor } from "../tensor.ts";
 * const path = `${require("node:os").tmpdir()}/mixprec-doc-${process.pid}.safetensors`;
 * using w = tensor([1, 2, 3], { dtype: "bf16" });
 * saveSafetensors(path, { w }, { format: "pt" });
 * const { tree, metadata } = loadSafetensors(path);
 * const loaded = (tree as { w: Tensor }).w;
 * if (metadata.format !== "pt" || loaded.toArray()[2] !== 3) throw new Error("round trip failed");
 * loaded.dispose();
 * require("node:fs").rmSync(path);
 * ```
 */
export function saveSafetensors(path: string, tree: Tree<SafetensorsLeaf>, metadata?: Record<string, string>): void {
  if (typeof path !== "string" || path === "")
    throw new TypeError(`Path must be a non-empty string, got ${describeKind(path)}`);
  const { prefix, ordered } = plan(tree, metadata);
  writeAtomically(path, (fd) => {
    writeAll(fd, prefix);
    for (const leaf of ordered) writeAll(fd, leaf.bytes());
  });
}

/**
 * Saves named leaves as a flat safetensors file (names are used as they are, dots included) and
 * returns its size in bytes. For checkpoints, whose names are paths. @internal
 */
export function saveFlatSafetensors(
  path: string,
  entries: readonly (readonly [string, SafetensorsLeaf])[],
  metadata?: Record<string, string>,
): number {
  const named = entries.map(([name, leaf]) => namedLeaf(leaf, name));
  const names = new Set<string>();
  for (const leaf of named) {
    if (names.has(leaf.name)) throw new TypeError(`Two leaves are both named ${JSON.stringify(leaf.name)}`);
    names.add(leaf.name);
  }
  const { prefix, ordered } = layout(named, checkMetadataArgument(metadata));
  writeAtomically(path, (fd) => {
    writeAll(fd, prefix);
    for (const leaf of ordered) writeAll(fd, leaf.bytes());
  });
  return prefix.length + ordered.reduce((sum, leaf) => sum + leaf.byteLength, 0);
}
