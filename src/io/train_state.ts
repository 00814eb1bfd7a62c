/**
 * Resumable training state: parameters, optimizer state, loss scale, step and RNG state in one
 * versioned checkpoint, written atomically, restored bit for bit.
 *
 * Layout (format version 1) of a checkpoint directory `dir`:
 * ```
 * dir/latest                         the name of the current checkpoint (one line)
 * dir/ckpt-<step>-<id>/state.json    format, version, step, and every value that is not a tensor
 * dir/ckpt-<step>-<id>/tensors.safetensors   every tensor, named by its path (params.layers.0.w)
 * ```
 * state.json holds `{ format: "mixprec.train_state", version: 1, step, tensorsBytes, state }`,
 * where `state` is the encoded tree `{ params, optState, lossScale, rng, extra }`: plain
 * objects, arrays, strings, booleans, null and finite numbers as themselves; a Tensor or
 * IntegerTensor as `{ "$tensor": name }`; NaN, +-Infinity and -0 as `{ "$number": "NaN" }`
 * etc.; a bigint as `{ "$bigint": "123" }`; a frozen object or array, or an object with a key
 * starting with "$", as `{ "$object": {...}, "frozen": true }` / `{ "$array": [...], "frozen": true }`,
 * so optimizer state records come back frozen as they were saved. A tensor reached twice (the
 * same object) is stored once and restored as one shared tensor. The loss scale is stored as its
 * `toJSON()` and restored with `lossScaleFromJSON` (src/loss_scale.ts) or a reviver you pass.
 *
 * Atomicity: a save writes a new `ckpt-*` directory under a temporary name, fsyncs its files and
 * the directory, renames it into place, then replaces `latest` by writing a temporary file,
 * fsyncing and renaming it (an atomic replace on POSIX file systems), and fsyncs `dir`. Only then
 * are older checkpoints removed. A crash (or SIGKILL) at any point leaves `latest` naming a
 * complete checkpoint: the previous one or the new one. Leftover temporary directories are removed
 * by the next save. One writer per directory at a time.
 *
 * @module
 */

import {
  closeSync,
  fsyncSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
} from "node:fs";
import { join } from "node:path";
import { describeKind } from "../dtype.ts";
import { lossScaleFromJSON, type LossScale } from "../loss_scale.ts";
import { Tensor } from "../tensor.ts";
import { isNode } from "../tree.ts";
import {
  fsyncDirectory,
  IntegerTensor,
  openSafetensors,
  type SafetensorsLeaf,
  saveFlatSafetensors,
  writeAll,
  writeAtomically,
} from "./safetensors.ts";

/** The checkpoint format this code writes and reads. */
export const TRAIN_STATE_VERSION = 1;
const FORMAT = "mixprec.train_state";
const STATE_FILE = "state.json";
const TENSORS_FILE = "tensors.safetensors";
const LATEST_FILE = "latest";

/** Anything with `toJSON()`: a LossScale (src/loss_scale.ts) or a compatible object. */
export interface Checkpointable {
  toJSON(): unknown;
}

/** What a training checkpoint holds. */
export interface TrainState<P = unknown, O = unknown, L = LossScale> {
  /** The parameters: a pytree of Tensors. */
  readonly params: P;
  /** The optimizer state: a pytree of Tensors and JSON values (frozen records kept frozen). */
  readonly optState: O;
  /** The loss scale (or null): saved with toJSON(), restored with lossScaleFromJSON. */
  readonly lossScale: L | null;
  /** The number of steps done: a non-negative integer. */
  readonly step: number;
  /** The RNG state: any JSON value (numbers, strings, objects, arrays; tensors allowed). */
  readonly rng: unknown;
  /** Anything else to carry along (data-loader position, config): JSON values and tensors. */
  readonly extra?: unknown;
}

/** Options of {@linkcode saveTrainState}. */
export interface SaveTrainStateOptions {
  /** How many checkpoints to keep, the new one included (default 1). */
  readonly keep?: number;
}

/** Options of {@linkcode loadTrainState}. */
export interface LoadTrainStateOptions<L> {
  /** Restores the loss scale from its toJSON() object (default: lossScaleFromJSON). */
  readonly lossScaleReviver?: (json: unknown) => L;
}

// ---------------------------------------------------------------------------------------------
// Encoding values to JSON with tensor references.

type Encoded = null | boolean | number | string | Encoded[] | { [key: string]: Encoded };

