import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import {
  adamw,
  applyUpdates,
  chain,
  clipByGlobalNorm,
  disposeTree,
  type DtypeName,
  dynamicLossScale,
  fusedAdamW,
  fusedSgd,
  type GradientTransformation,
  GradScaler,
  sgd,
  staticLossScale,
  type Tensor,
  tensor,
  unscaleAndCheck,
  withMasterWeights,
  type LossScale,
} from "../../src/mod.ts";
import { bitsOfTree, maxUlp, randomTree, sameBytes, ulp16 } from "./_helpers.ts";

const FLOAT_DTYPES: readonly DtypeName[] = ["float32", "bfloat16", "float16"];

/** The largest distance, in ulps of each tensor's own dtype, between two lists of tensors. */
function maxUlpOf(a: readonly Tensor[], b: readonly Tensor[]): number {
  let worst = 0;
  a.forEach((x, i) => {
    const y = b[i]!;
    if (x.dtype === "float32") worst = Math.max(worst, maxUlp(x.data as Float32Array, y.data as Float32Array));
    else for (let k = 0; k < x.size; k++) worst = Math.max(worst, ulp16(x.data[k]!, y.data[k]!));
  });
  return worst;
}

interface Case {
  readonly sizes: number[];
  readonly paramDtype: DtypeName;
  readonly gradDtype: DtypeName;
  readonly maxGradNorm: number | null;
  readonly amsgrad: boolean;
  readonly weightDecay: number;
  readonly stochastic: boolean;
  readonly stateDtype: DtypeName;
  readonly infStep: number;
  readonly seed: number;
}

const caseArbitrary = fc.record({
  sizes: fc.array(fc.integer({ min: 0, max: 70 }), { minLength: 1, maxLength: 3 }),
  paramDtype: fc.constantFrom(...FLOAT_DTYPES),
  gradDtype: fc.constantFrom(...FLOAT_DTYPES),
  maxGradNorm: fc.constantFrom(null, 0.5, 100),
  amsgrad: fc.boolean(),
  weightDecay: fc.constantFrom(0, 0.01, 0.1),
  stochastic: fc.boolean(),
  stateDtype: fc.constantFrom<DtypeName>("float32", "float32", "bfloat16"),
  infStep: fc.integer({ min: 0, max: 8 }),
  seed: fc.integer({ min: 0, max: 9999 }),
});

/**
 * Runs the fused optimizer and its composed equivalent side by side for `steps` steps with loss-scaled
 * gradients (scale 2^4), a NaN planted at `infStep` (skipped by both), and checks params, masters
 * and optimizer state after every step.
 */
