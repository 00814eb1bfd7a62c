import { describe, expect, test } from "bun:test";
import { adamw, applyUpdates, disposeTree, sgd, tensor, withMasterWeights } from "../../src/mod.ts";
import { bitsOfTree } from "./_helpers.ts";

describe("withMasterWeights()", () => {
  test("small updates accumulate in the float32 master where a bfloat16 param alone would not move", () => {
    using withMaster = tensor([1], { dtype: "bf16" });
    using alone = tensor([1], { dtype: "bf16" });
    const opt = withMasterWeights(sgd({ lr: 1e-3 }));
    const plain = sgd({ lr: 1e-3 });
    let s = opt.init([withMaster]);
    let sp = plain.init([alone]);
    for (let step = 0; step < 100; step++) {
      using g = tensor([1]);
      const [u, next] = opt.update([g], s, [withMaster]);
      const [up, nextP] = plain.update([g], sp, [alone]);
      [s, sp] = [next, nextP];
      applyUpdates([withMaster], u);
      applyUpdates([alone], up);
      disposeTree([u, up]);
      // The param always equals the master rounded to nearest.
      using rounded = s.master[0]!.to("bf16");
      expect(bitsOfTree([withMaster])).toEqual(bitsOfTree([rounded]));
    }
    expect(alone.toArray()[0]).toBe(1);
    expect(s.master[0]!.toArray()[0]).toBeCloseTo(0.9, 4);
    expect(withMaster.toArray()[0]).toBe(0.8984375);
    disposeTree(s);
  });

  test("float32 params are their own master and get inner's updates unchanged", () => {
    using a = tensor([1, 2]);
    using b = tensor([1, 2]);
    const wrapped = withMasterWeights(adamw({ lr: 0.1 }));
    const bare = adamw({ lr: 0.1 });
    let sw = wrapped.init([a]);
    let sb = bare.init([b]);
    expect(sw.master[0]).toBeNull();
    for (let step = 0; step < 5; step++) {
      using g = tensor([0.5, -1]);
      const [uw, nw] = wrapped.update([g], sw, [a]);
      const [ub, nb] = bare.update([g], sb, [b]);
      [sw, sb] = [nw, nb];
      applyUpdates([a], uw);
      applyUpdates([b], ub);
      disposeTree([uw, ub]);
    }
    expect(bitsOfTree([a])).toEqual(bitsOfTree([b]));
    disposeTree([sw, sb]);
  });

  test("stochastic rounding is reproducible for a seed and differs from step to step", () => {
    const run = (seed: number) => {
      const p = tensor(new Float32Array(64).fill(1), { dtype: "bf16" });
      const opt = withMasterWeights(sgd({ lr: 1e-3 }), { rounding: "stochastic", seed });
      let s = opt.init([p]);
      const history: unknown[][] = [];
      for (let step = 0; step < 3; step++) {
        using g = tensor(new Float32Array(64).fill(1));
        const [u, next] = opt.update([g], s, [p]);
        s = next;
        applyUpdates([p], u);
        disposeTree(u);
        history.push(bitsOfTree([p]));
      }
      disposeTree([p, s]);
      return history;
    };
    const a = run(7);
    expect(run(7)).toEqual(a);
    expect(run(8)).not.toEqual(a);
  });

  test("only float32 masters are supported; bad options are refused", () => {
    expect(() => withMasterWeights(sgd(), { masterDtype: "bfloat16" as never })).toThrow(RangeError);
    expect(() => withMasterWeights(sgd(), { rounding: "down" as never })).toThrow(RangeError);
    using p = tensor([1], { dtype: "bf16" });
    using g = tensor([1]);
    const opt = withMasterWeights(sgd());
    const s = opt.init([p]);
    expect(() => opt.update([g], s)).toThrow(/needs the params/);
    disposeTree(s);
  });
});
