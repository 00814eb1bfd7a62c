/**
 * The CUDA backend. Two halves:
 * - without a driver (every machine without an NVIDIA GPU): CUDA is reported unavailable with the
 *   reason and the fix, and nothing throws except an explicit request for a cuda device;
 * - with a device: the GPU property suites (casts bit for bit against the CPU for both roundings,
 *   unscale flags and values against the CPU, the loss-scale update against a TypeScript
 *   reference, the global norm, and a training step that never waits for the device).
 * The GPU half runs where CUDA is available (MIXPREC_DEVICE=cpu turns it off); elsewhere it is
 * skipped with one printed line saying why. `make test-cuda` runs this file with MIXPREC_DEVICE=cuda.
 */

import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import {
  cudaAlloc,
  cudaAvailability,
  cudaClipByNorm,
  cudaCopyToDevice,
  cudaCopyToHost,
  cudaDeviceCount,
  cudaDevices,
  cudaFill32,
  cudaFree,
  cudaFusedAdamW,
  cudaGlobalNorm,
  cudaMemoryStats,
  cudaScale,
  cudaSyncCount,
  cudaSynchronize,
  cudaTable,
  cudaUnscaleCheck,
  cudaUpdateScale,
  requireCuda,
} from "../src/backend/cuda.ts";
import { toF32Bits } from "../src/_numerics.ts";
import { allocateStorage } from "../src/dtype.ts";
import { gradientTable } from "../src/unscale.ts";
import { type AdamHyper, type AdamRowTensors, fusedAdamWStep, sumSquares } from "../src/optim/_native.ts";
import { adamConstants } from "../src/optim/scale_by_adam.ts";
import {
  cast,
  DTYPE_NAMES,
  type DtypeName,
  fusedAdamW,
  fusedSgd,
  GradScaler,
  devices,
  dtypeInfo,
  MixprecError,
  type StorageArray,
  Tensor,
  tensor,
  unscaleAndCheck,
  zeros,
} from "../src/mod.ts";

const availability = cudaAvailability();
const requested = process.env.MIXPREC_DEVICE ?? "";
const gpu = availability.available && requested !== "cpu";
if (!gpu) {
  const why = availability.available ? "MIXPREC_DEVICE=cpu" : availability.reason;
  console.log(`CUDA suites skipped (${why}); they run on a machine with an NVIDIA GPU (make test-cuda)`);
}
const device = "cuda:0";
const fakeDriver = gpu && cudaDevices()[0]!.name.includes("fake");
if (fakeDriver) {
  console.log(
    "CUDA suites run against the fake driver (zig/src/cuda_fake.zig): they check the plumbing, not the PTX kernels",
  );
}

/** Special float32 bit patterns mixed into every property. */
const SPECIAL_F32 = [
  0x00000000, 0x80000000, 0x7f800000, 0xff800000, 0x7fc00000, 0xffc00000, 0x7f800001, 0xff800001, 0x7fffffff,
  0x00000001, 0x807fffff, 0x007fffff, 0x00800000, 0x7f7fffff, 0x7f7f8000, 0x7f7f7fff, 0x477fefff, 0x477ff000,
  0x33000000, 0x33000001, 0x43e80000, 0x43e80001, 0x47700000, 0x3f808000, 0x3f818000, 0x387fffff,
];

function randomBits(dtype: DtypeName, count: number, seed: number): StorageArray {
  const bits = dtypeInfo(dtype).bits;
  const storage = allocateStorage(dtype, count);
  const raw = storage instanceof Float32Array ? new Uint32Array(storage.buffer) : storage;
  let state = seed >>> 0;
  for (let i = 0; i < count; i++) {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    const special = bits === 32 && i % 17 === 3;
    raw[i] = special ? SPECIAL_F32[(i >>> 4) % SPECIAL_F32.length]! : bits === 32 ? state : state >>> (32 - bits);
  }
  return storage;
}

/** Whether two storage arrays hold the same bytes (fast for millions of elements). */
function sameBytes(a: StorageArray, b: StorageArray): boolean {
  const view = (x: StorageArray) => Buffer.from(x.buffer, x.byteOffset, x.byteLength);
  return a.length === b.length && view(a).equals(view(b));
}

function rawBits(array: StorageArray): ArrayLike<number> {
  if (array instanceof Float32Array) return new Uint32Array(array.buffer, array.byteOffset, array.length);
  return array;
}

/**
 * Expects equal bits; on a mismatch names the first differing element and both bit patterns. With
 * `nanDtype`, two NaNs of that dtype count as equal whatever their sign and payload: arithmetic on
 * NaN gives the input NaN quieted on x86 but the canonical NaN 0x7FFFFFFF on NVIDIA GPUs, so
 * kernels that multiply (unscale, scale, clip) agree on NaN-ness, not NaN bits. Casts use integer
 * code only and must match NaN bits too.
 */