function compareFusedWithComposed(
  c: Case,
  makeFused: () => ReturnType<typeof fusedAdamW>,
  makeInner: () => GradientTransformation,
  stateOf: (composedState: unknown) => { master: readonly (Tensor | null)[]; moments: Tensor[] },
  fusedMoments: (state: unknown) => Tensor[],
  steps = 8,
): void {
  const paramsF = randomTree(c.sizes, c.paramDtype, c.seed);
  const paramsC = paramsF.map((p) => p.clone());
  const fused = makeFused();
  const composed = withMasterWeights(
    c.maxGradNorm === null ? makeInner() : chain(clipByGlobalNorm(c.maxGradNorm), makeInner()),
    { rounding: c.stochastic ? "stochastic" : "nearest", seed: 77 },
  );
  let composedState = composed.init(paramsC);
  const scale = 16;
  for (let step = 0; step < steps; step++) {
    const grads = randomTree(c.sizes, "float32", c.seed * 31 + step, 2).map((g) => {
      const scaled = g.toArray().map((x) => x * scale);
      if (step === c.infStep && scaled.length > 0) scaled[(c.seed + step) % scaled.length] = Number.NaN;
      g.dispose();
      return tensor(scaled, { dtype: c.gradDtype });
    });
    const paramsBefore = paramsF.map((p) => p.clone());
    const momentsBefore = fused.state === null ? null : fusedMoments(fused.state).map((t) => t.clone());
    const result = fused.step(paramsF, grads, { invScale: 1 / scale });
    const planted = step === c.infStep && c.sizes.some((n) => n > 0);
    expect(result.applied).toBe(!planted);
    if (planted) {
      // Skipped: not one bit of params or state moved.
      expect(sameBytes(paramsF, paramsBefore)).toBe(true);
      const momentsAfter = fusedMoments(fused.state);
      if (momentsBefore === null) expect(momentsAfter.every((t) => t.data.every((x) => x === 0))).toBe(true);
      else expect(sameBytes(momentsAfter, momentsBefore)).toBe(true);
      disposeTree([paramsBefore, momentsBefore]);
      disposeTree(grads);
      continue;
    }
    const unscaled = grads.map((g) => g.to("float32"));
    expect(unscaleAndCheck(unscaled, 1 / scale)).toBe(false);
    const [u, next] = composed.update(unscaled, composedState, paramsC);
    composedState = next;
    applyUpdates(paramsC, u);
    disposeTree([u, unscaled, grads]);
    expect(maxUlpOf(paramsF, paramsC)).toBe(0);
    const composedView = stateOf(composedState);
    const fusedState = fused.state as unknown as { master: readonly (Tensor | null)[] };
    fusedState.master.forEach((m, i) => {
      const other = composedView.master[i];
      expect(m === null).toBe(other === null);
      if (m !== null && other !== null && other !== undefined) expect(maxUlpOf([m], [other])).toBe(0);
    });
    expect(sameBytes(fusedMoments(fused.state), composedView.moments)).toBe(true);
  }
  fused.dispose();
  disposeTree([paramsF, paramsC, composedState]);
}

/** The inner transformations' states inside withMasterWeights(chain(clip?, x)). */
function innerChain(state: unknown): unknown[] {
  const s = state as { inner: { kind: string; inner: unknown[] } };
  const outer = s.inner.inner;
  const last = outer[outer.length - 1] as { kind: string; inner: unknown[] };
  return last.kind === "chain" ? last.inner : outer;
}

