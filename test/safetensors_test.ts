import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import {
  IntegerTensor,
  integerTensor,
  loadSafetensors,
  openSafetensors,
  type SafetensorsDtype,
  type SafetensorsLeaf,
  saveSafetensors,
  serializeSafetensors,
  Tensor,
  tensor,
  type Tree,
  treeLeaves,
} from "../src/mod.ts";
import { SAFETENSORS_DTYPES } from "../src/io/_header.ts";

const directory = mkdtempSync(join(tmpdir(), "mixprec-safetensors-"));
afterAll(() => rmSync(directory, { recursive: true, force: true }));

const REPO = new URL("..", import.meta.url).pathname;
const PYTHONPATH = join(REPO, ".tools/py");

/** Whether python3 can import safetensors, numpy and ml_dtypes (installed by `make test`). */
function pythonReady(): boolean {
  const probe = Bun.spawnSync(["python3", "-c", "import safetensors, numpy, ml_dtypes"], {
    env: { ...process.env, PYTHONPATH },
  });
  return probe.exitCode === 0;
}
const PYTHON = pythonReady();
if (!PYTHON) {
  console.warn(
    "safetensors interop tests skipped: python3 cannot import safetensors, numpy and ml_dtypes (run `make test`, which installs them pinned into .tools/py)",
  );
}

function python(...args: string[]): string {
  const result = Bun.spawnSync(["python3", join(REPO, "test/safetensors_interop.py"), ...args], {
    env: { ...process.env, PYTHONPATH },
  });
  if (result.exitCode !== 0) throw new Error(`python failed: ${result.stderr.toString()}`);
  return result.stdout.toString();
}

const FLOAT_OF: Partial<
  Record<SafetensorsDtype, "float32" | "float16" | "bfloat16" | "float8_e4m3fn" | "float8_e5m2">
> = { F32: "float32", F16: "float16", BF16: "bfloat16", F8_E4M3: "float8_e4m3fn", F8_E5M2: "float8_e5m2" };
const ALL_DTYPES = Object.keys(SAFETENSORS_DTYPES) as SafetensorsDtype[];

/** A leaf of a dtype holding `bytes` (random bits) with the given shape. */
function leafOf(dtype: SafetensorsDtype, shape: number[], bytes: Uint8Array): SafetensorsLeaf {
  const float = FLOAT_OF[dtype];
  if (float !== undefined) {
    const t = new Tensor(float, shape, "cpu");
    new Uint8Array(t.data.buffer, t.data.byteOffset, bytes.length).set(bytes);
    return t;
  }
  const copy = bytes.slice().buffer;
  const size = SAFETENSORS_DTYPES[dtype].bytes;
  const count = bytes.length / size;
  const data =
    dtype === "I8"
      ? new Int8Array(copy)
      : dtype === "U8"
        ? new Uint8Array(copy)
        : dtype === "I32"
          ? new Int32Array(copy, 0, count)
          : new BigInt64Array(copy, 0, count);
  return integerTensor(data, shape);
}

function bytesOf(leaf: SafetensorsLeaf): Uint8Array {
  const data = leaf.data;
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}

function codeOf(leaf: SafetensorsLeaf): SafetensorsDtype {
  if (leaf instanceof IntegerTensor) return leaf.dtype;
  return (Object.keys(FLOAT_OF) as SafetensorsDtype[]).find((k) => FLOAT_OF[k] === leaf.dtype)!;
}

function disposeTree(tree: Tree<SafetensorsLeaf>): void {
  for (const leaf of treeLeaves(tree)) if (leaf instanceof Tensor) leaf.dispose();
}

const leafArbitrary = fc
  .record({
    dtype: fc.constantFrom(...ALL_DTYPES),
    shape: fc.array(fc.nat({ max: 4 }), { maxLength: 3 }),
    seed: fc.nat(),
  })
  .map(({ dtype, shape, seed }) => {
    const count = shape.reduce((a, b) => a * b, 1);
    const bytes = new Uint8Array(count * SAFETENSORS_DTYPES[dtype].bytes);
    for (let i = 0; i < bytes.length; i++) bytes[i] = (Math.imul(seed ^ (i * 2654435761), 2246822519) >>> 13) & 0xff;
    return { dtype, shape, bytes };
  });

