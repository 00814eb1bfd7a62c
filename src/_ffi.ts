/**
 * The one dlopen table of the native library (zig/src/ffi.zig) and its status codes. The library
 * is opened on first use, so code that needs no kernel (policies, loss-scale arithmetic) runs
 * without it. `MIXPREC_LIB` overrides the library's path (src/_library_path.ts: then the platform package,
 * then the local build); `MIXPREC_CPU` (baseline, avx512, avx512bf16, amx
 * or auto) caps the kernels the library chooses for the running CPU.
 *
 * @module
 */

import { dlopen, FFIType, ptr } from "bun:ffi";
import { MixprecError } from "./errors.ts";
import { localBuildPath, locateLibrary, platformPackageName } from "./_library_path.ts";

/** Must equal `abi_version` in zig/src/ffi.zig; a mismatch means the library is out of date. */
export const ABI_VERSION = 3;

/** Status codes returned by every export, mirrored from `Status` in zig/src/ffi.zig. */
export const Status = Object.freeze({
  ok: 0,
  invalid_dtype: 1,
  null_pointer: 2,
  out_of_memory: 3,
  invalid_argument: 4,
  overlap: 5,
  cuda_unavailable: 6,
  cuda_error: 7,
} as const);

/** Cast flags, mirrored from zig/src/numerics.zig. */
export const CastFlag = Object.freeze({ stochastic: 1, saturate: 2 } as const);

