/**
 * A worker process for test/train_state_test.ts (not a test itself).
 *
 *   bun test/_train_state_worker.ts train --steps N --to DIR [--from DIR]
 *       trains a small bf16 model with float32 master weights (withMasterWeights(adamw), stochastic
 *       rounding), a dynamic loss scale and a counter-based RNG for N steps (starting fresh, or from the checkpoint in --from),
 *       then saves the state to --to.
 *   bun test/_train_state_worker.ts big --to DIR --megabytes M
 *       prints "saving" and saves a checkpoint with about M MB of tensors (to be killed mid-save).
 *
 * Every operation is float32 arithmetic (Math.fround) or a native cast, so a run is a pure
 * function of its inputs: resuming from a checkpoint must give the uninterrupted run's bytes.
 */

import {
  adamw,
  applyUpdates,
  disposeTree,
  dynamicLossScale,
  type LossScale,
  loadTrainState,
  randn,
  saveTrainState,
  type Tensor,
  tensor,
  treeLeaves,
  treeStructure,
  treeUnflatten,
  withMasterWeights,
  zeros,
} from "../src/mod.ts";

type Params = { layers: { w: Tensor; b: Tensor }[] };
type Rng = { seed: number; counter: number };

function flag(name: string): string | undefined {
  const index = Bun.argv.indexOf(`--${name}`);
  return index >= 0 ? Bun.argv[index + 1] : undefined;
}

/** The optimizer (the optimizer helper's, from src/optim/): AdamW on float32 masters of bf16 params,
 * written back with stochastic rounding, whose seeds mix in the step count kept in the state. */
const optimizer = withMasterWeights(adamw({ lr: 0.05, weightDecay: 0.01 }), { rounding: "stochastic", seed: 3 });
/** The optimizer's state record. */
type State = ReturnType<typeof optimizer.init>;

function initial(): { params: Params; optState: State; lossScale: LossScale; rng: Rng } {
  const params: Params = {
    layers: [0, 1].map((i) => ({
      w: randn([4, 16], { seed: 10 + i, std: 0.5, dtype: "bfloat16" }),
      b: randn([4], { seed: 20 + i, dtype: "bfloat16" }),
    })),
  };
  return {
    params,
    optState: optimizer.init(params),
    lossScale: dynamicLossScale({ initialScale: 2 ** 10, growthInterval: 3 }),
    rng: { seed: 7, counter: 0 },
  };
}

/** One training step; params and the optimizer state's tensors are updated in place. */
function step(
  params: Params,
  optState: State,
  lossScale: LossScale,
  rng: Rng,
): { optState: State; lossScale: LossScale; rng: Rng } {
  const f = Math.fround;
  const paramLeaves = treeLeaves(params) as Tensor[];
  // Scaled bf16 gradients of 0.5 * |param - target|^2, with a target drawn from the RNG.
  const gradLeaves = paramLeaves.map((p, i) => {
    using target = randn(p.shape, { seed: (rng.seed * 1000 + rng.counter * 10 + i) >>> 0 });
    const values = p.toArray();
    const t = target.toArray();
    for (let k = 0; k < values.length; k++) values[k] = f(f(values[k]! - t[k]!) * f(lossScale.value));
    // Every fifth step overflows, as fp16 training sometimes does: the step must be skipped.
    if (rng.counter % 5 === 3) values[0] = Infinity;
    return tensor(values, { dtype: "bf16", shape: p.shape });
  });
  const grads = treeUnflatten(treeStructure(params), gradLeaves) as Params;
  const { finite } = lossScale.unscale(grads);
  let next = optState;
  if (finite) {
    const [updates, state] = optimizer.update(grads, optState, params);
    applyUpdates(params, updates);
    disposeTree(updates);
    next = state;
  }
  disposeTree(grads);
  return { optState: next, lossScale: lossScale.adjust(finite), rng: { seed: rng.seed, counter: rng.counter + 1 } };
}

const mode = Bun.argv[2];
const to = flag("to")!;
if (mode === "train") {
  const steps = Number(flag("steps"));
  const from = flag("from");
  let state: {
    params: Params;
    optState: State;
    lossScale: LossScale;
    rng: { seed: number; counter: number };
    step: number;
  };
  if (from !== undefined) {
    const loaded = loadTrainState<Params, State>(from);
    state = { ...loaded, lossScale: loaded.lossScale!, rng: loaded.rng as { seed: number; counter: number } };
  } else {
    state = { ...initial(), step: 0 };
  }
  for (let i = 0; i < steps; i++) {
    const next = step(state.params, state.optState, state.lossScale, state.rng);
    state = { ...state, ...next, step: state.step + 1 };
  }
  saveTrainState(to, state);
} else if (mode === "big") {
  const megabytes = Number(flag("megabytes"));
  const count = (megabytes * (1 << 20)) / 4 / 8;
  const params = Array.from({ length: 8 }, (_, i) => {
    const t = zeros([count]);
    (t.data as Float32Array).fill(i + 0.5);
    return t;
  });
  console.log("saving");
  saveTrainState(to, { params, optState: { count: 2 }, lossScale: null, step: 2, rng: null });
  console.log("saved");
} else {
  throw new Error(`unknown mode ${mode}`);
}
