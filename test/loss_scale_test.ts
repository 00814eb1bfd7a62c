import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import {
  allFinite,
  type DynamicLossScale,
  dynamicLossScale,
  type LossScale,
  lossScaleFromJSON,
  noLossScale,
  staticLossScale,
  tensor,
} from "../src/mod.ts";

/**
 * PyTorch's `_amp_update_scale_` written plainly: a float32 scale and an int32 tracker in typed
 * arrays, float64 factors (the kernels take `double`: the product is rounded once to float32),
 * exactly the kernel's branches. test/torch_parity_test.ts checks the rule against torch itself.
 */
function torchUpdateScale(
  scale: Float32Array,
  tracker: Int32Array,
  foundInf: boolean,
  growthFactor: number,
  backoffFactor: number,
  growthInterval: number,
): void {
  const growth = growthFactor;
  const backoff = backoffFactor;
  if (foundInf) {
    scale[0] = scale[0]! * backoff;
    tracker[0] = 0;
  } else {
    const successful = tracker[0]! + 1;
    if (successful === growthInterval) {
      const next = Math.fround(scale[0]! * growth);
      if (Number.isFinite(next)) scale[0] = next;
      tracker[0] = 0;
    } else {
      tracker[0] = successful;
    }
  }
}

/** DeepSpeed's DynamicLossScaler.update_scale (deepspeed/runtime/fp16/loss_scaler.py), plainly. */
class DeepSpeedScaler {
  curScale: number;
  curIter = 0;
  lastOverflowIter = -1;
  curHysteresis: number;
  constructor(
    initScale: number,
    readonly scaleWindow: number,
    readonly minScale: number,
    readonly delayedShift: number,
    readonly consecutiveHysteresis: boolean,
    /** true: growth when PyTorch grows (tracker); false: DeepSpeed's own stable-interval test. */
    readonly pytorchTiming: boolean,
  ) {
    this.curScale = initScale;
    this.curHysteresis = delayedShift;
  }
  tracker = 0;
  update(overflow: boolean): void {
    if (overflow) {
      if (this.delayedShift === 1 || this.curHysteresis === 1) {
        this.curScale = Math.max(this.curScale / 2, this.minScale);
      } else {
        this.curHysteresis -= 1;
      }
      this.lastOverflowIter = this.curIter;
      this.tracker = 0;
    } else {
      if (this.consecutiveHysteresis) this.curHysteresis = this.delayedShift;
      let grow: boolean;
      if (this.pytorchTiming) {
        this.tracker += 1;
        grow = this.tracker === this.scaleWindow;
        if (grow) this.tracker = 0;
      } else {
        const stableInterval = this.curIter - this.lastOverflowIter - 1;
        grow = stableInterval > 0 && stableInterval % this.scaleWindow === 0;
      }
      if (grow) {
        if (!this.consecutiveHysteresis) this.curHysteresis = this.delayedShift;
        // mixprec's scale is a float32 value: growth to inf is refused (DeepSpeed's is a Python float).
        if (Number.isFinite(Math.fround(this.curScale * 2))) this.curScale *= 2;
      }
    }
    this.curIter += 1;
  }
}

/** Step outcomes: clean (true) four times as often as overflowing (false). */
const stepSequence = (maxLength: number) =>
  fc.array(fc.oneof({ weight: 4, arbitrary: fc.constant(true) }, { weight: 1, arbitrary: fc.constant(false) }), {
    maxLength,
    size: "max",
  });

