// Tensor memory safety and bounded memory (issue 13 items 1 and 2). Each reproduction runs in a
// child process, so a crash (exit 139) fails the test instead of the runner.
import { describe, expect, test } from "bun:test";
import { join } from "node:path";

const MOD = join(import.meta.dir, "../src/mod.ts");

async function run(
  body: string,
  env: Record<string, string> = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const script = `import * as mp from ${JSON.stringify(MOD)};\n${body}`;
  const child = Bun.spawn([process.execPath, "-e", script], {
    stdout: "pipe",
    stderr: "pipe",
    env: { ...process.env, ...env },
  });
  const [stdout, stderr] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text()]);
  return { code: await child.exited, stdout, stderr };
}

const RSS = `const rssMiB = () => Number(require("node:fs").readFileSync("/proc/self/status", "utf8").match(/VmRSS:\\s+(\\d+)/)[1]) / 1024;`;

describe("tensor memory", () => {
  test("a data view kept alone keeps its memory and values through garbage collection", async () => {
    const { code, stdout, stderr } = await run(`
      const expected = mp.randn([1 << 18], { seed: 3 }).toArray();
      const view = mp.randn([1 << 18], { seed: 3 }).data;
      for (let i = 0; i < 20; i++) { mp.zeros([1 << 18]); Bun.gc(true); }
      let same = 0;
      for (let i = 0; i < view.length; i++) if (view[i] === expected[i]) same++;
      console.log(same === view.length ? "same" : "changed " + same);
    `);
    expect(stderr).toBe("");
    expect(code).toBe(0);
    expect(stdout.trim()).toBe("same");
  });

  test("a data view taken before dispose() still reads the values it had after it", async () => {
    const { code, stdout, stderr } = await run(`
      const t = mp.randn([1 << 20], { seed: 5 });
      const expected = t.toArray();
      const view = t.data;
      t.dispose();
      for (let i = 0; i < 20; i++) { mp.ones([1 << 20]).dispose(); Bun.gc(true); }
      let same = 0;
      for (let i = 0; i < view.length; i++) if (view[i] === expected[i]) same++;
      console.log(same === view.length ? "same" : "changed " + same);
    `);
    expect(stderr).toBe("");
    expect(code).toBe(0);
    expect(stdout.trim()).toBe("same");
  });

  test("data asked after dispose() throws a TypeError naming the tensor", async () => {
    const { code, stdout } = await run(`
      const t = mp.zeros([4]);
      t.dispose();
      try { t.data; console.log("no error"); } catch (e) { console.log(e.name + ": " + e.message); }
    `);
    expect(code).toBe(0);
    expect(stdout).toContain("TypeError: Cannot read data of a disposed Tensor(float32, [4], cpu, disposed)");
  });

  test("tensors nobody disposes are freed by the garbage collector: 8 GiB allocated, RSS stays bounded", async () => {
    const { code, stdout, stderr } = await run(`
      ${RSS}
      let peak = 0;
      for (let i = 0; i < 2048; i++) {
        const t = mp.zeros([1 << 20]); // 4 MiB each, never disposed
        if (i % 64 === 0) peak = Math.max(peak, rssMiB());
      }
      console.log(JSON.stringify({ peak }));
    `);
    expect(stderr).toBe("");
    expect(code).toBe(0);
    const { peak } = JSON.parse(stdout.trim());
    // Leaked, 2,048 blocks of 4 MiB would be 8 GiB; collected, the process stays far below that.
    expect(peak).toBeLessThan(2048);
  });

  test("disposed tensors free their storage at once", async () => {
    const { code, stdout } = await run(`
      const before = mp.hostMemoryStats();
      const ts = Array.from({ length: 10 }, () => mp.zeros([1000]));
      const during = mp.hostMemoryStats();
      for (const t of ts) t.dispose();
      const after = mp.hostMemoryStats();
      console.log(JSON.stringify([during.blocks - before.blocks, during.bytes - before.bytes, after.blocks - before.blocks]));
    `);
    expect(code).toBe(0);
    expect(JSON.parse(stdout.trim())).toEqual([10, 40000, 0]);
  });

  test("a disposed small block is kept, wrapped, for the next tensor of its size (not with MIXPREC_HOST_CACHE_MB=0)", async () => {
    const body = `
      mp.emptyHostCache();
      const first = mp.randn([100], { seed: 1 });
      const address = first.address;
      first.dispose();
      const cachedAfterDispose = mp.hostMemoryStats().cachedBytes;
      const second = mp.zeros([100]);
      const zeroed = second.toArray().every((v) => v === 0);
      const other = mp.zeros([101]);
      console.log(JSON.stringify([cachedAfterDispose, second.address === address, other.address === address, zeroed, mp.hostMemoryStats().cachedBytes]));
    `;
    const on = await run(body);
    expect(on.stderr).toBe("");
    expect(on.code).toBe(0);
    // 400 bytes kept after dispose, handed to the next 100-float tensor (zeroed by zeros()), not to a 101-float one.
    expect(JSON.parse(on.stdout.trim())).toEqual([400, true, false, true, 0]);
    const off = await run(body, { MIXPREC_HOST_CACHE_MB: "0" });
    expect(off.code).toBe(0);
    const [cached, , , zeroedOff] = JSON.parse(off.stdout.trim());
    expect([cached, zeroedOff]).toEqual([0, true]);
  });

  test("a disposed large block is kept for the next tensor of its size, and emptyHostCache frees it", async () => {
    const { code, stdout, stderr } = await run(`
      mp.emptyHostCache();
      const first = mp.zeros([1 << 18]); // 1 MiB
      const address = first.address;
      first.dispose();
      const cachedAfterDispose = mp.hostMemoryStats().cachedBytes;
      const second = mp.zeros([1 << 18]);
      const reused = second.address === address;
      const cachedAfterReuse = mp.hostMemoryStats().cachedBytes;
      const values = second.toArray().every((v) => v === 0);
      second.dispose();
      const released = mp.emptyHostCache();
      console.log(JSON.stringify([cachedAfterDispose, reused, cachedAfterReuse, values, released, mp.hostMemoryStats().cachedBytes]));
    `);
    expect(stderr).toBe("");
    expect(code).toBe(0);
    // zeros() on a reused block still reads zeros: the cache hands out blocks, never their contents.
    expect(JSON.parse(stdout.trim())).toEqual([1 << 20, true, 0, true, 1 << 20, 0]);
  });
});
