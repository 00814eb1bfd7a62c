import { describe, expect, test } from "bun:test";
import { adamw, applyUpdates, disposeTree, multiSteps, type Tensor, tensor } from "../../src/mod.ts";
import { bitsOfTree } from "./_helpers.ts";

/** Per-example gradients of a least-squares loss: integers, so every mean below is exact. */
function exampleGrads(examples: readonly number[]): Float32Array {
  const g = new Float32Array(3);
  for (const x of examples) for (let k = 0; k < 3; k++) g[k] = g[k]! + ((x * (k + 1)) % 7) - 3;
  return g.map((v) => v / examples.length);
}

describe("multiSteps()", () => {
  test("multiSteps over k micro-batches equals one step on a k-times-larger batch", () => {
    const k = 4;
    const micro = 8;
    const examples = Array.from({ length: 3 * k * micro }, (_, i) => i * 13 + 5);
    const paramsA = [tensor([1, -2, 0.5])];
    const paramsB = [tensor([1, -2, 0.5])];
    const accumulated = multiSteps(adamw({ lr: 0.01 }), { everyK: k });
    const big = adamw({ lr: 0.01 });
    let sa = accumulated.init(paramsA);
    let sb = big.init(paramsB);
    for (let step = 0; step < 3; step++) {
      const batch = examples.slice(step * k * micro, (step + 1) * k * micro);
      for (let m = 0; m < k; m++) {
        using g = tensor(exampleGrads(batch.slice(m * micro, (m + 1) * micro)));
        const [u, next] = accumulated.update([g], sa, paramsA);
        sa = next;
        if (m < k - 1) expect([...(u as Tensor[])[0]!.toArray()]).toEqual([0, 0, 0]);
        applyUpdates(paramsA, u);
        disposeTree(u);
      }
      expect(sa.miniStep).toBe(0);
      expect(sa.gradientStep).toBe(step + 1);
      using g = tensor(exampleGrads(batch));
      const [u, next] = big.update([g], sb, paramsB);
      sb = next;
      applyUpdates(paramsB, u);
      disposeTree(u);
      expect(bitsOfTree(paramsA)).toEqual(bitsOfTree(paramsB));
    }
    disposeTree([paramsA, paramsB, sa, sb]);
  });

  test("multiSteps leaves the inner state untouched between real steps", () => {
    using p = tensor([1]);
    using g = tensor([2]);
    const opt = multiSteps(adamw(), { everyK: 3 });
    const s0 = opt.init([p]);
    const [u1, s1] = opt.update([g], s0, [p]);
    expect(s1.inner).toBe(s0.inner);
    expect(s1.miniStep).toBe(1);
    disposeTree([u1, s1]);
    expect(() => multiSteps(adamw(), { everyK: 0 })).toThrow(RangeError);
  });
});
