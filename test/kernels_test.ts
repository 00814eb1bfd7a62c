/**
 * The PTX module (zig/zig-out/ptx/mixprec.ptx, built from zig/src/cuda/kernels.zig): every kernel
 * the CUDA backend launches is an entry of it, with the parameter list the launch passes. A kernel
 * that LLVM dropped or merged into another shows up here, on any machine, before a GPU sees it.
 * (zig/src/ffi.zig's tests check the same against the launch table in zig/src/cuda/driver.zig;
 * `make test` runs ptxas for sm_80 and sm_90 over the file.)
 */

import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";

const PTX_PATH = new URL("../zig/zig-out/ptx/mixprec.ptx", import.meta.url).pathname;

/** Entry name -> PTX parameter types, as zig/src/cuda/driver.zig's Kernel table launches them. */
const EXPECTED: Record<string, string[]> = {
  mp_cast_kernel: ["u64", "u64", "u64", "u32", "u32", "u32", "u32"],
  mp_unscale_check_kernel: ["u64", "u64", "u64", "f32", "u64", "u64"],
  mp_update_scale_kernel: ["u64", "u64", "f64", "f64", "u32"],
  mp_sum_squares_kernel: ["u64", "u64", "u64", "u64"],
  mp_global_norm_finish_kernel: ["u64", "u32", "u64"],
  mp_scale_kernel: ["u64", "u64", "u64", "f32", "u64"],
  mp_clip_by_norm_kernel: ["u64", "u64", "u64", "f32", "u64"],
  mp_fused_adamw_kernel: ["u64", "u64", "u64", "u64", "u64"],
  mp_sum_squares_f64_kernel: ["u64", "u64", "u64", "f32", "u64", "u64"],
  mp_fused_sgd_kernel: ["u64", "u64", "u64", "u64", "u64"],
  // The row-op families (zig/src/cuda/ops_rows.zig).
  mp_norm_forward_kernel: ["u32", "u32", "u64", "u64", "u64", "u64", "u64", "u64", "u64", "u64", "f32"],
  mp_norm_backward_rows_kernel: ["u32", "u32", "u64", "u64", "u64", "u64", "u64", "u64", "u64", "u64"],
  mp_norm_backward_partials_kernel: ["u32", "u32", "u64", "u64", "u64", "u64", "u64", "u64", "u64"],
  mp_norm_combine_kernel: ["u32", "u64", "u64", "u64", "u64", "u64"],
  mp_softmax_forward_kernel: ["u32", "u32", "u64", "u64", "u64", "u64", "u64", "u32", "u64"],
  mp_cross_entropy_mean_kernel: ["u64", "u64", "u32", "u64", "u64"],
  mp_softmax_backward_kernel: ["u32", "u32", "u64", "u64", "u64", "u64", "u64"],
  mp_cross_entropy_backward_kernel: ["u32", "u64", "u64", "u64", "u64", "u64", "u64", "u32", "u64", "u64"],
  mp_embedding_forward_kernel: ["u32", "u64", "u64", "u64", "u64", "u64"],
  mp_embedding_backward_kernel: ["u32", "u64", "u64", "u64", "u64", "u64"],
  mp_rope_kernel: ["u32", "u32", "u64", "u64", "u64", "u64", "u64"],
  mp_attention_forward_kernel: ["u32", "u64", "f32", "u64", "u64", "u64", "u64", "u32", "u64", "u64"],
  mp_attention_backward_keys_kernel: [
    "u32",
    "u64",
    "f32",
    "u64",
    "u64",
    "u64",
    "u64",
    "u32",
    "u64",
    "u64",
    "u64",
    "u64",
    "u64",
  ],
  mp_attention_backward_queries_kernel: [
    "u32",
    "u64",
    "f32",
    "u64",
    "u64",
    "u64",
    "u64",
    "u32",
    "u64",
    "u64",
    "u64",
    "u64",
  ],
  mp_matmul_epilogue_kernel: ["u64", "u64", "u64", "u64", "u64", "u32"],
  mp_amp_scale_tensor_kernel: ["u64", "u64", "u64", "u32", "u64"],
  mp_amp_sum_squares_kernel: ["u64", "u64", "u64", "u64", "u64", "u64"],
  mp_amp_adam_prepare_kernel: [
    "u64",
    "u64",
    "u64",
    "u64",
    "u64",
    "u64",
    "u64",
    "u32",
    "f32",
    "u64",
    "u64",
    "u32",
    "u32",
  ],
  // The elementwise and layout families (zig/src/cuda/ops_map.zig); structs pass by value as bytes.
  mp_activation_forward_kernel: ["u64", "u64", "u64", "u32", "u32"],
  mp_activation_backward_kernel: ["u64", "u64", "u64", "u64", "u32", "u32"],
  mp_swiglu_forward_kernel: ["u64", "u64", "u64", "u64", "u32"],
  mp_swiglu_backward_kernel: ["u64", "u64", "u64", "u64", "u64", "u64", "u32"],
  mp_map_kernel: ["u64", "u64", "u64", "u64", "b8[552]", "f32", "f32", "u32", "u32", "u32", "u32"],
  mp_strided_copy_kernel: ["u64", "u64", "b8[216]"],
};

function entries(ptx: string): Map<string, string[]> {
  const found = new Map<string, string[]>();
  for (const match of ptx.matchAll(/\.entry\s+(\w+)\s*\(([^)]*)\)/g)) {
    // ".param .u64 name", or ".param .align 8 .b8 name[552]" for a struct passed by value.
    const params = [...match[2]!.matchAll(/\.param\s+(?:\.align\s+\d+\s+)?\.(\w+)\s+\w+(\[\d+\])?/g)].map(
      (p) => p[1]! + (p[2] ?? ""),
    );
    found.set(match[1]!, params);
  }
  return found;
}

describe("mixprec.ptx", () => {
  const ptx = readFileSync(PTX_PATH, "utf8");

  test("targets sm_80 with 64-bit addresses, so one module serves sm_80 and later", () => {
    expect(ptx).toMatch(/^\.target sm_80$/m);
    expect(ptx).toMatch(/^\.address_size 64$/m);
  });

  test("holds exactly the kernels the backend launches, each with its launch's parameter types", () => {
    const found = entries(ptx);
    expect([...found.keys()].sort()).toEqual(Object.keys(EXPECTED).sort());
    for (const [name, params] of Object.entries(EXPECTED)) expect(found.get(name)).toEqual(params);
  });

  test("the entry parser finds a missing kernel (it is not vacuous)", () => {
    const without = ptx.replace(/\.entry\s+mp_update_scale_kernel/, ".entry renamed_kernel");
    expect(entries(without).has("mp_update_scale_kernel")).toBe(false);
    expect(entries(without).size).toBe(Object.keys(EXPECTED).length);
  });
});