function expectSameBits(actual: StorageArray, expected: StorageArray, nanDtype?: DtypeName): void {
  if (sameBytes(actual, expected)) return;
  const [a, e] = [rawBits(actual), rawBits(expected)];
  const isNaN = (bits: number) => nanDtype !== undefined && (toF32Bits(nanDtype, bits) & 0x7fffffff) >>> 0 > 0x7f800000;
  let i = 0;
  while (i < Math.min(a.length, e.length) && (a[i] === e[i] || (isNaN(a[i]!) && isNaN(e[i]!)))) i++;
  if (i === a.length && a.length === e.length) return;
  const hex = (x: number | undefined) => (x === undefined ? "none" : `0x${x.toString(16)}`);
  expect(`element ${i} of ${a.length}: ${hex(a[i])}`).toBe(`element ${i} of ${e.length}: ${hex(e[i])}`);
}

/** Device tensor from raw bits. */
function onDevice(dtype: DtypeName, bits: StorageArray): Tensor {
  const result = new Tensor(dtype, [bits.length], device);
  cudaCopyToDevice(0, result.address, bits);
  return result;
}

/** PyTorch's _amp_update_scale_, from shared/REFERENCE.md: the float32 scale times the full-precision factor, rounded once. */
function referenceUpdateScale(
  state: { scale: number; tracker: number },
  foundInf: boolean,
  growth: number,
  backoff: number,
  interval: number,
): { scale: number; tracker: number } {
  if (foundInf) return { scale: Math.fround(state.scale * backoff), tracker: 0 };
  const successful = state.tracker + 1;
  if (successful !== interval) return { scale: state.scale, tracker: successful };
  const grown = Math.fround(state.scale * growth);
  return { scale: Number.isFinite(grown) ? grown : state.scale, tracker: 0 };
}

describe("without an NVIDIA driver", () => {
  const skip = availability.available;

  test.skipIf(skip)("cudaAvailability() says libcuda.so.1 is missing and names device cpu as the fix", () => {
    expect(availability.available).toBe(false);
    const reason = (availability as { reason: string }).reason;
    expect(reason).toContain("libcuda.so.1 not found");
    expect(reason).toContain('use device "cpu"');
  });

  test.skipIf(skip)("cudaDevices() is empty and cudaDeviceCount() is 0, without throwing", () => {
    expect(cudaDevices()).toEqual([]);
    expect(cudaDeviceCount()).toBe(0);
  });

  test.skipIf(skip)("devices() lists only the CPU, without throwing", () => {
    expect(devices().map((d) => d.name)).toEqual(["cpu"]);
  });

  test.skipIf(skip)("asking for cuda:0 throws MixprecError cuda_unavailable with the reason and the fix", () => {
    const attempts: (() => unknown)[] = [
      () => zeros([2], { device: "cuda:0" }),
      () => tensor([1, 2], { device: "cuda:0" }),
      () => tensor([1, 2]).to("cuda:0"),
      () => requireCuda("cuda"),
    ];
    for (const attempt of attempts) {
      let caught: unknown;
      try {
        attempt();
      } catch (error) {
        caught = error;
      }
      expect(caught).toBeInstanceOf(MixprecError);
      expect((caught as MixprecError).code).toBe("cuda_unavailable");
      expect((caught as MixprecError).message).toContain("libcuda.so.1 not found: this machine has no NVIDIA driver");
      expect((caught as MixprecError).message).toContain('use device "cpu"');
    }
  });

  test("an unknown device name throws TypeError listing the valid ones", () => {
    expect(() => zeros([1], { device: "gpu" as never })).toThrow(TypeError);
    expect(() => zeros([1], { device: "cuda:x" as never })).toThrow('use "cpu" or "cuda:N"');
  });

  test("CPU tensors work whether or not CUDA is there", () => {
    using t = tensor([1, -2, 3], { dtype: "bf16" });
    using back = t.to("cpu");
    expect([...back.toArray()]).toEqual([1, -2, 3]);
  });
});

describe("CUDA devices", () => {
  test.skipIf(!gpu)("cudaDevices() lists every device with compute capability, memory, bf16 and fp8", () => {
    const devices = cudaDevices();
    expect(devices.length).toBeGreaterThan(0);
    for (const [i, d] of devices.entries()) {
      expect(d.device).toBe(`cuda:${i}`);
      expect(d.name.length).toBeGreaterThan(0);
      expect(d.computeCapability).toBe(`${d.computeMajor}.${d.computeMinor}`);
      expect(d.totalMemoryBytes).toBeGreaterThan(1 << 30);
      expect(d.multiprocessorCount).toBeGreaterThan(0);
      expect(d.bf16).toBe(d.computeMajor >= 8);
      expect(d.fp8).toBe(d.computeMajor * 10 + d.computeMinor >= 89);
    }
  });

  test.skipIf(!gpu)("devices() lists the CPU, then every cuda:N with its capabilities", () => {
    const listed = devices();
    expect(listed[0]!.name).toBe("cpu");
    const cudaEntries = listed.filter((d) => d.kind === "cuda");
    expect(cudaEntries.map((d) => d.name)).toEqual(cudaDevices().map((d) => d.device));
    for (const [i, entry] of cudaEntries.entries()) {
      const properties = cudaDevices()[i]!;
      if (entry.kind !== "cuda") throw new Error("not a cuda entry");
      expect(entry.computeCapability).toEqual([properties.computeMajor, properties.computeMinor]);
      expect(entry.bf16).toBe(properties.bf16);
      expect(entry.fp8).toBe(properties.fp8);
      expect(entry.memoryBytes).toBe(properties.totalMemoryBytes);
      expect(entry.model).toBe(properties.name);
    }
  });

  test.skipIf(!gpu)("a device that does not exist throws RangeError naming the devices there are", () => {
    expect(() => zeros([1], { device: "cuda:99" })).toThrow(RangeError);
  });
});

