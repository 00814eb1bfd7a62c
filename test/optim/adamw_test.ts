import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import { adam, adamw, applyUpdates, disposeTree, type Tensor, tensor } from "../../src/mod.ts";
import { maxUlp, randomTree, ulpDistance } from "./_helpers.ts";

import { fmaf } from "../../src/optim/_ops.ts";

const f = Math.fround;

/**
 * One step of torch.optim.AdamW (single-tensor path) written literally with Math.fround at each
 * float32 operation: scalars are Python floats (float64) cast to float32 where a tensor op uses them.
 */
function torchAdamWStep(
  p: Float32Array,
  g: Float32Array,
  m: Float32Array,
  v: Float32Array,
  vMax: Float32Array | null,
  step: number,
  o: { lr: number; b1: number; b2: number; eps: number; wd: number; decoupled: boolean },
): void {
  const bc1 = 1 - o.b1 ** step;
  const bc2Sqrt = Math.sqrt(1 - o.b2 ** step);
  const stepSize = o.lr / bc1;
  for (let i = 0; i < p.length; i++) {
    let grad = g[i]!;
    if (o.decoupled)
      p[i] = f(p[i]! * f(1 - o.lr * o.wd)); // param.mul_(1 - lr * wd)
    else if (o.wd !== 0) grad = f(grad + f(f(o.wd) * p[i]!)); // grad.add(param, alpha=wd)
    // exp_avg.lerp_(grad, 1 - b1): ATen's vectorised lerp is one fma (torch 2.13 CPU, measured
    // bit for bit in test/torch_parity_test.ts against committed torch values).
    const w = f(1 - o.b1);
    m[i] = w < 0.5 ? fmaf(w, f(grad - m[i]!), m[i]!) : fmaf(f(w - 1), f(grad - m[i]!), grad);
    // exp_avg_sq.mul_(b2).addcmul_(g, g, value=1 - b2): the addcmul contracts to one fma.
    v[i] = fmaf(f(f(1 - o.b2) * grad), grad, f(v[i]! * f(o.b2)));
    let vUsed = v[i]!;
    if (vMax !== null) vUsed = vMax[i] = Math.max(vMax[i]!, v[i]!); // torch.maximum
    const denom = f(f(f(Math.sqrt(vUsed)) / f(bc2Sqrt)) + f(o.eps));
    p[i] = f(p[i]! + f(f(f(-stepSize) * m[i]!) / denom)); // addcdiv_(m, denom, value=-step_size)
  }
}

/**
 * The allowed error of p against torch's float32 rounding: 2 ulp of the new p, or 4 ulp of the step
 * term, whichever is larger. Our chain rounds `-lr * ((m / bc1) / denom)` where torch rounds
 * `((-lr / bc1) * m) / denom`: each is 3-4 roundings of the step term, so when the step is small
 * against p the two agree within 2 ulp of p, and when it is comparable (early steps, p near 0, sign
 * changes) the step term's own rounding (up to ~3.5 of its ulps) dominates.
 */
function pWithinBound(actual: number, expected: number, old: number): boolean {
  if (ulpDistance(actual, expected) <= 2) return true;
  const stepSize = Math.abs(expected - old);
  return Math.abs(actual - expected) <= 4 * 2 ** (Math.floor(Math.log2(stepSize)) - 23);
}