describe("fusedAdamW()", () => {
  test("fusedAdamW equals withMasterWeights(chain(clipByGlobalNorm, adamw)) bit for bit (1 ulp required) over shapes, dtypes, clipping and found-inf", () => {
    fc.assert(
      fc.property(caseArbitrary, (c) => {
        const options = { lr: 0.01, weightDecay: c.weightDecay, amsgrad: c.amsgrad, stateDtype: c.stateDtype };
        compareFusedWithComposed(
          c,
          () =>
            fusedAdamW({
              ...options,
              maxGradNorm: c.maxGradNorm,
              rounding: c.stochastic ? "stochastic" : "nearest",
              seed: 77,
            }),
          () => adamw(options),
          (state) => {
            const adam = innerChain(state)[0] as { mu: Tensor[]; nu: Tensor[]; nuMax: Tensor[] | null };
            const master = (state as { master: readonly (Tensor | null)[] }).master;
            return { master, moments: [...adam.mu, ...adam.nu, ...(adam.nuMax ?? [])] };
          },
          (state) => {
            if (state === null) return [];
            const s = state as { mu: Tensor[]; nu: Tensor[]; nuMax: Tensor[] | null };
            return [...s.mu, ...s.nu, ...(s.nuMax ?? [])];
          },
        );
      }),
      { numRuns: 60 },
    );
  });

  test("fusedSgd equals withMasterWeights(chain(clipByGlobalNorm, sgd)) bit for bit (1 ulp required) over shapes, dtypes, clipping and found-inf", () => {
    fc.assert(
      fc.property(caseArbitrary, fc.constantFrom(0, 0.9), fc.boolean(), (c, momentum, nesterov) => {
        const options = {
          lr: 0.05,
          momentum,
          nesterov: nesterov && momentum !== 0,
          weightDecay: c.weightDecay,
          stateDtype: c.stateDtype,
        };
        compareFusedWithComposed(
          c,
          () =>
            fusedSgd({
              ...options,
              maxGradNorm: c.maxGradNorm,
              rounding: c.stochastic ? "stochastic" : "nearest",
              seed: 77,
            }) as unknown as ReturnType<typeof fusedAdamW>,
          () => sgd(options),
          (state) => {
            const inner = innerChain(state);
            const traceState = inner.find((s) => (s as { kind: string }).kind === "trace") as
              | { buffer: Tensor[] }
              | undefined;
            const master = (state as { master: readonly (Tensor | null)[] }).master;
            return { master, moments: traceState === undefined ? [] : [...traceState.buffer] };
          },
          (state) => (state === null ? [] : [...((state as { buffer: Tensor[] | null }).buffer ?? [])]),
        );
      }),
      { numRuns: 40 },
    );
  });

  test("rows split across worker threads (past the pool's 1M-element threshold) give the composed bits", () => {
    const c: Case = {
      sizes: [600_001, 500_003],
      paramDtype: "bfloat16",
      gradDtype: "bfloat16",
      maxGradNorm: 1,
      amsgrad: false,
      weightDecay: 0.01,
      stochastic: true,
      stateDtype: "float32",
      infStep: 1,
      seed: 3,
    };
    const options = { lr: 0.01, weightDecay: c.weightDecay };
    compareFusedWithComposed(
      c,
      () => fusedAdamW({ ...options, maxGradNorm: 1, rounding: "stochastic", seed: 77 }),
      () => adamw(options),
      (state) => {
        const adam = innerChain(state)[0] as { mu: Tensor[]; nu: Tensor[] };
        return { master: (state as { master: readonly (Tensor | null)[] }).master, moments: [...adam.mu, ...adam.nu] };
      },
      (state) => (state === null ? [] : [...(state as { mu: Tensor[] }).mu, ...(state as { nu: Tensor[] }).nu]),
      3,
    );
  }, 60_000);

  test("a found-inf flag set by the caller skips the kernel without a check pass, and counts no step", () => {
    using p = tensor([1, 2], { dtype: "bf16" });
    using g = tensor([1, 1], { dtype: "bf16" });
    const opt = fusedAdamW();
    const bits = bitsOfTree([p]);
    expect(opt.step([p], [g], { foundInf: true }).applied).toBe(false);
    const flag = new Uint32Array([1]);
    expect(opt.step([p], [g], { foundInf: flag }).reason).toBe("non_finite");
    expect(bitsOfTree([p])).toEqual(bits);
    expect(opt.state?.count).toBe(0);
    flag[0] = 0;
    expect(opt.step([p], [g], { foundInf: flag }).applied).toBe(true);
    expect(opt.state?.count).toBe(1);
    opt.dispose();
  });

  test("stepWithLossScale() unscales inside the kernel and adjusts a dynamic scale like withLossScale", () => {
    using p = tensor([1, 2]);
    using good = tensor([1024, -2048], { dtype: "f16" });
    using bad = tensor([Number.POSITIVE_INFINITY, 1], { dtype: "f16" });
    const opt = fusedAdamW({ lr: 0.1, weightDecay: 0 });
    let scale: LossScale = dynamicLossScale({ initialScale: 1024, growthInterval: 1 });
    const first = opt.stepWithLossScale([p], [good], scale);
    expect(first.step).toEqual({ applied: true, reason: "applied", scaleBefore: 1024, scaleAfter: 2048 });
    expect(p.toArray()[0]).toBeCloseTo(0.9, 6);
    scale = first.lossScale;
    const second = opt.stepWithLossScale([p], [bad], scale);
    expect(second.step).toEqual({ applied: false, reason: "non_finite", scaleBefore: 2048, scaleAfter: 1024 });
    const fixed = opt.stepWithLossScale([p], [good], staticLossScale(1024));
    expect(fixed.lossScale.value).toBe(1024);
    opt.dispose();
  });

  test("fusedAdamW plugs into GradScaler: scaler.step(opt.scalerOptimizer(params, grads)) equals stepWithLossScale", () => {
    using a = tensor([1, -1, 0.5], { dtype: "bf16" });
    using b = tensor([1, -1, 0.5], { dtype: "bf16" });
    const optA = fusedAdamW({ lr: 0.01 });
    const optB = fusedAdamW({ lr: 0.01 });
    const scaler = new GradScaler({ initScale: 256 });
    let lossScale: LossScale = dynamicLossScale({ initialScale: 256 });
    for (let step = 0; step < 3; step++) {
      using gA = tensor([256 * step, 128, -64], { dtype: "f16" });
      using gB = tensor([256 * step, 128, -64], { dtype: "f16" });
      scaler.scale(1); // the loss would be scaled here
      const result = scaler.step(optA.scalerOptimizer([a], [gA]));
      scaler.update();
      const other = optB.stepWithLossScale([b], [gB], lossScale);
      lossScale = other.lossScale;
      expect(result).toEqual(other.step);
    }
    expect(bitsOfTree([a])).toEqual(bitsOfTree([b]));
    optA.dispose();
    optB.dispose();
  });

  test("fused steps refuse params that change between steps and bad options", () => {
    using p = tensor([1]);
    using q = tensor([1, 2]);
    using g = tensor([1]);
    const opt = fusedAdamW();
    opt.step([p], [g]);
    expect(() => opt.step([q], [q])).toThrow(/not the ones of the first step/);
    expect(() => opt.step([p], [q])).toThrow(/grads do not match params/);
    expect(() => fusedAdamW({ rounding: "up" as never })).toThrow(RangeError);
    expect(() => fusedAdamW({ maxGradNorm: 0 })).toThrow(RangeError);
    expect(() => fusedSgd({ nesterov: true })).toThrow(RangeError);
    opt.dispose();
  });
});

