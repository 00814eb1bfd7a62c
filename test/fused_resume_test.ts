import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type FusedStateDict, fusedAdamW, fusedSgd, loadTrainState, saveTrainState, tensor } from "../src/mod.ts";

const WORKER = new URL("./_fused_resume_worker.ts", import.meta.url).pathname;
const dirs: string[] = [];
const fresh = () => {
  const dir = mkdtempSync(join(tmpdir(), "mixprec-fused-resume-"));
  dirs.push(dir);
  return dir;
};
afterAll(() => {
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

function runWorker(...args: string[]): void {
  const result = Bun.spawnSync([process.execPath, WORKER, ...args]);
  if (result.exitCode !== 0) throw new Error(`worker failed: ${result.stderr.toString()}`);
}

function checkpointFiles(dir: string): { state: unknown; tensors: Buffer } {
  const id = readFileSync(join(dir, "latest"), "utf8").trim();
  return {
    state: JSON.parse(readFileSync(join(dir, id, "state.json"), "utf8")),
    tensors: readFileSync(join(dir, id, "tensors.safetensors")),
  };
}

describe("resuming fused optimizers", () => {
  for (const opt of ["adamw", "sgd"]) {
    test(`GradScaler + fused ${opt}: 9 steps, save, load in a new process, 12 more equals 21 steps, every byte`, () => {
      const full = fresh();
      const part = fresh();
      const resumed = fresh();
      runWorker("--opt", opt, "--steps", "21", "--to", full);
      runWorker("--opt", opt, "--steps", "9", "--to", part);
      runWorker("--opt", opt, "--steps", "12", "--from", part, "--to", resumed);
      const a = checkpointFiles(full);
      const b = checkpointFiles(resumed);
      expect(b.state).toEqual(a.state);
      expect(Buffer.compare(a.tensors, b.tensors)).toBe(0);
      // The run really trained: the partial checkpoint differs from both.
      expect(Buffer.compare(a.tensors, checkpointFiles(part).tensors)).not.toBe(0);
      const state = (a.state as { state: { optState: { $object?: unknown; step?: number } } }).state.optState;
      expect(JSON.stringify(state)).toContain('"step":');
    });
  }

  test("loadStateDict() refuses wrong kinds, options, keys, dtypes and shapes, naming the entry, and writes nothing", () => {
    const source = fusedAdamW({ lr: 0.1, seed: 3 });
    using p = tensor([1, 2, 3], { dtype: "bf16" });
    using g = tensor([1, -1, 1], { dtype: "bf16" });
    source.step([p], [g]);
    const dict = source.stateDict();
    expect(dict.step).toBe(1);
    expect(Object.keys(dict.state[0]!)).toEqual(["master", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"]);

    const target = fusedAdamW({ lr: 0.1, seed: 3 });
    using q = tensor([1, 2, 3], { dtype: "bf16" });
    target.step([q], [g]);
    const before = target.stateDict().state[0]!.exp_avg!.toArray().join();
    using wrongDtype = tensor([0, 0, 0], { dtype: "bf16" });
    using wrongShape = tensor([0, 0], { dtype: "float32" });
    const entry = dict.state[0]!;
    const cases: [unknown, RegExp][] = [
      [fusedSgd().stateDict(), /kind is "fusedSgd", not "fusedAdamW"/],
      [{ ...dict, seed: 4 }, /seed 4 differs from this optimizer's seed 3/],
      [
        { ...dict, options: { ...dict.options, amsgrad: true } },
        /options\.amsgrad is true but this optimizer has false/,
      ],
      [{ ...dict, step: -1 }, /step must be a non-negative integer, got -1/],
      [{ ...dict, state: [{ ...entry, extra: wrongShape }] }, /state\[0\] has an unknown key "extra"/],
      [{ ...dict, state: [{ ...entry, exp_avg: wrongDtype }] }, /state\[0\]\.exp_avg is bfloat16, expected float32/],
      [
        { ...dict, state: [{ ...entry, exp_avg_sq: wrongShape }] },
        /state\[0\]\.exp_avg_sq has shape \[2\] against \[3\]/,
      ],
      [{ ...dict, state: [{ ...entry, exp_avg: null }] }, /state\[0\]\.exp_avg is missing/],
      [{ ...dict, state: [{ ...entry, max_exp_avg_sq: wrongShape }] }, /state\[0\]\.max_exp_avg_sq is present/],
    ];
    for (const [bad, message] of cases) {
      expect(() => target.loadStateDict(bad as FusedStateDict)).toThrow(message);
      expect(target.stateDict().step).toBe(1);
      expect(target.stateDict().state[0]!.exp_avg!.toArray().join()).toBe(before);
    }
    // A loaded state refuses params of another shape at the next step.
    target.loadStateDict(dict);
    using other = tensor([1, 2], { dtype: "bf16" });
    using otherGrad = tensor([1, 1], { dtype: "bf16" });
    expect(() => target.step([other], [otherGrad])).toThrow(/loaded state\[0\] has shape \[3\] but param 0 is \[2\]/);
    source.dispose();
    target.dispose();
  });

  test("a state dict survives saveTrainState / loadTrainState and loads into a new optimizer", () => {
    const dir = fresh();
    const a = fusedSgd({ lr: 0.1, momentum: 0.5 });
    using p = tensor([1, 2], { dtype: "bf16" });
    using g = tensor([1, 1], { dtype: "bf16" });
    a.step([p], [g]);
    saveTrainState(dir, { params: { p }, optState: a.stateDict(), lossScale: null, step: 1, rng: null });
    const loaded = loadTrainState<{ p: typeof p }, FusedStateDict>(dir);
    const b = fusedSgd({ lr: 0.1, momentum: 0.5 });
    b.loadStateDict(loaded.optState);
    expect(b.stateDict().step).toBe(1);
    expect(b.stateDict().state[0]!.momentum_buffer!.toArray()).toEqual(
      a.stateDict().state[0]!.momentum_buffer!.toArray(),
    );
    a.step([p], [g]);
    b.step([loaded.params.p], [g]);
    expect(loaded.params.p.bits()).toEqual(p.bits());
    a.dispose();
    b.dispose();
  });
});
