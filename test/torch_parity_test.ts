import { describe, expect, test } from "bun:test";
import { dynamicLossScale, GradScaler, type LossScale, tensor } from "../src/mod.ts";
import fixture from "./fixtures/torch_parity.json";

// Values computed by PyTorch (test/fixtures/make_torch_parity.py, torch 2.13.0 CPU) and committed,
// so this test needs no torch.

function f32Bits(x: number): number {
  const view = new DataView(new ArrayBuffer(4));
  view.setFloat32(0, x, true);
  return view.getUint32(0, true);
}

describe("PyTorch parity", () => {
  test("fixtures were written by torch 2.13", () => {
    expect(fixture.torch).toStartWith("2.13.");
  });

  for (const c of fixture.lossScale) {
    test(`dynamicLossScale follows torch._amp_update_scale_ bit for bit (growth ${c.growthFactor}, backoff ${c.backoffFactor}, interval ${c.growthInterval})`, () => {
      let s: LossScale = dynamicLossScale({
        initialScale: c.initialScale,
        growthFactor: c.growthFactor,
        backoffFactor: c.backoffFactor,
        growthInterval: c.growthInterval,
      });
      let differences = 0;
      for (let i = 0; i < c.foundInf.length; i++) {
        s = s.adjust(!c.foundInf[i]);
        if (
          f32Bits(s.value) !== c.scaleBits[i] ||
          (s as { growthTracker: number }).growthTracker !== c.growthTracker[i]
        )
          differences++;
      }
      expect(differences).toBe(0);
    });
  }

  test("GradScaler.stateDict() equals torch's state_dict() step for step, factors at full precision", () => {
    const scaler = new GradScaler({ initScale: 1024, growthFactor: 1.7, backoffFactor: 0.3, growthInterval: 3 });
    for (const { foundInf, stateDict } of fixture.gradScaler) {
      scaler.scale(1);
      using g = tensor([foundInf ? Infinity : 1, 1]);
      scaler.step({ grads: [g], step() {} });
      scaler.update();
      expect(scaler.stateDict()).toEqual(stateDict);
    }
    expect(scaler.stateDict().growth_factor).toBe(1.7);
    expect(scaler.stateDict().backoff_factor).toBe(0.3);
  });
});