describe("pure bfloat16 training", () => {
  /**
   * Minimises sum((p - 1.5)^2 / 2) from p = 1 with bfloat16 params and no master copy. The step
   * lr * (p - 1.5) <= 5e-4 is below half a bfloat16 ulp at 1 (2^-8 = 0.0039), so nearest rounding
   * returns the old value every time, while stochastic rounding moves in expectation.
   */
  function train(
    rounding: "nearest" | "stochastic",
    makeOpt: (r: "nearest" | "stochastic") => { step: (p: Tensor[], g: Tensor[]) => unknown; dispose(): void },
  ) {
    const n = 1024;
    using p = tensor(new Float32Array(n).fill(1), { dtype: "bf16" });
    const opt = makeOpt(rounding);
    for (let step = 0; step < 3000; step++) {
      const values = p.toArray().map((x) => x - 1.5);
      using g = tensor(values, { dtype: "bf16" });
      opt.step([p], [g]);
    }
    opt.dispose();
    const values = p.toArray();
    return values.reduce((a, b) => a + b, 0) / n;
  }

  for (const [name, make] of [
    ["fusedSgd", (r: "nearest" | "stochastic") => fusedSgd({ lr: 1e-3, masterWeights: false, rounding: r, seed: 5 })],
    [
      "fusedAdamW",
      (r: "nearest" | "stochastic") =>
        fusedAdamW({ lr: 5e-4, weightDecay: 0, masterWeights: false, rounding: r, seed: 5 }),
    ],
  ] as const) {
    test(`${name} on bfloat16 params converges with stochastic rounding and stalls with nearest rounding`, () => {
      const nearest = train("nearest", make);
      const stochastic = train("stochastic", make);
      // Nearest: every update is below half an ulp, so not one parameter ever moves.
      expect(nearest).toBe(1);
      // Stochastic: the expected trajectory of SGD is 1.5 - 0.5 * (1 - 1e-3)^3000 ~ 1.475;
      // Adam (lr 5e-4, steps of about lr) reaches the target well within 3000 steps.
      expect(stochastic).toBeGreaterThan(1.45);
      expect(stochastic).toBeLessThan(1.55);
    });
  }
});
