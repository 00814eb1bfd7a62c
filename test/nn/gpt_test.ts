import { describe, expect, test } from "bun:test";
import { valueAndGrad } from "../../src/autodiff.ts";
import { gpt, type GptParams } from "../../src/nn/mod.ts";
import { crossEntropy } from "../../src/ops/mod.ts";
import { treeLeaves } from "../../src/tree.ts";

const config = { vocab: 12, context: 4, width: 8, heads: 2, layers: 2, hidden: 16 } as const;

describe("nn.gpt (the demo's model)", () => {
  test("init is deterministic for a seed, and LayerScale adds the per-channel gains", () => {
    const plain = gpt(config).init({ seed: 3 });
    const again = gpt(config).init({ seed: 3 });
    expect([...plain.blocks[1]!.fc.w.toArray()]).toEqual([...again.blocks[1]!.fc.w.toArray()]);
    expect(plain.blocks[0]!.gamma1).toBeUndefined();
    const scaled = gpt({ ...config, layerScale: 1e-6 }).init({ seed: 3 });
    expect(scaled.blocks[0]!.gamma2!.toArray()[0]).toBeCloseTo(1e-6, 12);
    expect([...scaled.tokens.toArray()]).toEqual([...plain.tokens.toArray()]);
  });

  test("with LayerScale at 1e-6 the blocks barely change the logits and get tiny gradients", () => {
    const model = gpt({ ...config, layerScale: 1e-6 });
    const params = model.init({ seed: 0 });
    const inputs = Int32Array.from([1, 2, 3, 4, 5, 6, 7, 8]);
    const targets = Int32Array.from([2, 3, 4, 5, 6, 7, 8, 9]);
    const [loss, grads] = valueAndGrad((p: GptParams) => crossEntropy(model.apply(p, inputs, { batch: 2 }), targets))(
      params,
    );
    expect(loss).toBeCloseTo(Math.log(12), 1);
    const fcGrad = Math.max(...grads.blocks[0]!.fc.w.toArray().map(Math.abs));
    const headGrad = Math.max(...grads.head.w.toArray().map(Math.abs));
    expect(fcGrad).toBeLessThan(headGrad * 1e-4);
    for (const g of treeLeaves(grads as never)) (g as { dispose(): void }).dispose();
    expect(() => model.apply(params, inputs, { batch: 3 })).toThrow(TypeError);
  });
});