describe("dynamicLossScale()", () => {
  test("equals PyTorch's _amp_update_scale_ step for step for any factors, interval and sequence", () => {
    fc.assert(
      fc.property(
        fc.float({ min: Math.fround(2 ** -20), max: Math.fround(2 ** 100), noNaN: true }),
        fc.double({ min: 1.0001, max: 8, noNaN: true }),
        fc.double({ min: 0.01, max: 0.99, noNaN: true }),
        fc.integer({ min: 1, max: 12 }),
        stepSequence(300),
        (initialScale, growthFactor, backoffFactor, growthInterval, steps) => {
          const scale = new Float32Array([initialScale]);
          const tracker = new Int32Array(1);
          let s: DynamicLossScale = dynamicLossScale({ initialScale, growthFactor, backoffFactor, growthInterval });
          for (const finite of steps) {
            torchUpdateScale(scale, tracker, !finite, growthFactor, backoffFactor, growthInterval);
            s = s.adjust(finite);
            expect(s.value).toBe(scale[0]!);
            expect(s.growthTracker).toBe(tracker[0]!);
          }
        },
      ),
      { numRuns: 300 },
    );
  });

  test("grows only on the 2000th consecutive clean step with the defaults", () => {
    let s = dynamicLossScale();
    expect(s.value).toBe(65536);
    for (let i = 1; i < 2000; i++) {
      s = s.adjust(true);
      expect(s.value).toBe(65536);
      expect(s.event).toBe(null);
      expect(s.growthTracker).toBe(i);
    }
    s = s.adjust(true);
    expect(s.value).toBe(131072);
    expect(s.event).toBe("grew");
    expect(s.growthTracker).toBe(0);
  });

  test("an overflow halves the scale and resets the tracker", () => {
    const s = dynamicLossScale().adjust(true).adjust(true).adjust(false);
    expect(s.value).toBe(32768);
    expect(s.event).toBe("backoff");
    expect(s.growthTracker).toBe(0);
  });

  test("200 overflows in a row take the scale to 0 like PyTorch when there is no minScale", () => {
    const scale = new Float32Array([65536]);
    const tracker = new Int32Array(1);
    let s: DynamicLossScale = dynamicLossScale();
    for (let i = 0; i < 200; i++) {
      torchUpdateScale(scale, tracker, true, 2, 0.5, 2000);
      s = s.adjust(false);
      expect(s.value).toBe(scale[0]!);
      expect(s.event).toBe("backoff");
    }
    expect(s.value).toBe(0);
    // 2^16 halves to 2^-149 (float32's smallest subnormal) after 165 overflows, to 0 after 166.
    let t: DynamicLossScale = dynamicLossScale();
    for (let i = 0; i < 165; i++) t = t.adjust(false);
    expect(t.value).toBe(2 ** -149);
    expect(t.adjust(false).value).toBe(0);
  });

  test("growth that would overflow float32 is refused and the tracker still resets", () => {
    for (const top of [2 ** 127, 3.4028234663852886e38, Math.fround(2 ** 127 * 1.5)]) {
      let s = dynamicLossScale({ initialScale: top, growthInterval: 3 });
      s = s.adjust(true).adjust(true);
      expect(s.growthTracker).toBe(2);
      s = s.adjust(true);
      expect(s.value).toBe(Math.fround(top));
      expect(s.event).toBe("growth_refused");
      expect(s.growthTracker).toBe(0);
      const scale = new Float32Array([top]);
      const tracker = new Int32Array([2]);
      torchUpdateScale(scale, tracker, false, 2, 0.5, 3);
      expect(scale[0]).toBe(s.value);
    }
    // Just below the top, growth still happens.
    const s = dynamicLossScale({ initialScale: 2 ** 126, growthInterval: 1 }).adjust(true);
    expect(s.value).toBe(2 ** 127);
    expect(s.event).toBe("grew");
  });

  test("minScale clamps backoff and reports reaching the floor", () => {
    let s = dynamicLossScale({ initialScale: 8, minScale: 2 });
    s = s.adjust(false);
    expect([s.value, s.event]).toEqual([4, "backoff"]);
    s = s.adjust(false);
    expect([s.value, s.event]).toEqual([2, "floor"]);
    s = s.adjust(false);
    expect([s.value, s.event]).toEqual([2, "floor"]);
    // A floor that is not a power of two is still the floor.
    const odd = dynamicLossScale({ initialScale: 8, minScale: 3 }).adjust(false).adjust(false);
    expect([odd.value, odd.event]).toEqual([3, "floor"]);
  });

  test("maxScale clamps growth and reports the ceiling", () => {
    let s = dynamicLossScale({ initialScale: 4, maxScale: 6, growthInterval: 1 });
    s = s.adjust(true);
    expect([s.value, s.event]).toEqual([6, "ceiling"]);
    s = s.adjust(true);
    expect([s.value, s.event]).toEqual([6, "ceiling"]);
    s = s.adjust(false);
    expect([s.value, s.event]).toEqual([3, "backoff"]);
  });

  test("hysteresis follows DeepSpeed's update_scale exactly while no growth is due", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 40 }),
        fc.integer({ min: 0, max: 6 }),
        fc.integer({ min: 1, max: 5 }),
        fc.boolean(),
        stepSequence(60),
        (initialExponent, minExponent, hysteresis, consecutiveHysteresis, steps) => {
          const initialScale = 2 ** initialExponent;
          const minScale = Math.min(2 ** minExponent, initialScale);
          // A window longer than the sequence: DeepSpeed's growth timing never comes into play.
          const reference = new DeepSpeedScaler(initialScale, 1000, minScale, hysteresis, consecutiveHysteresis, false);
          let s: DynamicLossScale = dynamicLossScale({
            initialScale,
            minScale,
            hysteresis,
            consecutiveHysteresis,
            growthInterval: 1000,
          });
          for (const finite of steps) {
            reference.update(!finite);
            s = s.adjust(finite);
            expect(s.value).toBe(reference.curScale);
            expect(s.hysteresisLeft).toBe(reference.curHysteresis);
          }
        },
      ),
      { numRuns: 400 },
    );
  });

  test("with growth, hysteresis equals DeepSpeed's rule under PyTorch's growth timing", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 30 }),
        fc.integer({ min: 1, max: 4 }),
        fc.integer({ min: 1, max: 6 }),
        fc.boolean(),
        stepSequence(200),
        (initialExponent, hysteresis, window, consecutiveHysteresis, steps) => {
          const initialScale = 2 ** initialExponent;
          const reference = new DeepSpeedScaler(initialScale, window, 1, hysteresis, consecutiveHysteresis, true);
          let s: DynamicLossScale = dynamicLossScale({
            initialScale,
            minScale: 1,
            hysteresis,
            consecutiveHysteresis,
            growthInterval: window,
          });
          for (const finite of steps) {
            reference.update(!finite);
            s = s.adjust(finite);
            expect(s.value).toBe(reference.curScale);
            expect(s.hysteresisLeft).toBe(reference.curHysteresis);
          }
        },
      ),
      { numRuns: 300 },
    );
  });

  test("an overflow first spends hysteresis, then halves, and growth restores it", () => {
    let s = dynamicLossScale({ initialScale: 1024, hysteresis: 3, growthInterval: 2 });
    s = s.adjust(false);
    expect([s.value, s.hysteresisLeft, s.event]).toEqual([1024, 2, "hysteresis"]);
    s = s.adjust(false);
    expect([s.value, s.hysteresisLeft, s.event]).toEqual([1024, 1, "hysteresis"]);
    s = s.adjust(false);
    expect([s.value, s.hysteresisLeft, s.event]).toEqual([512, 1, "backoff"]);
    s = s.adjust(false);
    expect([s.value, s.hysteresisLeft, s.event]).toEqual([256, 1, "backoff"]);
    // A clean step alone does not restore it (consecutiveHysteresis is off) ...
    s = s.adjust(true);
    expect([s.value, s.hysteresisLeft]).toEqual([256, 1]);
    // ... growth does.
    s = s.adjust(true);
    expect([s.value, s.hysteresisLeft, s.event]).toEqual([512, 3, "grew"]);
    // With consecutiveHysteresis every clean step restores it.
    let c = dynamicLossScale({ initialScale: 1024, hysteresis: 2, consecutiveHysteresis: true });
    c = c.adjust(false).adjust(true);
    expect(c.hysteresisLeft).toBe(2);
    expect(c.adjust(false).value).toBe(1024);
  });

  test("DeepSpeed's own timing grows one clean step after PyTorch's", () => {
    const reference = new DeepSpeedScaler(16, 3, 1, 1, false, false);
    let s: LossScale = dynamicLossScale({ initialScale: 16, growthInterval: 3 });
    const ours: number[] = [];
    const theirs: number[] = [];
    for (let i = 0; i < 7; i++) {
      reference.update(false);
      s = s.adjust(true);
      ours.push(s.value);
      theirs.push(reference.curScale);
    }
    expect(ours).toEqual([16, 16, 32, 32, 32, 64, 64]);
    expect(theirs).toEqual([16, 16, 16, 32, 32, 32, 64]);
  });

  test("values are immutable: adjust returns a new value and leaves the old one as it was", () => {
    const s = dynamicLossScale({ growthInterval: 1 });
    const next = s.adjust(true);
    expect(s.value).toBe(65536);
    expect(next.value).toBe(131072);
    expect(Object.isFrozen(s)).toBe(true);
    expect(() => {
      (s as { value: number }).value = 3;
    }).toThrow(TypeError);
  });

  test("out-of-range options throw RangeError naming the option", () => {
    expect(() => dynamicLossScale({ growthFactor: 1 })).toThrow(/growthFactor/);
    expect(() => dynamicLossScale({ backoffFactor: 1 })).toThrow(/backoffFactor/);
    expect(() => dynamicLossScale({ backoffFactor: 0 })).toThrow(/backoffFactor/);
    expect(() => dynamicLossScale({ growthInterval: 0 })).toThrow(/growthInterval/);
    expect(() => dynamicLossScale({ growthInterval: 1.5 })).toThrow(/growthInterval/);
    expect(() => dynamicLossScale({ initialScale: 0 })).toThrow(/initialScale/);
    expect(() => dynamicLossScale({ initialScale: Infinity })).toThrow(/initialScale/);
    expect(() => dynamicLossScale({ initialScale: 1e39 })).toThrow(/initialScale/);
    expect(() => dynamicLossScale({ hysteresis: 0 })).toThrow(/hysteresis/);
    expect(() => dynamicLossScale({ minScale: 4, maxScale: 2 })).toThrow(/minScale/);
    expect(() => dynamicLossScale({ initialScale: 1, minScale: 2 })).toThrow(/minScale/);
    expect(() => dynamicLossScale({ initialScale: 1e6, maxScale: 2 })).toThrow(/maxScale/);
    expect(() => dynamicLossScale().adjust(1 as unknown as boolean)).toThrow(TypeError);
  });
});

