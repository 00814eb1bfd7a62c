/**
 * Text for the training demo from a seeded generator: sentences of a small grammar with
 * agreement (a plural subject takes a plural verb), counts that agree with their nouns, and
 * adjectives, so that predicting the next character needs context and accuracy means something.
 * Two dialects share the grammar but not the vocabulary: the base model learns dialect "base", the
 * LoRA fine-tunes adapt it to dialect "tuned".
 *
 * @module
 */

import { squirrel5 } from "../src/_numerics.ts";

/** A deterministic random stream over (seed, counter). */
export class Stream {
  #seed: number;
  #counter = 0;
  constructor(seed: number) {
    this.#seed = seed >>> 0;
  }
  /** A float in [0, 1). */
  next(): number {
    return squirrel5(this.#counter++, this.#seed) / 4294967296;
  }
  /** An integer in [0, n). */
  below(n: number): number {
    return Math.floor(this.next() * n);
  }
  pick<T>(items: readonly T[]): T {
    return items[this.below(items.length)]!;
  }
}

interface Dialect {
  readonly nouns: readonly (readonly [string, string])[];
  readonly verbs: readonly (readonly [string, string])[];
  readonly adjectives: readonly string[];
}

const DIALECTS: Readonly<Record<"base" | "tuned", Dialect>> = {
  base: {
    nouns: [
      ["cat", "cats"],
      ["dog", "dogs"],
      ["bird", "birds"],
      ["fox", "foxes"],
      ["box", "boxes"],
    ],
    verbs: [
      ["sees", "see"],
      ["likes", "like"],
      ["finds", "find"],
    ],
    adjectives: ["red", "big", "old", "small"],
  },
  tuned: {
    nouns: [
      ["mouse", "mice"],
      ["goose", "geese"],
      ["child", "children"],
      ["wolf", "wolves"],
    ],
    verbs: [
      ["hears", "hear"],
      ["wants", "want"],
      ["keeps", "keep"],
    ],
    adjectives: ["blue", "quiet", "wild"],
  },
};

const COUNTS = ["two", "three", "four", "five"];

function nounPhrase(stream: Stream, dialect: Dialect): { text: string; plural: boolean } {
  const [singular, plural] = stream.pick(dialect.nouns);
  const adjective = stream.next() < 0.5 ? `${stream.pick(dialect.adjectives)} ` : "";
  if (stream.next() < 0.5) return { text: `the ${adjective}${singular}`, plural: false };
  return { text: `${stream.pick(COUNTS)} ${adjective}${plural}`, plural: true };
}

/** One sentence of a dialect, ending in ". ". */
export function sentence(stream: Stream, dialectName: "base" | "tuned"): string {
  const dialect = DIALECTS[dialectName];
  const subject = nounPhrase(stream, dialect);
  const [singularVerb, pluralVerb] = stream.pick(dialect.verbs);
  const object = nounPhrase(stream, dialect);
  return `${subject.text} ${subject.plural ? pluralVerb : singularVerb} ${object.text}. `;
}

/** The character vocabulary: every character any dialect can produce, sorted. */
export const VOCAB: readonly string[] = (() => {
  const chars = new Set<string>([" ", "."]);
  for (const dialect of Object.values(DIALECTS)) {
    for (const words of [...dialect.nouns.flat(), ...dialect.verbs.flat(), ...dialect.adjectives, ...COUNTS, "the"]) {
      for (const c of words) chars.add(c);
    }
  }
  return [...chars].sort();
})();

const INDEX = new Map(VOCAB.map((c, i) => [c, i]));

/** Encodes text as token ids. */
export function encode(text: string): Int32Array {
  const ids = new Int32Array(text.length);
  for (let i = 0; i < text.length; i++) ids[i] = INDEX.get(text[i]!)!;
  return ids;
}

/** A corpus of `length` characters from a dialect, deterministic for a seed. */
export function corpus(seed: number, dialect: "base" | "tuned", length: number): Int32Array {
  const stream = new Stream(seed);
  let text = "";
  while (text.length < length) text += sentence(stream, dialect);
  return encode(text.slice(0, length));
}

/** A batch of `batch` windows of `context + 1` tokens: inputs and next-token targets. */
export function sampleBatch(
  data: Int32Array,
  stream: Stream,
  batch: number,
  context: number,
): { inputs: Int32Array; targets: Int32Array } {
  const inputs = new Int32Array(batch * context);
  const targets = new Int32Array(batch * context);
  for (let b = 0; b < batch; b++) {
    const start = stream.below(data.length - context - 1);
    inputs.set(data.subarray(start, start + context), b * context);
    targets.set(data.subarray(start + 1, start + context + 1), b * context);
  }
  return { inputs, targets };
}