describe("device tensors", () => {
  test.skipIf(!gpu)("to(cuda) and back keeps every bit of every dtype, for empty, odd and multi-chunk sizes", () => {
    for (const dtype of DTYPE_NAMES) {
      for (const count of [0, 1, 7, 4099, (5 << 20) + 3]) {
        const bits = randomBits(dtype, count, count + 1);
        using source = new Tensor(dtype, [count], "cpu");
        source.data.set(bits);
        using gpuTensor = source.to(device);
        expect(gpuTensor.device).toBe(device);
        using back = gpuTensor.to("cpu");
        expectSameBits(back.data, bits);
      }
    }
  });

  test.skipIf(!gpu)("data on a cuda tensor throws TypeError telling to call .to('cpu') or toArray()", () => {
    using t = tensor([1, 2, 3], { device });
    expect(() => t.data).toThrow(TypeError);
    expect(() => t.data).toThrow('.to("cpu")');
    expect([...t.toArray()]).toEqual([1, 2, 3]);
    using c = t.clone();
    using r = c.reshape([3, 1]);
    expect([...r.toArray()]).toEqual([1, 2, 3]);
  });

  test.skipIf(!gpu)("zeros, ones and full on the device hold what they do on the CPU", () => {
    for (const dtype of DTYPE_NAMES) {
      using z = zeros([5], { dtype, device });
      expect([...z.toArray()]).toEqual([0, 0, 0, 0, 0]);
      using o = tensor([0.5, 0.5, 0.5], { dtype, device });
      expect([...o.toArray()]).toEqual([0.5, 0.5, 0.5]);
    }
  });

  test.skipIf(!gpu)("disposed device tensors return their memory to the cache", () => {
    const before = cudaMemoryStats(0).liveBytes;
    const t = zeros([1 << 20], { device });
    expect(cudaMemoryStats(0).liveBytes).toBe(before + (4 << 20));
    t.dispose();
    expect(cudaMemoryStats(0).liveBytes).toBe(before);
    expect(() => cudaFree(0, 12345)).toThrow(MixprecError);
  });
});

describe("device casts equal the CPU bit for bit", () => {
  const pairs = DTYPE_NAMES.flatMap((from) => DTYPE_NAMES.map((to) => [from, to] as const));
  for (const [from, to] of pairs) {
    test.skipIf(!gpu)(`${from} -> ${to}, nearest even (and saturating for fp8 targets)`, () => {
      for (const count of [1, 255, 257, (1 << 20) + 7]) {
        const bits = randomBits(from, count, count * 31 + 5);
        using source = onDevice(from, bits);
        const fp8 = to === "float8_e4m3fn" || to === "float8_e5m2";
        for (const saturate of fp8 ? [false, true] : [false]) {
          using result = source.to(to, { saturate });
          // to() the same dtype is a copy, options or not (as on the CPU).
          const expected = from === to ? bits : cast(bits, from, to, { saturate });
          expectSameBits(result.bits(), expected);
        }
      }
    });
  }

  test.skipIf(!gpu)("stochastic rounding to float16 and bfloat16 gives the CPU's bits for any seed", () => {
    fc.assert(
      fc.property(fc.nat({ max: 0xffffffff }), fc.integer({ min: 1, max: 300_000 }), (seed, count) => {
        const bits = randomBits("float32", count, seed);
        using source = onDevice("float32", bits);
        for (const to of ["float16", "bfloat16"] as const) {
          using result = source.to(to, { rounding: "stochastic", seed });
          expectSameBits(result.bits(), cast(bits, "float32", to, { rounding: "stochastic", seed }));
        }
      }),
      { numRuns: 20 },
    );
  });
});

