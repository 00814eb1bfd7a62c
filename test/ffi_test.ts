import { describe, expect, test } from "bun:test";

const root = new URL("..", import.meta.url).pathname;

async function runWithLibrary(path: string): Promise<{ code: number; stderr: string }> {
  const script = 'import { cast } from "./src/mod.ts"; cast(new Float32Array([1]), "f32", "bf16");';
  const child = Bun.spawn([process.execPath, "-e", script], {
    cwd: root,
    env: { ...process.env, MIXPREC_LIB: path },
    stdout: "pipe",
    stderr: "pipe",
  });
  const [code, stderr] = await Promise.all([child.exited, new Response(child.stderr).text()]);
  return { code, stderr };
}

describe("the native library", () => {
  test("a missing library gives an error that names the path and says to run make build", async () => {
    const { code, stderr } = await runWithLibrary("/nonexistent/libmixprec.so");
    expect(code).not.toBe(0);
    expect(stderr).toContain("/nonexistent/libmixprec.so");
    expect(stderr).toContain("make build");
    expect(stderr).toContain("library_missing");
  });

  test("a library without the expected symbols is refused with the same advice", async () => {
    // libc is a real shared library, but not ours.
    const { code, stderr } = await runWithLibrary("libc.so.6");
    expect(code).not.toBe(0);
    expect(stderr).toContain("make build");
  });

  test("MIXPREC_LIB pointing at the built library works", async () => {
    const { code, stderr } = await runWithLibrary(`${root}zig/zig-out/lib/libmixprec.so`);
    expect(stderr).toBe("");
    expect(code).toBe(0);
  });
});
