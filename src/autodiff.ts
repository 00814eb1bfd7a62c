/**
 * Reverse-mode automatic differentiation over pytrees of tensors, JAX style: `valueAndGrad(fn)`
 * returns a function that runs `fn(params, ...args)` while recording every differentiable op on a
 * tape, then walks the tape backwards (an iterative loop in reverse recording order, which is a
 * topological order, so no recursion) and returns the loss and the gradients as a pytree shaped
 * like `params`.
 *
 * Memory: every tensor an op creates while a tape (or a checkpoint scope) is active is owned by
 * that scope. Each recorded op lists the tensors its backward function reads; when the forward pass
 * ends, the scope frees every tensor no backward function reads (e.g. a linear layer's output that
 * only a residual add consumed), and during the backward pass each saved tensor is freed once the
 * last node reading it has run, as PyTorch frees a node's saved tensors. What the caller gets back
 * (gradients, and the aux output with `hasAux`) is never freed, and each intermediate gradient is
 * disposed as soon as the node that consumes it has run. A training loop therefore keeps a flat
 * count of live native allocations (see `liveTensorCount`).
 *
 * Gradients flow in the dtype of the tensor they belong to (a bfloat16 activation gets a bfloat16
 * gradient, as in PyTorch), while ops accumulate in float32; casts inserted by autocast carry the
 * gradient back to the parameter's own dtype.
 *
 * @module
 */

import { addSame } from "./ops/elementwise.ts";
import { type Tensor, tensor } from "./tensor.ts";
import { type Tree, type TreeOf, treeLeaves, treeMap } from "./tree.ts";
import { isTensor } from "./tensor.ts";

/** Computes input gradients from the output gradient (same dtype as the output). */
export type Backward = (outputGrad: Tensor) => readonly (Tensor | null)[];

interface Node {
  readonly inputs: readonly Tensor[];
  readonly output: Tensor;
  /** The tensors `backward` reads (it may read the others' shapes and dtypes only). */
  readonly saved: readonly Tensor[];
  readonly backward: Backward;
}

/** A scope that owns the tensors created inside it; a tape also records nodes. */
interface Frame {
  readonly created: Tensor[];
  readonly tape: Tape | null;
}

interface Tape {
  readonly nodes: Node[];
  readonly requires: Set<Tensor>;
  /** How many recorded nodes list each tensor their backward function reads. */
  readonly readers: Map<Tensor, number>;
}

const frames: Frame[] = [];

function topTape(): Tape | null {
  const frame = frames[frames.length - 1];
  return frame === undefined ? null : frame.tape;
}

/**
 * Registers a tensor an op created with the innermost scope, which disposes it when the scope ends.
 * Outside any scope the caller owns it. @internal
 */
export function track(result: Tensor): Tensor {
  const frame = frames[frames.length - 1];
  if (frame !== undefined) frame.created.push(result);
  return result;
}

/** Whether a tensor needs a gradient on the active tape. @internal */
export function requiresGrad(value: Tensor): boolean {
  const tape = topTape();
  return tape !== null && tape.requires.has(value);
}

/** Whether any scope (tape or checkpoint) owns newly created tensors. @internal */
export function scoped(): boolean {
  return frames.length > 0;
}

/**
 * Runs `fn` and disposes every tensor the ops inside it created, except the tensors in its result
 * (TensorFlow.js's `tidy`). For eager code outside valueAndGrad (evaluation, inference), where
 * nothing else would free the intermediates. Inside a recording tape it only runs fn: the tape
 * needs the intermediates and frees them itself.
 *
 * @param fn A function returning a tensor, a pytree of tensors, or anything else.
 * @returns fn's result, owned by the caller (or by the enclosing scope).
 * @example
 * ```ts
 * import { tidy } from "./autodiff.ts";
 * import { add, mul } from "./ops/mod.ts";
 * import { liveTensorCount, tensor } from "./tensor.ts";
 * using x = tensor([1, 2]);
 * const before = liveTensorCount();
 * const y = tidy(() => add(mul(x, x), x));
 * if (liveTensorCount() !== before + 1) throw new Error("only the result survives");
 * y.dispose();
 * ```
 */
export function tidy<T>(fn: () => T): T {
  if (topTape() !== null) return fn();
  const frame: Frame = { created: [], tape: null };
  frames.push(frame);
  let result: T;
  try {
    result = fn();
  } catch (error) {
    frames.pop();
    for (const t of frame.created) t.dispose();
    throw error;
  }
  frames.pop();
  const keep = new Set(treeLeaves(result as Tree<unknown>).filter(isTensor) as Tensor[]);
  for (const t of frame.created) {
    if (keep.has(t)) track(t);
    else t.dispose();
  }
  return result;
}

