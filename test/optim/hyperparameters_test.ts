import { describe, expect, test } from "bun:test";
import { adam, adamw, fusedAdamW, fusedSgd, GradScaler, getPolicy, lion, sgd, tensor } from "../../src/mod.ts";

type Factory = (options: Record<string, unknown>) => unknown;

const OPTIMIZERS: Record<string, { make: Factory; options: readonly string[] }> = {
  adamw: { make: (o) => adamw(o), options: ["lr", "betas", "eps", "weightDecay"] },
  adam: { make: (o) => adam(o), options: ["lr", "betas", "eps", "weightDecay"] },
  lion: { make: (o) => lion(o), options: ["lr", "betas", "weightDecay"] },
  sgd: { make: (o) => sgd(o), options: ["lr", "weightDecay", "momentum"] },
  fusedAdamW: { make: (o) => fusedAdamW(o), options: ["lr", "betas", "eps", "weightDecay"] },
  fusedSgd: { make: (o) => fusedSgd(o), options: ["lr", "weightDecay", "momentum"] },
};

const BAD: Record<string, readonly [unknown, RegExp][]> = {
  lr: [
    [-1, /lr must be a finite number >= 0.*got -1/],
    [Number.NaN, /lr must be .*got NaN/],
    [Infinity, /lr must be .*got Infinity/],
  ],
  betas: [
    [[1, 0.999], /betas\[0\] must be in \[0, 1\), got 1/],
    [[0.9, -0.1], /betas\[1\] must be in \[0, 1\), got -0.1/],
    [[0.9, Number.NaN], /betas\[1\] must be in \[0, 1\), got NaN/],
  ],
  eps: [
    [0, /eps must be a finite number > 0, got 0/],
    [-1e-8, /eps must be .*got -1e-8/],
  ],
  weightDecay: [[-0.01, /weightDecay must be a finite number >= 0, got -0.01/]],
  momentum: [[-0.9, /momentum must be a finite number >= 0, got -0.9/]],
};

describe("optimizer hyperparameters", () => {
  for (const [name, { make, options }] of Object.entries(OPTIMIZERS)) {
    test(`${name}() refuses out-of-range hyperparameters, naming the optimizer, the option and the value`, () => {
      for (const option of options) {
        for (const [value, message] of BAD[option]!) {
          expect(() => make({ [option]: value })).toThrow(message);
          expect(() => make({ [option]: value })).toThrow(new RegExp(`^${name}: `));
        }
      }
      expect(() => make({ lr: 0 })).not.toThrow();
      expect(() => make({ lr: () => 0.1 })).not.toThrow();
    });
  }
});

describe("parameters against the policy", () => {
  test("fused optimizers and GradScaler told a policy refuse params (or grads) of another dtype, writing nothing", () => {
    using p = tensor([1, 2], { dtype: "float16" });
    using g = tensor([1, 1], { dtype: "float16" });
    for (const opt of [fusedAdamW({ policy: "mixed_bf16" }), fusedSgd({ policy: getPolicy("mixed_bf16") })]) {
      expect(() => opt.step([p], [g])).toThrow(
        /param 0 is float16 but the policy "params=float32,compute=bfloat16,output=float32" stores params as float32/,
      );
      expect(opt.state).toBe(null);
      expect(p.toArray().join()).toBe("1,2");
    }
    const scaler = new GradScaler({ policy: "mixed_bf16" });
    expect(scaler.isEnabled()).toBe(false); // the policy's compute dtype is bfloat16: a pass-through
    let steps = 0;
    expect(() => scaler.step({ grads: [g], step: () => steps++ })).toThrow(/gradient 0 is float16 but the policy/);
    expect(steps).toBe(0);
    using f = tensor([1, 2]);
    using fg = tensor([1, 1]);
    const fused = fusedAdamW({ policy: "mixed_f16", lr: 0.1 });
    expect(fused.step([f], [fg]).applied).toBe(true);
    fused.dispose();
  });
});
