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

describe("GradScaler with a fused optimizer", () => {
  test("checks without writing the gradients and lets fusedAdamW unscale in its own pass, with the same result", async () => {
    const { fusedAdamW } = await import("../src/mod.ts");
    const run = (fused: boolean) => {
      const p = { w: tensor([0.5, -1, 2, 4], { dtype: "bfloat16" }) };
      const g = { w: tensor([1024, -2048, 512, 4096], { dtype: "bfloat16" }) };
      const before = [...g.w.bits()];
      const scaler = new GradScaler({ initScale: 1024 });
      scaler.scale(1);
      const optimizer = fusedAdamW({ lr: 0.1 });
      const target = fused ? optimizer.scalerOptimizer(p, g) : { grads: g, step: () => optimizer.step(p, g) };
      const result = scaler.step(target);
      const gradsAfter = [...g.w.bits()];
      const params = [...p.w.bits()];
      optimizer.dispose();
      p.w.dispose();
      g.w.dispose();
      return { result, before, gradsAfter, params };
    };
    const fused = run(true);
    const plain = run(false);
    expect(fused.result.applied).toBe(true);
    expect(fused.gradsAfter).toEqual(fused.before); // no unscale write pass
    expect(plain.gradsAfter).not.toEqual(plain.before); // the plain path unscaled in place
    expect(fused.params).toEqual(plain.params);
  });

  test("skips the fused step when a gradient is not finite", async () => {
    const { fusedAdamW } = await import("../src/mod.ts");
    using p = tensor([1, 2], { dtype: "float16" });
    using g = tensor([1, Number.POSITIVE_INFINITY], { dtype: "float16" });
    const scaler = new GradScaler();
    scaler.scale(1);
    const optimizer = fusedAdamW({ lr: 0.1 });
    const result = scaler.step(optimizer.scalerOptimizer({ p }, { p: g }));
    expect(result.applied).toBe(false);
    expect([...p.toArray()]).toEqual([1, 2]);
    scaler.update();
    expect(scaler.getScale()).toBe(32768);
    optimizer.dispose();
  });
});