/** Whether a tape is recording (ops may skip saving state for backward when not). @internal */
export function recording(): boolean {
  return topTape() !== null;
}

/**
 * Records `output = op(inputs)` with its backward function when any input needs a gradient.
 * `saved` lists every tensor whose values `backward` reads (inputs, the output, or statistics the
 * op made); of the others it may read only shapes, dtypes and devices, since the tape frees a tensor
 * as soon as no backward function still to run lists it. `backward` returns one gradient per input
 * (or null), each in that input's dtype; it runs with no tape active and owns every tensor it
 * creates. @internal
 */
export function record(
  output: Tensor,
  inputs: readonly Tensor[],
  saved: readonly Tensor[],
  backward: Backward,
): Tensor {
  const tape = topTape();
  if (tape === null) return output;
  if (!inputs.some((input) => tape.requires.has(input))) return output;
  tape.requires.add(output);
  tape.nodes.push({ inputs, output, saved, backward });
  for (const t of saved) tape.readers.set(t, (tape.readers.get(t) ?? 0) + 1);
  return output;
}

/**
 * Tells the innermost scope that the forward pass is done with these tensors, temporaries it
 * created (a residual branch's output once it is added): each is freed now unless a recorded
 * backward function reads it, in which case the tape frees it after its last reader. Layers call it
 * where Python's reference counting would free a temporary in PyTorch, which lowers the forward
 * pass's peak. Tensors the scope does not own are left alone. @internal
 */
export function discard(...tensors: Tensor[]): void {
  const frame = frames[frames.length - 1];
  if (frame === undefined) return;
  for (const t of tensors) {
    if (frame.tape?.readers.has(t) === true) continue;
    if (frame.created.lastIndexOf(t) >= 0) t.dispose();
  }
}

function withoutScope<T>(fn: () => T): T {
  const saved = frames.splice(0, frames.length);
  try {
    return fn();
  } finally {
    frames.push(...saved);
  }
}

/**
 * Frees a scope's tensors as soon as no backward function still to run reads them (PyTorch frees a
 * node's saved tensors once it has run), so the backward pass's peak is the forward's saved
 * activations, not everything the forward created.
 */
class Release {
  readonly #owned: ReadonlySet<Tensor>;
  readonly #keep: ReadonlySet<Tensor>;
  /** The tape's count of listings per saved tensor, counted down as the nodes run (one walk per tape). */
  readonly #readers: Map<Tensor, number>;

  constructor(tape: Tape, owned: readonly Tensor[], keep: ReadonlySet<Tensor>) {
    this.#owned = new Set(owned);
    this.#keep = keep;
    this.#readers = tape.readers;
  }

