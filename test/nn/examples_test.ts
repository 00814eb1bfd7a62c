import { afterAll, expect, test } from "bun:test";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

// The JSDoc @example of every export in src/nn/ is code with an assertion: run each one.
const SOURCE = new URL("../../src/nn/", import.meta.url).pathname;
const directory = mkdtempSync(join(tmpdir(), "mixprec-nn-examples-"));
afterAll(() => rmSync(directory, { recursive: true, force: true }));

const examples = readdirSync(SOURCE)
  .filter((name) => name.endsWith(".ts"))
  .flatMap((name) => {
    const text = readFileSync(join(SOURCE, name), "utf8");
    return [...text.matchAll(/@example\n \* ```ts\n([\s\S]*?) \* ```/g)].map((match, i) => ({
      name: `${name} example ${i + 1}`,
      code: match[1]!
        .split("\n")
        .map((line) => line.replace(/^ \* ?/, ""))
        .join("\n")
        .replace(/from "(\.\.?\/[^"]+)"/g, (_, path: string) => `from "${new URL(path, `file://${SOURCE}`).pathname}"`),
    }));
  });

test("src/nn has examples to run", () => {
  expect(examples.length).toBeGreaterThanOrEqual(10);
});

for (const [index, example] of examples.entries()) {
  test(`the JSDoc ${example.name} runs and its assertion holds`, async () => {
    const path = join(directory, `example_${index}.ts`);
    writeFileSync(path, example.code);
    await import(path);
  });
}