describe("device unscale", () => {
  const gradDtypes = ["float32", "float16", "bfloat16"] as const;

  function gradients(seed: number, poison: boolean): { dtype: DtypeName; bits: StorageArray }[] {
    return [0, 1, 2, 3, 4].map((i) => {
      const dtype = gradDtypes[(seed + i) % 3]!;
      const count = [0, 1, 33, 1000, 70_001][(seed + i) % 5]!;
      const values = new Float32Array(count).map((_, j) => Math.sin(seed * 7 + i * 13 + j) * 3e4);
      if (poison && i === 4 && count > 0) values[count - 1] = Number.NaN;
      return { dtype, bits: dtype === "float32" ? values : cast(values, "float32", dtype) };
    });
  }

  test.skipIf(!gpu)("unscaleAndCheck() on cuda tensors equals the CPU: flags and every bit", () => {
    fc.assert(
      fc.property(
        fc.nat({ max: 1000 }),
        fc.boolean(),
        fc.constantFrom(1, 1 / 65536, 0.5, 3e-5),
        (seed, poison, inv) => {
          const grads = gradients(seed, poison);
          const host = grads.map((g) => ({ dtype: g.dtype, data: g.bits.slice() }));
          const tensors = grads.map((g) => onDevice(g.dtype, g.bits));
          try {
            const expected = unscaleAndCheck(host, inv);
            expect(unscaleAndCheck(tensors, inv)).toBe(expected);
            tensors.forEach((t, i) => expectSameBits(t.bits(), host[i]!.data, t.dtype));
          } finally {
            for (const t of tensors) t.dispose();
          }
        },
      ),
      { numRuns: 30 },
    );
  });

  test.skipIf(!gpu)(
    "gradients on two places in one call throw TypeError, and a host table refuses device memory",
    () => {
      using onGpu = tensor([1, 2], { device });
      using onCpu = tensor([1, 2]);
      expect(() => unscaleAndCheck([onGpu, onCpu], 0.5)).toThrow("unscale the gradients of one device per call");
      expect(() => gradientTable([onGpu], "test")).toThrow('move it with .to("cpu")');
      expect([...onCpu.toArray()]).toEqual([1, 2]);
      expect([...onGpu.toArray()]).toEqual([1, 2]);
    },
  );

  test.skipIf(!gpu)(
    "a device-resident scale unscales by float32(1 / float64(scale)) and the flag only ever sets",
    () => {
      const grads = gradients(3, false);
      const tensors = grads.map((g) => onDevice(g.dtype, g.bits));
      const scale = Math.fround(3 * 2 ** 14);
      const scaleAddress = cudaAlloc(0, 4);
      const found = cudaAlloc(0, 4);
      try {
        cudaCopyToDevice(0, scaleAddress, new Float32Array([scale]));
        cudaFill32(0, found, 1, 1); // Already set: a clean unscale must leave it set.
        using table = cudaTable(
          0,
          tensors.map((t) => ({ address: t.address, count: t.size, dtypeCode: dtypeInfo(t.dtype).code })),
        );
        cudaUnscaleCheck(table, { scaleAddress }, found);
        const flag = new Uint32Array(1);
        cudaCopyToHost(0, flag, found);
        expect(flag[0]).toBe(1);
        const host = grads.map((g) => ({ dtype: g.dtype, data: g.bits.slice() }));
        unscaleAndCheck(host, Math.fround(1 / scale));
        tensors.forEach((t, i) => expectSameBits(t.bits(), host[i]!.data, t.dtype));
      } finally {
        cudaFree(0, scaleAddress);
        cudaFree(0, found);
        for (const t of tensors) t.dispose();
      }
    },
  );
});

describe("device loss-scale update", () => {
  test.skipIf(!gpu)("equals the TypeScript reference step by step, growth, backoff and refused growth included", () => {
    fc.assert(
      fc.property(
        fc.array(fc.boolean(), { minLength: 1, maxLength: 60 }),
        fc.constantFrom(1, 2, 3, 7),
        fc.constantFrom(2 ** 16, 2 ** 127, 1, 2 ** -140),
        (overflows, interval, initial) => {
          const state = cudaAlloc(0, 8);
          const found = cudaAlloc(0, 4);
          try {
            const init = new ArrayBuffer(8);
            new Float32Array(init, 0, 1)[0] = initial;
            cudaCopyToDevice(0, state, new Uint8Array(init));
            let expected = { scale: Math.fround(initial), tracker: 0 };
            for (const overflow of overflows) {
              cudaFill32(0, found, overflow ? 1 : 0, 1);
              cudaUpdateScale(0, state, found, { growthFactor: 2, backoffFactor: 0.5, growthInterval: interval });
              expected = referenceUpdateScale(expected, overflow, 2, 0.5, interval);
            }
            const back = new ArrayBuffer(8);
            cudaCopyToHost(0, new Uint8Array(back), state);
            expect(new Float32Array(back, 0, 1)[0]).toBe(expected.scale);
            expect(new Int32Array(back, 4, 1)[0]).toBe(expected.tracker);
          } finally {
            cudaFree(0, state);
            cudaFree(0, found);
          }
        },
      ),
      { numRuns: 40 },
    );
  });
});