  /** Frees every owned tensor that no backward function reads: what only the forward pass used. */
  unread(): void {
    for (const t of this.#owned) if (!this.#readers.has(t)) this.#free(t);
  }

  /** After `node` ran (or was skipped): frees what it read that no earlier node reads. */
  done(node: Node): void {
    for (const t of node.saved) {
      const left = this.#readers.get(t)! - 1;
      if (left > 0) {
        this.#readers.set(t, left);
        continue;
      }
      this.#readers.delete(t);
      this.#free(t);
    }
  }

  #free(t: Tensor): void {
    if (this.#owned.has(t) && !this.#keep.has(t)) t.dispose();
  }
}

/**
 * Walks `tape` backwards from `output` seeded with `seed`, and returns the gradients of the tensors
 * in `targets` (null where none reached them). Disposes every intermediate gradient, and with
 * `release`, each saved tensor after its last reader has run.
 *
 * A backward function may return its output's gradient itself as an input's (an add passes it
 * through unchanged instead of copying it), so one tensor can be held by several entries: each
 * holder beyond the first is counted, and a tensor is disposed when its last holder lets go.
 */
function backwardPass(
  tape: Tape,
  output: Tensor,
  seed: Tensor,
  targets: readonly Tensor[],
  release: Release | null,
): (Tensor | null)[] {
  const grads = new Map<Tensor, Tensor>();
  grads.set(output, seed);
  const wanted = new Set(targets);
  // Holders beyond the first of a gradient that more than one entry holds.
  const shared = new Map<Tensor, number>();
  const share = (t: Tensor) => shared.set(t, (shared.get(t) ?? 0) + 1);
  const drop = (t: Tensor) => {
    const extra = shared.get(t);
    if (extra === undefined) t.dispose();
    else if (extra <= 1) shared.delete(t);
    else shared.set(t, extra - 1);
  };
  withoutScope(() => {
    for (let index = tape.nodes.length - 1; index >= 0; index--) {
      const node = tape.nodes[index]!;
      const outputGrad = grads.get(node.output);
      if (outputGrad === undefined) {
        release?.done(node);
        continue;
      }
      // A target that is also an op's output keeps its gradient; others are consumed here.
      if (!wanted.has(node.output)) grads.delete(node.output);
      const inputGrads = node.backward(outputGrad);
      for (const grad of inputGrads) if (grad === outputGrad) share(outputGrad);
      if (!wanted.has(node.output)) drop(outputGrad);
      node.inputs.forEach((input, i) => {
        const grad = inputGrads[i];
        if (grad === null || grad === undefined) return;
        if (!tape.requires.has(input)) {
          drop(grad);
          return;
        }
        if (grad.dtype !== input.dtype || grad.size !== input.size) {
          throw new TypeError(
            `Internal error: a backward function returned ${grad} for input ${input}: gradients match their input`,
          );
        }
        const existing = grads.get(input);
        if (existing === undefined) {
          grads.set(input, grad);
          return;
        }
        // Native, on the gradients' device: sum in float32 registers, round once to their dtype.
        grads.set(input, addSame(existing, grad));
        drop(existing);
        drop(grad);
      });
      release?.done(node);
    }
  });
  // Each target gets a tensor of its own: one held for two targets is copied for the second.
  const given = new Set<Tensor>();
  const results = targets.map((target) => {
    const grad = grads.get(target);
    if (grad === undefined) return null;
    if (!given.has(grad)) {
      given.add(grad);
      return grad;
    }
    return withoutScope(() => grad.clone());
  });
  const kept = new Set(results);
  for (const grad of grads.values()) if (!kept.has(grad)) drop(grad);
  return results;
}

/** What a finished forward pass held (for memory reports and tests). */
export interface TapeReport {
  /** Nodes recorded on the tape. */
  readonly nodes: number;
  /** Tensors alive at the end of the forward pass that the scope owns (activations saved for backward). */
  readonly savedTensors: number;
  /** Their storage in bytes. */
  readonly savedBytes: number;
}

/** Options of {@linkcode valueAndGrad}. */
export interface ValueAndGradOptions {
  /** fn returns `[loss, aux]`; aux (any pytree) is returned to the caller, who owns its tensors. */
  readonly hasAux?: boolean;
  /** Called after the forward pass with what the tape holds. */
  readonly onForward?: (report: TapeReport) => void;
}

function checkParams(params: unknown): Tensor[] {
  return treeLeaves(params as Tree<unknown>).map((leaf, i) => {
    if (!isTensor(leaf)) {
      throw new TypeError(
        `Parameter leaf ${i} is ${typeof leaf === "object" ? "a non-tensor object" : typeof leaf}: differentiate with respect to tensors only, and pass frozen values as a later argument (nn.partition splits a tree)`,
      );
    }
    if (leaf.disposed) throw new TypeError(`Parameter leaf ${i} is a disposed tensor: keep parameters alive`);
    if (leaf.dtype !== "float32" && leaf.dtype !== "float16" && leaf.dtype !== "bfloat16") {
      throw new TypeError(`Parameter leaf ${i} has dtype ${leaf.dtype}: parameters are float32, float16 or bfloat16`);
    }
    return leaf;
  });
}

function lossValue(loss: unknown): Tensor {
  if (!isTensor(loss) || loss.size !== 1) {
    throw new TypeError(
      `The differentiated function must return a scalar Tensor (one element), got ${isTensor(loss) ? loss.toString() : typeof loss}: reduce the loss with ops.mean or ops.sum`,
    );
  }
  return loss;
}

/** The result of a function from {@linkcode valueAndGrad}. */
export type ValueAndGrad<P> = [value: number, grads: P];

/**
 * Transforms `fn(params, ...args) -> scalar loss` into a function returning `[loss, grads]`, where
 * `grads` has the structure of `params` and each gradient the dtype of its parameter. With
 * `hasAux`, fn returns `[loss, aux]` and the result is `[[loss, aux], grads]`. The caller owns the
 * gradient tensors (dispose them after the update); every intermediate is disposed here.
 *
 * @param fn The loss function; params is a pytree of float tensors.
 * @param options hasAux, onForward.
 * @returns The transformed function.
 * @example
 * ```ts
 * import { valueAndGrad } from "./autodiff.ts";
 * import { mul, sum } from "./ops/mod.ts";
 * import { tensor } from "./tensor.ts";
 * const f = valueAndGrad((p: { x: ReturnType<typeof tensor> }) => sum(mul(p.x, p.x)));
 * using x = tensor([1, 2, 3]);
 * const [loss, grads] = f({ x });
 * if (loss !== 14 || grads.x.toArray()[2] !== 6) throw new Error("d/dx sum(x^2) = 2x");
 * grads.x.dispose();
 * ```
 */
export function valueAndGrad<P extends Tensor | TreeOf<P, Tensor>, A extends unknown[], X>(
  fn: (params: P, ...args: A) => [Tensor, X],
  options: ValueAndGradOptions & { readonly hasAux: true },
): (params: P, ...args: A) => [[value: number, aux: X], P];
export function valueAndGrad<P extends Tensor | TreeOf<P, Tensor>, A extends unknown[]>(
  fn: (params: P, ...args: A) => Tensor,
  options?: ValueAndGradOptions,
): (params: P, ...args: A) => ValueAndGrad<P>;
export function valueAndGrad<P extends Tensor | TreeOf<P, Tensor>, A extends unknown[]>(
  fn: (params: P, ...args: A) => unknown,
  options: ValueAndGradOptions = {},
): (params: P, ...args: A) => [unknown, P] {
  if (typeof fn !== "function") throw new TypeError(`valueAndGrad takes a function, got ${typeof fn}`);
  return (params: P, ...args: A) => {
    const leaves = checkParams(params);
    const tape: Tape = { nodes: [], requires: new Set(leaves), readers: new Map() };
    const frame: Frame = { created: [], tape };
    frames.push(frame);
    let lossTensor: Tensor;
    let aux: unknown;
    try {
      const result = fn(params, ...args);
      if (options.hasAux) {
        if (!Array.isArray(result) || result.length !== 2) {
          throw new TypeError("With hasAux, the function must return [loss, aux]");
        }
        lossTensor = lossValue(result[0]);
        aux = result[1];
      } else {
        lossTensor = lossValue(result);
      }
    } catch (error) {
      frames.pop();
      for (const t of frame.created) t.dispose();
      throw error;
    }
    frames.pop();
    const keep = new Set<Tensor>(treeLeaves(aux as Tree<Tensor>).filter(isTensor));
    for (const leaf of leaves) keep.add(leaf);
    let value: number;
    let release: Release;
    try {
      value = lossTensor.toArray()[0]!;
      // What only the forward pass read goes now; the rest as the backward pass finishes with it.
      release = new Release(tape, frame.created, keep);
      release.unread();
    } catch (error) {
      for (const t of frame.created) if (!keep.has(t)) t.dispose();
      throw error;
    }
    if (options.onForward) {
      let savedBytes = 0;
      let savedTensors = 0;
      for (const t of frame.created) {
        if (!t.disposed) {
          savedBytes += t.sizeBytes;
          savedTensors++;
        }
      }
      options.onForward({ nodes: tape.nodes.length, savedTensors, savedBytes });
    }
    let grads: (Tensor | null)[];
    try {
      const seed = tensor(1, { dtype: lossTensor.dtype, shape: lossTensor.shape, device: lossTensor.device });
      grads = backwardPass(tape, lossTensor, seed, leaves, release);
    } finally {
      for (const t of frame.created) if (!keep.has(t)) t.dispose();
    }
    let index = 0;
    const gradTree = treeMap(
      (leaf: Tensor) => {
        const grad = grads[index++];
        // A parameter the loss does not depend on gets zeros, so the tree is always complete.
        return (
          grad ?? tensor(new Float32Array(leaf.size), { dtype: leaf.dtype, shape: leaf.shape, device: leaf.device })
        );
      },
      params as Tree<Tensor>,
    ) as P; // The same structure as params, leaf for leaf.
    return [options.hasAux ? [value, aux] : value, gradTree];
  };
}

/**
 * Like {@linkcode valueAndGrad} but returns only the gradients.
 *
 * @param fn The loss function.
 * @param options hasAux (the aux output is dropped after its tensors are disposed), onForward.
 * @returns A function returning gradients shaped like params.
 * @example
 * ```ts
 * import { grad } from "./autodiff.ts";
 * import { sum } from "./ops/mod.ts";
 * import { tensor } from "./tensor.ts";
 * using x = tensor([1, 2]);
 * const g = grad((p: { x: typeof x }) => sum(p.x))({ x });
 * if (g.x.toArray().join() !== "1,1") throw new Error("d/dx sum(x) = 1");
 * g.x.dispose();
 * ```
 */
export function grad<P extends Tensor | TreeOf<P, Tensor>, A extends unknown[]>(
  fn: (params: P, ...args: A) => unknown,
  options: ValueAndGradOptions = {},
): (params: P, ...args: A) => P {
  const inner = valueAndGrad(fn as (params: P, ...args: A) => Tensor, options);
  return (params: P, ...args: A) => {
    const [value, grads]: [unknown, P] = inner(params, ...args);
    if (options.hasAux) {
      for (const leaf of treeLeaves((value as [number, Tree<Tensor>])[1])) if (isTensor(leaf)) leaf.dispose();
    }
    return grads;
  };
}

/**
 * The same values with no gradient flowing back (JAX's `stop_gradient`, PyTorch's `detach`).
 * Returns a copy that the active scope owns.
 *
 * @param x A tensor.
 * @returns A copy treated as a constant by autodiff.
 * @example
 * ```ts
 * import { grad, stopGradient } from "./autodiff.ts";
 * import { mul, sum } from "./ops/mod.ts";
 * import { tensor } from "./tensor.ts";
 * using x = tensor([3]);
 * const g = grad((p: { x: typeof x }) => sum(mul(p.x, stopGradient(p.x))))({ x });
 * if (g.x.toArray()[0] !== 3) throw new Error("only one factor is differentiated");
 * g.x.dispose();
 * ```
 */
export function stopGradient(x: Tensor): Tensor {
  if (!isTensor(x)) throw new TypeError(`stopGradient takes a Tensor, got ${typeof x}`);
  return track(x.clone());
}

/**
 * Gradient checkpointing (rematerialization): returns a function equal to `fn` whose intermediate
 * activations are not kept for the backward pass; the backward pass runs `fn` again to rebuild
 * them. Trades one extra forward of `fn` for the memory of its activations. `fn` must be a pure
 * function of its tensor arguments (pass parameters as arguments, not through a closure, so their
 * gradients are found) and return one tensor.
 *
 * @param fn A pure function of tensors (pytrees allowed) returning a tensor.
 * @returns The checkpointed function.
 * @example
 * ```ts
 * import { checkpoint, grad } from "./autodiff.ts";
 * import { mul, sum, tanh } from "./ops/mod.ts";
 * import { tensor } from "./tensor.ts";
 * const block = checkpoint((x: ReturnType<typeof tensor>) => tanh(mul(x, x)));
 * using x = tensor([0.5]);
 * const g = grad((p: { x: typeof x }) => sum(block(p.x)))({ x });
 * const want = 2 * 0.5 * (1 - Math.tanh(0.25) ** 2);
 * if (Math.abs(g.x.toArray()[0]! - want) > 1e-6) throw new Error("checkpointed gradient");
 * g.x.dispose();
 * ```
 */
export function checkpoint<A extends unknown[]>(fn: (...args: A) => Tensor): (...args: A) => Tensor {
  if (typeof fn !== "function") throw new TypeError(`checkpoint takes a function, got ${typeof fn}`);
  return (...args: A) => {
    const tape = topTape();
    const inputs = treeLeaves(args as Tree<unknown>).filter(isTensor) as Tensor[];
    if (tape === null || !inputs.some((input) => tape.requires.has(input))) return fn(...args);
    // Forward without recording, in a scope whose tensors (the activations) are freed at once.
    const scope: Frame = { created: [], tape: null };
    frames.push(scope);
    let output: Tensor;
    try {
      output = fn(...args);
    } catch (error) {
      frames.pop();
      for (const t of scope.created) t.dispose();
      throw error;
    }
    frames.pop();
    if (!isTensor(output)) throw new TypeError("A checkpointed function must return a Tensor");
    for (const t of scope.created) if (t !== output) t.dispose();
    const result = scope.created.includes(output) ? output : track(output.clone());
    if (result === output) track(output);
    const needed = inputs.filter((input) => tape.requires.has(input));
    // The backward pass runs fn again on every tensor argument.
    return record(result, needed, inputs, (outputGrad) => {
      // Recompute fn on a fresh tape, then backpropagate the incoming gradient through it.
      const inner: Tape = { nodes: [], requires: new Set(needed), readers: new Map() };
      const frame: Frame = { created: [], tape: inner };
      frames.push(frame);
      let again: Tensor;
      try {
        again = fn(...args);
      } finally {
        frames.pop();
      }
      try {
        const seed = outputGrad.clone();
        const release = new Release(inner, frame.created, new Set());
        release.unread();
        return backwardPass(inner, again, seed, needed, release);
      } finally {
        for (const t of frame.created) t.dispose();
      }
    });
  };
}
