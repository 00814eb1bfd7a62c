/**
 * A cheap leak check at optimizer steps. Tensors own native memory; a training loop that forgets
 * to dispose what it makes (gradients, activations, losses) leaves it to the FinalizationRegistry,
 * which may not run inside a synchronous loop, so memory grows step after step. At every
 * `WINDOW_STEPS`-th optimizer step (fusedAdamW, fusedSgd, applyUpdates) the live tensor count is
 * read (one integer); when it grew by at least one tensor per step in each of `WINDOWS` windows
 * running, a warning naming the fix is emitted, once per process. Loops that keep their live
 * count flat never warn; a loop that legitimately keeps more tensors for a while (a growing
 * cache) stops growing before four windows pass.
 *
 * @module
 */

import { liveTensorCount } from "./tensor.ts";

/** Steps between two reads of the live count. */
export const WINDOW_STEPS = 50;
/** Consecutive growing windows before the warning. */
export const WINDOWS = 4;

let steps = 0;
let lastCount = -1;
let growingWindows = 0;
/** The live count when the current run of growing windows began. */
let streakStart = 0;
let warned = false;

/** Called by each optimizer step. */
export function noteOptimizerStep(): void {
  if (warned) return;
  steps++;
  if (steps % WINDOW_STEPS !== 0) return;
  const count = liveTensorCount();
  if (lastCount >= 0 && count - lastCount >= WINDOW_STEPS) {
    if (growingWindows === 0) streakStart = lastCount;
    growingWindows++;
  } else {
    growingWindows = 0;
  }
  lastCount = count;
  if (growingWindows < WINDOWS || process.env.MIXPREC_LEAK_WARNING === "0") return;
  warned = true;
  process.emitWarning(
    `Live tensors keep growing across optimizer steps (${count} now, ${streakStart} ${growingWindows * WINDOW_STEPS} steps ago, about ${Math.round((count - streakStart) / (growingWindows * WINDOW_STEPS))} more per step): tensors made in the training loop are not disposed, so native memory grows. Dispose them after use (t.dispose()), declare them with \`using\`, or run the computation inside tidy(() => ...), which disposes the ops' intermediate results. (Warned once; MIXPREC_LEAK_WARNING=0 silences it.)`,
    { type: "MixprecLeakWarning", code: "MIXPREC_LIVE_TENSORS" },
  );
}
