import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import { concat, reshape, slice, transpose } from "../../src/ops/mod.ts";
import { setThreads } from "../../src/mod.ts";
import { randn, tensor } from "../../src/tensor.ts";
import { gradCheck } from "../_gradcheck.ts";

const shape3 = fc.array(fc.integer({ min: 1, max: 4 }), { minLength: 3, maxLength: 3 });

describe("shape", () => {
  test("reshape() and transpose() move gradients back to where the values came from", () => {
    fc.assert(
      fc.property(
        shape3,
        fc.constantFrom([0, 1, 2], [2, 0, 1], [1, 2, 0], [0, 2, 1]),
        fc.nat(1000),
        (shape, perm, seed) => {
          gradCheck(
            ([x]) => reshape(x!, [-1]),
            ([x]) => x!.slice(),
            [shape],
            seed,
          );
          gradCheck(
            ([x]) => transpose(x!, perm),
            ([x]) => {
              const out = new Float64Array(x!.length);
              const os = perm.map((p) => shape[p]!);
              let i = 0;
              for (let a = 0; a < os[0]!; a++)
                for (let b = 0; b < os[1]!; b++)
                  for (let c = 0; c < os[2]!; c++) {
                    const idx = [0, 0, 0];
                    idx[perm[0]!] = a;
                    idx[perm[1]!] = b;
                    idx[perm[2]!] = c;
                    out[i++] = x![(idx[0]! * shape[1]! + idx[1]!) * shape[2]! + idx[2]!]!;
                  }
              return out;
            },
            [shape],
            seed,
          );
        },
      ),
      { numRuns: 15 },
    );
  });

  test("slice() and concat() have finite-difference gradients", () => {
    fc.assert(
      fc.property(shape3, fc.nat(1000), (shape, seed) => {
        const starts = shape.map((d) => Math.floor(d / 2));
        const ends = shape.map((d) => d);
        gradCheck(
          ([x]) => slice(x!, starts, ends),
          ([x]) => {
            const out: number[] = [];
            for (let a = starts[0]!; a < ends[0]!; a++)
              for (let b = starts[1]!; b < ends[1]!; b++)
                for (let c = starts[2]!; c < ends[2]!; c++) out.push(x![(a * shape[1]! + b) * shape[2]! + c]!);
            return Float64Array.from(out);
          },
          [shape],
          seed,
        );
        const other = [shape[0]!, 2, shape[2]!];
        gradCheck(
          ([x, y]) => concat([x!, y!], 1),
          ([x, y]) => {
            const out: number[] = [];
            for (let a = 0; a < shape[0]!; a++) {
              for (let b = 0; b < shape[1]!; b++)
                for (let c = 0; c < shape[2]!; c++) out.push(x![(a * shape[1]! + b) * shape[2]! + c]!);
              for (let b = 0; b < 2; b++)
                for (let c = 0; c < shape[2]!; c++) out.push(y![(a * 2 + b) * shape[2]! + c]!);
            }
            return Float64Array.from(out);
          },
          [shape, other],
          seed,
        );
      }),
      { numRuns: 15 },
    );
  });

  test("transpose() defaults to swapping the last two axes and slice() accepts negative ends", () => {
    using x = tensor(
      [
        [1, 2],
        [3, 4],
      ],
      { dtype: "bf16" },
    );
    using t = transpose(x);
    expect([...t.toArray()]).toEqual([1, 3, 2, 4]);
    expect(t.dtype).toBe("bfloat16");
    using s = slice(x, [0, 0], [-1, 2]);
    expect([...s.toArray()]).toEqual([1, 2]);
    expect(() => reshape(x, [3, -1])).toThrow(RangeError);
    expect(() => concat([x, tensor([[1, 2]])])).toThrow(TypeError);
  });

  test("transpose(x, dim0, dim1) swaps two dimensions as torch.transpose, and bad arguments say what to pass", () => {
    fc.assert(
      fc.property(shape3, fc.integer({ min: -3, max: 2 }), fc.integer({ min: -3, max: 2 }), (shape, d0, d1) => {
        using x = randn(shape, { seed: 5 });
        const a = d0 < 0 ? d0 + 3 : d0;
        const b = d1 < 0 ? d1 + 3 : d1;
        const perm = [0, 1, 2].map((d) => (d === a ? b : d === b ? a : d));
        using swapped = transpose(x, d0, d1);
        using permuted = transpose(x, perm);
        expect(swapped.shape).toEqual(perm.map((p) => shape[p]!));
        expect(Array.from(swapped.toArray())).toEqual(Array.from(permuted.toArray()));
      }),
      { numRuns: 40 },
    );
    using x = randn([2, 3], { seed: 1 });
    expect(() => transpose(x, 0)).toThrow(/without dim1: pass two dimensions to swap/);
    expect(() => transpose(x, 0, 2)).toThrow(/axis 2 is out of range for 2 dimensions/);
    expect(() => transpose(x, [1, 0], 1)).toThrow(/dim1 1 needs a number dim0/);
    expect(() => transpose(x, "1" as unknown as number[])).toThrow(/perm must be an array of dimensions or a number/);
  });
});