function encodeNumber(value: number): Encoded {
  if (Number.isNaN(value)) return { $number: "NaN" };
  if (value === Infinity) return { $number: "Infinity" };
  if (value === -Infinity) return { $number: "-Infinity" };
  if (Object.is(value, -0)) return { $number: "-0" };
  return value;
}

/** Encodes a tree; tensors are collected into `tensors` under their first path. */
function encode(value: unknown, path: string, tensors: Map<SafetensorsLeaf, string>, seen: Set<object>): Encoded {
  if (value === null || value === undefined) return null;
  if (typeof value === "number") return encodeNumber(value);
  if (typeof value === "string" || typeof value === "boolean") return value;
  if (typeof value === "bigint") return { $bigint: value.toString() };
  if (value instanceof Tensor || value instanceof IntegerTensor) {
    if (value instanceof Tensor && value.device !== "cpu") {
      throw new TypeError(`Tensor at ${path} is on ${value.device}: move it to "cpu" before saving`);
    }
    if (value instanceof Tensor && value.disposed) {
      throw new TypeError(`Tensor at ${path} is disposed: keep it alive until the checkpoint is written`);
    }
    let name = tensors.get(value);
    if (name === undefined) {
      name = path;
      tensors.set(value, name);
    }
    return { $tensor: name };
  }
  if (isNode(value)) {
    if (seen.has(value as object)) throw new TypeError(`The value at ${path} contains itself: checkpoints hold trees`);
    seen.add(value as object);
    const frozen = Object.isFrozen(value);
    let result: Encoded;
    if (Array.isArray(value)) {
      const items = value.map((item, i) => encode(item, `${path}.${i}`, tensors, seen));
      result = frozen ? { $array: items, frozen: true } : items;
    } else {
      const entries: { [key: string]: Encoded } = {};
      let escaped = frozen;
      for (const [key, item] of Object.entries(value as Record<string, unknown>)) {
        if (item === undefined) continue;
        if (key.startsWith("$")) escaped = true;
        entries[key] = encode(item, `${path}.${key}`, tensors, seen);
      }
      result = escaped ? { $object: entries, frozen } : entries;
    }
    seen.delete(value as object);
    return result;
  }
  throw new TypeError(
    `The value at ${path} is a ${describeKind(value)}: checkpoints hold Tensors, IntegerTensors, plain objects, arrays, numbers, strings, booleans, bigints and null`,
  );
}

function decode(value: Encoded, tensors: (name: string) => SafetensorsLeaf, where: string): unknown {
  if (value === null || typeof value !== "object") return value;
  if (Array.isArray(value)) return value.map((item) => decode(item, tensors, where));
  if (typeof value.$tensor === "string") return tensors(value.$tensor);
  if (typeof value.$number === "string") {
    const number = { NaN: Number.NaN, Infinity: Infinity, "-Infinity": -Infinity, "-0": -0 }[value.$number];
    if (number === undefined)
      throw new SyntaxError(`${where} holds an unknown number ${JSON.stringify(value.$number)}`);
    return number;
  }
  if (typeof value.$bigint === "string") return BigInt(value.$bigint);
  if (Array.isArray(value.$array)) {
    const items = value.$array.map((item) => decode(item, tensors, where));
    return value.frozen === true ? Object.freeze(items) : items;
  }
  const isWrapped = typeof value.$object === "object" && value.$object !== null && !Array.isArray(value.$object);
  const source = (isWrapped ? value.$object : value) as { [key: string]: Encoded };
  const result: Record<string, unknown> = {};
  for (const [key, item] of Object.entries(source)) result[key] = decode(item, tensors, where);
  return isWrapped && value.frozen === true ? Object.freeze(result) : result;
}

// ---------------------------------------------------------------------------------------------
// Saving.

