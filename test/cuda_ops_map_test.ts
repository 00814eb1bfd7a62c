/**
 * The elementwise and layout families on cuda tensors (src/backend/cuda/map.ts,
 * zig/src/cuda/ops_map.zig) through the public ops: storage (zeros, copies, the casts autocast and
 * the tape insert), strided copies (transpose, slice, concat, reshape), the activations and
 * swiglu, and the broadcast map engine (add/sub/mul/div with broadcasting and numbers, their
 * gradients, sum and mean over axes). Every op runs forward and backward (valueAndGrad) on a cuda
 * tensor and on a CPU tensor in float32, float16 and bfloat16, and the values and gradients must
 * have the same bits; results stay on the device.
 *
 * It runs where CUDA is available, the fake driver included (MIXPREC_LIBCUDA, where each kernel is
 * emulated by its CPU twin: then it checks the plumbing — launch arguments, struct parameters,
 * dtype and op codes, output placement, that no op waits for the device — not the PTX); elsewhere
 * it is skipped with one line saying why. MIXPREC_DEVICE=cpu turns it off.
 */

import { describe, expect, test } from "bun:test";
import { cudaAvailability, cudaDevices, cudaSyncCount } from "../src/backend/cuda.ts";
import { type DtypeName, ops, type StorageArray, type Tensor, tensor, valueAndGrad, zeros } from "../src/mod.ts";

const availability = cudaAvailability();
const gpu = availability.available && (process.env.MIXPREC_DEVICE ?? "") !== "cpu";
if (!gpu) {
  const why = availability.available ? "MIXPREC_DEVICE=cpu" : availability.reason;
  console.log(`CUDA elementwise/layout suites skipped (${why}); they run where CUDA (or the fake driver) is available`);
}
const device = "cuda:0";
if (gpu && cudaDevices()[0]!.name.includes("fake")) {
  console.log("CUDA elementwise/layout suites run against the fake driver: they check the plumbing, not the PTX");
}

const DTYPES: readonly DtypeName[] = ["float32", "float16", "bfloat16"];

/** Deterministic values in [low, high). */
function values(count: number, seed: number, low = -3, high = 3): Float32Array {
  const out = new Float32Array(count);
  let state = seed >>> 0;
  for (let i = 0; i < count; i++) {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    out[i] = low + ((state >>> 8) / (1 << 24)) * (high - low);
  }
  return out;
}