const SYMBOLS = {
  mp_abi_version: { args: [], returns: FFIType.u32 },
  mp_cpu_info: { args: [FFIType.ptr], returns: FFIType.i32 },
  mp_set_threads: { args: [FFIType.u32], returns: FFIType.i32 },
  mp_alloc: { args: [FFIType.u64, FFIType.ptr], returns: FFIType.i32 },
  mp_free: { args: [FFIType.u64, FFIType.u64], returns: FFIType.i32 },
  mp_zero: { args: [FFIType.u64, FFIType.u64], returns: FFIType.i32 },
  mp_host_alloc: { args: [FFIType.u64, FFIType.ptr], returns: FFIType.i32 },
  mp_host_free: { args: [FFIType.u64], returns: FFIType.i32 },
  mp_host_release_callback: { args: [FFIType.ptr], returns: FFIType.i32 },
  mp_host_stats: { args: [FFIType.ptr], returns: FFIType.i32 },
  mp_host_empty_cache: { args: [FFIType.ptr], returns: FFIType.i32 },
  mp_ptx: { args: [FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
  mp_cast: {
    args: [FFIType.ptr, FFIType.ptr, FFIType.u64, FFIType.u32, FFIType.u32, FFIType.u32, FFIType.u32],
    returns: FFIType.i32,
  },
  mp_unscale_check: { args: [FFIType.ptr, FFIType.u64, FFIType.f32, FFIType.ptr], returns: FFIType.i32 },
  // Optimizers (src/optim/_native.ts): global norm and fused steps.
  mp_sum_squares: { args: [FFIType.ptr, FFIType.u64, FFIType.f32, FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
  mp_fused_adamw: { args: [FFIType.ptr, FFIType.u64, FFIType.ptr, FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
  mp_fused_sgd: { args: [FFIType.ptr, FFIType.u64, FFIType.ptr, FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
  // Autodiff helper: matmul (zig/src/cpu/matmul.zig) and the FMA peak for benchmarks.
  mp_matmul: {
    args: [
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u32,
      FFIType.u32,
      FFIType.u32,
    ],
    returns: FFIType.i32,
  },
  mp_matmul_out: {
    args: [
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u32,
      FFIType.u32,
      FFIType.u32,
      FFIType.u32,
    ],
    returns: FFIType.i32,
  },
  mp_matmul_fused_depth: { args: [], returns: FFIType.u64 },
  // Layout ops (zig/src/ops/layout.zig): strided copies, the matmul epilogue.
  mp_layout_copy: {
    args: [FFIType.u64, FFIType.u64, FFIType.u64, FFIType.u32, FFIType.ptr, FFIType.ptr, FFIType.ptr],
    returns: FFIType.i32,
  },
  mp_matmul_epilogue: {
    args: [FFIType.u64, FFIType.u64, FFIType.u64, FFIType.u64, FFIType.u64, FFIType.u32],
    returns: FFIType.i32,
  },
  mp_peak_fma: { args: [FFIType.u64, FFIType.u32, FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },

  // I/O (issue #7): a cast fused with conversion statistics (zig/src/cpu/convert.zig).
  mp_convert_stats: {
    args: [FFIType.ptr, FFIType.ptr, FFIType.u64, FFIType.u32, FFIType.u32, FFIType.ptr],
    returns: FFIType.i32,
  },
  // Elementwise family (zig/src/ops/elementwise.zig, src/backend/cpu/elementwise.ts): the broadcast
  // map-reduce engine (binary ops, their backward, sum, mean, broadcast copy), activations, swiglu.
  mp_elementwise_map: {
    args: [
      FFIType.u32,
      FFIType.u32,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.f32,
      FFIType.f32,
      FFIType.u32,
    ],
    returns: FFIType.i32,
  },
  mp_elementwise_forward: {
    args: [FFIType.u32, FFIType.u32, FFIType.u64, FFIType.u64, FFIType.u64],
    returns: FFIType.i32,
  },
  mp_elementwise_backward: {
    args: [FFIType.u32, FFIType.u32, FFIType.u64, FFIType.u64, FFIType.u64, FFIType.u64],
    returns: FFIType.i32,
  },
  mp_elementwise_swiglu_forward: {
    args: [FFIType.u32, FFIType.u64, FFIType.u64, FFIType.u64, FFIType.u64],
    returns: FFIType.i32,
  },
  mp_elementwise_swiglu_backward: {
    args: [FFIType.u32, FFIType.u64, FFIType.u64, FFIType.u64, FFIType.u64, FFIType.u64, FFIType.u64],
    returns: FFIType.i32,
  },
  // Normalization, softmax / cross-entropy and embedding (src/backend/cpu/{norm,softmax,embedding}.ts).
  mp_norm_forward: {
    args: [
      FFIType.u32,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u32,
      FFIType.f32,
    ],
    returns: FFIType.i32,
  },
  mp_norm_backward: {
    args: [
      FFIType.u32,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u32,
    ],
    returns: FFIType.i32,
  },
  mp_norm_workspace_count: { args: [FFIType.u64, FFIType.u64, FFIType.ptr], returns: FFIType.i32 },
  mp_softmax_forward: {
    args: [
      FFIType.u32,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u32,
      FFIType.u64,
      FFIType.i32,
      FFIType.u64,
      FFIType.u64,
    ],
    returns: FFIType.i32,
  },
  mp_softmax_backward: {
    args: [
      FFIType.u32,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u32,
      FFIType.u64,
      FFIType.i32,
      FFIType.u64,
    ],
    returns: FFIType.i32,
  },
  mp_embedding_forward: {
    args: [FFIType.u64, FFIType.u64, FFIType.u64, FFIType.u64, FFIType.u64, FFIType.u64, FFIType.u32],
    returns: FFIType.i32,
  },
  mp_embedding_backward: {
    args: [
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u32,
    ],
    returns: FFIType.i32,
  },
  // Attention and rotary position embedding (zig/src/ops/attention.zig, zig/src/ops/rope.zig;
  // src/backend/cpu/attention.ts and rope.ts). Arguments: op code, dtype code, a pointer to the
  // u64 problem descriptor, scalars, then tensor addresses as u64.
  mp_attention_forward: {
    args: [
      FFIType.u32,
      FFIType.u32,
      FFIType.ptr,
      FFIType.f32,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u32,
      FFIType.u64,
      FFIType.u64,
    ],
    returns: FFIType.i32,
  },
  mp_attention_backward: {
    args: [
      FFIType.u32,
      FFIType.u32,
      FFIType.ptr,
      FFIType.f32,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u32,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
    ],
    returns: FFIType.i32,
  },
  mp_rope_forward: {
    args: [FFIType.u32, FFIType.u32, FFIType.ptr, FFIType.u64, FFIType.u64, FFIType.u64, FFIType.u64],
    returns: FFIType.i32,
  },
  mp_rope_backward: {
    args: [FFIType.u32, FFIType.u32, FFIType.ptr, FFIType.u64, FFIType.u64, FFIType.u64, FFIType.u64],
    returns: FFIType.i32,
  },
  // CUDA backend (src/backend/cuda.ts). Device addresses cross as u64; the first u32 is the ordinal.
  mp_last_error: { args: [FFIType.ptr, FFIType.u64, FFIType.ptr], returns: FFIType.i32 },
  mp_cuda_init: { args: [], returns: FFIType.i32 },
  mp_cuda_device_count: { args: [FFIType.ptr], returns: FFIType.i32 },
  mp_cuda_device_info: { args: [FFIType.u32, FFIType.ptr, FFIType.u64, FFIType.ptr], returns: FFIType.i32 },
  mp_cuda_alloc: { args: [FFIType.u32, FFIType.u64, FFIType.ptr], returns: FFIType.i32 },
  mp_cuda_free: { args: [FFIType.u32, FFIType.u64], returns: FFIType.i32 },
  mp_cuda_empty_cache: { args: [FFIType.u32], returns: FFIType.i32 },
  mp_cuda_memory_stats: { args: [FFIType.u32, FFIType.ptr], returns: FFIType.i32 },
  mp_cuda_memcpy_h2d: { args: [FFIType.u32, FFIType.u64, FFIType.ptr, FFIType.u64], returns: FFIType.i32 },
  mp_cuda_memcpy_d2h: { args: [FFIType.u32, FFIType.ptr, FFIType.u64, FFIType.u64], returns: FFIType.i32 },
  mp_cuda_memcpy_d2d: { args: [FFIType.u32, FFIType.u64, FFIType.u64, FFIType.u64], returns: FFIType.i32 },
  mp_cuda_fill32: { args: [FFIType.u32, FFIType.u64, FFIType.u32, FFIType.u64], returns: FFIType.i32 },
  mp_cuda_launch_cast: {
    args: [FFIType.u32, FFIType.u64, FFIType.u64, FFIType.u64, FFIType.u32, FFIType.u32, FFIType.u32, FFIType.u32],
    returns: FFIType.i32,
  },
  mp_cuda_launch_unscale_check: {
    args: [FFIType.u32, FFIType.u64, FFIType.u64, FFIType.u64, FFIType.f32, FFIType.u64, FFIType.u64],
    returns: FFIType.i32,
  },
  mp_cuda_launch_update_scale: {
    args: [FFIType.u32, FFIType.u64, FFIType.u64, FFIType.f64, FFIType.f64, FFIType.i32],
    returns: FFIType.i32,
  },
  mp_cuda_launch_global_norm: {
    args: [FFIType.u32, FFIType.u64, FFIType.u64, FFIType.u64, FFIType.u64],
    returns: FFIType.i32,
  },
  mp_cuda_launch_scale: {
    args: [FFIType.u32, FFIType.u64, FFIType.u64, FFIType.u64, FFIType.f32, FFIType.u64],
    returns: FFIType.i32,
  },
  mp_cuda_launch_clip_by_norm: {
    args: [FFIType.u32, FFIType.u64, FFIType.u64, FFIType.u64, FFIType.f32, FFIType.u64],
    returns: FFIType.i32,
  },
  mp_cuda_launch_fused_adamw: {
    args: [FFIType.u32, FFIType.u64, FFIType.u64, FFIType.u64, FFIType.u64, FFIType.u64],
    returns: FFIType.i32,
  },
  mp_cuda_launch_fused_sgd: {
    args: [FFIType.u32, FFIType.u64, FFIType.u64, FFIType.u64, FFIType.u64, FFIType.u64],
    returns: FFIType.i32,
  },
  mp_cuda_sum_squares: {
    args: [FFIType.u32, FFIType.u64, FFIType.u64, FFIType.u64, FFIType.f32, FFIType.ptr, FFIType.ptr],
    returns: FFIType.i32,
  },
  // The elementwise and layout families on the device (zig/src/cuda/ops_map.zig).
  mp_cuda_launch_map: {
    args: [
      FFIType.u32,
      FFIType.u32,
      FFIType.u32,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.f32,
      FFIType.f32,
      FFIType.u32,
    ],
    returns: FFIType.i32,
  },
  mp_cuda_launch_activation_forward: {
    args: [FFIType.u32, FFIType.u32, FFIType.u32, FFIType.u64, FFIType.u64, FFIType.u64],
    returns: FFIType.i32,
  },
  mp_cuda_launch_activation_backward: {
    args: [FFIType.u32, FFIType.u32, FFIType.u32, FFIType.u64, FFIType.u64, FFIType.u64, FFIType.u64],
    returns: FFIType.i32,
  },
  mp_cuda_launch_swiglu_forward: {
    args: [FFIType.u32, FFIType.u32, FFIType.u64, FFIType.u64, FFIType.u64, FFIType.u64],
    returns: FFIType.i32,
  },
  mp_cuda_launch_swiglu_backward: {
    args: [FFIType.u32, FFIType.u32, FFIType.u64, FFIType.u64, FFIType.u64, FFIType.u64, FFIType.u64, FFIType.u64],
    returns: FFIType.i32,
  },
  mp_cuda_launch_strided_copy: {
    args: [FFIType.u32, FFIType.u64, FFIType.u64, FFIType.u64, FFIType.u32, FFIType.ptr, FFIType.ptr, FFIType.ptr],
    returns: FFIType.i32,
  },
  mp_cuda_sync: { args: [FFIType.u32], returns: FFIType.i32 },
  mp_cuda_sync_count: { args: [FFIType.ptr], returns: FFIType.i32 },
  mp_cuda_timer_start: { args: [FFIType.u32], returns: FFIType.i32 },
  mp_cuda_timer_stop: { args: [FFIType.u32, FFIType.ptr], returns: FFIType.i32 },
  // The row-op families on CUDA devices (src/backend/cuda/rows.ts).
  mp_cuda_launch_norm_forward: {
    args: [
      FFIType.u32,
      FFIType.u32,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u32,
      FFIType.f32,
    ],
    returns: FFIType.i32,
  },
  mp_cuda_launch_norm_backward: {
    args: [
      FFIType.u32,
      FFIType.u32,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u32,
    ],
    returns: FFIType.i32,
  },
  mp_cuda_launch_softmax_forward: {
    args: [
      FFIType.u32,
      FFIType.u32,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u32,
      FFIType.ptr,
      FFIType.i32,
      FFIType.u64,
      FFIType.u64,
    ],
    returns: FFIType.i32,
  },
  mp_cuda_launch_softmax_backward: {
    args: [
      FFIType.u32,
      FFIType.u32,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u32,
      FFIType.ptr,
      FFIType.i32,
      FFIType.u64,
    ],
    returns: FFIType.i32,
  },
  mp_cuda_launch_embedding_forward: {
    args: [FFIType.u32, FFIType.u64, FFIType.ptr, FFIType.u64, FFIType.u64, FFIType.u64, FFIType.u64, FFIType.u32],
    returns: FFIType.i32,
  },
  mp_cuda_launch_embedding_backward: {
    args: [FFIType.u32, FFIType.ptr, FFIType.u64, FFIType.u64, FFIType.u64, FFIType.u64, FFIType.u64, FFIType.u32],
    returns: FFIType.i32,
  },
  mp_cuda_launch_rope_forward: {
    args: [FFIType.u32, FFIType.u32, FFIType.u32, FFIType.ptr, FFIType.u64, FFIType.u64, FFIType.ptr, FFIType.ptr],
    returns: FFIType.i32,
  },
  mp_cuda_launch_rope_backward: {
    args: [FFIType.u32, FFIType.u32, FFIType.u32, FFIType.ptr, FFIType.u64, FFIType.u64, FFIType.ptr, FFIType.ptr],
    returns: FFIType.i32,
  },
  mp_cuda_launch_attention_forward: {
    args: [
      FFIType.u32,
      FFIType.u32,
      FFIType.u32,
      FFIType.ptr,
      FFIType.f32,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u32,
      FFIType.u64,
      FFIType.u64,
    ],
    returns: FFIType.i32,
  },
  mp_cuda_launch_attention_backward: {
    args: [
      FFIType.u32,
      FFIType.u32,
      FFIType.u32,
      FFIType.ptr,
      FFIType.f32,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u32,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
    ],
    returns: FFIType.i32,
  },
  // Matmul on the GPU (zig/src/cuda/cublas.zig, zig/src/cuda/ops_matmul.zig).
  mp_cuda_matmul: {
    args: [
      FFIType.u32,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u32,
      FFIType.u32,
      FFIType.u32,
    ],
    returns: FFIType.i32,
  },
  mp_cuda_launch_matmul_epilogue: {
    args: [FFIType.u32, FFIType.u64, FFIType.u64, FFIType.u64, FFIType.u64, FFIType.u64, FFIType.u32],
    returns: FFIType.i32,
  },
  // A step under a device-resident loss scale (zig/src/cuda/ops_amp.zig).
  mp_cuda_launch_amp_scale_tensor: {
    args: [FFIType.u32, FFIType.u64, FFIType.u64, FFIType.u64, FFIType.u32, FFIType.u64],
    returns: FFIType.i32,
  },
  mp_cuda_launch_amp_sum_squares: {
    args: [FFIType.u32, FFIType.u64, FFIType.u64, FFIType.u64, FFIType.u64, FFIType.u64, FFIType.u64],
    returns: FFIType.i32,
  },
  mp_cuda_launch_amp_adam_prepare: {
    args: [
      FFIType.u32,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.u64,
      FFIType.f32,
      FFIType.u64,
      FFIType.u64,
      FFIType.u32,
      FFIType.u32,
    ],
    returns: FFIType.i32,
  },
} as const;

type Library = ReturnType<typeof dlopen<typeof SYMBOLS>>;
let library: Library | undefined;

/** The default library path: zig/zig-out/lib/libmixprec.<suffix> in this checkout. */
export const defaultLibraryPath = localBuildPath;

/** The values of MIXPREC_CPU (zig/src/cpu/dispatch.zig): a cap on the kernels chosen at run time. */
const CPU_CAPS: readonly string[] = ["", "auto", "baseline", "avx512", "avx512bf16", "amx"];

/** mp_cpu_info's bit for "this CPU lacks a feature the library's baseline was built for". */
const CPU_INFO_BASELINE_MISSING = 1 << 7;

function open(): Library {
  const cap = process.env.MIXPREC_CPU ?? "";
  if (!CPU_CAPS.includes(cap)) {
    throw new RangeError(
      `MIXPREC_CPU must be one of "baseline", "avx512", "avx512bf16", "amx" or "auto", got "${cap}": unset it to let the library choose`,
    );
  }
  // MIXPREC_LIB, else the platform package (@mixprec/<platform>), else the local build.
  const { path, source } = locateLibrary();
  let opened: Library;
  try {
    opened = dlopen(path, SYMBOLS);
  } catch (cause) {
    const reason = cause instanceof Error ? cause.message : String(cause);
    const fix =
      source === "platform package"
        ? `reinstall mixprec and ${platformPackageName()} at the same version, or set MIXPREC_LIB to a library built with \`make build\` in a mixprec checkout`
        : "run `make build` in the mixprec checkout, or set MIXPREC_LIB to the library's path";
    throw new MixprecError(
      "library_missing",
      `Cannot load the native library at ${path} (${source}; ${reason}): ${fix}`,
    );
  }
  const version = opened.symbols.mp_abi_version();
  if (version !== ABI_VERSION) {
    opened.close();
    throw new MixprecError(
      "library_out_of_date",
      `The native library at ${path} has ABI version ${version} but this code needs ${ABI_VERSION}: run \`make build\` to rebuild it`,
    );
  }
  const flags = new Uint32Array(1);
  if (opened.symbols.mp_cpu_info(ptr(flags)) === Status.ok && (flags[0]! & CPU_INFO_BASELINE_MISSING) !== 0) {
    opened.close();
    throw new MixprecError(
      "cpu_unsupported",
      `The native library at ${path} was built for a CPU with features this one lacks (x86-64-v3 by default: AVX2, FMA, F16C, BMI2): rebuild it here with \`cd zig && zig build -Dcpu=baseline\``,
    );
  }
  return opened;
}

/** The native symbols, opening the library on first use. */
export function native(): Library["symbols"] {
  library ??= open();
  return library.symbols;
}

/** Whether the native library can be opened (never throws). */
export function nativeAvailable(): boolean {
  try {
    native();
    return true;
  } catch {
    return false;
  }
}

const STATUS_NAMES = Object.fromEntries(Object.entries(Status).map(([name, code]) => [code, name]));

/**
 * Throws a MixprecError when a native call returned a status other than ok.
 *
 * @param status The i32 the export returned.
 * @param what The operation, for the message, e.g. "mp_cast(float32 -> bfloat16)".
 */
export function check(status: number, what: string): void {
  if (status === Status.ok) return;
  const name = STATUS_NAMES[status] ?? `unknown status ${status}`;
  throw new MixprecError(name, `${what} failed in the native library: ${name}`);
}

const ERROR_LENGTH = new BigUint64Array(1);
const ERROR_BUFFER = new Uint8Array(2048);

/**
 * The native library's message for its last failure (why CUDA is unavailable, or the CUresult
 * name and description of a failed driver call); empty when there is none.
 */
export function lastError(): string {
  check(native().mp_last_error(ptr(ERROR_BUFFER), ERROR_BUFFER.length, ptr(ERROR_LENGTH)), "mp_last_error");
  const length = Math.min(Number(ERROR_LENGTH[0]), ERROR_BUFFER.length);
  return new TextDecoder().decode(ERROR_BUFFER.subarray(0, length));
}
