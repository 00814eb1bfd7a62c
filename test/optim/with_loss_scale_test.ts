import { describe, expect, spyOn, test } from "bun:test";
import {
  adamw,
  applyUpdates,
  disposeTree,
  dynamicLossScale,
  multiSteps,
  noLossScale,
  sgd,
  type Tensor,
  tensor,
  withLossScale,
} from "../../src/mod.ts";
import { bitsOfTree } from "./_helpers.ts";

describe("withLossScale()", () => {
  test("finite steps unscale, run inner and grow the scale; a non-finite step returns zeros, keeps inner state and backs off", () => {
    using p = tensor([1, 2], { dtype: "f16" });
    const opt = withLossScale(dynamicLossScale({ initialScale: 1024, growthInterval: 2 }), adamw({ lr: 0.1 }));
    let s = opt.init([p]);
    const results: unknown[] = [];
    for (const values of [
      [1024, -1024],
      [512, 512],
      [Number.POSITIVE_INFINITY, 1],
      [2048, 2048],
    ]) {
      using g = tensor(values, { dtype: "f16" });
      const innerBefore = s.inner;
      const innerBits = bitsOfTree(s.inner);
      const [u, next] = opt.update([g], s, [p]);
      if (!next.lastStep!.applied) {
        expect([...(u as Tensor[])[0]!.toArray()]).toEqual([0, 0]);
        expect(next.inner).toBe(innerBefore);
        expect(bitsOfTree(next.inner)).toEqual(innerBits);
      } else {
        // Unscaled in place: the inner optimizer saw g / scale.
        expect(g.toArray()[0]).toBe(values[0]! / s.lossScale.value);
      }
      applyUpdates([p], u);
      disposeTree(u);
      s = next;
      results.push(s.lastStep);
    }
    expect(results).toEqual([
      { applied: true, reason: "applied", scaleBefore: 1024, scaleAfter: 1024 },
      { applied: true, reason: "applied", scaleBefore: 1024, scaleAfter: 2048 },
      { applied: false, reason: "non_finite", scaleBefore: 2048, scaleAfter: 1024 },
      { applied: true, reason: "applied", scaleBefore: 1024, scaleAfter: 1024 },
    ]);
    disposeTree(s);
  });

  test("with noLossScale() it is a pass-through: the same updates as inner alone", () => {
    using a = tensor([1, 2]);
    using b = tensor([1, 2]);
    const wrapped = withLossScale(noLossScale(), sgd({ lr: 0.5, momentum: 0.9 }));
    const bare = sgd({ lr: 0.5, momentum: 0.9 });
    let sw = wrapped.init([a]);
    let sb = bare.init([b]);
    for (let step = 0; step < 3; step++) {
      using g = tensor([step, -1]);
      const [uw, nw] = wrapped.update([g], sw, [a]);
      const [ub, nb] = bare.update([g], sb, [b]);
      [sw, sb] = [nw, nb];
      applyUpdates([a], uw);
      applyUpdates([b], ub);
      disposeTree([uw, ub]);
    }
    expect(bitsOfTree([a])).toEqual(bitsOfTree([b]));
    expect(sw.lastStep).toEqual({ applied: true, reason: "applied", scaleBefore: 1, scaleAfter: 1 });
    disposeTree([sw, sb]);
  });

  test("bfloat16 gradients under a dynamic scale switch scaling off, say so once, and report bf16_no_scaling", () => {
    const warn = spyOn(console, "warn").mockImplementation(() => {});
    using p = tensor([1], { dtype: "bf16" });
    const opt = withLossScale(dynamicLossScale({ initialScale: 256 }), sgd({ lr: 1 }));
    let s = opt.init([p]);
    using g = tensor([512], { dtype: "bf16" });
    const [u, next] = opt.update([g], s, [p]);
    s = next;
    expect((u as Tensor[])[0]!.toArray()[0]).toBe(-2);
    expect(s.lastStep).toEqual({ applied: true, reason: "bf16_no_scaling", scaleBefore: 256, scaleAfter: 1 });
    expect(s.lossScale.kind).toBe("none");
    disposeTree(u);
    using g2 = tensor([3], { dtype: "bf16" });
    const [u2, s2] = opt.update([g2], s, [p]);
    expect((u2 as Tensor[])[0]!.toArray()[0]).toBe(-3);
    expect(s2.lastStep?.reason).toBe("applied");
    const calls = warn.mock.calls.filter((c) => String(c[0]).includes("bfloat16"));
    expect(calls.length).toBeLessThanOrEqual(1);
    warn.mockRestore();
    disposeTree([u2, s2]);
  });

  test("an inner multiSteps reports accumulating calls as not applied, and the k-th call as applied", () => {
    using p = tensor([1]);
    const opt = withLossScale(dynamicLossScale({ initialScale: 4 }), multiSteps(sgd({ lr: 1 }), { everyK: 3 }));
    let s = opt.init([p]);
    const reasons: unknown[] = [];
    for (let call = 0; call < 4; call++) {
      using g = tensor([4]);
      const [u, next] = opt.update([g], s, [p]);
      disposeTree(u);
      s = next;
      reasons.push([s.lastStep?.applied, s.lastStep?.reason]);
    }
    expect(reasons).toEqual([
      [false, "accumulating"],
      [false, "accumulating"],
      [true, "applied"],
      [false, "accumulating"],
    ]);
    disposeTree(s);
  });

  test("withLossScale() refuses something that is not a LossScale", () => {
    expect(() => withLossScale({} as never, sgd())).toThrow(/needs a LossScale/);
  });
});
