import { describe, expect, test } from "bun:test";
import { mkdirSync, rmSync } from "node:fs";

// Every ```ts block in README.md runs as a Bun script (importing "mixprec" resolves to this package
// by its own name) and must exit 0; blocks fenced as ```ts sketch are fragments and are not run.
const root = new URL("..", import.meta.url).pathname;
const readme = await Bun.file(`${root}README.md`).text();
const blocks = [...readme.matchAll(/```ts\n([\s\S]*?)```/g)].map((match) => match[1]!);

describe("README.md", () => {
  test("has runnable examples", () => {
    expect(blocks.length).toBeGreaterThanOrEqual(2);
  });

  blocks.forEach((code, index) => {
    const firstLine = code.split("\n").find((line) => line.startsWith("//")) ?? `block ${index + 1}`;
    test(`example ${index + 1} runs (${firstLine.replace(/^\/\/\s*/, "").slice(0, 60)})`, async () => {
      const dir = `${root}.readme-examples`;
      mkdirSync(dir, { recursive: true });
      const path = `${dir}/example_${index + 1}.ts`;
      await Bun.write(path, code);
      const child = Bun.spawn([process.execPath, path], { cwd: root, stdout: "pipe", stderr: "pipe" });
      const [code_, stderr] = await Promise.all([child.exited, new Response(child.stderr).text()]);
      rmSync(path);
      if (code_ !== 0) throw new Error(`README example ${index + 1} failed:\n${stderr}`);
    });
  });
});