describe("adamw()", () => {
  test("adamw() follows torch.optim.AdamW's float32 reference step by step for 50 steps (m, v exact; p within 2 ulp of p or 4 ulp of the step)", () => {
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 1, max: 37 }), { minLength: 1, maxLength: 3 }),
        fc.constantFrom(1e-3, 3e-2, 0.1),
        fc.constantFrom(0, 1e-2, 0.1),
        fc.boolean(),
        fc.integer({ min: 0, max: 1000 }),
        (sizes, lr, wd, amsgrad, seed) => {
          const params = randomTree(sizes, "float32", seed);
          const opt = adamw({ lr, weightDecay: wd, amsgrad });
          let state = opt.init(params);
          const ref = params.map((p) => ({
            m: new Float32Array(p.size),
            v: new Float32Array(p.size),
            vMax: amsgrad ? new Float32Array(p.size) : null,
          }));
          for (let step = 1; step <= 50; step++) {
            const grads = randomTree(sizes, "float32", seed * 100 + step, 0.5 + step / 10);
            const expected = params.map((p) => p.toArray());
            const old = params.map((p) => p.toArray());
            expected.forEach((e, i) =>
              torchAdamWStep(e, grads[i]!.toArray(), ref[i]!.m, ref[i]!.v, ref[i]!.vMax, step, {
                lr,
                b1: 0.9,
                b2: 0.999,
                eps: 1e-8,
                wd,
                decoupled: true,
              }),
            );
            const [updates, next] = opt.update(grads, state, params);
            applyUpdates(params, updates);
            disposeTree(updates);
            disposeTree(grads);
            state = next;
            const adamState = state.inner[0] as unknown as { mu: Tensor[]; nu: Tensor[] };
            params.forEach((p, i) => {
              expect(maxUlp(adamState.mu[i]!.toArray(), ref[i]!.m)).toBe(0);
              expect(maxUlp(adamState.nu[i]!.toArray(), ref[i]!.v)).toBe(0);
              const actual = p.toArray();
              for (let k = 0; k < actual.length; k++) {
                if (!pWithinBound(actual[k]!, expected[i]![k]!, old[i]![k]!)) {
                  throw new Error(`step ${step} leaf ${i}[${k}]: ${actual[k]} vs torch ${expected[i]![k]}`);
                }
              }
              // Keep both sides on the same trajectory so the bound is per step, not accumulated.
              (p.data as Float32Array).set(expected[i]!);
            });
          }
          disposeTree(params);
          disposeTree(state);
        },
      ),
      { numRuns: 40 },
    );
  });

  test("adamw() has PyTorch's defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight_decay 1e-2", () => {
    using p = tensor([2, -3, 0.5]);
    using g = tensor([0.1, -0.2, 0.3]);
    const opt = adamw();
    const [u, s] = opt.update([g], opt.init([p]), [p]);
    applyUpdates([p], u);
    const expected = new Float32Array([2, -3, 0.5]);
    torchAdamWStep(expected, g.toArray(), new Float32Array(3), new Float32Array(3), null, 1, {
      lr: 1e-3,
      b1: 0.9,
      b2: 0.999,
      eps: 1e-8,
      wd: 1e-2,
      decoupled: true,
    });
    expect(maxUlp(p.toArray(), expected)).toBeLessThanOrEqual(1);
    disposeTree([u, s]);
  });

  test("adam() adds coupled weight decay to the gradient as torch.optim.Adam does", () => {
    using p = tensor([2, -3, 0.5, 1e-3]);
    const opt = adam({ lr: 0.01, weightDecay: 0.1 });
    let state = opt.init([p]);
    const m = new Float32Array(4);
    const v = new Float32Array(4);
    const expected = p.toArray();
    for (let step = 1; step <= 10; step++) {
      using g = tensor([0.1 * step, -0.2, 0.3, -1]);
      torchAdamWStep(expected, g.toArray(), m, v, null, step, {
        lr: 0.01,
        b1: 0.9,
        b2: 0.999,
        eps: 1e-8,
        wd: 0.1,
        decoupled: false,
      });
      const [u, next] = opt.update([g], state, [p]);
      applyUpdates([p], u);
      disposeTree(u);
      state = next;
      expect(maxUlp(p.toArray(), expected)).toBeLessThanOrEqual(2);
      (p.data as Float32Array).set(expected);
    }
    disposeTree(state);
  });

  test("adamw() keeps bfloat16 moments when asked, halving state memory", () => {
    using p = tensor([1, 2]);
    using g = tensor([0.3, -0.7]);
    const opt = adamw({ stateDtype: "bfloat16" });
    const state = opt.init([p]);
    const adamState = state.inner[0] as unknown as { mu: Tensor[] };
    expect(adamState.mu[0]!.dtype).toBe("bfloat16");
    const [u, next] = opt.update([g], state, [p]);
    using rounded = tensor([Math.fround(Math.fround(0.1) * Math.fround(0.3))], { dtype: "bf16" });
    expect((next.inner[0] as unknown as { mu: Tensor[] }).mu[0]!.toArray()[0]).toBe(rounded.toArray()[0]!);
    disposeTree([u, next]);
  });

  test("adamw() rejects betas outside [0, 1) with a RangeError", () => {
    expect(() => adamw({ betas: [1, 0.999] })).toThrow(RangeError);
  });
});
