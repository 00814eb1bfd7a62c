/**
 * Embedding kernels of the CPU backend (zig/src/ops/embedding.zig): a gather of table rows, and
 * its gradient, a deterministic scatter-add (each table row summed in token order in float32).
 *
 * @module
 */

import { ptr } from "bun:ffi";
import { check, native, Status } from "../../_ffi.ts";
import { dtypeInfo } from "../../dtype.ts";
import type { Tensor } from "../../tensor.ts";

/** Embedding kernels. `ids` are int32 in [0, vocabulary) (the op checked them). */
export interface EmbeddingKernels {
  /** out [ids.length, dim] = the rows of table [vocabulary, dim] picked by ids (same dtype). */
  embeddingForward(table: Tensor, ids: Int32Array, out: Tensor): void;
  /**
   * gradTable [vocabulary, dim] = for each id, the sum (token order, float32, one rounding into
   * gradTable's dtype) of the gradOut rows [ids.length, dim] of its tokens; zeros for unused ids.
   */
  embeddingBackward(ids: Int32Array, gradOut: Tensor, gradTable: Tensor): void;
}

const ADDRESS_OUT = new BigUint64Array(1);

export const embeddingCpu: EmbeddingKernels = {
  embeddingForward(table, ids, out) {
    const [vocabulary, dim] = table.shape as [number, number];
    if (ids.length === 0 || dim === 0) return;
    const status = native().mp_embedding_forward(
      table.address,
      ptr(ids),
      out.address,
      vocabulary,
      dim,
      ids.length,
      dtypeInfo(table.dtype).code,
    );
    if (status !== Status.ok)
      check(status, `mp_embedding_forward(${table.dtype}, ${vocabulary} x ${dim}, ${ids.length} ids)`);
  },
  embeddingBackward(ids, gradOut, gradTable) {
    const [vocabulary, dim] = gradTable.shape as [number, number];
    if (vocabulary === 0 || dim === 0) return;
    // The counting sort of token positions by id: native scratch for the duration of the call.
    const count = vocabulary + ids.length;
    const sizeBytes = count * 4;
    check(native().mp_alloc(sizeBytes, ptr(ADDRESS_OUT)), `allocating ${sizeBytes} bytes of embedding workspace`);
    const workspace = Number(ADDRESS_OUT[0]);
    try {
      const status = native().mp_embedding_backward(
        ids.length === 0 ? 0 : ptr(ids),
        ids.length === 0 ? 0 : gradOut.address,
        gradTable.address,
        workspace,
        count,
        vocabulary,
        dim,
        ids.length,
        dtypeInfo(gradTable.dtype).code,
      );
      if (status !== Status.ok)
        check(status, `mp_embedding_backward(${gradTable.dtype}, ${vocabulary} x ${dim}, ${ids.length} ids)`);
    } finally {
      check(native().mp_free(workspace, sizeBytes), "freeing embedding workspace");
    }
  },
};
