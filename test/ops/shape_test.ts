import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import { concat, reshape, slice, transpose } from "../../src/ops/mod.ts";
import { tensor } from "../../src/tensor.ts";
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
});
