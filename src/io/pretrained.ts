/**
 * Hugging Face checkpoint directories: config.json plus model.safetensors, or shards listed by
 * model.safetensors.index.json. Parameters keep the files' tensor names, so the model families in
 * src/nn/ run them without a mapping table. Reads transformers 4 and 5 configs (`torch_dtype` or
 * `dtype`; `rope_theta` or `rope_parameters`).
 *
 * Loading copies each tensor once out of the mapped file into its storage (a Tensor owns its
 * memory from birth, so a view into the mapping cannot be one today); a dtype cast is done only
 * when asked for.
 *
 * @module
 */

import { existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { canonicalDtype, type Dtype, type DtypeName } from "../dtype.ts";
import { bert } from "../nn/bert.ts";
import { type LlamaConfig, llama, type Model } from "../nn/llama.ts";
import { FrozenWeight } from "../nn/lora.ts";
import type { ApplyOptions, ModelParams } from "../nn/_model.ts";
import { isTensor, type Tensor } from "../tensor.ts";
import { openSafetensors, saveFlatSafetensors } from "./safetensors.ts";

/** The model families fromPretrained builds, by config.json's model_type. */
export const MODEL_FAMILIES: Readonly<Record<string, (config: never) => Model>> = Object.freeze({
  llama: llama as (config: never) => Model,
  bert: bert as (config: never) => Model,
});

/** A config.json object. */
export type ModelConfig = Readonly<Record<string, unknown>>;

/** Options of {@linkcode fromPretrained}. */
export interface FromPretrainedOptions {
  /** Cast the floating tensors to this dtype (default: as stored). */
  readonly dtype?: Dtype;
  /** Put the tensors on this device (default "cpu"). */
  readonly device?: string;
}

/** What {@linkcode fromPretrained} returns. */
export interface Pretrained {
  readonly config: ModelConfig;
  /** Tensor name -> tensor (the caller owns them). */
  readonly params: Record<string, Tensor>;
  /** The family's forward pass (logits for llama, the last hidden state for bert). */
  readonly apply: (params: ModelParams, ids: Int32Array | readonly number[], options?: ApplyOptions) => Tensor;
}

/** The files of a checkpoint directory: tensor name -> shard file. */
function weightFiles(dir: string): Map<string, string> {
  const index = join(dir, "model.safetensors.index.json");
  const single = join(dir, "model.safetensors");
  const map = new Map<string, string>();
  if (existsSync(index)) {
    const parsed = JSON.parse(readFileSync(index, "utf8")) as { weight_map?: Record<string, string> };
    if (parsed.weight_map === undefined || typeof parsed.weight_map !== "object") {
      throw new SyntaxError(`${index} has no weight_map: is it a safetensors index?`);
    }
    for (const [name, file] of Object.entries(parsed.weight_map)) map.set(name, join(dir, file));
    return map;
  }
  if (existsSync(single)) {
    for (const name of openSafetensors(single).names) map.set(name, single);
    return map;
  }
  throw new TypeError(`${dir} has neither model.safetensors nor model.safetensors.index.json`);
}

/**
 * Reads a checkpoint directory's config.json and returns it with its model family checked.
 *
 * @param dir The directory.
 * @returns The parsed config.
 * @example
 * ```ts
 * import { readConfig } from "./pretrained.ts";
 * const config = readConfig("test/fixtures/models/llama");
 * if (config.model_type !== "llama") throw new Error("model_type");
 * ```
 */
export function readConfig(dir: string): ModelConfig {
  if (typeof dir !== "string" || !existsSync(dir) || !statSync(dir).isDirectory()) {
    throw new TypeError(`fromPretrained takes a checkpoint directory, got ${JSON.stringify(dir)}`);
  }
  const path = join(dir, "config.json");
  if (!existsSync(path)) throw new TypeError(`${dir} has no config.json: is it a Hugging Face checkpoint directory?`);
  const config = JSON.parse(readFileSync(path, "utf8")) as ModelConfig;
  const type = config.model_type;
  if (typeof type !== "string" || !(type in MODEL_FAMILIES)) {
    throw new RangeError(
      `model_type ${JSON.stringify(type)} is not supported: mixprec runs ${Object.keys(MODEL_FAMILIES).join(", ")}`,
    );
  }
  return config;
}

/**
 * Loads a Hugging Face checkpoint directory (config.json and model.safetensors, or shards through
 * model.safetensors.index.json). Tied embeddings need no lm_head.weight: the model reuses
 * model.embed_tokens.weight.
 *
 * @param dir The checkpoint directory.
 * @param options dtype (cast floating tensors), device.
 * @returns `{ config, params, apply }`; params keep the files' names.
 * @example
 * ```ts
 * import { fromPretrained } from "./pretrained.ts";
 * const { params, apply } = fromPretrained("test/fixtures/models/llama", { dtype: "bfloat16" });
 * using logits = apply(params, [1, 2, 3]);
 * if (logits.shape.join() !== "1,3,256" || params["lm_head.weight"]!.dtype !== "bfloat16") throw new Error("loaded");
 * for (const t of Object.values(params)) t.dispose();
 * ```
 */
export function fromPretrained(dir: string, options: FromPretrainedOptions = {}): Pretrained {
  const config = readConfig(dir);
  const dtype = options.dtype === undefined ? null : canonicalDtype(options.dtype);
  const files = new Map<string, ReturnType<typeof openSafetensors>>();
  const params: Record<string, Tensor> = {};
  for (const [name, path] of weightFiles(dir)) {
    let file = files.get(path);
    if (file === undefined) {
      file = openSafetensors(path);
      files.set(path, file);
    }
    const leaf = file.tensor(name);
    if (!isTensor(leaf)) continue; // integer buffers (e.g. BERT's position_ids) are not parameters
    let t = leaf;
    if (dtype !== null && t.dtype !== dtype) {
      t = leaf.to(dtype);
      leaf.dispose();
    }
    if (options.device !== undefined && options.device !== "cpu") {
      const moved = t.to(options.device as never);
      t.dispose();
      t = moved;
    }
    params[name] = t;
  }
  const model = MODEL_FAMILIES[config.model_type as string]!(config as never);
  return { config, params, apply: model.apply };
}

/** Options of {@linkcode savePretrained}. */
export interface SavePretrainedOptions {
  /** Split the weights into shards of at most this many bytes (default 5 GB, transformers' default). */
  readonly maxShardBytes?: number;
}

function storedTensor(name: string, value: Tensor | FrozenWeight): Tensor {
  if (value instanceof FrozenWeight) {
    if (value.tensor === null) {
      throw new TypeError(`savePretrained: ${name} is a quantized ${value.kind} weight: merge or dequantize it first`);
    }
    return value.tensor;
  }
  return value;
}

/**
 * Writes a checkpoint directory transformers loads: config.json (its dtype set to the parameters'
 * floating dtype, under `dtype` and, where the config had it, `torch_dtype`) and model.safetensors,
 * or shards with model.safetensors.index.json when the weights exceed maxShardBytes.
 *
 * @param dir The directory (created if missing).
 * @param config The config to write.
 * @param params Tensor name -> tensor.
 * @param options maxShardBytes.
 * @returns The files written.
 * @example
 * ```ts
 * import { savePretrained, fromPretrained } from "./pretrained.ts";
 * import { mkdtempSync } from "node:fs";
 * import { tmpdir } from "node:os";
 * const loaded = fromPretrained("test/fixtures/models/bert");
 * const dir = mkdtempSync(`${tmpdir()}/bert-`);
 * const files = savePretrained(dir, loaded.config, loaded.params, { maxShardBytes: 100_000 });
 * if (!files.includes("model.safetensors.index.json")) throw new Error("sharded");
 * ```
 */
export function savePretrained(
  dir: string,
  config: ModelConfig,
  params: ModelParams,
  options: SavePretrainedOptions = {},
): string[] {
  const maxShardBytes = options.maxShardBytes ?? 5e9;
  if (!(maxShardBytes > 0))
    throw new RangeError(`savePretrained: maxShardBytes must be positive, got ${maxShardBytes}`);
  const tied = config.tie_word_embeddings === true;
  const entries: [string, Tensor][] = [];
  for (const [name, value] of Object.entries(params)) {
    if (tied && name === "lm_head.weight") continue;
    entries.push([name, storedTensor(name, value)]);
  }
  const dtypes = new Set<DtypeName>(entries.map(([, t]) => t.dtype));
  const dtype = dtypes.size === 1 ? [...dtypes][0]! : "float32";
  const written: Record<string, unknown> = { ...config, dtype };
  if ("torch_dtype" in config) written.torch_dtype = dtype;
  mkdirSync(dir, { recursive: true });
  const shards: [string, Tensor][][] = [[]];
  let size = 0;
  for (const entry of entries) {
    const bytes = entry[1].sizeBytes;
    if (size > 0 && size + bytes > maxShardBytes) {
      shards.push([]);
      size = 0;
    }
    shards.at(-1)!.push(entry);
    size += bytes;
  }
  const files = ["config.json"];
  writeFileSync(join(dir, "config.json"), `${JSON.stringify(written, null, 2)}\n`);
  const metadata = { format: "pt" };
  if (shards.length === 1) {
    rmSync(join(dir, "model.safetensors.index.json"), { force: true });
    saveFlatSafetensors(join(dir, "model.safetensors"), shards[0]!, metadata);
    return [...files, "model.safetensors"];
  }
  rmSync(join(dir, "model.safetensors"), { force: true });
  const weightMap: Record<string, string> = {};
  const count = String(shards.length).padStart(5, "0");
  let total = 0;
  shards.forEach((shard, i) => {
    const file = `model-${String(i + 1).padStart(5, "0")}-of-${count}.safetensors`;
    saveFlatSafetensors(join(dir, file), shard, metadata);
    for (const [name, t] of shard) {
      weightMap[name] = file;
      total += t.sizeBytes;
    }
    files.push(file);
  });
  const index = { metadata: { total_size: total }, weight_map: weightMap };
  writeFileSync(join(dir, "model.safetensors.index.json"), `${JSON.stringify(index, null, 2)}\n`);
  return [...files, "model.safetensors.index.json"];
}

export type { LlamaConfig };
