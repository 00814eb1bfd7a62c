//! A fake libcublas for machines without an NVIDIA GPU (built as zig-out/lib/libcublas_fake.so,
//! loaded with MIXPREC_LIBCUBLAS beside the fake libcuda): the entry points mixprec uses, with
//! `cublasGemmStridedBatchedEx` computed by the CPU matmul (zig/src/cpu/matmul.zig) on host memory
//! (the fake driver's device memory).
//!
//! It checks what a real cuBLAS would refuse (operations, types, leading dimensions below the
//! stored rows, a handle without a stream) and it reads the column-major call back into the
//! row-major request mixprec meant, so a wrong transpose, leading dimension, stride or operand
//! order gives wrong numbers (or a refusal) here, not only on a GPU. Only the layouts mixprec's
//! plumbing produces are supported: packed leading dimensions, alpha 1, beta 0 or 1; anything
//! else answers CUBLAS_STATUS_NOT_SUPPORTED. A product that matches the CPU here matches because
//! the emulation *is* the CPU code.

const std = @import("std");
const numerics = @import("numerics.zig");
const matmul = @import("cpu/matmul.zig");

const Status = c_int;
const success: Status = 0;
const not_initialized: Status = 1;
const invalid_value: Status = 7;
const not_supported: Status = 15;

const op_n: c_int = 0;
const op_t: c_int = 1;
const compute_32f: c_int = 68;

/// A handle: the stream it was bound to (mixprec always binds its device stream).
const Handle = struct {
    stream: ?*anyopaque = null,
};

var handle_storage: [16]Handle = @splat(.{});
var handle_count: usize = 0;

export fn cublasCreate_v2(handle: ?*?*Handle) Status {
    const out = handle orelse return invalid_value;
    if (handle_count == handle_storage.len) return not_initialized;
    handle_storage[handle_count] = .{};
    out.* = &handle_storage[handle_count];
    handle_count += 1;
    return success;
}

export fn cublasDestroy_v2(handle: ?*Handle) Status {
    _ = handle orelse return not_initialized;
    return success;
}

export fn cublasSetStream_v2(handle: ?*Handle, stream: ?*anyopaque) Status {
    const target = handle orelse return not_initialized;
    target.stream = stream;
    return success;
}

export fn cublasGetStatusName(status: Status) [*:0]const u8 {
    return switch (status) {
        success => "CUBLAS_STATUS_SUCCESS",
        not_initialized => "CUBLAS_STATUS_NOT_INITIALIZED",
        invalid_value => "CUBLAS_STATUS_INVALID_VALUE",
        not_supported => "CUBLAS_STATUS_NOT_SUPPORTED",
        else => "CUBLAS_STATUS_UNKNOWN",
    };
}

fn dtype_of(data_type: c_int) ?numerics.Dtype {
    return switch (data_type) {
        0 => .float32,
        2 => .float16,
        14 => .bfloat16,
        else => null,
    };
}

/// C' (m' x n', column-major) = op(A') op(B') per batch element, read back as the row-major
/// C (n' x m') = op(B')^T op(A')^T: the CPU request's A is cuBLAS's B and its B is cuBLAS's A.
export fn cublasGemmStridedBatchedEx(
    handle: ?*Handle,
    transa: c_int,
    transb: c_int,
    m: c_int,
    n: c_int,
    k: c_int,
    alpha: ?*const f32,
    a: u64,
    a_type: c_int,
    lda: c_int,
    stride_a: c_longlong,
    b: u64,
    b_type: c_int,
    ldb: c_int,
    stride_b: c_longlong,
    beta: ?*const f32,
    c: u64,
    c_type: c_int,
    ldc: c_int,
    stride_c: c_longlong,
    batch_count: c_int,
    compute_type: c_int,
    algo: c_int,
) Status {
    const target = handle orelse return not_initialized;
    // mixprec orders every matmul on its device stream; a handle on the legacy default stream
    // would race with the kernels before and after it on a real GPU.
    if (target.stream == null) return not_initialized;
    if (transa != op_n and transa != op_t) return invalid_value;
    if (transb != op_n and transb != op_t) return invalid_value;
    if (m < 0 or n < 0 or k < 0 or batch_count < 0) return invalid_value;
    // Real cuBLAS: lda >= rows of the stored A, ldb likewise, ldc >= m.
    const a_rows = if (transa == op_n) m else k;
    const b_rows = if (transb == op_n) k else n;
    if (lda < @max(1, a_rows) or ldb < @max(1, b_rows) or ldc < @max(1, m)) return invalid_value;
    if (compute_type != compute_32f or algo != -1) return not_supported;
    const a_dtype = dtype_of(a_type) orelse return not_supported;
    const b_dtype = dtype_of(b_type) orelse return not_supported;
    if (a_dtype != b_dtype or c_type != 0) return not_supported;
    const alpha_value = (alpha orelse return invalid_value).*;
    const beta_value = (beta orelse return invalid_value).*;
    if (alpha_value != 1.0 or (beta_value != 0.0 and beta_value != 1.0)) return not_supported;
    // Packed layouts only: the leading dimension is the stored row length.
    if (lda != a_rows or ldb != b_rows or ldc != m) return not_supported;
    const um: u64 = @intCast(m);
    const un: u64 = @intCast(n);
    const uk: u64 = @intCast(k);
    // Batch strides: cuBLAS's B (the request's A, n' x k) and C packed; cuBLAS's A (the
    // request's B) packed or 0 (one B shared by every batch element).
    if (batch_count > 1) {
        if (stride_b != @as(c_longlong, @intCast(uk * un))) return not_supported;
        if (stride_a != 0 and stride_a != @as(c_longlong, @intCast(uk * um))) return not_supported;
        if (stride_c != @as(c_longlong, @intCast(um * un))) return not_supported;
    }
    if (m == 0 or n == 0 or batch_count == 0) return success;
    if (k == 0) {
        if (beta_value == 0.0) @memset(@as([*]f32, @ptrFromInt(c))[0 .. um * un * @as(u64, @intCast(batch_count))], 0);
        return success;
    }
    matmul.matmul(&.{
        .a = @ptrFromInt(b),
        .b = @ptrFromInt(a),
        .c = @ptrFromInt(c),
        .batch = @intCast(batch_count),
        .m = un,
        .n = um,
        .k = uk,
        .a_dtype = b_dtype,
        .b_dtype = a_dtype,
        .trans_a = transb == op_t,
        .trans_b = transa == op_t,
        .accumulate = beta_value == 1.0,
        .broadcast_b = stride_a == 0 and batch_count > 1,
        // The CPU's default path (bfloat16 widened to float32), so the fake gives mp_matmul's bits.
        .bf16_dot = false,
    });
    return success;
}
