import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import {
  cast,
  convertCheckpoint,
  DTYPE_NAMES,
  type DtypeName,
  describeConversion,
  dtypeInfo,
  formatConversionReport,
  integerTensor,
  loadSafetensors,
  openSafetensors,
  saveSafetensors,
  type StorageArray,
  Tensor,
  tensor,
} from "../src/mod.ts";
import { accumulateStatistics, CHUNK_ELEMENTS, convertChunk, emptyAccumulator } from "../src/io/convert.ts";
import { allocateStorage } from "../src/dtype.ts";

const directory = mkdtempSync(join(tmpdir(), "mixprec-convert-"));
afterAll(() => rmSync(directory, { recursive: true, force: true }));
const REPO = new URL("..", import.meta.url).pathname;

function bytesOf(array: ArrayBufferView): Uint8Array {
  return new Uint8Array(array.buffer, array.byteOffset, array.byteLength);
}

function storageFromBits(dtype: DtypeName, bits: number[]): StorageArray {
  const storage = allocateStorage(dtype, bits.length);
  if (storage instanceof Float32Array) new Uint32Array(storage.buffer).set(bits);
  else storage.set(bits);
  return storage;
}

function widen(dtype: DtypeName, data: StorageArray): Float32Array {
  return dtype === "float32" ? (data as Float32Array) : (cast(data, dtype, "float32") as Float32Array);
}

describe("convertChunk() (native)", () => {
  const pairs = DTYPE_NAMES.flatMap((from) => DTYPE_NAMES.filter((to) => to !== from).map((to) => [from, to] as const));
  for (const [from, to] of pairs) {
    test(`native ${from} -> ${to} writes cast()'s bits and the reference statistics`, () => {
      const bits = dtypeInfo(from).bits;
      fc.assert(
        fc.property(
          fc.array(fc.integer({ min: 0, max: 2 ** bits - 1 }), { maxLength: 80 }),
          fc.nat({ max: 3 }),
          (raw, offset) => {
            const source = storageFromBits(from, raw);
            // An odd byte offset checks that unaligned buffers (mapped files) are fine.
            const sourceBytes = new Uint8Array(source.byteLength + offset);
            sourceBytes.set(bytesOf(source), offset);
            const target = new Uint8Array(raw.length * (dtypeInfo(to).bits / 8) + offset);
            const stats = emptyAccumulator();
            convertChunk(sourceBytes.subarray(offset), target.subarray(offset), raw.length, from, to, stats);
            const expectedBits = cast(source, from, to);
            expect(Buffer.from(target.subarray(offset)).equals(Buffer.from(bytesOf(expectedBits)))).toBe(true);
            const reference = emptyAccumulator();
            accumulateStatistics(
              reference,
              widen(from, source),
              widen(to, expectedBits),
              raw.length,
              dtypeInfo(to).minNormal,
            );
            expect({ ...stats, errorSum: 0 }).toEqual({ ...reference, errorSum: 0 });
            expect(stats.errorSum).toBeCloseTo(reference.errorSum, 9);
          },
        ),
        { numRuns: 150 },
      );
    });
  }

  test("the statistics count each kind of event of float32 -> float16", () => {
    const values = new Float32Array([1e5, -7e4, 65504, 1e-8, -2e-8, 1e-6, 3e-5, 1, 0, -0, Infinity, Number.NaN, 0.1]);
    const stats = emptyAccumulator();
    convertChunk(bytesOf(values), new Uint8Array(values.length * 2), values.length, "float32", "float16", stats);
    expect(stats).toMatchObject({
      elements: 13,
      overflow: 2,
      underflow: 2,
      subnormal: 2,
      errorCount: 7,
      maxRelativeError: 1,
    });
  });
});

/** A float16 tensor whose bits cycle through every finite and special pattern. */
function everyFloat16(count: number): Tensor {
  const bits = new Uint16Array(count);
  for (let i = 0; i < count; i++) bits[i] = (i * 40503) & 0xffff;
  return tensor(bits, { dtype: "f16" });
}

