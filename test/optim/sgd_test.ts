import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import { applyUpdates, disposeTree, sgd, trace } from "../../src/mod.ts";
import { bitsOfTree, randomTree } from "./_helpers.ts";

const f = Math.fround;

/** torch.optim.SGD's single-tensor step, in float32. */
function torchSgdStep(
  p: Float32Array,
  g: Float32Array,
  buf: Float32Array | null,
  first: boolean,
  o: { lr: number; momentum: number; dampening: number; wd: number; nesterov: boolean },
): void {
  for (let i = 0; i < p.length; i++) {
    let d = g[i]!;
    if (o.wd !== 0) d = f(d + f(f(o.wd) * p[i]!));
    if (o.momentum !== 0 && buf !== null) {
      buf[i] = first ? d : f(f(buf[i]! * f(o.momentum)) + f(f(1 - o.dampening) * d));
      d = o.nesterov ? f(d + f(f(o.momentum) * buf[i]!)) : buf[i]!;
    }
    p[i] = f(p[i]! + f(f(-o.lr) * d));
  }
}

describe("sgd()", () => {
  test("sgd() equals torch.optim.SGD's float32 reference bit for bit over 30 steps", () => {
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 1, max: 40 }), { minLength: 1, maxLength: 3 }),
        fc.record({
          lr: fc.constantFrom(0.1, 0.01, 1e-3),
          momentum: fc.constantFrom(0, 0.9, 0.5),
          dampening: fc.constantFrom(0, 0.1),
          wd: fc.constantFrom(0, 1e-4, 0.1),
          nesterov: fc.boolean(),
        }),
        fc.integer({ min: 0, max: 999 }),
        (sizes, o, seed) => {
          const nesterov = o.nesterov && o.momentum !== 0 && o.dampening === 0;
          const opts = { ...o, nesterov };
          const params = randomTree(sizes, "float32", seed);
          const expected = params.map((p) => p.toArray());
          const buffers = params.map((p) => new Float32Array(p.size));
          const opt = sgd({ lr: o.lr, momentum: o.momentum, dampening: o.dampening, weightDecay: o.wd, nesterov });
          let state = opt.init(params);
          for (let step = 0; step < 30; step++) {
            const grads = randomTree(sizes, "float32", seed * 50 + step);
            expected.forEach((e, i) => torchSgdStep(e, grads[i]!.toArray(), buffers[i]!, step === 0, opts));
            const [u, next] = opt.update(grads, state, params);
            state = next;
            applyUpdates(params, u);
            disposeTree([u, grads]);
          }
          const expectedBits = expected.flatMap((e) => [...new Uint32Array(e.buffer)]);
          expect(bitsOfTree(params)).toEqual(expectedBits);
          disposeTree([params, state]);
        },
      ),
      { numRuns: 30 },
    );
  });

  test("Nesterov without momentum, or with dampening, is refused with a RangeError", () => {
    expect(() => sgd({ lr: 0.1, nesterov: true })).toThrow(RangeError);
    expect(() => trace({ momentum: 0.9, dampening: 0.1, nesterov: true })).toThrow(/dampening 0/);
  });
});
