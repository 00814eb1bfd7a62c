import { afterAll, describe, expect, test } from "bun:test";
import { copyFileSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { hostMemoryStats } from "../../src/backend/cpu/storage.ts";
import { fromPretrained } from "../../src/io/pretrained.ts";
import { openSafetensors, saveSafetensors } from "../../src/io/safetensors.ts";
import { isTensor, type Tensor, tensor } from "../../src/tensor.ts";

const scratch = mkdtempSync(join(tmpdir(), "mixprec-mapped-"));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));
const LLAMA = join(import.meta.dir, "../fixtures/models/llama");

describe("loading from a mapped file", () => {
  test("openSafetensors().tensor() of a path lives on the mapping: no host block, no copy", () => {
    const path = join(scratch, "w.safetensors");
    using a = tensor([1, 2, 3, 4], { dtype: "bf16" });
    using b = tensor([0.5, -1.5], { dtype: "f32" });
    saveSafetensors(path, { a, b });
    const file = openSafetensors(path);
    const before = hostMemoryStats().blocks;
    const loaded = file.tensor("a") as Tensor;
    expect(hostMemoryStats().blocks).toBe(before);
    expect(loaded.data.buffer).toBe(file.bytes.buffer);
    expect(Array.from(loaded.toArray())).toEqual([1, 2, 3, 4]);
    loaded.dispose();
    expect(hostMemoryStats().blocks).toBe(before);
    // Bytes given as a buffer are copied, never aliased.
    const fromBytes = openSafetensors(new Uint8Array(readFileSync(path))).tensor("b") as Tensor;
    expect(hostMemoryStats().blocks).toBe(before + 1);
    fromBytes.dispose();
  });

  test("writes to a mapped tensor stay private: the file keeps its bytes", () => {
    const path = join(scratch, "private.safetensors");
    using w = tensor([1, 2, 3], { dtype: "f32" });
    saveSafetensors(path, { w });
    const before = readFileSync(path);
    const mapped = openSafetensors(path).tensor("w") as Tensor;
    (mapped.data as Float32Array).fill(42);
    expect(Array.from(mapped.toArray())).toEqual([42, 42, 42]);
    mapped.dispose();
    expect(readFileSync(path).equals(before)).toBe(true);
    expect(Array.from((openSafetensors(path).tensor("w") as Tensor).toArray())).toEqual([1, 2, 3]);
  });

  test("a view of a mapped tensor outlives dispose() and reads the values it had", () => {
    const path = join(scratch, "view.safetensors");
    using w = tensor([7, 8], { dtype: "f16" });
    saveSafetensors(path, { w });
    const mapped = openSafetensors(path).tensor("w") as Tensor;
    const view = mapped.data;
    mapped.dispose();
    Bun.gc(true);
    expect(Array.from(view)).toEqual(Array.from(w.data));
    expect(() => mapped.data).toThrow(/disposed/);
  });

  test("fromPretrained keeps weights whose dtype matches on the mapping and copies only what it casts", () => {
    const dir = join(scratch, "llama");
    rmSync(dir, { recursive: true, force: true });
    Bun.spawnSync(["mkdir", "-p", dir]);
    for (const f of ["config.json", "model.safetensors"]) copyFileSync(join(LLAMA, f), join(dir, f));
    const before = hostMemoryStats();
    const same = fromPretrained(dir);
    const names = Object.keys(same.params);
    expect(names.length).toBeGreaterThan(10);
    expect(hostMemoryStats().blocks).toBe(before.blocks);
    const dtype = same.params[names[0]!]!.dtype;
    const other = dtype === "float32" ? "bfloat16" : "float32";
    const cast = fromPretrained(dir, { dtype: other });
    expect(hostMemoryStats().blocks).toBe(before.blocks + names.length);
    for (const t of Object.values(cast.params)) if (isTensor(t)) t.dispose();
    for (const t of Object.values(same.params)) if (isTensor(t)) t.dispose();
    expect(hostMemoryStats().blocks).toBe(before.blocks);
  });
});