function writeFileDurably(path: string, bytes: Uint8Array): void {
  const fd = openSync(path, "w", 0o644);
  try {
    writeAll(fd, bytes);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

function checkpointNames(dir: string): string[] {
  return readdirSync(dir).filter((name) => name.startsWith("ckpt-") || name.startsWith(".tmp-ckpt-"));
}

/**
 * Saves a training checkpoint into `dir` atomically (see module docs): a crash at any moment
 * leaves the previous checkpoint loadable. Nothing is written when an argument is rejected.
 *
 * @param dir The checkpoint directory (created if missing).
 * @param state `{ params, optState, lossScale, step, rng, extra? }`.
 * @param options `keep`: how many checkpoints to keep (default 1).
 * @returns The name of the new checkpoint (what `dir/latest` now says).
 * @example
 * ```ts
 * import { loadTrainState, saveTrainState } from "./train_state.ts";
 * import { dynamicLossScale } from "../loss_scale.ts";
 * import { tensor, type Tensor } from "../tensor.ts";
 * const dir = `${require("node:os").tmpdir()}/mixprec-train-doc-${process.pid}`;
 * using w = tensor([1, 2], { dtype: "bf16" });
 * saveTrainState(dir, { params: { w }, optState: { count: 3 }, lossScale: dynamicLossScale(), step: 3, rng: { seed: 1 } });
 * const restored = loadTrainState(dir);
 * if (restored.step !== 3 || restored.lossScale?.value !== 65536) throw new Error("not restored");
 * (restored.params as { w: Tensor }).w.dispose();
 * require("node:fs").rmSync(dir, { recursive: true });
 * ```
 */
export function saveTrainState(
  dir: string,
  state: TrainState<unknown, unknown, Checkpointable>,
  options: SaveTrainStateOptions = {},
): string {
  if (typeof dir !== "string" || dir === "")
    throw new TypeError(`dir must be a non-empty path, got ${describeKind(dir)}`);
  if (typeof state !== "object" || state === null) {
    throw new TypeError(`saveTrainState needs { params, optState, lossScale, step, rng }, got ${describeKind(state)}`);
  }
  const { params, optState, lossScale, step, rng, extra } = state;
  if (!Number.isSafeInteger(step) || step < 0) {
    throw new RangeError(`step must be a non-negative integer, got ${String(step)}`);
  }
  if (lossScale !== null && lossScale !== undefined && typeof lossScale.toJSON !== "function") {
    throw new TypeError(`lossScale must have toJSON() (a LossScale) or be null, got ${describeKind(lossScale)}`);
  }
  const keep = options.keep ?? 1;
  if (!Number.isInteger(keep) || keep < 1) throw new RangeError(`keep must be an integer >= 1, got ${String(keep)}`);
  const tensors = new Map<SafetensorsLeaf, string>();
  const seen = new Set<object>();
  const encoded = {
    params: encode(params, "params", tensors, seen),
    optState: encode(optState, "opt_state", tensors, seen),
    lossScale: lossScale == null ? null : encode(lossScale.toJSON(), "loss_scale", tensors, seen),
    rng: encode(rng, "rng", tensors, seen),
    extra: encode(extra, "extra", tensors, seen),
  };

  mkdirSync(dir, { recursive: true });
  const id = `ckpt-${String(step).padStart(10, "0")}-${Date.now().toString(36)}${Math.random().toString(36).slice(2, 8)}`;
  const temporary = join(dir, `.tmp-${id}`);
  mkdirSync(temporary);
  try {
    const tensorsBytes = saveFlatSafetensors(
      join(temporary, TENSORS_FILE),
      [...tensors].map(([leaf, name]) => [name, leaf]),
      {
        format: "mixprec",
      },
    );
    const document = { format: FORMAT, version: TRAIN_STATE_VERSION, step, tensorsBytes, state: encoded };
    writeFileDurably(join(temporary, STATE_FILE), new TextEncoder().encode(`${JSON.stringify(document)}\n`));
    fsyncDirectory(temporary);
    renameSync(temporary, join(dir, id));
  } catch (error) {
    rmSync(temporary, { recursive: true, force: true });
    throw error;
  }
  fsyncDirectory(dir);
  writeAtomically(join(dir, LATEST_FILE), (fd) => writeAll(fd, new TextEncoder().encode(`${id}\n`)));
  // The new checkpoint is current: remove temporary leftovers and all but the newest `keep`.
  const older = checkpointNames(dir)
    .filter((name) => name.startsWith("ckpt-") && name !== id)
    .sort();
  const kept = new Set([id, ...older.slice(Math.max(0, older.length - (keep - 1)))]);
  for (const name of checkpointNames(dir)) {
    if (!kept.has(name)) rmSync(join(dir, name), { recursive: true, force: true });
  }
  return id;
}

// ---------------------------------------------------------------------------------------------
// Loading.

/**
 * Loads the current checkpoint of `dir` (the one `dir/latest` names). Tensors come back as new
 * Tensors with their saved dtypes and bits (the caller owns them); tensors that were one object
 * when saved are one object again.
 *
 * @param dir The checkpoint directory.
 * @param options `lossScaleReviver` to restore a custom loss scale.
 * @returns `{ params, optState, lossScale, step, rng, extra }`.
 * @throws {RangeError} When `dir` holds no checkpoint or one of a newer format version.
 * @throws {SyntaxError} When state.json is not valid JSON.
 * @example
 * ```ts
 * import { loadTrainState, saveTrainState } from "./train_state.ts";
 * import { tensor, type Tensor } from "../tensor.ts";
 * const dir = `${require("node:os").tmpdir()}/mixprec-load-doc-${process.pid}`;
 * using m = tensor([-0, 2]);
 * saveTrainState(dir, { params: { m }, optState: Object.freeze({ mu: m }), lossScale: null, step: 9, rng: [1, 2] });
 * const { params, optState } = loadTrainState<{ m: Tensor }, { mu: Tensor }>(dir);
 * if (optState.mu !== params.m || !Object.is(params.m.toArray()[0], -0)) throw new Error("not restored");
 * params.m.dispose();
 * require("node:fs").rmSync(dir, { recursive: true });
 * ```
 */
export function loadTrainState<P = unknown, O = unknown, L = LossScale>(
  dir: string,
  options: LoadTrainStateOptions<L> = {},
): TrainState<P, O, L> {
  let id: string;
  try {
    id = readFileSync(join(dir, LATEST_FILE), "utf8").trim();
  } catch {
    throw new RangeError(`${dir} holds no training checkpoint (no "latest" file): save one with saveTrainState first`);
  }
  if (!/^ckpt-[0-9a-z-]+$/.test(id))
    throw new SyntaxError(`${join(dir, LATEST_FILE)} names ${JSON.stringify(id)}, not a checkpoint`);
  const where = join(dir, id);
  let document: {
    format?: unknown;
    version?: unknown;
    step?: unknown;
    tensorsBytes?: unknown;
    state?: { [key: string]: Encoded };
  };
  try {
    document = JSON.parse(readFileSync(join(where, STATE_FILE), "utf8"));
  } catch (cause) {
    throw new SyntaxError(`${join(where, STATE_FILE)} is not a valid checkpoint state (${(cause as Error).message})`);
  }
  if (document.format !== FORMAT) throw new SyntaxError(`${where} is not a mixprec training checkpoint`);
  if (document.version !== TRAIN_STATE_VERSION) {
    throw new RangeError(
      `${where} has checkpoint format version ${String(document.version)}; this mixprec reads version ${TRAIN_STATE_VERSION}: use the mixprec that wrote it`,
    );
  }
  if (!Number.isSafeInteger(document.step) || (document.step as number) < 0) {
    throw new SyntaxError(`${join(where, STATE_FILE)} has step ${String(document.step)}, not a non-negative integer`);
  }
  const tensorsPath = join(where, TENSORS_FILE);
  const size = statSync(tensorsPath).size;
  if (size !== document.tensorsBytes) {
    throw new RangeError(
      `${tensorsPath} is ${size} bytes but the checkpoint recorded ${String(document.tensorsBytes)}: it is damaged`,
    );
  }
  const file = openSafetensors(tensorsPath);
  const restored = new Map<string, SafetensorsLeaf>();
  const tensorOf = (name: string) => {
    let leaf = restored.get(name);
    if (leaf === undefined) {
      leaf = file.tensor(name);
      restored.set(name, leaf);
    }
    return leaf;
  };
  const state = document.state ?? {};
  try {
    const lossScaleJSON = decode(state.lossScale ?? null, tensorOf, where);
    const reviver = options.lossScaleReviver ?? (lossScaleFromJSON as unknown as (json: unknown) => L);
    return {
      params: decode(state.params ?? null, tensorOf, where) as P,
      optState: decode(state.optState ?? null, tensorOf, where) as O,
      lossScale: lossScaleJSON === null ? null : reviver(lossScaleJSON),
      step: document.step as number,
      rng: decode(state.rng ?? null, tensorOf, where),
      extra: decode(state.extra ?? null, tensorOf, where),
    };
  } catch (error) {
    for (const leaf of restored.values()) if (leaf instanceof Tensor) leaf.dispose();
    throw error;
  }
}