function sizeOf(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

function rawBits(array: StorageArray): ArrayLike<number> {
  return array instanceof Float32Array ? new Uint32Array(array.buffer, array.byteOffset, array.length) : array;
}

/** Expects the device tensor to hold the CPU tensor's dtype, shape and bits; names the first difference. */
function expectSameBits(actual: Tensor, expected: Tensor, what: string): void {
  expect(actual.device).toBe(device);
  expect(expected.device).toBe("cpu");
  expect(`${what}: ${actual.dtype} [${actual.shape.join(", ")}]`).toBe(
    `${what}: ${expected.dtype} [${expected.shape.join(", ")}]`,
  );
  const [a, e] = [rawBits(actual.bits()), rawBits(expected.bits())];
  let i = 0;
  while (i < Math.min(a.length, e.length) && a[i] === e[i]) i++;
  const hex = (x: number | undefined) => (x === undefined ? "none" : `0x${x.toString(16)}`);
  expect(`${what}: element ${i} of ${a.length}: ${hex(a[i])}`).toBe(
    `${what}: element ${i} of ${e.length}: ${hex(e[i])}`,
  );
}

type Inputs = Record<string, { shape: number[]; data: Float32Array; dtype?: DtypeName }>;
type Params = Record<string, Tensor>;

/**
 * Runs `fn` on the inputs on the CPU and on the device: the forward result must have the same bits
 * (and live on the device), and so must the loss sum(fn(p) * w) for a fixed w and every input's
 * gradient (the gradient reaching `fn` is w, not all ones, so every backward sees varied values).
 */
function compare(what: string, dtype: DtypeName, inputs: Inputs, fn: (p: Params) => Tensor): void {
  const make = (where: "cpu" | typeof device): Params =>
    Object.fromEntries(
      Object.entries(inputs).map(([name, input]) => [
        name,
        tensor(input.data, { shape: input.shape, dtype: input.dtype ?? dtype }).to(where),
      ]),
    );
  const [host, dev] = [make("cpu"), make(device)];
  const yHost = fn(host);
  const yDev = fn(dev);
  expectSameBits(yDev, yHost, `${what} forward`);
  const weight = values(yHost.size, 99, -1, 1);
  const wHost = tensor(weight, { shape: [...yHost.shape], dtype: yHost.dtype });
  const wDev = wHost.to(device);
  const loss = (w: Tensor) => (p: Params) => ops.sum(ops.mul(fn(p), w));
  const [valueHost, gradsHost] = valueAndGrad(loss(wHost))(host);
  const [valueDev, gradsDev] = valueAndGrad(loss(wDev))(dev);
  expect(Object.is(valueDev, valueHost) ? "same" : `${valueDev} vs ${valueHost}`).toBe("same");
  for (const name of Object.keys(inputs)) expectSameBits(gradsDev[name]!, gradsHost[name]!, `${what} d${name}`);
}

function input(shape: number[], seed: number, low = -3, high = 3, dtype?: DtypeName) {
  return { shape, data: values(sizeOf(shape), seed, low, high), ...(dtype !== undefined ? { dtype } : {}) };
}

describe.skipIf(!gpu)("storage on the device", () => {
  for (const dtype of DTYPES) {
    test(`zeros, copies and every cast between the op dtypes match the CPU (${dtype})`, () => {
      const z = zeros([3, 5], { dtype, device });
      expectSameBits(z, zeros([3, 5], { dtype }), "zeros");
      const data = values(77, 3, -70000, 70000);
      const host = tensor(data, { dtype });
      const dev = tensor(data, { dtype, device });
      expectSameBits(dev, host, "upload");
      expectSameBits(dev.clone(), host.clone(), "clone");
      for (const to of DTYPES) expectSameBits(dev.to(to), host.to(to), `cast to ${to}`);
    });

    test(`the casts autocast inserts run forward and backward on the device (${dtype})`, () => {
      const other: DtypeName = dtype === "float32" ? "bfloat16" : "float32";
      compare("mixed-dtype add", dtype, { a: input([4, 6], 1), b: input([4, 6], 2, -3, 3, other) }, (p) =>
        ops.add(p.a!, p.b!),
      );
    });
  }
});

describe.skipIf(!gpu)("strided copies on the device", () => {
  for (const dtype of DTYPES) {
    test(`transpose, slice, concat and reshape forward and backward (${dtype})`, () => {
      compare("transpose", dtype, { x: input([2, 3, 4, 5], 4) }, (p) => ops.transpose(p.x!, [2, 0, 3, 1]));
      compare("transpose last two", dtype, { x: input([3, 7, 5], 5) }, (p) => ops.transpose(p.x!));
      compare("slice", dtype, { x: input([6, 9], 6) }, (p) => ops.slice(p.x!, [1, 2], [5, 8]));
      compare("concat", dtype, { a: input([2, 3, 4], 7), b: input([2, 5, 4], 8) }, (p) => ops.concat([p.a!, p.b!], 1));
      compare("reshape of a transpose", dtype, { x: input([4, 6], 9) }, (p) =>
        ops.reshape(ops.transpose(p.x!), [3, 8]),
      );
    });
  }
});

const ACTIVATIONS: readonly [string, (x: Tensor) => Tensor, number, number][] = [
  ["relu", ops.relu, -3, 3],
  ["tanh", ops.tanh, -6, 6],
  ["silu", ops.silu, -8, 8],
  ["exp", ops.exp, -5, 5],
  ["log", ops.log, 0.01, 20],
  ["gelu", (x) => ops.gelu(x), -5, 5],
  ["gelu tanh", (x) => ops.gelu(x, { approximate: "tanh" }), -5, 5],
  ["erf", (x) => ops.erf(x), -4, 4],
];

describe.skipIf(!gpu)("activations and swiglu on the device", () => {
  for (const dtype of DTYPES) {
    test(`every activation forward and backward (${dtype})`, () => {
      for (const [name, fn, low, high] of ACTIVATIONS) {
        compare(name, dtype, { x: input([5, 67], 10, low, high) }, (p) => fn(p.x!));
      }
    });

    test(`swiglu forward and backward (${dtype})`, () => {
      compare("swiglu", dtype, { a: input([3, 45], 11, -6, 6), b: input([3, 45], 12) }, (p) => ops.swiglu(p.a!, p.b!));
    });
  }
});

describe.skipIf(!gpu)("the map engine on the device", () => {
  for (const dtype of DTYPES) {
    test(`add, sub, mul and div with broadcasting and their reduced gradients (${dtype})`, () => {
      const shapes: [number[], number[]][] = [
        [
          [4, 1, 5],
          [3, 5],
        ],
        [[2, 3, 4], [4]],
        [[1], [3, 2]],
        [
          [7, 9],
          [7, 9],
        ],
      ];
      for (const [sa, sb] of shapes) {
        const inputs = { a: input(sa, 13), b: input(sb, 14, 0.5, 3) };
        compare(`add ${sa} ${sb}`, dtype, inputs, (p) => ops.add(p.a!, p.b!));
        compare(`sub ${sa} ${sb}`, dtype, inputs, (p) => ops.sub(p.a!, p.b!));
        compare(`mul ${sa} ${sb}`, dtype, inputs, (p) => ops.mul(p.a!, p.b!));
        compare(`div ${sa} ${sb}`, dtype, inputs, (p) => ops.div(p.a!, p.b!));
      }
    });

    test(`number operands on either side, and scale (${dtype})`, () => {
      const inputs = { x: input([6, 5], 15, 0.5, 4) };
      compare("x + 2.5", dtype, inputs, (p) => ops.add(p.x!, 2.5));
      compare("1 - x", dtype, inputs, (p) => ops.sub(1, p.x!));
      compare("x * -0.3", dtype, inputs, (p) => ops.mul(p.x!, -0.3));
      compare("3 / x", dtype, inputs, (p) => ops.div(3, p.x!));
      compare("scale", dtype, inputs, (p) => ops.scale(p.x!, 0.7));
      // x used twice: the tape accumulates its two gradients on the device (addSame).
      compare("x * x + x", dtype, inputs, (p) => ops.add(ops.mul(p.x!, p.x!), p.x!));
    });

    test(`sum and mean over axes, with and without kept dimensions (${dtype})`, () => {
      const inputs = { x: input([3, 4, 5, 6], 16) };
      compare("sum all", dtype, inputs, (p) => ops.sum(p.x!));
      compare("sum axis 1", dtype, inputs, (p) => ops.sum(p.x!, { axis: 1 }));
      compare("sum axes 0, 2 kept", dtype, inputs, (p) => ops.sum(p.x!, { axis: [0, 2], keepDims: true }));
      compare("mean axis -1", dtype, inputs, (p) => ops.mean(p.x!, { axis: -1 }));
      compare("mean axes 1, 3", dtype, inputs, (p) => ops.mean(p.x!, { axis: [1, 3] }));
    });

    test(`a long reduction split into the CPU's chunks (${dtype})`, () => {
      // 2 x 70000 terms into 3 targets of one tile: the engine sums fixed chunks and combines them.
      compare("mean axis 0 of [140000, 3]", dtype, { x: input([140000, 3], 17) }, (p) => ops.mean(p.x!, { axis: 0 }));
      compare("sum of [300001]", dtype, { x: input([300001], 18) }, (p) => ops.sum(p.x!));
    });
  }

  test("an op on cuda tensors queues its kernels without waiting for the device", () => {
    const x = tensor(values(64, 19), { shape: [8, 8], device });
    const b = tensor(values(8, 20), { shape: [8], device });
    const before = cudaSyncCount();
    const y = ops.sum(ops.gelu(ops.transpose(ops.add(ops.mul(x, b), 1))), { axis: 0 });
    expect(cudaSyncCount()).toBe(before);
    expect(y.device).toBe(device);
  });
});

describe.skipIf(!gpu)("cpu and cuda operands together", () => {
  test("give the library's TypeError naming both devices, for every op family here", () => {
    const host = tensor(values(6, 21), { shape: [2, 3] });
    const dev = host.to(device);
    const cases: [string, () => unknown][] = [
      ["add", () => ops.add(host, dev)],
      ["mul", () => ops.mul(dev, host)],
      ["swiglu", () => ops.swiglu(host, dev)],
      ["concat", () => ops.concat([dev, host])],
    ];
    for (const [name, run] of cases) {
      let error: unknown;
      try {
        run();
      } catch (e) {
        error = e;
      }
      expect(`${name}: ${error instanceof TypeError}`).toBe(`${name}: true`);
      const message = (error as Error).message;
      expect(`${name}: ${message.includes("cpu") && message.includes(device)}`).toBe(`${name}: true`);
    }
  });
});
