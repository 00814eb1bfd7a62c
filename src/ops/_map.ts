/**
 * Iteration spaces for the backend's broadcast map-reduce kernel (`elementwiseMap`): the strides
 * each operand reads an output-shaped space with, split into the dimensions the target keeps and
 * the ones it sums over, with extent-1 dimensions dropped and neighbours merged so that the inner
 * loop is as long as possible (a plain vector loop for contiguous and broadcast operands).
 *
 * @module
 */

import { MAP_DIMS_MAX, type MapSpace } from "../backend/cpu/elementwise.ts";
import type { Shape } from "../tensor.ts";

/**
 * Row-major strides (in elements) of a tensor of `shape` read over the broadcast space `space`
 * (shapes aligned at the right), 0 on every dimension where it broadcasts.
 */
export function broadcastStrides(shape: Shape, space: readonly number[]): number[] {
  const strides = new Array<number>(space.length).fill(0);
  const offset = space.length - shape.length;
  let stride = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    const extent = shape[i]!;
    strides[offset + i] = extent === 1 ? 0 : stride;
    stride *= extent;
  }
  return strides;
}

function collapse(
  op: string,
  space: readonly number[],
  reduced: readonly boolean[],
  strides: readonly (readonly number[])[],
  want: boolean,
): { shape: number[]; strides: number[][] } {
  const shape: number[] = [];
  const merged: number[][] = strides.map(() => []);
  for (let d = 0; d < space.length; d++) {
    const extent = space[d]!;
    if (reduced[d] !== want || extent === 1) continue;
    const last = shape.length - 1;
    // An outer dimension whose stride is the inner one's stride times its extent merges with it.
    if (last >= 0 && strides.every((s, o) => merged[o]![last] === s[d]! * extent)) {
      shape[last]! *= extent;
      strides.forEach((s, o) => {
        merged[o]![last] = s[d]!;
      });
    } else {
      shape.push(extent);
      strides.forEach((s, o) => merged[o]!.push(s[d]!));
    }
  }
  if (shape.length > MAP_DIMS_MAX) {
    throw new RangeError(
      `${op}: this broadcast needs ${shape.length} dimensions after merging, more than ${MAP_DIMS_MAX}: reshape the operands to fewer dimensions first`,
    );
  }
  return { shape, strides: merged };
}

/**
 * The map space over `space` for operands read with `strides`, summing over the dimensions where
 * `reduced` is true (the target has the other dimensions, row-major).
 */
export function mapSpace(
  op: string,
  space: readonly number[],
  reduced: readonly boolean[],
  strides: readonly (readonly number[])[],
): MapSpace {
  const kept = collapse(op, space, reduced, strides, false);
  const summed = collapse(op, space, reduced, strides, true);
  return {
    keptShape: kept.shape,
    keptStrides: kept.strides,
    reducedShape: summed.shape,
    reducedStrides: summed.strides,
  };
}

/** Which dimensions of `space` a target of `shape` (aligned at the right) sums over. */
export function reducedDims(shape: Shape, space: readonly number[]): boolean[] {
  const offset = space.length - shape.length;
  return space.map((extent, d) => extent !== 1 && (d < offset || shape[d - offset] === 1));
}
