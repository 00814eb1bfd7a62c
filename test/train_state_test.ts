import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import {
  dynamicLossScale,
  IntegerTensor,
  integerTensor,
  type LossScale,
  loadTrainState,
  saveTrainState,
  staticLossScale,
  Tensor,
  tensor,
  TRAIN_STATE_VERSION,
  treeLeaves,
  type Tree,
} from "../src/mod.ts";

const directory = mkdtempSync(join(tmpdir(), "mixprec-train-state-"));
afterAll(() => rmSync(directory, { recursive: true, force: true }));
const WORKER = new URL("./_train_state_worker.ts", import.meta.url).pathname;
let dirCount = 0;
const fresh = () => join(directory, `run-${dirCount++}`);

function disposeAll(value: unknown): void {
  for (const leaf of treeLeaves(value as Tree<unknown>)) if (leaf instanceof Tensor && !leaf.disposed) leaf.dispose();
}

/** Deep equality that tells -0 from 0, NaN from NaN-less, frozen from not, and compares tensor bits. */
function expectSame(actual: unknown, expected: unknown, path = "$"): void {
  if (expected instanceof Tensor) {
    expect(actual, path).toBeInstanceOf(Tensor);
    const a = actual as Tensor;
    expect(a.dtype, path).toBe(expected.dtype);
    expect([...a.shape], path).toEqual([...expected.shape]);
    expect(
      Buffer.from(new Uint8Array(a.data.buffer, a.data.byteOffset, a.data.byteLength)).equals(
        Buffer.from(new Uint8Array(expected.data.buffer, expected.data.byteOffset, expected.data.byteLength)),
      ),
      path,
    ).toBe(true);
    return;
  }
  if (expected instanceof IntegerTensor) {
    expect(actual, path).toBeInstanceOf(IntegerTensor);
    expect((actual as IntegerTensor).dtype).toBe(expected.dtype);
    expect([...(actual as IntegerTensor).data]).toEqual([...expected.data] as never);
    return;
  }
  if (typeof expected === "number") {
    expect(Object.is(actual, expected), `${path}: ${String(actual)} vs ${String(expected)}`).toBe(true);
    return;
  }
  if (expected === null || expected === undefined) {
    expect(actual ?? null, path).toBeNull();
    return;
  }
  if (typeof expected !== "object") {
    expect(actual, path).toBe(expected);
    return;
  }
  expect(Array.isArray(actual), path).toBe(Array.isArray(expected));
  expect(Object.isFrozen(actual), `${path} frozen`).toBe(Object.isFrozen(expected));
  const keys = Object.keys(expected).filter((k) => (expected as Record<string, unknown>)[k] !== undefined);
  expect(Object.keys(actual as object).sort(), path).toEqual(keys.sort());
  for (const key of keys) {
    expectSame((actual as Record<string, unknown>)[key], (expected as Record<string, unknown>)[key], `${path}.${key}`);
  }
}

const DTYPES = ["float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2"] as const;
const tensorArbitrary = fc
  .record({ dtype: fc.constantFrom(...DTYPES), bits: fc.array(fc.nat({ max: 255 }), { maxLength: 12 }) })
  .map(({ dtype, bits }) => {
    const size = dtype === "float32" ? 4 : dtype.startsWith("float8") ? 1 : 2;
    const count = Math.floor(bits.length / size);
    const t = new Tensor(dtype, [count], "cpu");
    new Uint8Array(t.data.buffer, t.data.byteOffset, count * size).set(bits.slice(0, count * size));
    return t;
  });
const scalarArbitrary = fc.oneof(
  fc.double(),
  fc.constantFrom(Number.NaN, Infinity, -Infinity, -0, 0),
  fc.string({ maxLength: 5 }),
  fc.boolean(),
  fc.constant(null),
  fc.bigInt({ min: -(2n ** 70n), max: 2n ** 70n }),
);
const keyArbitrary = fc.oneof(
  fc.stringMatching(/^[a-z]{1,4}$/),
  fc.constantFrom("$tensor", "$object", "frozen", "a.b", "0"),
);
const stateArbitrary = fc.letrec<{ node: unknown }>((tie) => ({
  node: fc.oneof(
    { maxDepth: 3 },
    scalarArbitrary,
    tensorArbitrary,
    fc.array(tie("node"), { maxLength: 3 }),
    fc.dictionary(keyArbitrary, tie("node"), { maxKeys: 4 }),
    fc.dictionary(keyArbitrary, tie("node"), { maxKeys: 3 }).map((o) => Object.freeze(o)),
    fc.array(tie("node"), { maxLength: 2 }).map((a) => Object.freeze(a)),
  ),
})).node;

