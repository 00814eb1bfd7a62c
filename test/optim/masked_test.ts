import { describe, expect, test } from "bun:test";
import { adamw, applyUpdates, disposeTree, masked, type Tensor, tensor } from "../../src/mod.ts";

describe("masked()", () => {
  test("masked() runs inner on the masked-in leaves only and passes the others through unchanged", () => {
    const params = { w: tensor([1, 2, 3]), b: tensor([0.5]), lora: { a: tensor([1, 1]), b: tensor([2]) } };
    const mask = { w: false, b: false, lora: { a: true, b: true } };
    const opt = masked(adamw({ lr: 0.1 }), mask);
    const state = opt.init(params);
    // Inner state exists for the two masked-in leaves only.
    const adamState = (state.inner as unknown as { inner: { mu: Tensor[] }[] }).inner[0]!;
    expect(adamState.mu.length).toBe(2);
    const grads = { w: tensor([9, 9, 9]), b: tensor([7]), lora: { a: tensor([1, -1]), b: tensor([3]) } };
    const [u, next] = opt.update(grads, state, params);
    const out = u as typeof grads;
    expect([...out.w.toArray()]).toEqual([9, 9, 9]);
    expect([...out.b.toArray()]).toEqual([7]);
    expect(out.w).not.toBe(grads.w);
    applyUpdates(params, u);
    expect(params.lora.a.toArray()[0]).toBeCloseTo(1 - 0.1 - 0.01 * 0.1, 5);
    disposeTree([params, grads, u, next]);
  });

  test("masked() accepts a mask function and refuses a mask that does not cover the tree", () => {
    using w = tensor([1]);
    using b = tensor([2]);
    const byShape = masked(adamw(), (tree) => [...(tree as Tensor[])].map((t) => t.size > 0));
    disposeTree(byShape.init([w, b]));
    expect(() => masked(adamw(), [true]).init([w, b])).toThrow(/1 labels for a tree of 2 leaves/);
    expect(() => masked(adamw(), [true, "yes"] as never).init([w, b])).toThrow(/leaf 1/);
  });
});