describe("shape ops move bits natively", () => {
  // Reference: the element at output multi-index i of transpose(x, perm) is x at i permuted back.
  function transposeReference(bits: Uint16Array, shape: number[], perm: number[]): Uint16Array {
    const outShape = perm.map((p) => shape[p]!);
    const inStrides = shape.map((_, d) => shape.slice(d + 1).reduce((p, q) => p * q, 1));
    const out = new Uint16Array(bits.length);
    const index = new Array<number>(shape.length).fill(0);
    for (let o = 0; o < out.length; o++) {
      let source = 0;
      for (let d = 0; d < perm.length; d++) source += index[d]! * inStrides[perm[d]!]!;
      out[o] = bits[source]!;
      for (let d = outShape.length - 1; d >= 0; d--) {
        if (++index[d]! < outShape[d]!) break;
        index[d] = 0;
      }
    }
    return out;
  }

  test("transpose() of bfloat16 tensors equals an index walk for every permutation of up to 4 dimensions", () => {
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 1, max: 5 }), { minLength: 1, maxLength: 4 }),
        fc.integer({ min: 0, max: 23 }),
        (shape, which) => {
          const perms = permutations(shape.length);
          const perm = perms[which % perms.length]!;
          const size = shape.reduce((p, q) => p * q, 1);
          const bits = Uint16Array.from({ length: size }, (_, i) => (i * 7919) & 0xffff);
          using x = tensor(bits, { dtype: "bf16", shape });
          using y = transpose(x, perm);
          expect(Array.from(y.bits() as Uint16Array)).toEqual(Array.from(transposeReference(bits, shape, perm)));
        },
      ),
      { numRuns: 200 },
    );
  });

  test("transpose(), slice() and concat() give the same bits on 1 and 2 threads for 2^18 elements", () => {
    const run = () => {
      using x = randn([64, 32, 128], { seed: 4, dtype: "f16" });
      using t = transpose(x, [2, 0, 1]);
      using s = slice(x, [3, 1, 5], [60, 31, 120]);
      using c = concat([x, x], 1);
      return [t.bits(), s.bits(), c.bits()];
    };
    setThreads(1);
    const one = run();
    setThreads(2);
    const two = run();
    setThreads(0);
    for (let i = 0; i < one.length; i++)
      expect(Buffer.from(two[i]!.buffer).equals(Buffer.from(one[i]!.buffer))).toBe(true);
  });
});

function permutations(n: number): number[][] {
  if (n === 0) return [[]];
  return permutations(n - 1).flatMap((p) =>
    Array.from({ length: n }, (_, i) => [...p.slice(0, i), n - 1, ...p.slice(i)]),
  );
}