describe("saveTrainState() and loadTrainState()", () => {
  test("any optimizer state of tensors and JSON scalars comes back identical: bits, -0, NaN, bigints, frozen records", () => {
    const dir = fresh();
    fc.assert(
      fc.property(stateArbitrary, stateArbitrary, fc.nat({ max: 1e6 }), (optState, rng, step) => {
        using w = tensor([1, 2, 3], { dtype: "bf16" });
        saveTrainState(dir, { params: { w }, optState, lossScale: null, step, rng });
        const loaded = loadTrainState(dir);
        expectSame(loaded.optState, optState);
        expectSame(loaded.rng, rng);
        expectSame(loaded.params, { w });
        expect(loaded.step).toBe(step);
        expect(loaded.lossScale).toBeNull();
        disposeAll([loaded.params, loaded.optState, loaded.rng]);
        disposeAll([optState, rng]);
      }),
      { numRuns: 60 },
    );
  });

  test("the loss scale comes back with its counters, and a shared tensor comes back shared", () => {
    const dir = fresh();
    const scale = dynamicLossScale({ growthInterval: 3, hysteresis: 2 }).adjust(true).adjust(false).adjust(true);
    using w = tensor([0.5], { dtype: "f16" });
    saveTrainState(dir, {
      params: { w },
      optState: Object.freeze({ kind: "masterWeights", master: w, ids: integerTensor(new BigInt64Array([5n])) }),
      lossScale: scale,
      step: 3,
      rng: { seed: 1, counter: 3 },
    });
    const loaded = loadTrainState<{ w: Tensor }, { master: Tensor; ids: IntegerTensor }>(dir);
    expect(loaded.optState.master).toBe(loaded.params.w);
    expect(loaded.optState.ids.data[0]).toBe(5n);
    const restored = loaded.lossScale as LossScale;
    expect(restored.toJSON()).toEqual(scale.toJSON());
    let a: LossScale = scale;
    let b: LossScale = restored;
    for (const finite of [true, true, false, false, true, true, true]) {
      a = a.adjust(finite);
      b = b.adjust(finite);
      expect(b.value).toBe(a.value);
      expect(b.event).toBe(a.event);
    }
    loaded.params.w.dispose();
  });

  test("a custom loss scale is restored with the reviver passed to loadTrainState", () => {
    const dir = fresh();
    const custom = { toJSON: () => ({ kind: "mine", value: 12 }) };
    saveTrainState(dir, { params: {}, optState: null, lossScale: custom, step: 0, rng: 0 });
    const loaded = loadTrainState(dir, { lossScaleReviver: (json) => ({ revived: json }) });
    expect(loaded.lossScale).toEqual({ revived: { kind: "mine", value: 12 } });
    expect(() => loadTrainState(dir)).toThrow(/Unknown loss-scale kind "mine"/);
    saveTrainState(dir, { params: {}, optState: null, lossScale: staticLossScale(8), step: 1, rng: 0 });
    expect(loadTrainState(dir).lossScale!.value).toBe(8);
  });

  test("the layout is versioned: latest names one ckpt directory with state.json and tensors.safetensors", () => {
    const dir = fresh();
    using w = tensor([1]);
    const id = saveTrainState(dir, { params: { w }, optState: {}, lossScale: null, step: 42, rng: null });
    expect(id).toMatch(/^ckpt-0000000042-/);
    expect(readFileSync(join(dir, "latest"), "utf8")).toBe(`${id}\n`);
    expect(readdirSync(join(dir, id)).sort()).toEqual(["state.json", "tensors.safetensors"]);
    const document = JSON.parse(readFileSync(join(dir, id, "state.json"), "utf8"));
    expect(document).toMatchObject({ format: "mixprec.train_state", version: TRAIN_STATE_VERSION, step: 42 });
    disposeAll(loadTrainState(dir).params);
  });

  test("older checkpoints are removed once the new one is current, unless keep says otherwise", () => {
    const dir = fresh();
    using w = tensor([1]);
    for (let step = 0; step < 3; step++)
      saveTrainState(dir, { params: { w }, optState: {}, lossScale: null, step, rng: null });
    expect(readdirSync(dir).filter((n) => n.startsWith("ckpt-")).length).toBe(1);
    for (let step = 3; step < 6; step++) {
      saveTrainState(dir, { params: { w }, optState: {}, lossScale: null, step, rng: null }, { keep: 2 });
    }
    expect(
      readdirSync(dir)
        .filter((n) => n.startsWith("ckpt-"))
        .map((n) => n.slice(5, 15))
        .sort(),
    ).toEqual(["0000000004", "0000000005"]);
  });

  test("rejected states write nothing and say why", () => {
    const dir = fresh();
    using w = tensor([1]);
    const base = { params: { w }, optState: {}, lossScale: null, rng: null };
    expect(() => saveTrainState(dir, { ...base, step: -1 })).toThrow(/step must be a non-negative integer/);
    expect(() => saveTrainState(dir, { ...base, step: 1.5 })).toThrow(RangeError);
    expect(() => saveTrainState(dir, { ...base, step: 0, optState: { f: () => 1 } })).toThrow(
      /value at opt_state.f is a function/,
    );
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    expect(() => saveTrainState(dir, { ...base, step: 0, optState: cyclic })).toThrow(/contains itself/);
    const gone = tensor([1]);
    gone.dispose();
    expect(() => saveTrainState(dir, { ...base, step: 0, params: { gone } })).toThrow(/params.gone is disposed/);
    expect(() => saveTrainState(dir, { ...base, step: 0, lossScale: 5 as never })).toThrow(/toJSON/);
    expect(existsSync(dir)).toBe(false);
  });

  test("loading refuses a missing checkpoint, a newer format version and a damaged tensors file", () => {
    const dir = fresh();
    expect(() => loadTrainState(dir)).toThrow(/holds no training checkpoint/);
    using w = tensor([1, 2]);
    const id = saveTrainState(dir, { params: { w }, optState: {}, lossScale: null, step: 1, rng: null });
    const statePath = join(dir, id, "state.json");
    const document = JSON.parse(readFileSync(statePath, "utf8"));
    writeFileSync(statePath, JSON.stringify({ ...document, version: TRAIN_STATE_VERSION + 1 }));
    expect(() => loadTrainState(dir)).toThrow(/format version 2; this mixprec reads version 1/);
    writeFileSync(statePath, JSON.stringify(document));
    writeFileSync(join(dir, id, "tensors.safetensors"), new Uint8Array(3));
    expect(() => loadTrainState(dir)).toThrow(/is 3 bytes but the checkpoint recorded/);
    writeFileSync(statePath, "{");
    expect(() => loadTrainState(dir)).toThrow(SyntaxError);
  });

  test("a save removes temporary directories that a crashed writer left behind", () => {
    const dir = fresh();
    mkdirSync(join(dir, ".tmp-ckpt-0000000001-dead"), { recursive: true });
    writeFileSync(join(dir, ".tmp-ckpt-0000000001-dead", "tensors.safetensors"), "partial");
    using w = tensor([1]);
    const id = saveTrainState(dir, { params: { w }, optState: {}, lossScale: null, step: 2, rng: null });
    expect(readdirSync(dir).sort()).toEqual([id, "latest"]);
  });
});