const keyArbitrary = fc.stringMatching(/^[a-z_][a-z0-9_]{0,5}$/);

/** Random trees of leaf specs: nested objects and arrays. */
const treeArbitrary = fc.letrec<{ tree: unknown; node: unknown }>((tie) => ({
  tree: fc.oneof(
    { maxDepth: 3 },
    fc.dictionary(keyArbitrary, tie("node"), { maxKeys: 4 }),
    fc.array(tie("node"), { maxLength: 3 }),
  ),
  node: fc.oneof({ maxDepth: 3, depthIdentifier: "tree" }, leafArbitrary, leafArbitrary, tie("tree")),
})).tree;

function isSpec(value: unknown): value is { dtype: SafetensorsDtype; shape: number[]; bytes: Uint8Array } {
  return typeof value === "object" && value !== null && "bytes" in value && "dtype" in value;
}

function materialize(spec: unknown): Tree<SafetensorsLeaf> {
  if (isSpec(spec)) return leafOf(spec.dtype, spec.shape, spec.bytes);
  if (Array.isArray(spec)) return spec.map(materialize);
  return Object.fromEntries(Object.entries(spec as object).map(([k, v]) => [k, materialize(v)]));
}

/** Compares two trees: same containers, same leaf dtypes, shapes and bits. */
function expectSameTree(actual: unknown, expected: unknown): void {
  if (expected instanceof Tensor || expected instanceof IntegerTensor) {
    const leaf = actual as SafetensorsLeaf;
    expect(leaf.constructor).toBe(expected.constructor);
    expect(codeOf(leaf)).toBe(codeOf(expected));
    expect([...leaf.shape]).toEqual([...expected.shape]);
    expect(Buffer.from(bytesOf(leaf)).equals(Buffer.from(bytesOf(expected)))).toBe(true);
    return;
  }
  if (expected === null || expected === undefined) {
    expect(actual ?? null).toBeNull();
    return;
  }
  expect(Array.isArray(actual)).toBe(Array.isArray(expected));
  const keys = Object.keys(expected as object);
  expect(Object.keys(actual as object).sort()).toEqual([...keys].sort());
  for (const key of keys) {
    expectSameTree((actual as Record<string, unknown>)[key], (expected as Record<string, unknown>)[key]);
  }
}