describe("convertCheckpoint()", () => {
  test("float16 -> bfloat16 converts every floating tensor bit for bit as cast() does, without overflow", () => {
    const input = join(directory, "f16.safetensors");
    const output = join(directory, "bf16.safetensors");
    using w = everyFloat16(CHUNK_ELEMENTS + 12345); // More than one chunk.
    using b = tensor([0.5, -3, 1e-7], { dtype: "f16" });
    using m = tensor([1 / 3, 1e30], { dtype: "f32" });
    saveSafetensors(input, { model: { w, b, m, ids: integerTensor(new Int32Array([1, -2, 3])) } }, { format: "pt" });
    const report = convertCheckpoint(input, output, { to: "bf16" });
    const file = openSafetensors(output);
    expect(file.metadata).toEqual({ format: "pt" });
    expect(file.info("model.w").dtype).toBe("BF16");
    expect(file.info("model.m").dtype).toBe("BF16");
    expect(file.info("model.ids").dtype).toBe("I32");
    expect([...(file.view("model.ids") as Int32Array)]).toEqual([1, -2, 3]);
    for (const [name, source] of [
      ["model.w", w],
      ["model.b", b],
      ["model.m", m],
    ] as const) {
      const expected = cast(source.data, source.dtype, "bfloat16") as Uint16Array;
      expect(Buffer.from(file.raw(name)).equals(Buffer.from(bytesOf(expected)))).toBe(true);
    }
    expect(report.total.converted).toBe(3);
    expect(report.total.overflow).toBe(0);
    // float16 values are normal in bfloat16's range: nothing underflows or becomes subnormal, and
    // the error is bfloat16's half ulp at most: 3 of float16's 10 mantissa bits are lost.
    expect(report.total.underflow).toBe(0);
    expect(report.total.subnormal).toBe(0);
    expect(report.total.maxRelativeError).toBeLessThanOrEqual(2 ** -8);
    expect(report.total.maxRelativeError).toBeGreaterThan(2 ** -9);
    const wRow = report.tensors.find((t) => t.name === "model.w")!;
    expect(wRow).toMatchObject({ from: "F16", to: "BF16", converted: true, elements: CHUNK_ELEMENTS + 12345 });
    expect(report.tensors.find((t) => t.name === "model.ids")).toMatchObject({ converted: false, to: "I32" });
    expect(report.bytesWritten).toBe(Bun.file(output).size);
  });

  test("bfloat16 -> float16 refuses values above 65504, lists the tensors and writes nothing", () => {
    const input = join(directory, "bf16_big.safetensors");
    const output = join(directory, "f16_refused.safetensors");
    using big = tensor([1e5, 1, -3e38], { dtype: "bf16" });
    using fine = tensor([1, 2], { dtype: "bf16" });
    saveSafetensors(input, { big, fine });
    expect(() => convertCheckpoint(input, output, { to: "f16" })).toThrow(
      /overflows finite values to inf in 1 tensor\(s\): big \(2 values\)\. Nothing was written: pass allowOverflow/,
    );
    expect(existsSync(output)).toBe(false);
    expect(readdirSync(directory).filter((name) => name.includes(".tmp-"))).toEqual([]);
    const report = convertCheckpoint(input, output, { to: "f16", allowOverflow: true });
    expect(report.tensors.find((t) => t.name === "big")!.overflow).toBe(2);
    const { tree } = loadSafetensors(output);
    const loaded = (tree as { big: Tensor; fine: Tensor }).big;
    expect([...loaded.toArray()]).toEqual([Infinity, 1, -Infinity]);
    for (const t of Object.values(tree as Record<string, Tensor>)) t.dispose();
  });

  test("float32 -> float16 reports values that underflow to zero or become subnormal", () => {
    const input = join(directory, "f32_small.safetensors");
    const output = join(directory, "f16_small.safetensors");
    using small = tensor([1e-8, 1e-6, 3e-5, 1e-3, 0], { dtype: "f32" });
    saveSafetensors(input, { small });
    const report = convertCheckpoint(input, output, { to: "float16" });
    expect(report.total).toMatchObject({ underflow: 1, subnormal: 2, overflow: 0, maxRelativeError: 1 });
  });

  test("include selects tensors by glob or RegExp; the others are copied unchanged", () => {
    const input = join(directory, "mixed.safetensors");
    const output = join(directory, "mixed_out.safetensors");
    using a = tensor([1, 2], { dtype: "f32" });
    saveSafetensors(input, {
      layers: [
        { weight: a, bias: a },
        { weight: a, bias: a },
      ],
      head: a,
    });
    const glob = convertCheckpoint(input, output, { to: "bf16", include: "layers.*.weight" });
    expect(glob.tensors.filter((t) => t.converted).map((t) => t.name)).toEqual(["layers.0.weight", "layers.1.weight"]);
    expect(openSafetensors(output).info("layers.0.bias").dtype).toBe("F32");
    const regex = convertCheckpoint(input, output, { to: "bf16", include: /^head$|bias/g });
    expect(regex.tensors.filter((t) => t.converted).map((t) => t.name)).toEqual([
      "head",
      "layers.0.bias",
      "layers.1.bias",
    ]);
    expect(() => convertCheckpoint(input, output, { to: "bf16", include: 3 as unknown as string })).toThrow(TypeError);
    expect(() => convertCheckpoint(input, output, { to: "int8" as "bf16" })).toThrow(/Unknown dtype "int8"/);
  });

  test("a file converts onto itself", () => {
    const path = join(directory, "self.safetensors");
    using a = tensor([1.5, -2.25], { dtype: "f32" });
    saveSafetensors(path, { a });
    convertCheckpoint(path, path, { to: "e4m3" });
    const loaded = (loadSafetensors(path).tree as { a: Tensor }).a;
    expect(loaded.dtype).toBe("float8_e4m3fn");
    expect([...loaded.toArray()]).toEqual([1.5, -2.25]);
    loaded.dispose();
  });

  test("the report formats as a table with totals and says what the dtype change costs", () => {
    const input = join(directory, "table.safetensors");
    using a = tensor([1, 1 / 3], { dtype: "f16" });
    saveSafetensors(input, { a, n: integerTensor(new Uint8Array([1])) });
    const text = formatConversionReport(
      convertCheckpoint(input, join(directory, "table_out.safetensors"), { to: "bf16" }),
    );
    expect(text).toContain("| tensor");
    expect(text).toMatch(/\| a +\| F16 +\| BF16 +\| +2 \| +0 \| +0 \| +0 \|/);
    expect(text).toMatch(/\| n +\| U8 +\| U8 +\| +1 \| +- \|/);
    expect(text).toContain("total (1 converted)");
    expect(text).toContain("drops 3 of 10 mantissa bits: relative rounding error up to 2^-8 (0.391%) instead of 2^-11");
    expect(describeConversion("bf16", "f16")).toContain("narrows the range to +-65504");
  });
});