describe("device global norm", () => {
  function norm(tensors: Tensor[]): number {
    using table = cudaTable(
      0,
      tensors.map((t) => ({ address: t.address, count: t.size, dtypeCode: dtypeInfo(t.dtype).code })),
    );
    const out = cudaAlloc(0, 4);
    try {
      cudaGlobalNorm(table, out);
      const value = new Float32Array(1);
      cudaCopyToHost(0, value, out);
      return value[0]!;
    } finally {
      cudaFree(0, out);
    }
  }

  test.skipIf(!gpu)("is within 1e-5 relative of the float64 norm, and the same bits on every run", () => {
    for (const count of [1, 1000, 3_000_001]) {
      const values = new Float32Array(count).map((_, i) => Math.cos(i * 0.37) * (1 + (i % 11)));
      const tensors = [
        tensor(values, { device }),
        tensor(values.subarray(0, Math.ceil(count / 2)), { dtype: "bf16", device }),
      ];
      try {
        let sum = 0;
        for (const t of tensors) for (const x of t.toArray()) sum += x * x;
        const got = norm(tensors);
        expect(Math.abs(got - Math.sqrt(sum)) / Math.sqrt(sum)).toBeLessThan(1e-5);
        expect(norm(tensors)).toBe(got);
      } finally {
        for (const t of tensors) t.dispose();
      }
    }
  });

  test.skipIf(!gpu)("is 0 for empty tensors and inf or NaN when an element is", () => {
    using empty = zeros([0], { device });
    expect(norm([empty])).toBe(0);
    using inf = tensor([1, Number.POSITIVE_INFINITY], { device });
    expect(norm([inf])).toBe(Number.POSITIVE_INFINITY);
    using nan = tensor([Number.NaN, 1], { device });
    expect(Number.isNaN(norm([nan]))).toBe(true);
  });
});

/** A table of device tensors. */
function tableOf(tensors: readonly Tensor[]) {
  return cudaTable(
    0,
    tensors.map((t) => ({ address: t.address, count: t.size, dtypeCode: dtypeInfo(t.dtype).code })),
  );
}

/** The reference multiply: widen, multiply in float32, round to the dtype nearest even. */
function referenceMultiply(dtype: DtypeName, bits: StorageArray, factor: number): StorageArray {
  const wide = dtype === "float32" ? (bits as Float32Array) : (cast(bits, dtype, "float32") as Float32Array);
  const product = wide.map((x) => Math.fround(x * Math.fround(factor)));
  return dtype === "float32" ? product : cast(product, "float32", dtype);
}

describe("device scale and clip", () => {
  const dtypes = ["float32", "float16", "bfloat16"] as const;

  test.skipIf(!gpu)("scaling by a number or a device scalar equals the float32 reference in every dtype", () => {
    fc.assert(
      fc.property(
        fc.nat({ max: 1000 }),
        fc.constantFrom(65536, 0.5, 3.3e-5, 1e30),
        fc.boolean(),
        (seed, factor, onHost) => {
          const grads = dtypes.map((dtype, i) => ({
            dtype,
            bits: randomBits(dtype, [0, 5, 9999][(seed + i) % 3]!, seed + i),
          }));
          const tensors = grads.map((g) => onDevice(g.dtype, g.bits));
          const factorAddress = cudaAlloc(0, 4);
          try {
            cudaCopyToDevice(0, factorAddress, new Float32Array([factor]));
            using table = tableOf(tensors);
            cudaScale(table, onHost ? { factor } : { factorAddress });
            tensors.forEach((t, i) =>
              expectSameBits(t.bits(), referenceMultiply(grads[i]!.dtype, grads[i]!.bits, factor), t.dtype),
            );
          } finally {
            cudaFree(0, factorAddress);
            for (const t of tensors) t.dispose();
          }
        },
      ),
      { numRuns: 20 },
    );
  });

  test.skipIf(!gpu)("clipping multiplies by max / (norm + 1e-6) only when that is below 1, as PyTorch", () => {
    for (const maxNorm of [0.25, 1e9]) {
      const values = new Float32Array(3000).map((_, i) => Math.sin(i) * 2);
      const tensors = [tensor(values, { device }), tensor(values.subarray(0, 700), { dtype: "bf16", device })];
      const normOut = cudaAlloc(0, 4);
      try {
        using table = tableOf(tensors);
        cudaGlobalNorm(table, normOut);
        const norm = new Float32Array(1);
        cudaCopyToHost(0, norm, normOut);
        const before = tensors.map((t) => t.bits());
        cudaClipByNorm(table, maxNorm, normOut);
        const coefficient = Math.fround(Math.fround(maxNorm) / Math.fround(norm[0]! + Math.fround(1e-6)));
        tensors.forEach((t, i) => {
          const expected = coefficient < 1 ? referenceMultiply(t.dtype, before[i]!, coefficient) : before[i]!;
          expectSameBits(t.bits(), expected, t.dtype);
        });
      } finally {
        cudaFree(0, normOut);
        for (const t of tensors) t.dispose();
      }
    }
  });
});

