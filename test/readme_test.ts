import { describe, expect, test } from "bun:test";
import { mkdirSync, rmSync } from "node:fs";
import { EXAMPLES_DIR, examplePath, readmeBlocks } from "./_readme_blocks.ts";

// Every ```ts block in README.md runs as a Bun script (importing "mixprec" resolves to this package
// by its own name) and must exit 0; blocks fenced as ```ts sketch are fragments and are not run.
// `make test-types` type-checks the same blocks (test/_readme_blocks.ts).
const root = new URL("..", import.meta.url).pathname;
const blocks = readmeBlocks();

describe("README.md", () => {
  test("has runnable examples", () => {
    expect(blocks.length).toBeGreaterThanOrEqual(2);
  });

  blocks.forEach((code, index) => {
    const firstLine = code.split("\n").find((line) => line.startsWith("//")) ?? `block ${index + 1}`;
    test(`example ${index + 1} runs (${firstLine.replace(/^\/\/\s*/, "").slice(0, 60)})`, async () => {
      mkdirSync(EXAMPLES_DIR, { recursive: true });
      const path = examplePath(index);
      await Bun.write(path, code);
      const child = Bun.spawn([process.execPath, path], { cwd: root, stdout: "pipe", stderr: "pipe" });
      const [code_, stderr] = await Promise.all([child.exited, new Response(child.stderr).text()]);
      rmSync(path);
      if (code_ !== 0) throw new Error(`README example ${index + 1} failed:\n${stderr}`);
    });
  });
});
