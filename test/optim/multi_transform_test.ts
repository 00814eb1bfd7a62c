import { describe, expect, test } from "bun:test";
import { adamw, applyUpdates, disposeTree, multiTransform, setToZero, sgd, tensor } from "../../src/mod.ts";
import { bitsOfTree } from "./_helpers.ts";

describe("multiTransform()", () => {
  test("multiTransform() trains LoRA adapters with adamw and leaves the frozen base bit-identical", () => {
    const params = {
      base: { w: tensor([1, 2, 3, 4], { dtype: "bf16" }), b: tensor([0.5], { dtype: "bf16" }) },
      lora: { a: tensor([0.1, 0.2]), b: tensor([0]) },
    };
    const labels = { base: { w: "frozen", b: "frozen" }, lora: { a: "adapter", b: "adapter" } };
    const opt = multiTransform({ adapter: adamw({ lr: 0.01 }), frozen: setToZero() }, labels);
    let state = opt.init(params);
    const baseBits = bitsOfTree(params.base);
    const loraBits = bitsOfTree(params.lora);
    for (let step = 0; step < 5; step++) {
      const grads = {
        base: { w: tensor([1, 1, 1, 1], { dtype: "bf16" }), b: tensor([1], { dtype: "bf16" }) },
        lora: { a: tensor([1, -1]), b: tensor([0.5]) },
      };
      const [u, next] = opt.update(grads, state, params);
      state = next;
      applyUpdates(params, u);
      disposeTree([u, grads]);
    }
    expect(bitsOfTree(params.base)).toEqual(baseBits);
    expect(bitsOfTree(params.lora)).not.toEqual(loraBits);
    disposeTree([params, state]);
  });

  test("multiTransform() gives each group its own optimizer, equal to running them separately", () => {
    using a = tensor([1, 2]);
    using b = tensor([3]);
    using a2 = tensor([1, 2]);
    using b2 = tensor([3]);
    const opt = multiTransform({ fast: sgd({ lr: 0.5 }), slow: sgd({ lr: 0.01, momentum: 0.9 }) }, ["fast", "slow"]);
    const fast = sgd({ lr: 0.5 });
    const slow = sgd({ lr: 0.01, momentum: 0.9 });
    let s = opt.init([a, b]);
    let sf = fast.init([a2]);
    let ss = slow.init([b2]);
    for (let step = 0; step < 3; step++) {
      using ga = tensor([0.5, -0.25]);
      using gb = tensor([2]);
      const [u, next] = opt.update([ga, gb], s, [a, b]);
      const [uf, nf] = fast.update([ga], sf, [a2]);
      const [us, ns] = slow.update([gb], ss, [b2]);
      [s, sf, ss] = [next, nf, ns];
      applyUpdates([a, b], u);
      applyUpdates([a2], uf);
      applyUpdates([b2], us);
      disposeTree([u, uf, us]);
    }
    expect(bitsOfTree([a, b])).toEqual(bitsOfTree([a2, b2]));
    disposeTree([s, sf, ss]);
  });

  test("labels that do not cover the tree, or name no transformation, throw with the fix", () => {
    using a = tensor([1]);
    using b = tensor([2]);
    const transforms = { train: sgd({ lr: 1 }), freeze: setToZero() };
    expect(() => multiTransform(transforms, ["train"]).init([a, b])).toThrow(/1 labels for a tree of 2 leaves/);
    expect(() => multiTransform(transforms, ["train", "trian"]).init([a, b])).toThrow(
      /leaf 1 has label "trian", which has no transformation: label every parameter with one of "train", "freeze"/,
    );
    expect(() => multiTransform({}, []).init([])).toThrow(TypeError);
  });
});