describe("device fused AdamW", () => {
  type Setup = { param: DtypeName; grad: DtypeName; state: "float32" | "bfloat16"; master: boolean; amsgrad: boolean };

  /** The tensors of one row on `where`, filled deterministically from `seed`. */
  function adamRow(setup: Setup, count: number, seed: number, where: "cpu" | "cuda:0"): AdamRowTensors {
    const values = (k: number, scale: number) =>
      new Float32Array(count).map((_, i) => Math.sin(seed * 13 + k * 7 + i * 0.61) * scale);
    const make = (dtype: DtypeName, k: number, scale: number) => tensor(values(k, scale), { dtype, device: where });
    return {
      grad: make(setup.grad, 1, 3),
      param: make(setup.param, 2, 1),
      master: setup.master ? make("float32", 2, 1) : null,
      m: make(setup.state, 3, 0.1),
      v: tensor(values(4, 0.1).map(Math.abs), { dtype: setup.state, device: where }),
      vMax: setup.amsgrad ? tensor(values(5, 0.2).map(Math.abs), { dtype: setup.state, device: where }) : null,
      seed: seed >>> 0,
    };
  }

  const tensorsOf = (row: AdamRowTensors) =>
    [row.grad, row.param, row.master, row.m, row.v, row.vMax].filter((t): t is Tensor => t !== null);

  function hyperOf(setup: Setup, step: number, stochastic: boolean): AdamHyper {
    return {
      invScale: Math.fround(1 / 1024),
      clip: Math.fround(0.75),
      ...adamConstants(0.9, 0.999, 1e-8, step),
      negLr: Math.fround(-1e-3),
      decay: Math.fround(1 - 1e-3 * 1e-2),
      amsgrad: setup.amsgrad,
      stochastic,
    };
  }

  test.skipIf(!gpu)("writes the CPU fused AdamW's bits: params, masters, m, v and max v, in every dtype mix", () => {
    fc.assert(
      fc.property(
        fc.record({
          param: fc.constantFrom<DtypeName>("float32", "float16", "bfloat16"),
          grad: fc.constantFrom<DtypeName>("float32", "float16", "bfloat16"),
          state: fc.constantFrom<"float32" | "bfloat16">("float32", "bfloat16"),
          master: fc.boolean(),
          amsgrad: fc.boolean(),
        }),
        fc.integer({ min: 1, max: 5 }),
        fc.boolean(),
        fc.nat({ max: 1000 }),
        (setup, step, stochastic, seed) => {
          const counts = [1, 37, 5000];
          const cpuRows = counts.map((c, i) => adamRow(setup, c, seed + i, "cpu"));
          const gpuRows = counts.map((c, i) => adamRow(setup, c, seed + i, "cuda:0"));
          try {
            const hyper = hyperOf(setup, step, stochastic);
            expect(fusedAdamWStep(gpuRows, hyper, null)).toBe(true);
            expect(fusedAdamWStep(cpuRows, hyper, null)).toBe(true);
            cpuRows.forEach((row, r) => {
              const [cpuTensors, gpuTensors] = [tensorsOf(row), tensorsOf(gpuRows[r]!)];
              cpuTensors.forEach((t, k) => expectSameBits(gpuTensors[k]!.bits(), t.bits(), t.dtype));
            });
          } finally {
            for (const row of [...cpuRows, ...gpuRows]) for (const t of tensorsOf(row)) t.dispose();
          }
        },
      ),
      { numRuns: 25 },
    );
  });

  test.skipIf(!gpu)("skips on a set host flag, and on a set device flag without waiting for the device", () => {
    const setup: Setup = { param: "bfloat16", grad: "bfloat16", state: "float32", master: true, amsgrad: false };
    const row = adamRow(setup, 100, 3, "cuda:0");
    try {
      const before = tensorsOf(row).map((t) => t.bits());
      expect(fusedAdamWStep([row], hyperOf(setup, 1, false), new Uint32Array([1]))).toBe(false);
      // The device-flag path: the same table and constants, uploaded by hand.
      const table = new BigUint64Array(9);
      const words = [row.grad, row.param, row.master!, row.m, row.v].map((t) => BigInt(t.address));
      table.set([...words, 0n, 100n]);
      table[7] = BigInt(dtypeInfo("bfloat16").code) | (BigInt(dtypeInfo("bfloat16").code) << 32n);
      table[8] = BigInt(dtypeInfo("float32").code);
      const h = hyperOf(setup, 1, false);
      const hyper = new Float32Array([
        h.invScale,
        h.clip,
        h.oneMinusBeta1,
        h.beta2,
        h.oneMinusBeta2,
        h.stepScale,
        h.epsHat,
        h.negLr,
        h.decay,
        0,
        0,
        0,
      ]);
      const [tableAddress, hyperAddress, found] = [cudaAlloc(0, 72), cudaAlloc(0, 48), cudaAlloc(0, 4)];
      try {
        cudaCopyToDevice(0, tableAddress, table);
        cudaCopyToDevice(0, hyperAddress, hyper);
        cudaFill32(0, found, 1, 1);
        const syncs = cudaSyncCount();
        cudaFusedAdamW(0, tableAddress, 1, 100, hyperAddress, found);
        expect(cudaSyncCount()).toBe(syncs);
        tensorsOf(row).forEach((t, k) => expectSameBits(t.bits(), before[k]!));
        cudaFill32(0, found, 0, 1);
        cudaFusedAdamW(0, tableAddress, 1, 100, hyperAddress, found);
        expect(sameBytes(row.param.bits(), before[1]!)).toBe(false);
      } finally {
        for (const address of [tableAddress, hyperAddress, found]) cudaFree(0, address);
      }
    } finally {
      for (const t of tensorsOf(row)) t.dispose();
    }
  });

  test.skipIf(!gpu)(
    "the fusedAdamW optimizer on cuda tensors steps as on the CPU, bit for bit, and skips overflows",
    () => {
      const shapes = [[3, 5], [7], [64, 33]];
      const make = (where: "cpu" | "cuda:0", dtype: DtypeName, k: number) =>
        shapes.map((shape, i) =>
          tensor(
            new Float32Array(shape.reduce((a, b) => a * b, 1)).map((_, j) => Math.cos(k * 3 + i * 5 + j * 0.3) * 2),
            { dtype, shape, device: where },
          ),
        );
      const results: StorageArray[][] = [];
      for (const where of ["cpu", "cuda:0"] as const) {
        const params = make(where, "bfloat16", 1);
        const optimizer = fusedAdamW({ lr: 1e-2, weightDecay: 0.1 });
        try {
          for (let step = 0; step < 3; step++) {
            const grads = make(where, "bfloat16", step + 2);
            if (step === 1) {
              grads[2]!.dispose();
              grads[2] = tensor(new Float32Array(64 * 33).fill(Number.POSITIVE_INFINITY), {
                dtype: "bf16",
                shape: [64, 33],
                device: where,
              });
            }
            try {
              const result = optimizer.step(params, grads, { invScale: 0.5 });
              expect(result.applied).toBe(step !== 1);
            } finally {
              for (const g of grads) g.dispose();
            }
          }
          results.push(params.map((p) => p.bits()));
        } finally {
          optimizer.dispose();
          for (const p of params) p.dispose();
        }
      }
      results[0]!.forEach((bits, i) => expectSameBits(results[1]![i]!, bits));
    },
  );

  test.skipIf(!gpu)("GradScaler with fusedAdamW runs a cuda training loop exactly as the CPU one", () => {
    const run = (where: "cpu" | "cuda:0") => {
      const params = [
        tensor(
          new Float32Array(300).map((_, i) => Math.sin(i)),
          { dtype: "bf16", device: where },
        ),
      ];
      const optimizer = fusedAdamW({ lr: 1e-2 });
      const scaler = new GradScaler({ initScale: 1024, growthInterval: 2 });
      const trace: string[] = [];
      try {
        for (let step = 0; step < 6; step++) {
          using loss = tensor([0.5], { device: where });
          using scaled = scaler.scale(loss) as Tensor;
          expect(scaled.device).toBe(where);
          const factor = scaled.toArray()[0]! / 0.5;
          const values = new Float32Array(300).map((_, i) => Math.cos(step + i * 0.1) * factor);
          if (step === 3) values[7] = Number.POSITIVE_INFINITY;
          using grad = tensor(values, { dtype: "bf16", device: where });
          const result = scaler.step(optimizer.scalerOptimizer(params, [grad]));
          scaler.update();
          trace.push(`${result.applied}:${scaler.getScale()}`);
        }
        return { trace, bits: params[0]!.bits() };
      } finally {
        optimizer.dispose();
        for (const p of params) p.dispose();
      }
    };
    const [cpu, cuda] = [run("cpu"), run("cuda:0")];
    expect(cuda.trace).toEqual(cpu.trace);
    expect(cpu.trace).toEqual(["true:1024", "true:2048", "true:2048", "false:1024", "true:1024", "true:2048"]);
    expectSameBits(cuda.bits, cpu.bits);
  });

  test.skipIf(!gpu)("sumSquares on cuda tensors equals the CPU's float64 sum to 1e-12 and finds inf and NaN", () => {
    const values = new Float32Array(100_003).map((_, i) => Math.sin(i * 0.37) * 1e3);
    for (const poison of [0, Number.NaN, Number.NEGATIVE_INFINITY]) {
      if (poison !== 0) values[values.length - 1] = poison;
      const cpu = [tensor(values), tensor(values.subarray(0, 999), { dtype: "f16" })];
      const gpuTensors = cpu.map((t) => t.to(device));
      try {
        const expected = sumSquares(cpu, 1 / 8);
        const got = sumSquares(gpuTensors, 1 / 8);
        expect(got.foundInf).toBe(expected.foundInf);
        if (!expected.foundInf) expect(Math.abs(got.sum - expected.sum) / expected.sum).toBeLessThan(1e-12);
      } finally {
        for (const t of [...cpu, ...gpuTensors]) t.dispose();
      }
    }
  });

  test.skipIf(!gpu)("refuses a step whose tensors are on two devices", () => {
    const setup: Setup = { param: "float32", grad: "float32", state: "float32", master: false, amsgrad: false };
    const row = adamRow(setup, 4, 1, "cuda:0");
    using cpuState = zeros([4]);
    try {
      expect(() => fusedAdamWStep([{ ...row, m: cpuState }], hyperOf(setup, 1, false), null)).toThrow(TypeError);
      // A CPU parameter with device state must not reach the CPU kernel either.
      using cpuParam = zeros([4]);
      expect(() => fusedAdamWStep([{ ...row, param: cpuParam }], hyperOf(setup, 1, false), null)).toThrow(
        "keep parameters, gradients, masters and optimizer state on one device",
      );
    } finally {
      for (const t of tensorsOf(row)) t.dispose();
    }
  });
});