describe("saveSafetensors() and loadSafetensors()", () => {
  test("any tree of any supported dtypes round-trips bit for bit through bytes", () => {
    fc.assert(
      fc.property(treeArbitrary, (spec) => {
        const tree = materialize(spec);
        const loaded = loadSafetensors(serializeSafetensors(tree)).tree;
        expectSameTree(loaded, tree);
        disposeTree(loaded);
        disposeTree(tree);
      }),
      { numRuns: 150 },
    );
  });

  test("a tree saved to a file loads back from the mapped file with its metadata", () => {
    const path = join(directory, "round_trip.safetensors");
    using w = tensor(
      [
        [1, -2, 3.5],
        [0, -0, 65504],
      ],
      { dtype: "f16" },
    );
    using b = tensor([1e-40, Number.NaN, Number.POSITIVE_INFINITY], { dtype: "f32" });
    const tree = { model: { layers: [{ w }, { w: b }], steps: integerTensor(new BigInt64Array([7n, -1n])) } };
    saveSafetensors(path, tree, { format: "pt", note: "héllo\n" });
    const { tree: loaded, metadata } = loadSafetensors(path);
    expectSameTree(loaded, tree);
    expect(metadata).toEqual({ format: "pt", note: "héllo\n" });
    disposeTree(loaded);
  });

  test("the writer lays files out as the reference writer does: widest dtype first, then by name", () => {
    using a = tensor([1], { dtype: "f16" });
    using b = tensor([1], { dtype: "f32" });
    using c = tensor([1], { dtype: "e4m3" });
    using d = tensor([1], { dtype: "bf16" });
    const bytes = serializeSafetensors({
      z_f16: a,
      b_f32: b,
      a_e4m3: c,
      a_bf16: d,
      a_i64: integerTensor(new BigInt64Array(1)),
      c_u8: integerTensor(new Uint8Array(1)),
      b_i8: integerTensor(new Int8Array(1)),
      a_i32: integerTensor(new Int32Array(1)),
    });
    const file = openSafetensors(bytes);
    expect(file.names).toEqual(["a_i64", "b_f32", "a_i32", "a_bf16", "z_f16", "a_e4m3", "b_i8", "c_u8"]);
    const length = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    expect(length % 8).toBe(0);
    const text = new TextDecoder().decode(bytes.subarray(8, 8 + length));
    expect(text).toStartWith('{"a_i64":{"dtype":"I64","shape":[1],"data_offsets":[0,8]},');
    expect(text.trimEnd().endsWith("}")).toBe(true);
    expect(/^ *$/.test(text.slice(text.trimEnd().length))).toBe(true);
  });

  test("an empty tree writes the 16-byte file `{}` padded with spaces", () => {
    const bytes = serializeSafetensors({});
    expect([...bytes]).toEqual([8, 0, 0, 0, 0, 0, 0, 0, 0x7b, 0x7d, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20]);
    expect(loadSafetensors(bytes).tree).toEqual({});
  });

  test("nested trees use dotted names and need no structure metadata when names suffice", () => {
    using w = tensor([1]);
    const bytes = serializeSafetensors({ layers: [{ attn: { q: w } }, { attn: { q: w } }] });
    const file = openSafetensors(bytes);
    expect(file.names).toEqual(["layers.0.attn.q", "layers.1.attn.q"]);
    expect(file.metadata).toEqual({});
  });

  test("empty containers, nulls and numeric object keys are kept through the stored structure", () => {
    using w = tensor([2]);
    const tree = { a: [null, w], b: {}, c: { "0": w }, d: [] };
    const bytes = serializeSafetensors(tree as Tree<SafetensorsLeaf>, { user: "x" });
    const file = openSafetensors(bytes);
    expect(file.metadata.user).toBe("x");
    expect(JSON.parse(file.metadata["mixprec.tree"]!)).toEqual({ a: [null, "*"], b: {}, c: { "0": "*" }, d: [] });
    const loaded = loadSafetensors(bytes).tree as Record<string, unknown>;
    expect(Array.isArray(loaded.c)).toBe(false);
    expect(loaded.d).toEqual([]);
    expect(loaded.b).toEqual({});
    expect((loaded.a as unknown[])[0]).toBeNull();
    disposeTree(loaded as Tree<SafetensorsLeaf>);
  });

  test("a flat record with dotted keys (as loaded with { flat: true }) saves and loads back flat", () => {
    using w = tensor([1]);
    using b = tensor([2]);
    const bytes = serializeSafetensors({ "layers.0.weight": w, "layers.0.bias": b });
    expect(openSafetensors(bytes).names).toEqual(["layers.0.bias", "layers.0.weight"]);
    const loaded = loadSafetensors(bytes).tree as Record<string, Tensor>;
    expect(Object.keys(loaded).sort()).toEqual(["layers.0.bias", "layers.0.weight"]);
    expect(loaded["layers.0.weight"]!.toArray()[0]).toBe(1);
    disposeTree(loaded);
  });

  test("names that are both a tensor and a prefix load only flat", () => {
    using w = tensor([1]);
    // Written by hand: our writer cannot produce this, other writers can.
    const bytes = handWritten(
      {
        a: { dtype: "F32", shape: [1], data_offsets: [0, 4] },
        "a.b": { dtype: "F32", shape: [1], data_offsets: [4, 8] },
      },
      8,
    );
    expect(() => loadSafetensors(bytes)).toThrow(
      /"a.b" is both a tensor and a prefix of another: load with \{ flat: true \}/,
    );
    const flat = loadSafetensors(bytes, { flat: true }).tree as Record<string, Tensor>;
    expect(Object.keys(flat).sort()).toEqual(["a", "a.b"]);
    disposeTree(flat);
    expect(w.size).toBe(1);
  });

  test("colliding names, empty keys, __metadata__ and non-tensor leaves are refused and nothing is written", () => {
    using w = tensor([1]);
    const path = join(directory, "refused.safetensors");
    expect(() => saveSafetensors(path, { "a.b": w, a: { b: w } })).toThrow(/Two leaves are both named "a.b"/);
    expect(() => saveSafetensors(path, { "": w })).toThrow(/keys are non-empty/);
    expect(() => saveSafetensors(path, { __metadata__: w })).toThrow(/reserved/);
    expect(() => saveSafetensors(path, { a: 3 as unknown as Tensor })).toThrow(/Leaf "a" is a number/);
    expect(() => saveSafetensors(path, w)).toThrow(/wrap a single tensor/);
    expect(() => saveSafetensors(path, { w }, { n: 1 as unknown as string })).toThrow(/values are strings/);
    const gone = tensor([1]);
    gone.dispose();
    expect(() => saveSafetensors(path, { gone })).toThrow(/disposed/);
    expect(existsSync(path)).toBe(false);
  });

  test("saving over an existing file replaces it atomically and leaves no temporary files", () => {
    const sub = mkdtempSync(join(directory, "atomic-"));
    const path = join(sub, "w.safetensors");
    using one = tensor([1]);
    using two = tensor([2, 3]);
    saveSafetensors(path, { w: one });
    saveSafetensors(path, { w: two });
    const loaded = loadSafetensors(path).tree as { w: Tensor };
    expect([...loaded.w.toArray()]).toEqual([2, 3]);
    loaded.w.dispose();
    expect(require("node:fs").readdirSync(sub)).toEqual(["w.safetensors"]);
  });
});