describe("mixprec convert (CLI)", () => {
  const cli = join(REPO, "src/cli.ts");
  function run(...args: string[]) {
    const result = Bun.spawnSync([process.execPath, cli, ...args]);
    return { code: result.exitCode, out: result.stdout.toString(), err: result.stderr.toString() };
  }

  test("converts a file and prints the table", () => {
    const input = join(directory, "cli_in.safetensors");
    const output = join(directory, "cli_out.safetensors");
    using w = tensor([1, 2, 3], { dtype: "f16" });
    saveSafetensors(input, { w });
    const { code, out } = run("convert", input, output, "--to", "bfloat16");
    expect(code).toBe(0);
    expect(out).toMatch(/\| w +\| F16 +\| BF16 +\| +3 \|/);
    expect(openSafetensors(output).info("w").dtype).toBe("BF16");
  }, 60_000);

  test("refuses an overflowing conversion with status 1 unless --allow-overflow", () => {
    const input = join(directory, "cli_big.safetensors");
    const output = join(directory, "cli_big_out.safetensors");
    using huge = tensor([1e6], { dtype: "bf16" });
    saveSafetensors(input, { huge });
    const refused = run("convert", input, output, "--to", "f16");
    expect(refused.code).toBe(1);
    expect(refused.err).toContain("huge (1 values)");
    expect(existsSync(output)).toBe(false);
    const allowed = run("convert", input, output, "--to", "f16", "--allow-overflow", "--json");
    expect(allowed.code).toBe(0);
    expect(JSON.parse(allowed.out).total.overflow).toBe(1);
  }, 60_000);

  test("usage errors exit with status 2 and print the usage", () => {
    expect(run("convert", "a.safetensors").code).toBe(2);
    const noTo = run("convert", "a", "b");
    expect(noTo.code).toBe(2);
    expect(noTo.err).toContain("--to DTYPE");
    expect(run("frobnicate").code).toBe(2);
    expect(run("--help").code).toBe(0);
  }, 60_000);

  test("the CLI file is executable and starts with a bun shebang", () => {
    const text = require("node:fs").readFileSync(cli, "utf8") as string;
    expect(text.startsWith("#!/usr/bin/env bun\n")).toBe(true);
    expect(require("node:fs").statSync(cli).mode & 0o111).not.toBe(0);
  });
});