function runWorker(...args: string[]): void {
  const result = Bun.spawnSync([process.execPath, WORKER, ...args]);
  if (result.exitCode !== 0) throw new Error(`worker failed: ${result.stderr.toString()}`);
}

function checkpointFiles(dir: string): { state: Buffer; tensors: Buffer } {
  const id = readFileSync(join(dir, "latest"), "utf8").trim();
  return {
    state: readFileSync(join(dir, id, "state.json")),
    tensors: readFileSync(join(dir, id, "tensors.safetensors")),
  };
}

describe("resuming training", () => {
  test("train 10 steps equals train 4, save, load in a new process, train 6: every byte", () => {
    const full = fresh();
    const part = fresh();
    const resumed = fresh();
    runWorker("train", "--steps", "10", "--to", full);
    runWorker("train", "--steps", "4", "--to", part);
    runWorker("train", "--steps", "6", "--from", part, "--to", resumed);
    const a = checkpointFiles(full);
    const b = checkpointFiles(resumed);
    expect(b.tensors.equals(a.tensors)).toBe(true);
    expect(b.state.toString()).toBe(a.state.toString());
    // The run is not trivial: 4 steps differ from 10, skipped steps happened and the scale moved.
    expect(checkpointFiles(part).tensors.equals(a.tensors)).toBe(false);
    const state = JSON.parse(a.state.toString()).state;
    // Steps 3 and 8 overflowed and were skipped; the scale grew twice (every 3 clean steps) and
    // backed off twice.
    expect(state.optState.$object.count).toBe(8);
    expect(state.lossScale).toMatchObject({ scale: 1024, growthTracker: 1 });
    expect(JSON.parse(checkpointFiles(part).state.toString()).state.lossScale).toMatchObject({ event: "backoff" });
    expect(state.rng).toEqual({ seed: 7, counter: 10 });
  }, 120_000);
});

