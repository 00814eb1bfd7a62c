import { describe, expect, test } from "bun:test";
import { WINDOW_STEPS, WINDOWS } from "../src/_leak_check.ts";

// The leak warning runs in a child process: it is emitted once per process, and it must appear
// (or not) on the child's stderr exactly as a user would see it.

const root = new URL("..", import.meta.url).pathname;
const STEPS = WINDOW_STEPS * (WINDOWS + 3);

function script(leak: boolean, optimizer: "fusedAdamW" | "applyUpdates"): string {
  return `
import { applyUpdates, fusedAdamW, tensor, zeros } from "./src/mod.ts";
const params = { w: zeros([16]), b: zeros([4]) };
const opt = fusedAdamW({ lr: 1e-3 });
const kept = [];
for (let i = 0; i < ${STEPS}; i++) {
  const step = () => {
    const grads = { w: tensor(new Float32Array(16).fill(0.1)), b: tensor(new Float32Array(4).fill(0.2)) };
    ${optimizer === "fusedAdamW" ? "opt.step(params, grads);" : "applyUpdates(params, grads);"}
    return grads;
  };
  ${leak ? "kept.push(step());" : "const g = step(); g.w.dispose(); g.b.dispose();"}
}
console.log("done");
`;
}

async function run(code: string, env: Record<string, string> = {}): Promise<{ code: number; stderr: string }> {
  const child = Bun.spawn([process.execPath, "-e", code], {
    cwd: root,
    env: { ...process.env, ...env },
    stdout: "pipe",
    stderr: "pipe",
  });
  const [exit, stderr] = await Promise.all([child.exited, new Response(child.stderr).text()]);
  return { code: exit, stderr };
}

describe("the leak warning", () => {
  test("a loop that keeps its gradients is warned once, with the fix named", async () => {
    const { code, stderr } = await run(script(true, "fusedAdamW"));
    expect(code).toBe(0);
    expect(stderr.match(/MixprecLeakWarning/g)?.length).toBe(1);
    expect(stderr).toContain("dispose()");
    expect(stderr).toContain("using");
    expect(stderr).toContain("tidy(");
    expect(stderr).toMatch(/about 2 more per step/);
  });

  test("applyUpdates steps are counted too", async () => {
    const { stderr } = await run(script(true, "applyUpdates"));
    expect(stderr.match(/MixprecLeakWarning/g)?.length).toBe(1);
  });

  test("a loop that disposes what it makes is never warned", async () => {
    const { code, stderr } = await run(script(false, "fusedAdamW"));
    expect(code).toBe(0);
    expect(stderr).not.toContain("MixprecLeakWarning");
  });

  test("MIXPREC_LEAK_WARNING=0 silences it", async () => {
    const { stderr } = await run(script(true, "fusedAdamW"), { MIXPREC_LEAK_WARNING: "0" });
    expect(stderr).not.toContain("MixprecLeakWarning");
  });
});
