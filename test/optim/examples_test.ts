import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const SOURCE = new URL("../../src/optim/", import.meta.url).pathname;

/** The ```ts blocks of every JSDoc @example in a file, with imports made absolute. */
function examplesOf(file: string): string[] {
  const text = readFileSync(join(SOURCE, file), "utf8");
  const blocks: string[] = [];
  for (const match of text.matchAll(/\* @example\n \* ```ts\n([\s\S]*?) \* ```/g)) {
    const code = match[1]!
      .split("\n")
      .map((line) => line.replace(/^ \* ?/, ""))
      .join("\n")
      .replace(/from "\.\/(.*?)"/g, (_, name) => `from "${join(SOURCE, name)}"`)
      .replace(/from "\.\.\/(.*?)"/g, (_, name) => `from "${join(SOURCE, "..", name)}"`);
    blocks.push(code);
  }
  return blocks;
}

describe("JSDoc examples of src/optim", () => {
  const files = readdirSync(SOURCE).filter((f) => f.endsWith(".ts") && !f.startsWith("_"));
  const directory = mkdtempSync(join(tmpdir(), "mixprec-optim-examples-"));
  for (const file of files) {
    const blocks = examplesOf(file);
    test(`the JSDoc examples of ${file} run and pass their assertions`, async () => {
      expect(blocks.length).toBeGreaterThan(0);
      for (const [i, code] of blocks.entries()) {
        const path = join(directory, `${file.replace(".ts", "")}_${i}.ts`);
        writeFileSync(path, code);
        await import(path);
      }
    });
  }
  afterAll(() => rmSync(directory, { recursive: true, force: true }));
});
