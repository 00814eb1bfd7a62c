import { describe, expect, spyOn, test } from "bun:test";
import fc from "fast-check";
import {
  type DynamicLossScale,
  dynamicLossScale,
  GradScaler,
  type LossScale,
  MixprecError,
  type Tensor,
  tensor,
} from "../src/mod.ts";

/** A minimal optimizer: one gradient tensor per parameter and a step counter. */
function fakeOptimizer(grads: Tensor[]) {
  return {
    grads,
    steps: 0,
    step() {
      this.steps++;
    },
  };
}

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (error) {
    if (error instanceof MixprecError) return error.code;
    throw error;
  }
  return undefined;
}

describe("GradScaler", () => {
  test("unscales float16 and bfloat16 gradients, steps on finite ones and skips the rest", () => {
    const scaler = new GradScaler({ initScale: 1024 });
    using g16 = tensor([2048, -512], { dtype: "float16" });
    using gbf = tensor([4096], { dtype: "bfloat16" });
    const optimizer = fakeOptimizer([g16, gbf]);
    expect(scaler.scale(2)).toBe(2048);
    const result = scaler.step(optimizer);
    expect(result).toEqual({ applied: true, reason: "applied", scaleBefore: 1024, scaleAfter: 1024 });
    expect(optimizer.steps).toBe(1);
    expect([...g16.toArray(), ...gbf.toArray()]).toEqual([2, -0.5, 4]);
    expect(scaler.update()).toEqual({ scaleBefore: 1024, scaleAfter: 1024, event: null });

    using bad = tensor([1, Infinity], { dtype: "float16" });
    const skipping = fakeOptimizer([bad]);
    scaler.scale(1);
    const skipped = scaler.step(skipping);
    expect(skipped).toEqual({ applied: false, reason: "non_finite", scaleBefore: 1024, scaleAfter: 512 });
    expect(skipping.steps).toBe(0);
    expect(scaler.update()).toEqual({ scaleBefore: 1024, scaleAfter: 512, event: "backoff" });
    expect(scaler.getScale()).toBe(512);
  });

  test("its scale follows dynamicLossScale (PyTorch's update) over arbitrary overflow sequences", () => {
    fc.assert(
      fc.property(
        fc.array(fc.boolean(), { maxLength: 40 }),
        fc.integer({ min: 1, max: 4 }),
        (steps, growthInterval) => {
          const scaler = new GradScaler({ initScale: 256, growthInterval });
          let reference: LossScale = dynamicLossScale({ initialScale: 256, growthInterval });
          using grad = tensor([0], { dtype: "float16" });
          const optimizer = fakeOptimizer([grad]);
          let applied = 0;
          for (const finite of steps) {
            grad.data[0] = finite ? 0x3c00 : 0x7c00;
            scaler.scale(1);
            const result = scaler.step(optimizer);
            expect(result.scaleBefore).toBe(reference.value);
            reference = reference.adjust(finite);
            expect(result.scaleAfter).toBe(reference.value);
            expect(result.applied).toBe(finite);
            if (result.applied) applied++;
            scaler.update();
            expect(scaler.getScale()).toBe(reference.value);
            expect(scaler.stateDict()._growth_tracker).toBe((reference as DynamicLossScale).growthTracker);
          }
          expect(optimizer.steps).toBe(applied);
        },
      ),
      { numRuns: 100 },
    );
  });

  test("unscale_ before step unscales once, so clipping sees unscaled gradients", () => {
    const scaler = new GradScaler({ initScale: 8 });
    using g = tensor([64], { dtype: "float32" });
    const optimizer = fakeOptimizer([g]);
    scaler.scale(1);
    scaler.unscale_(optimizer);
    expect(g.toArray()[0]).toBe(8);
    scaler.step(optimizer);
    expect(g.toArray()[0]).toBe(8);
    expect(optimizer.steps).toBe(1);
    scaler.update();
  });

  test("an overflow in any of several optimizers backs the scale off for all", () => {
    const scaler = new GradScaler({ initScale: 64 });
    using a = tensor([64]);
    using b = tensor([NaN]);
    const first = fakeOptimizer([a]);
    const second = fakeOptimizer([b]);
    scaler.scale(1);
    expect(scaler.step(first).applied).toBe(true);
    const result = scaler.step(second);
    expect(result.applied).toBe(false);
    expect(result.scaleAfter).toBe(32);
    expect(scaler.update().scaleAfter).toBe(32);
    expect(first.steps + second.steps).toBe(1);
  });

  test("PyTorch's misuse errors: unscale_ twice, unscale_ after step, step twice, step before scale, update before step", () => {
    using g = tensor([1]);
    const optimizer = fakeOptimizer([g]);
    const fresh = new GradScaler();
    expect(codeOf(() => fresh.step(optimizer))).toBe("not_scaled");
    expect(() => fresh.unscale_(optimizer)).toThrow(/Attempted unscale_ .*scaler\.scale\(loss or outputs\)/);
    expect(codeOf(() => fresh.update())).toBe("not_scaled");

    const scaler = new GradScaler();
    scaler.scale(1);
    expect(codeOf(() => scaler.update())).toBe("no_inf_checks");
    scaler.unscale_(optimizer);
    expect(codeOf(() => scaler.unscale_(optimizer))).toBe("unscale_twice");
    expect(() => scaler.unscale_(optimizer)).toThrow(
      "unscale_() has already been called on this optimizer since the last update()",
    );
    scaler.step(optimizer);
    expect(codeOf(() => scaler.unscale_(optimizer))).toBe("unscale_after_step");
    expect(codeOf(() => scaler.step(optimizer))).toBe("step_twice");
    expect(() => scaler.step(optimizer)).toThrow("step() has already been called since the last update()");
    scaler.update();
    // After update() the cycle starts again.
    scaler.step(optimizer);
    scaler.update();
    expect(() => scaler.step({ grads: [g] } as never)).toThrow(TypeError);
  });

  test("stateDict uses PyTorch's keys and round-trips mid-training", () => {
    const scaler = new GradScaler({ initScale: 128, growthInterval: 3 });
    using g = tensor([1], { dtype: "float16" });
    const optimizer = fakeOptimizer([g]);
    for (let i = 0; i < 2; i++) {
      scaler.scale(1);
      scaler.step(optimizer);
      scaler.update();
    }
    const state = scaler.stateDict();
    expect(state).toEqual({
      scale: 128,
      growth_factor: 2,
      backoff_factor: 0.5,
      growth_interval: 3,
      _growth_tracker: 2,
    });
    const restored = new GradScaler();
    restored.loadStateDict(JSON.parse(JSON.stringify(state)));
    expect(restored.stateDict()).toEqual(state);
    for (const s of [scaler, restored]) {
      s.scale(1);
      s.step(optimizer);
      s.update();
    }
    expect(restored.getScale()).toBe(256);
    expect(restored.stateDict()).toEqual(scaler.stateDict());
    // A PyTorch state dict (Python floats) loads too.
    restored.loadStateDict({
      scale: 65536.0,
      growth_factor: 2.0,
      backoff_factor: 0.5,
      growth_interval: 2000,
      _growth_tracker: 17,
    });
    expect(restored.stateDict()._growth_tracker).toBe(17);
    expect(codeOf(() => restored.loadStateDict({}))).toBe("empty_state_dict");
    expect(() => restored.loadStateDict({ scale: 1 })).toThrow(/growth_factor/);
    expect(() => restored.loadStateDict({ ...state, growth_factor: 0.5 })).toThrow(RangeError);
    // A rejected dict changed nothing.
    expect(restored.stateDict()._growth_tracker).toBe(17);
    const hysteretic = new GradScaler({ hysteresis: 2, minScale: 1 });
    expect(hysteretic.stateDict()).toMatchObject({ hysteresis: 2, _hysteresis_left: 2, min_scale: 1 });
  });

  test("update(newScale) sets the scale and keeps the growth tracker", () => {
    const scaler = new GradScaler({ initScale: 4, growthInterval: 10 });
    using g = tensor([1]);
    const optimizer = fakeOptimizer([g]);
    scaler.scale(1);
    scaler.step(optimizer);
    scaler.update();
    expect(scaler.update(1000)).toEqual({ scaleBefore: 4, scaleAfter: 1000, event: null });
    expect(scaler.stateDict()).toMatchObject({ scale: 1000, _growth_tracker: 1 });
    expect(() => scaler.update(Number.NaN)).toThrow(RangeError);
  });

  test("for bfloat16 it is a pass-through that says once why", () => {
    const warn = spyOn(console, "warn").mockImplementation(() => {});
    try {
      const scaler = new GradScaler({ dtype: "bfloat16" });
      const again = new GradScaler({ dtype: "bf16" });
      expect(warn).toHaveBeenCalledTimes(1);
      expect(String(warn.mock.calls[0]![0])).toMatch(/bfloat16.*no loss scaling/);
      for (const s of [scaler, again]) {
        expect(s.isEnabled()).toBe(false);
        expect(s.notice).toMatch(/bfloat16 has float32's exponent range/);
      }
      using g = tensor([Infinity, 3], { dtype: "bfloat16" });
      const optimizer = fakeOptimizer([g]);
      expect(scaler.scale(5)).toBe(5);
      expect(scaler.step(optimizer)).toEqual({
        applied: true,
        reason: "bf16_no_scaling",
        scaleBefore: 1,
        scaleAfter: 1,
      });
      expect(optimizer.steps).toBe(1);
      expect(g.toArray()[1]).toBe(3);
      expect(scaler.getScale()).toBe(1);
      expect(scaler.stateDict()).toEqual({});
      scaler.update();
    } finally {
      warn.mockRestore();
    }
  });

  test("enabled: false makes every method a pass-through, as in PyTorch", () => {
    const scaler = new GradScaler({ enabled: false });
    using g = tensor([1]);
    const optimizer = fakeOptimizer([g]);
    using loss = tensor([3]);
    expect(scaler.scale(loss)).toBe(loss);
    expect(scaler.step(optimizer).reason).toBe("applied");
    expect(optimizer.steps).toBe(1);
    expect(scaler.isEnabled()).toBe(false);
    expect(scaler.notice).toBe(null);
    expect(scaler.stateDict()).toEqual({});
  });

  test("scale() returns new tensors for tensor losses and trees of them", () => {
    const scaler = new GradScaler({ initScale: 4 });
    using loss = tensor([0.5], { dtype: "float32" });
    using scaled = scaler.scale(loss);
    expect(scaled).not.toBe(loss);
    expect(scaled.toArray()[0]).toBe(2);
    const [a, b] = scaler.scale([1, loss]) as [number, Tensor];
    expect(a).toBe(4);
    expect(b.toArray()[0]).toBe(2);
    b.dispose();
    expect(() => scaler.scale("x" as never)).toThrow(TypeError);
  });

  test("a bfloat16 GradScaler refuses float16 gradients and steps nothing", () => {
    const warn = spyOn(console, "warn").mockImplementation(() => {});
    try {
      const scaler = new GradScaler({ dtype: "bfloat16" });
      using g = tensor([1e-8, 3], { dtype: "float16" });
      const optimizer = fakeOptimizer([g]);
      expect(() => scaler.step(optimizer)).toThrow(/constructed for bfloat16.*gradient 0 is float16.*dtype: "float16"/);
      expect(() => scaler.unscale_(optimizer)).toThrow(TypeError);
      expect(optimizer.steps).toBe(0);
    } finally {
      warn.mockRestore();
    }
  });

  test("option errors use GradScaler's own names: initScale and dtype", () => {
    expect(() => new GradScaler({ initScale: -1 })).toThrow(/^initScale must be .* got -1: e\.g\. initScale: 65536$/);
    expect(() => new GradScaler({ initScale: Number.NaN })).toThrow(/initScale/);
    expect(() => new GradScaler({ initScale: 1e40 })).toThrow(/initScale/);
    expect(() => new GradScaler({ dtype: "int8" as never })).toThrow(
      /^GradScaler dtype "int8" is not a training dtype/,
    );
    for (const bad of [() => new GradScaler({ initScale: -1 }), () => new GradScaler({ dtype: "int8" as never })]) {
      try {
        bad();
      } catch (error) {
        expect(String(error)).not.toMatch(/initialScale|compute=/);
      }
    }
  });
});