describe("openSafetensors()", () => {
  test("views of a mapped file are zero-copy and typed by dtype", () => {
    const path = join(directory, "views.safetensors");
    using w = tensor([1, 2, 3], { dtype: "bf16" });
    using x = tensor([0.5, 4], { dtype: "f32" });
    saveSafetensors(path, { w, x, ids: integerTensor(new Int32Array([5, 6])) });
    const file = openSafetensors(path);
    const view = file.view("x") as Float32Array;
    expect(view).toBeInstanceOf(Float32Array);
    expect([...view]).toEqual([0.5, 4]);
    expect(view.buffer).toBe(file.bytes.buffer);
    expect(file.raw("w").buffer).toBe(file.bytes.buffer);
    expect([...(file.view("w") as Uint16Array)]).toEqual([0x3f80, 0x4000, 0x4040]);
    expect([...(file.view("ids") as Int32Array)]).toEqual([5, 6]);
    expect(file.info("w")).toMatchObject({ dtype: "BF16", shape: [3] });
    expect(() => file.info("nope")).toThrow(/has no tensor "nope"/);
    const copy = file.tensor("w") as Tensor;
    expect(copy.dtype).toBe("bfloat16");
    copy.dispose();
  });

  test("a view of an unaligned tensor is a copy with the same values, and raw() stays zero-copy", () => {
    const data = new Uint8Array(9);
    data[0] = 7;
    new DataView(data.buffer).setFloat32(1, 2.5, true);
    data[5] = 0; // 4 more bytes: a second float32 0.
    const bytes = handWritten(
      { a: { dtype: "U8", shape: [1], data_offsets: [0, 1] }, b: { dtype: "F32", shape: [2], data_offsets: [1, 9] } },
      9,
      data,
    );
    const file = openSafetensors(bytes);
    const view = file.view("b") as Float32Array;
    expect([...view]).toEqual([2.5, 0]);
    expect(view.buffer).not.toBe(bytes.buffer);
    expect(file.raw("b").buffer).toBe(bytes.buffer);
    const loaded = loadSafetensors(bytes).tree as { b: Tensor; a: IntegerTensor };
    expect([...loaded.b.toArray()]).toEqual([2.5, 0]);
    expect([...loaded.a.data]).toEqual([7]);
    loaded.b.dispose();
  });
});

