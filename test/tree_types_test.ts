import { expect, test } from "bun:test";
import { grad, nn, ops, type Tensor, tensor, type TreeOf, valueAndGrad } from "../src/mod.ts";

// Type-level checks run by `make test-types` (tsc): parameter trees typed as interfaces are accepted
// by valueAndGrad and grad, and the gradients come back with the same interface; a primitive member
// is refused (each @ts-expect-error fails tsc when the line it marks compiles).

interface Layer {
  readonly w: Tensor;
  readonly b: Tensor | null;
}

interface Model {
  readonly layers: readonly Layer[];
  readonly head: nn.LinearParams;
  readonly pair?: readonly [Tensor, Tensor];
}

test("valueAndGrad and grad take interface-typed trees and return gradients of the same type", () => {
  const head = nn.linear({ inFeatures: 2, outFeatures: 1 }).init({ seed: 1 });
  using w = tensor([1, 2], { shape: [1, 2] });
  using x = tensor([3, 4], { shape: [1, 2] });
  const model: Model = { layers: [{ w, b: null }], head };
  const loss = (p: Model, input: Tensor) => ops.sum(ops.mul(p.layers[0]!.w, input));
  const [value, grads] = valueAndGrad(loss)(model, x);
  expect(value).toBe(11);
  const typed: Model = grads;
  expect([...typed.layers[0]!.w.toArray()]).toEqual([3, 4]);
  expect(typed.layers[0]!.b).toBeNull();
  const again = grad(loss)(model, x);
  expect([...again.layers[0]!.w.toArray()]).toEqual([3, 4]);
  for (const g of [grads, again]) {
    g.layers[0]!.w.dispose();
    g.head.weight.dispose();
    if (g.head.bias) g.head.bias.dispose();
  }
  head.weight.dispose();
  if (head.bias) head.bias.dispose();
});

test("TreeOf refuses a primitive member", () => {
  interface WithCount {
    readonly w: Tensor;
    readonly count: number;
  }
  // @ts-expect-error a number is not a tensor, null, undefined or a subtree
  const refused: TreeOf<WithCount, Tensor> = { w: undefined as unknown as Tensor, count: 1 };
  expect(refused.w).toBeUndefined();
  using w = tensor([1]);
  // @ts-expect-error the same check at a call (and at run time: parameters are tensors)
  expect(() => valueAndGrad((p: WithCount) => p.w)({ w, count: 1 })).toThrow(/nn.partition/);
});
