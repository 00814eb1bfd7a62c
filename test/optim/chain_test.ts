import { describe, expect, test } from "bun:test";
import {
  adamw,
  applyUpdates,
  chain,
  clipByGlobalNorm,
  decoupledWeightDecay,
  disposeTree,
  type GradientTransformation,
  type OptState,
  scaleByAdam,
  scaleByLearningRate,
  sgd,
  type Tensor,
  tensor,
} from "../../src/mod.ts";
import { bitsOfTree, cloneAll, randomTree } from "./_helpers.ts";

describe("chain()", () => {
  test("chain(a, b, c, d) equals applying a, b, c, d by hand for 50 steps, bit for bit", () => {
    const make = () =>
      [
        clipByGlobalNorm(3),
        scaleByAdam({ b1: 0.8, b2: 0.99, amsgrad: true }),
        scaleByLearningRate((count) => 0.01 / (1 + count)),
        decoupledWeightDecay({ weightDecay: 0.1, learningRate: (count) => 0.01 / (1 + count) }),
      ] as GradientTransformation[];
    const sizes = [5, 17, 1];
    const paramsA = randomTree(sizes, "float32", 1);
    const paramsB = cloneAll(paramsA);
    const chained = chain(...make());
    const parts = make();
    let chainState = chained.init(paramsA);
    let partStates: OptState[] = parts.map((t) => t.init(paramsB));
    for (let step = 0; step < 50; step++) {
      const grads = randomTree(sizes, "float32", 1000 + step, 1 + step / 5);
      const [u, next] = chained.update(grads, chainState, paramsA);
      chainState = next;
      applyUpdates(paramsA, u);
      disposeTree(u);
      let current = grads as unknown as Tensor[];
      partStates = parts.map((t, i) => {
        const [out, s] = t.update(current, partStates[i]!, paramsB);
        if (current !== grads) disposeTree(current);
        current = out as Tensor[];
        return s;
      });
      applyUpdates(paramsB, current);
      disposeTree(current);
      disposeTree(grads);
      expect(bitsOfTree(paramsA)).toEqual(bitsOfTree(paramsB));
    }
    disposeTree([paramsA, paramsB, chainState, partStates]);
  });

  test("chain() disposes every intermediate update and returns new tensors", () => {
    const seen: Tensor[][] = [];
    const spy: GradientTransformation = {
      init: () => Object.freeze({ kind: "spy" }),
      update(updates, state) {
        seen.push(updates as Tensor[]);
        return [(updates as Tensor[]).map((u) => u.to("float32")), state];
      },
    };
    const tx = chain(spy, spy, spy);
    using g = tensor([1, 2]);
    const [u] = tx.update([g], tx.init([g]));
    expect(seen[0]![0]).toBe(g);
    expect(seen[1]![0]!.disposed).toBe(true);
    expect(seen[2]![0]!.disposed).toBe(true);
    expect(g.disposed).toBe(false);
    expect((u as Tensor[])[0]).not.toBe(g);
    disposeTree(u);
  });

  test("chain() of nothing returns float32 copies of the updates", () => {
    const tx = chain();
    using g = tensor([1, 2], { dtype: "bf16" });
    const [u] = tx.update([g], tx.init([g]));
    const out = (u as Tensor[])[0]!;
    expect(out.dtype).toBe("float32");
    expect([...out.toArray()]).toEqual([1, 2]);
    out.dispose();
  });

  test("a state from another chain is refused with a TypeError naming the fix", () => {
    using p = tensor([1]);
    const a = adamw();
    const b = sgd({ lr: 0.1, momentum: 0.9 });
    const stateB = b.init([p]);
    expect(() => a.update([p], stateB, [p])).toThrow(/chain of 2 transformations, but this chain has 3/);
    expect(() => scaleByAdam().update([p], stateB as never)).toThrow(/not a "scaleByAdam" state.*init\(\)/);
    disposeTree(stateB);
  });

  test("chain() rejects arguments that are not transformations", () => {
    expect(() => chain({} as never)).toThrow(TypeError);
  });
});