/** A file with a hand-written header object (or raw header text) and `dataLength` data bytes. */
function handWritten(header: object | string, dataLength: number, data?: Uint8Array): Uint8Array {
  const text = new TextEncoder().encode(typeof header === "string" ? header : JSON.stringify(header));
  const bytes = new Uint8Array(8 + text.length + dataLength);
  new DataView(bytes.buffer).setBigUint64(0, BigInt(text.length), true);
  bytes.set(text, 8);
  if (data) bytes.set(data, 8 + text.length);
  return bytes;
}

describe("malformed files", () => {
  const entry = (dtype: string, shape: unknown, offsets: unknown) => ({ dtype, shape, data_offsets: offsets });
  const cases: [string, Uint8Array, ErrorConstructor, RegExp][] = [
    ["an empty file", new Uint8Array(0), RangeError, /0 bytes long, shorter than the 8-byte header length/],
    ["a 5-byte file", new Uint8Array(5), RangeError, /truncated or not a safetensors file/],
    [
      "a header length beyond the file",
      (() => {
        const b = handWritten({}, 0);
        b[0] = 200;
        return b;
      })(),
      RangeError,
      /declares a header of 200 bytes but the file has only 2/,
    ],
    [
      "an absurd header length",
      (() => {
        const b = new Uint8Array(16);
        new DataView(b.buffer).setBigUint64(0, 0xffffffffffffff00n, true);
        return b;
      })(),
      RangeError,
      /above the 100000000-byte limit/,
    ],
    ["invalid JSON", handWritten('{"a": {', 0), SyntaxError, /not valid JSON/],
    ["a header not starting with {", handWritten(' {"a":1}', 0), SyntaxError, /does not start with "\{"/],
    ["a JSON array header", handWritten("[1, 2]", 0), SyntaxError, /does not start with/],
    ["invalid UTF-8", handWritten("{}", 0).map((b, i) => (i === 9 ? 0xff : b)), SyntaxError, /not valid UTF-8/],
    [
      "offsets out of order",
      handWritten({ w: entry("F32", [1], [4, 0]) }, 4),
      RangeError,
      /tensor "w" has data_offsets \[4, 0\] out of order/,
    ],
    [
      "offsets beyond the data",
      handWritten({ w: entry("F32", [2], [0, 8]) }, 4),
      RangeError,
      /tensor "w" has data_offsets \[0, 8\] beyond the 4-byte data buffer/,
    ],
    [
      "overlapping tensors",
      handWritten({ a: entry("F32", [2], [0, 8]), b: entry("F32", [1], [4, 8]) }, 8),
      RangeError,
      /tensor "b" at bytes \[4, 8\) overlaps tensor "a"/,
    ],
    [
      "a gap between tensors",
      handWritten({ a: entry("F32", [1], [0, 4]), b: entry("F32", [1], [8, 12]) }, 12),
      RangeError,
      /tensor "b" starts at byte 8, leaving a gap of 4 bytes/,
    ],
    ["trailing bytes", handWritten({ a: entry("F32", [1], [0, 4]) }, 6), RangeError, /2 bytes after the last tensor/],
    ["an unknown dtype", handWritten({ w: entry("F128", [1], [0, 16]) }, 16), TypeError, /tensor "w" has dtype "F128"/],
    [
      "a shape that does not match the bytes",
      handWritten({ w: entry("BF16", [3], [0, 4]) }, 4),
      RangeError,
      /tensor "w" has shape \[3\] of BF16, which needs 6 bytes, but data_offsets \[0, 4\] hold 4/,
    ],
    [
      "an absurd shape",
      handWritten({ w: entry("F32", [2 ** 40, 2 ** 40, 2 ** 40], [0, 4]) }, 4),
      RangeError,
      /tensor "w" has shape .* which needs more than/,
    ],
    [
      "a negative dimension",
      handWritten({ w: entry("F32", [-1], [0, 4]) }, 4),
      TypeError,
      /tensor "w" has shape \[-1\]/,
    ],
    ["a fractional offset", handWritten({ w: entry("F32", [1], [0, 4.5]) }, 4), TypeError, /data_offsets \[0,4.5\]/],
    [
      "a duplicate name",
      handWritten(
        '{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}',
        4,
      ),
      SyntaxError,
      /tensor "w" appears twice in the header/,
    ],
    [
      "metadata that is not strings",
      handWritten({ __metadata__: { a: 1 } }, 0),
      TypeError,
      /__metadata__ entry "a" is a number/,
    ],
    ["an entry that is not an object", handWritten({ w: 5 }, 0), TypeError, /tensor "w" is not an object/],
  ];

  for (const [what, bytes, kind, message] of cases) {
    test(`a file with ${what} is refused with a ${kind.name} that says so`, () => {
      for (const load of [() => loadSafetensors(bytes), () => openSafetensors(bytes)]) {
        let thrown: unknown;
        try {
          load();
        } catch (error) {
          thrown = error;
        }
        expect(thrown).toBeInstanceOf(kind);
        expect((thrown as Error).message).toMatch(message);
      }
    });
  }

  test("a malformed file on disk names its path in the error", () => {
    const path = join(directory, "bad.safetensors");
    writeFileSync(path, handWritten({ w: entry("F32", [1], [0, 4]) }, 2));
    expect(() => loadSafetensors(path)).toThrow(
      new RegExp(`${path.replaceAll("/", "\\/")}.*beyond the 2-byte data buffer`),
    );
    writeFileSync(path, new Uint8Array(3));
    expect(() => loadSafetensors(path)).toThrow(/3 bytes long/);
  });
});

