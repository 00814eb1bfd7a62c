/**
 * trace: PyTorch SGD's momentum buffer (with dampening and nesterov).
 *
 * @module
 */

import type { DtypeName } from "../dtype.ts";
import type { Tensor } from "../tensor.ts";
import { zeros } from "../tensor.ts";
import { treeMap } from "../tree.ts";
import { checkStateDtype, fround, storeState, valuesOf } from "./_ops.ts";
import {
  checkLeavesMatch,
  checkNumber,
  checkState,
  freezeState,
  type GradientTransformation,
  type OptState,
  type Params,
  tensorLeaves,
  type Updates,
} from "./transformation.ts";

/** Options of {@linkcode trace}. */
export interface TraceOptions {
  /** The momentum (> 0). */
  readonly momentum: number;
  /** Dampening (default 0). */
  readonly dampening?: number;
  /** Nesterov momentum (default false; needs dampening 0). */
  readonly nesterov?: boolean;
  /** Dtype of the buffer (default "float32"). */
  readonly stateDtype?: DtypeName;
}

/** State of {@linkcode trace}. */
export interface TraceState extends OptState {
  readonly kind: "trace";
  readonly count: number;
  /** The momentum buffers (params' structure). */
  readonly buffer: Updates;
}

/**
 * Momentum as torch.optim.SGD keeps it, in float32: on the first step `buf = d`; after,
 * `buf = float32(buf * momentum) + float32((1 - dampening) * d)`; the output is
 * `d + float32(momentum * buf)` with nesterov, else `buf`.
 *
 * @param options momentum, dampening, nesterov, stateDtype.
 * @returns A transformation holding one buffer per parameter.
 * @example
 * ```ts
 * import { tensor } from "../tensor.ts";
 * import { trace } from "./trace.ts";
 * const tx = trace({ momentum: 0.5 });
 * using g = tensor([2]);
 * let s = tx.init([g]);
 * const [u1, s1] = tx.update([g], s);
 * const [u2] = tx.update([g], s1);
 * if ((u1 as any)[0].toArray()[0] !== 2 || (u2 as any)[0].toArray()[0] !== 3) throw new Error("momentum");
 * ```
 */
export function trace(options: TraceOptions): GradientTransformation<TraceState> {
  const momentum = fround(checkNumber(options?.momentum, "momentum", { min: 0, minInclusive: false }));
  const dampening = checkNumber(options.dampening ?? 0, "dampening");
  const nesterov = options.nesterov ?? false;
  if (nesterov && dampening !== 0) {
    throw new RangeError(
      `Nesterov momentum requires dampening 0, got ${dampening}: set dampening to 0 or nesterov to false`,
    );
  }
  const oneMinusDampening = fround(1 - dampening);
  const stateDtype = checkStateDtype(options.stateDtype ?? "float32", "stateDtype");
  return {
    init(params: Params): TraceState {
      tensorLeaves(params, "trace params");
      return freezeState({
        kind: "trace",
        count: 0,
        buffer: treeMap((p: Tensor) => zeros(p.shape, { dtype: stateDtype }), params),
      });
    },
    update(updates: Updates, state: TraceState) {
      checkState(state, "trace");
      const buffers = tensorLeaves(state.buffer, "trace state.buffer");
      checkLeavesMatch(
        tensorLeaves(updates, "trace updates"),
        buffers,
        "trace: the updates do not match the state",
        "pass the state init() made for these params",
      );
      const first = state.count === 0;
      let leaf = 0;
      const out = treeMap((u: Tensor) => {
        const target = buffers[leaf++]!;
        const d = valuesOf(u);
        const next = first ? d.slice() : valuesOf(target).slice();
        if (!first) {
          for (let k = 0; k < next.length; k++)
            next[k] = fround(next[k]! * momentum) + fround(oneMinusDampening * d[k]!);
        }
        const buf = storeState(target, next);
        const result = zeros(u.shape);
        const r = result.data as Float32Array;
        if (nesterov) for (let k = 0; k < r.length; k++) r[k] = d[k]! + fround(momentum * buf[k]!);
        else r.set(buf);
        return result;
      }, updates);
      return [out, freezeState({ ...state, count: state.count + 1 })] as const;
    },
  };
}
