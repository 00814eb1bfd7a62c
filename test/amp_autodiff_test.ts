import { describe, expect, test } from "bun:test";
import { dynamicLossScale, GradScaler, ops, staticLossScale, tensor, valueAndGrad } from "../src/mod.ts";

describe("loss scaling inside valueAndGrad", () => {
  test("lossScale.scale(loss) is differentiable: gradients come out multiplied by the scale", () => {
    using x = tensor([1, -2, 3]);
    for (const lossScale of [staticLossScale(8), dynamicLossScale({ initialScale: 1024 })]) {
      const [value, grads] = valueAndGrad((p: { x: typeof x }) => lossScale.scale(ops.sum(ops.mul(p.x, p.x))))({ x });
      expect(value).toBe(14 * lossScale.value);
      expect([...grads.x.toArray()]).toEqual([2, -4, 6].map((g) => g * lossScale.value));
      grads.x.dispose();
    }
  });

  test("GradScaler.scale(loss) is differentiable and step() unscales back to the true gradients", () => {
    using x = tensor([0.5, 4], { dtype: "float16" });
    const scaler = new GradScaler({ initScale: 2 ** 10 });
    const [value, grads] = valueAndGrad((p: { x: typeof x }) => scaler.scale(ops.sum(ops.mul(p.x, p.x))))({ x });
    expect(value).toBe(16.25 * 2 ** 10);
    let seen: number[] = [];
    const result = scaler.step({ grads, step: () => (seen = [...grads.x.toArray()]) });
    expect(result.applied).toBe(true);
    expect(seen).toEqual([1, 8]);
    grads.x.dispose();
  });
});