describe("fuzzing the loader", () => {
  const ALLOWED = [TypeError, RangeError, SyntaxError];

  function loadsOrRefuses(bytes: Uint8Array): void {
    try {
      const { tree } = loadSafetensors(bytes, { flat: true });
      for (const leaf of treeLeaves(tree)) {
        // Whatever loaded is consistent: the elements fit the shape.
        expect(leaf.shape.reduce((a, b) => a * b, 1)).toBe(leaf.data.length);
        if (leaf instanceof Tensor) leaf.dispose();
      }
    } catch (error) {
      if (!ALLOWED.some((kind) => error instanceof kind)) throw error;
    }
  }

  const valid = (() => {
    using a = tensor([1, 2, 3, 4], { dtype: "bf16", shape: [2, 2] });
    using b = tensor([5], { dtype: "f32" });
    using c = tensor([1, 2], { dtype: "e5m2" });
    return serializeSafetensors(
      { layers: [{ a, b }, { c }], ids: integerTensor(new Int32Array([1, 2, 3])) },
      { format: "pt" },
    );
  })();

  test("random byte mutations of a valid file load consistently or throw a TypeError, RangeError or SyntaxError", () => {
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.nat({ max: valid.length - 1 }), fc.nat({ max: 255 })), { minLength: 1, maxLength: 8 }),
        fc.nat({ max: valid.length }),
        (edits, cut) => {
          const bytes = valid.slice(0, Math.max(cut, 1) === 1 ? valid.length : cut);
          for (const [at, value] of edits) if (at < bytes.length) bytes[at] = value;
          loadsOrRefuses(bytes);
        },
      ),
      { numRuns: 2000 },
    );
  });

  test("mutated header text (digits, brackets, quotes) loads consistently or throws a standard error", () => {
    const length = Number(new DataView(valid.buffer).getBigUint64(0, true));
    const header = new TextDecoder().decode(valid.subarray(8, 8 + length));
    const data = valid.subarray(8 + length);
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.nat({ max: header.length - 1 }), fc.constantFrom(...'0123456789[]{},:"-. eE')), {
          minLength: 1,
          maxLength: 4,
        }),
        (edits) => {
          const chars = [...header];
          for (const [at, c] of edits) chars[at] = c;
          loadsOrRefuses(handWritten(chars.join(""), data.length, data));
        },
      ),
      { numRuns: 2000 },
    );
  });

  test("random bytes with a plausible length prefix never crash the loader", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), fc.nat({ max: 400 }), (body, length) => {
        const bytes = new Uint8Array(8 + body.length);
        new DataView(bytes.buffer).setBigUint64(0, BigInt(length), true);
        bytes.set(body, 8);
        loadsOrRefuses(bytes);
        loadsOrRefuses(body);
      }),
      { numRuns: 2000 },
    );
  });
});