describe("toJSON() and lossScaleFromJSON()", () => {
  test("a dynamic scale restored from JSON mid-sequence continues exactly as the original", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 5 }),
        fc.integer({ min: 1, max: 3 }),
        fc.boolean(),
        stepSequence(80),
        fc.nat(),
        (growthInterval, hysteresis, floor, steps, cutSeed) => {
          const cut = steps.length === 0 ? 0 : cutSeed % steps.length;
          const options = { growthInterval, hysteresis, minScale: floor ? 1 : null, initialScale: 64 };
          let original: LossScale = dynamicLossScale(options);
          for (const finite of steps.slice(0, cut)) original = original.adjust(finite);
          let restored = lossScaleFromJSON(JSON.parse(JSON.stringify(original)));
          expect(restored.toJSON()).toEqual(original.toJSON());
          for (const finite of steps.slice(cut)) {
            original = original.adjust(finite);
            restored = restored.adjust(finite);
            expect(restored.toJSON()).toEqual(original.toJSON());
          }
        },
      ),
      { numRuns: 200 },
    );
  });

  test("static and none scales round-trip", () => {
    expect(lossScaleFromJSON(staticLossScale(512).toJSON()).value).toBe(512);
    expect(lossScaleFromJSON({ kind: "none" }).kind).toBe("none");
  });

  test("a scale that reached 0 round-trips", () => {
    let s: LossScale = dynamicLossScale();
    for (let i = 0; i < 170; i++) s = s.adjust(false);
    expect(lossScaleFromJSON(JSON.parse(JSON.stringify(s))).value).toBe(0);
  });

  test("malformed checkpoints throw", () => {
    expect(() => lossScaleFromJSON(null)).toThrow(TypeError);
    expect(() => lossScaleFromJSON({ kind: "adaptive" })).toThrow(/kind/);
    const good = dynamicLossScale().toJSON();
    expect(() => lossScaleFromJSON({ ...good, growthTracker: -1 })).toThrow(/growthTracker/);
    expect(() => lossScaleFromJSON({ ...good, scale: 0.1 })).toThrow(/float32/);
    expect(() => lossScaleFromJSON({ ...good, hysteresisLeft: 5 })).toThrow(/hysteresis/);
    expect(() => lossScaleFromJSON({ ...good, event: "exploded" })).toThrow(/event/);
  });
});

