/**
 * A worker process for test/fused_resume_test.ts (not a test itself).
 *
 *   bun test/_fused_resume_worker.ts --opt adamw|sgd --steps N --to DIR [--from DIR]
 *       trains float16 params with a GradScaler and fusedAdamW (amsgrad) or fusedSgd (momentum,
 *       nesterov), both with float32 masters and stochastic rounding, for N steps (fresh, or from
 *       the checkpoint in --from: params, optimizer stateDict and scaler stateDict), then saves
 *       all three with saveTrainState to --to.
 *
 * Gradients are float32 arithmetic on the params' bits and the step number, so a run is a pure
 * function of its inputs: resuming must give the uninterrupted run's bytes.
 */

import {
  type FusedStateDict,
  fusedAdamW,
  fusedSgd,
  GradScaler,
  type GradScalerStateDict,
  loadTrainState,
  randn,
  saveTrainState,
  type Tensor,
  tensor,
} from "../src/mod.ts";

function flag(name: string): string | undefined {
  const index = Bun.argv.indexOf(`--${name}`);
  return index >= 0 ? Bun.argv[index + 1] : undefined;
}

const kind = flag("opt") ?? "adamw";
const optimizer =
  kind === "adamw"
    ? fusedAdamW({ lr: 0.01, weightDecay: 0.01, amsgrad: true, rounding: "stochastic", seed: 11 })
    : fusedSgd({ lr: 0.05, momentum: 0.9, nesterov: true, weightDecay: 1e-3, rounding: "stochastic", seed: 5 });
const scaler = new GradScaler({ initScale: 2 ** 12, growthFactor: 1.7, backoffFactor: 0.3, growthInterval: 3 });

type Params = { w: Tensor; b: Tensor };

function gradsOf(params: Params, step: number, scale: number): Tensor[] {
  const f = Math.fround;
  return [params.w, params.b].map((p, i) => {
    const values = p.toArray();
    for (let k = 0; k < values.length; k++) {
      const target = f(Math.sin(step * 7 + k * 3 + i));
      values[k] = f(f(values[k]! - target) * f(scale));
    }
    // Every seventh step overflows: the scaler must skip it and back off.
    if (step % 7 === 4) values[0] = Infinity;
    return tensor(values, { dtype: "float16", shape: p.shape });
  });
}

const steps = Number(flag("steps"));
const to = flag("to")!;
const from = flag("from");
let params: Params;
let step = 0;
if (from === undefined) {
  params = {
    w: randn([8, 33], { seed: 1, std: 0.5, dtype: "float16" }),
    b: randn([33], { seed: 2, dtype: "float16" }),
  };
} else {
  const loaded = loadTrainState<Params, FusedStateDict, unknown>(from, { lossScaleReviver: (x) => x });
  params = loaded.params;
  step = loaded.step;
  optimizer.loadStateDict(loaded.optState);
  scaler.loadStateDict((loaded.extra as { scaler: GradScalerStateDict }).scaler);
}
for (let i = 0; i < steps; i++, step++) {
  scaler.scale(1);
  const grads = gradsOf(params, step, scaler.getScale());
  scaler.step(optimizer.scalerOptimizer([params.w, params.b], grads));
  scaler.update();
  for (const g of grads) g.dispose();
}
saveTrainState(to, {
  params,
  optState: optimizer.stateDict(),
  lossScale: null,
  step,
  rng: null,
  extra: { scaler: scaler.stateDict() },
});