describe("interop with the Python safetensors package", () => {
  test.skipIf(!PYTHON)(
    "files the Python package writes load here bit for bit, every dtype",
    () => {
      for (const seed of [1, 2]) {
        const path = join(directory, `python_${seed}.safetensors`);
        python("write", path, String(seed));
        const truth = JSON.parse(python("read", path)) as {
          metadata: Record<string, string>;
          tensors: Record<string, { dtype: SafetensorsDtype; shape: number[]; hex: string }>;
        };
        const { tree, metadata } = loadSafetensors(path);
        expect(metadata).toEqual(truth.metadata);
        const layers = (tree as { model: { layers: Record<string, SafetensorsLeaf>[] } }).model.layers;
        expect(layers.length).toBe(9);
        for (const [name, expected] of Object.entries(truth.tensors)) {
          const [, , index, key] = name.split(".");
          const leaf = layers[Number(index)]![key!]!;
          expect(codeOf(leaf)).toBe(expected.dtype);
          expect([...leaf.shape]).toEqual(expected.shape);
          expect(Buffer.from(bytesOf(leaf)).toString("hex")).toBe(expected.hex);
        }
        disposeTree(tree);
      }
    },
    60_000,
  );

  test.skipIf(!PYTHON)(
    "files written here load bit for bit in Python, and Python rewrites them byte-identically",
    () => {
      const sample = fc.sample(fc.tuple(...ALL_DTYPES.map(() => leafArbitrary)), { numRuns: 3, seed: 7 });
      sample.forEach((specs, run) => {
        // One tensor of every dtype, with a sampled shape and pseudo-random bits.
        const tree: Record<string, SafetensorsLeaf> = {};
        for (const [i, dtype] of ALL_DTYPES.entries()) {
          const shape = specs[i]!.shape;
          const count = shape.reduce((a, b) => a * b, 1);
          const bytes = new Uint8Array(count * SAFETENSORS_DTYPES[dtype].bytes).map(
            (_, k) => (k * 37 + run * 11 + i) & 0xff,
          );
          tree[`t${i}_${dtype.toLowerCase()}`] = leafOf(dtype, shape, bytes);
        }
        const path = join(directory, `ours_${run}.safetensors`);
        saveSafetensors(path, tree, { format: "np" });
        const seen = JSON.parse(python("read", path)) as {
          metadata: Record<string, string>;
          tensors: Record<string, { dtype: string; shape: number[]; hex: string; numpy?: boolean }>;
        };
        expect(seen.metadata).toEqual({ format: "np" });
        expect(Object.keys(seen.tensors).sort()).toEqual(Object.keys(tree).sort());
        for (const [name, leaf] of Object.entries(tree)) {
          const got = seen.tensors[name]!;
          expect(got.dtype).toBe(codeOf(leaf));
          expect(got.shape).toEqual([...leaf.shape]);
          expect(got.hex).toBe(Buffer.from(bytesOf(leaf)).toString("hex"));
        }
        const rewritten = join(directory, `ours_${run}_python.safetensors`);
        python("rewrite", path, rewritten);
        expect(Buffer.from(readFileSync(rewritten)).equals(Buffer.from(readFileSync(path)))).toBe(true);
        disposeTree(tree);
      });
    },
    60_000,
  );
});
