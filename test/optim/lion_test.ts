import { describe, expect, test } from "bun:test";
import { applyUpdates, disposeTree, lion } from "../../src/mod.ts";
import { bitsOfTree, randomTree } from "./_helpers.ts";

const f = Math.fround;

describe("lion()", () => {
  test("lion() equals the paper's update in float32 with decay applied to the old params", () => {
    const params = randomTree([13, 4], "float32", 7);
    const expected = params.map((p) => p.toArray());
    const moments = params.map((p) => new Float32Array(p.size));
    const [lr, wd, b1, b2] = [0.01, 0.1, 0.9, 0.99];
    const opt = lion({ lr, weightDecay: wd });
    let state = opt.init(params);
    for (let step = 0; step < 20; step++) {
      const grads = randomTree([13, 4], "float32", 100 + step);
      expected.forEach((p, i) => {
        const g = grads[i]!.toArray();
        const m = moments[i]!;
        for (let k = 0; k < p.length; k++) {
          const c = Math.sign(f(f(f(b1) * m[k]!) + f(f(1 - b1) * g[k]!)));
          const decayed = f(p[k]! * f(1 - lr * wd));
          // Our chain returns float32(decayed + float32(-lr * c)) - p and applyUpdates adds it back.
          p[k] = f(p[k]! + f(f(decayed + f(f(-lr) * c)) - p[k]!));
          m[k] = f(f(f(b2) * m[k]!) + f(f(1 - b2) * g[k]!));
        }
      });
      const [u, next] = opt.update(grads, state, params);
      state = next;
      applyUpdates(params, u);
      disposeTree([u, grads]);
    }
    expect(bitsOfTree(params)).toEqual(expected.flatMap((e) => [...new Uint32Array(e.buffer)]));
    disposeTree([params, state]);
  });
});
