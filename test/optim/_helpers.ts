/** Shared helpers of the optimizer tests: float32 ulp distances and tensor fixtures. */

import { type DtypeName, randn, Tensor, type Tree, tensor, treeLeaves } from "../../src/mod.ts";

const F = new Float32Array(1);
const U = new Int32Array(F.buffer);

/** float32 value -> an integer on a line where adjacent floats differ by 1 (and -0 == +0). */
export function orderedBits(x: number): number {
  F[0] = x;
  const i = U[0]!;
  return i < 0 ? -(i & 0x7fffffff) : i;
}

/** The distance in float32 ulps between two float32 values (Infinity if either is NaN). */
export function ulpDistance(a: number, b: number): number {
  if (Number.isNaN(a) || Number.isNaN(b)) return Number.isNaN(a) && Number.isNaN(b) ? 0 : Infinity;
  return Math.abs(orderedBits(a) - orderedBits(b));
}

/** The largest ulp distance between two arrays of float32 values. */
export function maxUlp(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`lengths ${a.length} and ${b.length} differ`);
  let worst = 0;
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, ulpDistance(a[i]!, b[i]!));
  return worst;
}

/** The distance in ulps of a 16-bit format between two of its bit patterns (same-sign magnitudes). */
export function ulp16(a: number, b: number): number {
  const ord = (x: number) => (x & 0x8000 ? -(x & 0x7fff) : x);
  return Math.abs(ord(a) - ord(b));
}

/** Random normal tensors of the given sizes and dtype. */
export function randomTree(sizes: readonly number[], dtype: DtypeName, seed: number, std = 1): Tensor[] {
  return sizes.map((n, i) => randn([n], { seed: seed * 131 + i, dtype, std }));
}

/** Copies of tensors (same dtype). */
export function cloneAll(tensors: readonly Tensor[]): Tensor[] {
  return tensors.map((t) => t.clone());
}

/** Values of every leaf, concatenated. */
export function valuesOfTree(tree: unknown): number[] {
  return treeLeaves(tree as never).flatMap((t) => [...(t as Tensor).toArray()]);
}

/** Raw bits of every tensor leaf (other leaves, e.g. a state's counters, as themselves), concatenated. */
export function bitsOfTree(tree: unknown): unknown[] {
  return treeLeaves(tree as Tree<unknown>).flatMap((t) => {
    if (!(t instanceof Tensor)) return [t];
    const data = t.data;
    return data instanceof Float32Array ? [...new Uint32Array(data.buffer, data.byteOffset, data.length)] : [...data];
  });
}

/** Disposes every tensor in the arguments (trees). */
export function disposeAll(...trees: unknown[]): void {
  for (const tree of trees) for (const t of treeLeaves(tree as Tree<unknown>)) if (t instanceof Tensor) t.dispose();
}

export { tensor };

/** Whether two lists of tensors hold the same bytes, tensor by tensor (fast for large tensors). */
export function sameBytes(a: readonly Tensor[], b: readonly Tensor[]): boolean {
  if (a.length !== b.length) return false;
  return a.every((x, i) => {
    const y = b[i]!;
    const bytes = (t: Tensor) => new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
    return x.dtype === y.dtype && Buffer.compare(bytes(x), bytes(y)) === 0;
  });
}
