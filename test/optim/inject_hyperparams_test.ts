import { describe, expect, test } from "bun:test";
import {
  adamw,
  applyUpdates,
  disposeTree,
  injectHyperparams,
  linearSchedule,
  setHyperparams,
  tensor,
} from "../../src/mod.ts";
import { bitsOfTree } from "./_helpers.ts";

describe("injectHyperparams()", () => {
  test("changing lr between steps equals running each step with that lr", () => {
    using a = tensor([1, -1, 0.25]);
    using b = tensor([1, -1, 0.25]);
    const injected = injectHyperparams(adamw)({ lr: 0.1, weightDecay: 0.01 });
    let s = injected.init([a]);
    const lrs = [0.1, 0.05, 0.2, 0.001];
    // The reference: adamw's chain with a schedule reading the same lrs.
    const reference = adamw({ lr: (count) => lrs[count]!, weightDecay: 0.01 });
    let r = reference.init([b]);
    for (let step = 0; step < lrs.length; step++) {
      s = setHyperparams(s, { lr: lrs[step]! });
      using g = tensor([0.3 * step, -0.1, 1]);
      const [u, next] = injected.update([g], s, [a]);
      const [ur, nextR] = reference.update([g], r, [b]);
      [s, r] = [next, nextR];
      applyUpdates([a], u);
      applyUpdates([b], ur);
      disposeTree([u, ur]);
    }
    expect(bitsOfTree([a])).toEqual(bitsOfTree([b]));
    expect(s.hyperparams.lr).toBe(0.001);
    disposeTree([s, r]);
  });

  test("a schedule's value at each step shows in the state; unknown names are refused", () => {
    using p = tensor([1]);
    const tx = injectHyperparams(adamw)({ lr: linearSchedule({ initValue: 0, endValue: 1, transitionSteps: 4 }) });
    let s = tx.init([p]);
    for (let step = 0; step < 3; step++) {
      using g = tensor([1]);
      const [u, next] = tx.update([g], s, [p]);
      disposeTree(u);
      s = next;
    }
    expect(s.hyperparams.lr).toBe(0.5);
    expect(() => setHyperparams(s, { momentum: 0.9 } as never)).toThrow(/not an injected hyperparameter/);
    disposeTree(s);
  });
});