describe("device fused SGD", () => {
  test.skipIf(!gpu)(
    "the fusedSgd optimizer on cuda tensors steps as on the CPU, bit for bit, in every option mix",
    () => {
      fc.assert(
        fc.property(
          fc.record({
            momentum: fc.constantFrom(0, 0.9),
            nesterov: fc.boolean(),
            weightDecay: fc.constantFrom(0, 1e-2),
            masterWeights: fc.boolean(),
            stochastic: fc.boolean(),
            stateDtype: fc.constantFrom<DtypeName>("float32", "bfloat16"),
            param: fc.constantFrom<DtypeName>("float32", "float16", "bfloat16"),
          }),
          (o) => {
            const options = {
              lr: 0.05,
              momentum: o.momentum,
              nesterov: o.nesterov && o.momentum > 0,
              weightDecay: o.weightDecay,
              masterWeights: o.masterWeights,
              rounding: o.stochastic ? ("stochastic" as const) : ("nearest" as const),
              seed: 5,
              stateDtype: o.stateDtype,
            };
            const results: StorageArray[][] = [];
            for (const where of ["cpu", "cuda:0"] as const) {
              const params = [17, 2000].map((n, i) =>
                tensor(
                  new Float32Array(n).map((_, j) => Math.sin(i + j * 0.2)),
                  { dtype: o.param, device: where },
                ),
              );
              const optimizer = fusedSgd(options);
              try {
                for (let step = 0; step < 3; step++) {
                  const grads = params.map((p, i) =>
                    tensor(
                      new Float32Array(p.size).map((_, j) => Math.cos(step + i + j * 0.3) * 4),
                      {
                        dtype: "bf16",
                        device: where,
                      },
                    ),
                  );
                  try {
                    expect(optimizer.step(params, grads, { invScale: 0.25, foundInf: false }).applied).toBe(true);
                  } finally {
                    for (const g of grads) g.dispose();
                  }
                }
                results.push(params.map((p) => p.bits()));
              } finally {
                optimizer.dispose();
                for (const p of params) p.dispose();
              }
            }
            results[0]!.forEach((bits, i) => expectSameBits(results[1]![i]!, bits));
          },
        ),
        { numRuns: 12 },
      );
    },
  );
});