describe("scale() and unscale()", () => {
  test("scale() multiplies numbers and returns new tensors of the loss's dtype", () => {
    const s = dynamicLossScale({ initialScale: 1024 });
    expect(s.scale(0.5)).toBe(512);
    using loss = tensor([0.25, 3], { dtype: "bf16" });
    using scaled = s.scale(loss);
    expect(scaled).not.toBe(loss);
    expect(scaled.dtype).toBe("bfloat16");
    expect([...scaled.toArray()]).toEqual([256, 3072]);
    expect([...loss.toArray()]).toEqual([0.25, 3]);
    using same = noLossScale().scale(loss);
    expect(same).not.toBe(loss);
    expect([...same.toArray()]).toEqual([0.25, 3]);
    expect(() => s.scale("1" as unknown as number)).toThrow(TypeError);
  });

  test("unscale() divides a tree of mixed-dtype gradients in place and reports finiteness", () => {
    const s = staticLossScale(1024);
    using a = tensor([1024, -2048], { dtype: "float32" });
    using b = tensor([512], { dtype: "float16" });
    using c = tensor([4096, 1], { dtype: "bfloat16" });
    const grads = { a, nested: [b, { c }], empty: null };
    const result = s.unscale(grads);
    expect(result.grads).toBe(grads);
    expect(result.finite).toBe(true);
    expect([...a.toArray()]).toEqual([1, -2]);
    expect([...b.toArray()]).toEqual([0.5]);
    expect([...c.toArray()]).toEqual([4, 1 / 1024]);
    using d = tensor([Infinity], { dtype: "float16" });
    expect(s.unscale([a, d]).finite).toBe(false);
    expect(noLossScale().unscale([a]).finite).toBe(true);
    expect(() => s.unscale([a, 3 as unknown as typeof a])).toThrow(TypeError);
  });

  test("a scale of 0 unscales with an infinite inverse, as PyTorch does", () => {
    let s: LossScale = dynamicLossScale();
    for (let i = 0; i < 170; i++) s = s.adjust(false);
    using g = tensor([1, 0]);
    expect(s.unscale([g]).finite).toBe(true);
    expect(g.toArray()[0]).toBe(Infinity);
  });
});

describe("allFinite()", () => {
  test("finds inf and NaN in any dtype and in number leaves", () => {
    using a = tensor([1, 2, 3]);
    using b = tensor([1, -Infinity], { dtype: "bf16" });
    using c = tensor([NaN], { dtype: "e4m3" });
    using d = tensor([448], { dtype: "e4m3" });
    expect(allFinite({ a, d, n: 3 })).toBe(true);
    expect(allFinite([a, b])).toBe(false);
    expect(allFinite([a, c])).toBe(false);
    expect(allFinite([a, NaN])).toBe(false);
    expect(allFinite([])).toBe(true);
    // allFinite never writes.
    expect([...a.toArray()]).toEqual([1, 2, 3]);
  });
});
