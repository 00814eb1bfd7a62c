/**
 * The runnable ```ts blocks of README.md, shared by test/readme_test.ts (which runs each one) and
 * `make test-types` (which type-checks them): run as a script, it writes them to
 * .readme-examples/example_N.ts for tsc. Blocks fenced as ```ts sketch are fragments and are left out.
 *
 * @module
 */

import { mkdirSync, readdirSync, readFileSync, rmSync } from "node:fs";

const root = new URL("..", import.meta.url).pathname;

/** Where the examples are written: ignored by git, included by tsconfig.json. */
export const EXAMPLES_DIR = `${root}.readme-examples`;

/** The code of every runnable ```ts block, in README order. */
export function readmeBlocks(): string[] {
  const readme = readFileSync(`${root}README.md`, "utf8");
  return [...readme.matchAll(/```ts\n([\s\S]*?)```/g)].map((match) => match[1]!);
}

/** The path example `index` (0-based) is written to. */
export function examplePath(index: number): string {
  return `${EXAMPLES_DIR}/example_${index + 1}.ts`;
}

/** Writes every block to .readme-examples/, removing examples of blocks that no longer exist. */
export async function writeReadmeExamples(): Promise<string[]> {
  mkdirSync(EXAMPLES_DIR, { recursive: true });
  for (const name of readdirSync(EXAMPLES_DIR)) {
    if (/^example_\d+\.ts$/.test(name)) rmSync(`${EXAMPLES_DIR}/${name}`);
  }
  const blocks = readmeBlocks();
  await Promise.all(blocks.map((code, index) => Bun.write(examplePath(index), code)));
  return blocks.map((_, index) => examplePath(index));
}

if (import.meta.main) {
  const paths = await writeReadmeExamples();
  console.log(`wrote ${paths.length} README examples to ${EXAMPLES_DIR}`);
}