describe("a mixed-precision step on the device", () => {
  test.skipIf(!gpu)("unscale, norm, scale update and casts never wait for the device", () => {
    const grads = [
      tensor(
        new Float32Array(4096).map((_, i) => Math.sin(i) * 65536),
        { device },
      ),
      tensor(
        new Float32Array(999).map((_, i) => Math.cos(i) * 65536),
        { dtype: "bf16", device },
      ),
    ];
    const state = cudaAlloc(0, 8);
    const found = cudaAlloc(0, 4);
    const normOut = cudaAlloc(0, 4);
    const table = cudaTable(
      0,
      grads.map((t) => ({ address: t.address, count: t.size, dtypeCode: dtypeInfo(t.dtype).code })),
    );
    try {
      cudaCopyToDevice(0, state, new Uint8Array(new Float32Array([65536, 0]).buffer));
      cudaSynchronize(0);
      const before = cudaSyncCount();
      for (let step = 0; step < 3; step++) {
        cudaFill32(0, found, 0, 1);
        cudaUnscaleCheck(table, { scaleAddress: state }, found);
        cudaGlobalNorm(table, normOut);
        cudaClipByNorm(table, 1e12, normOut);
        cudaUpdateScale(0, state, found, { growthInterval: 2 });
        cudaScale(table, { factorAddress: state });
        const half = grads[0]!.to("bfloat16");
        half.dispose();
      }
      expect(cudaSyncCount()).toBe(before);
      const back = new Float32Array(2);
      cudaCopyToHost(0, back, state);
      expect(cudaSyncCount()).toBeGreaterThan(before);
      // Three clean steps with interval 2: one growth, tracker 1.
      expect(back[0]).toBe(131072);
      expect(new Int32Array(back.buffer)[1]).toBe(1);
    } finally {
      table.dispose();
      for (const address of [state, found, normOut]) cudaFree(0, address);
      for (const t of grads) t.dispose();
    }
  });
});