describe("a writer killed mid-save", () => {
  test("SIGKILL during a large save leaves the previous checkpoint loadable, bit for bit", async () => {
    const dir = fresh();
    using w = tensor([1.5, -2, 3], { dtype: "bf16" });
    saveTrainState(dir, {
      params: { w },
      optState: { count: 1 },
      lossScale: dynamicLossScale(),
      step: 1,
      rng: { c: 1 },
    });
    const before = checkpointFiles(dir);
    let killedMidWrite = 0;
    // Kill at several moments; on a loaded machine a kill can miss the write window, so keep trying
    // (up to 12 attempts) until at least one lands mid-write.
    const delays = [0, 20, 80, 0, 5, 10, 40, 0, 2, 30, 60, 1];
    for (const [attempt, delayMs] of delays.entries()) {
      if (attempt >= 3 && killedMidWrite > 0) break;
      const temporaries = () => readdirSync(dir).filter((n) => n.startsWith(".tmp-ckpt-"));
      for (const name of temporaries()) rmSync(join(dir, name), { recursive: true, force: true });
      const child = Bun.spawn([process.execPath, WORKER, "big", "--to", dir, "--megabytes", "96"], {
        stdout: "ignore",
        stderr: "pipe",
      });
      let exited = false;
      void child.exited.then(() => {
        exited = true;
      });
      // Wait until the writer has created its temporary checkpoint directory, then a bit more.
      const deadline = Date.now() + 20_000;
      while (temporaries().length === 0 && !exited && Date.now() < deadline) await Bun.sleep(1);
      if (delayMs > 0) await Bun.sleep(delayMs);
      child.kill("SIGKILL");
      await child.exited;
      if (child.signalCode !== "SIGKILL") {
        // The writer finished before the kill (a slow poll on a loaded machine): it must have succeeded.
        expect(child.exitCode, await new Response(child.stderr).text()).toBe(0);
      } else if (temporaries().length > 0) {
        killedMidWrite++;
      }
      // Whatever the moment of the kill, latest names a complete checkpoint: the old one unless
      // the writer got all the way through the rename of latest.
      const current = checkpointFiles(dir);
      if (current.state.equals(before.state)) {
        expect(current.tensors.equals(before.tensors)).toBe(true);
        const loaded = loadTrainState<{ w: Tensor }>(dir);
        expectSame(loaded.params, { w });
        expect(loaded.step).toBe(1);
        expect(loaded.lossScale!.value).toBe(65536);
        disposeAll(loaded.params);
      } else {
        const loaded = loadTrainState(dir);
        expect(loaded.step).toBe(2);
        disposeAll(loaded.params);
        saveTrainState(dir, {
          params: { w },
          optState: { count: 1 },
          lossScale: dynamicLossScale(),
          step: 1,
          rng: { c: 1 },
        });
      }
    }
    // At least one kill landed while the new checkpoint was being written.
    expect(killedMidWrite).toBeGreaterThan(0);
  }, 120_000);
});
