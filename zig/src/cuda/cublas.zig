//! Matrix products on the GPU through cuBLAS, opened at run time with dlopen like libcuda (so the
//! library loads, and every other CUDA op runs, on a machine without cuBLAS): one handle per
//! device, bound to the device's primary context and its one stream, and one call,
//! `cublasGemmStridedBatchedEx`, with float32, float16 or bfloat16 inputs, a float32 C and float32
//! accumulation (CUBLAS_COMPUTE_32F: no TF32, no reduced-precision reductions).
//!
//! mixprec's matmul is row-major: C (m x n) = op(A) op(B), with A stored m x k (or k x m when
//! transposed) and B stored k x n (or n x k). cuBLAS is column-major, and a row-major matrix is
//! the column-major matrix of its transpose, so the row-major product is computed as the
//! column-major C^T (n x m) = op(B)^T op(A)^T: cuBLAS's first operand is B, its second A, its m is
//! our n, its n our m, and every leading dimension is the stored row length.
//!
//! MIXPREC_LIBCUBLAS names the library to open (a path, or zig-out/lib/libcublas_fake.so for the
//! fake that computes with the CPU kernels); otherwise libcublas.so.13, then libcublas.so.12.

const std = @import("std");
const driver = @import("driver.zig");
const numerics = @import("../numerics.zig");

pub const cublasStatus_t = c_int;
pub const cublasHandle_t = ?*anyopaque;

pub const status_success: cublasStatus_t = 0;
pub const status_not_initialized: cublasStatus_t = 1;
pub const status_alloc_failed: cublasStatus_t = 3;
pub const status_invalid_value: cublasStatus_t = 7;
pub const status_not_supported: cublasStatus_t = 15;

/// cublasOperation_t.
pub const op_n: c_int = 0;
pub const op_t: c_int = 1;
/// cudaDataType_t (library_types.h).
pub const cuda_r_32f: c_int = 0;
pub const cuda_r_16f: c_int = 2;
pub const cuda_r_16bf: c_int = 14;
/// cublasComputeType_t: float32 accumulation, no TF32 (that is CUBLAS_COMPUTE_32F_FAST_TF32, 77).
pub const compute_32f: c_int = 68;
/// cublasGemmAlgo_t: let cuBLAS choose.
pub const gemm_default: c_int = -1;

/// The cuBLAS entry points we use, resolved by name (field name = exported symbol).
pub const Api = struct {
    cublasCreate_v2: *const fn (handle: *cublasHandle_t) callconv(.c) cublasStatus_t,
    cublasSetStream_v2: *const fn (handle: cublasHandle_t, stream: driver.CUstream) callconv(.c) cublasStatus_t,
    cublasGetStatusName: *const fn (status: cublasStatus_t) callconv(.c) ?[*:0]const u8,
    cublasGemmStridedBatchedEx: *const fn (
        handle: cublasHandle_t,
        transa: c_int,
        transb: c_int,
        m: c_int,
        n: c_int,
        k: c_int,
        alpha: *const anyopaque,
        a: u64,
        a_type: c_int,
        lda: c_int,
        stride_a: c_longlong,
        b: u64,
        b_type: c_int,
        ldb: c_int,
        stride_b: c_longlong,
        beta: *const anyopaque,
        c: u64,
        c_type: c_int,
        ldc: c_int,
        stride_c: c_longlong,
        batch_count: c_int,
        compute_type: c_int,
        algo: c_int,
    ) callconv(.c) cublasStatus_t,
};

var api: Api = undefined;
var state: enum { unloaded, ready, unavailable } = .unloaded;
var handles: [16]cublasHandle_t = @splat(null);
/// Why loading failed, repeated by every later call.
var reason_buffer: [1024]u8 = undefined;
var reason_length: usize = 0;

fn remember_reason() void {
    const reason = driver.last_error();
    reason_length = @min(reason.len, reason_buffer.len);
    @memcpy(reason_buffer[0..reason_length], reason[0..reason_length]);
}

const names_default = [_][*:0]const u8{ "libcublas.so.13", "libcublas.so.12" };
const missing = "libcublas.so.13 / libcublas.so.12 not found: install the CUDA toolkit's cuBLAS (e.g. pip install nvidia-cublas-cu12 and add its lib folder to LD_LIBRARY_PATH) or set MIXPREC_LIBCUBLAS to the library's path";

/// Opens cuBLAS and resolves its entry points once; a failure is remembered (and its reason kept in
/// driver.last_error) so later matmuls answer at once.
fn load() driver.Error!void {
    switch (state) {
        .ready => return,
        .unavailable => {
            driver.set_error("{s}", .{reason_buffer[0..reason_length]});
            return error.CudaUnavailable;
        },
        .unloaded => {},
    }
    state = .unavailable;
    var handle: ?*anyopaque = null;
    var name: [*:0]const u8 = names_default[0];
    if (std.c.getenv("MIXPREC_LIBCUBLAS")) |override| {
        name = override;
        handle = std.c.dlopen(override, .{ .NOW = true });
    } else {
        for (names_default) |candidate| {
            name = candidate;
            handle = std.c.dlopen(candidate, .{ .NOW = true });
            if (handle != null) break;
        }
    }
    const library = handle orelse {
        const detail: []const u8 = if (std.c.dlerror()) |text| std.mem.span(text) else "no detail";
        driver.set_error("{s} (dlopen {s}: {s})", .{ missing, std.mem.span(name), detail });
        remember_reason();
        return error.CudaUnavailable;
    };
    inline for (comptime std.meta.fieldNames(Api)) |field_name| {
        const symbol = std.c.dlsym(library, field_name) orelse {
            driver.set_error("{s} lacks {s}: cuBLAS 12 or later is needed; install it or set MIXPREC_LIBCUBLAS", .{ std.mem.span(name), field_name });
            remember_reason();
            return error.CudaUnavailable;
        };
        @field(api, field_name) = @ptrCast(@alignCast(symbol));
    }
    state = .ready;
}

fn check(result: cublasStatus_t, what: []const u8) driver.Error!void {
    if (result == status_success) return;
    const name: []const u8 = if (api.cublasGetStatusName(result)) |text| std.mem.span(text) else "CUBLAS_STATUS_UNKNOWN";
    driver.set_error("{s} failed: {s} (cuBLAS status {d})", .{ what, name, result });
    return switch (result) {
        status_alloc_failed => error.OutOfMemory,
        status_invalid_value => error.InvalidArgument,
        else => error.CudaError,
    };
}

/// The cuBLAS handle of device `ordinal`, created on first use on its stream. `target` must be the
/// device whose context is current (driver.device makes it so).
fn handle_of(ordinal: u32, target: *driver.Device) driver.Error!cublasHandle_t {
    std.debug.assert(ordinal < handles.len);
    try load();
    if (handles[ordinal]) |existing| return existing;
    var created: cublasHandle_t = null;
    try check(api.cublasCreate_v2(&created), "cublasCreate");
    try check(api.cublasSetStream_v2(created, target.stream), "cublasSetStream");
    handles[ordinal] = created;
    return created;
}

fn data_type(dtype: numerics.Dtype) ?c_int {
    return switch (dtype) {
        .float32 => cuda_r_32f,
        .float16 => cuda_r_16f,
        .bfloat16 => cuda_r_16bf,
        else => null,
    };
}

/// One row-major product as mp_matmul describes it, on device addresses.
pub const Request = struct {
    a: u64,
    b: u64,
    c: u64,
    batch: u64,
    m: u64,
    n: u64,
    k: u64,
    dtype: numerics.Dtype,
    trans_a: bool,
    trans_b: bool,
    accumulate: bool,
    broadcast_b: bool,
};

/// The column-major cuBLAS call that computes a row-major Request (see the module comment).
pub const Gemm = struct {
    transa: c_int,
    transb: c_int,
    m: c_int,
    n: c_int,
    k: c_int,
    a: u64,
    lda: c_int,
    stride_a: c_longlong,
    b: u64,
    ldb: c_int,
    stride_b: c_longlong,
    c: u64,
    ldc: c_int,
    stride_c: c_longlong,
    batch: c_int,
    data_type: c_int,
    beta: f32,
};

/// Maps a row-major request to cuBLAS's arguments; null when a dimension exceeds int32.
pub fn plan(request: *const Request) ?Gemm {
    const int_max = std.math.maxInt(c_int);
    if (request.m > int_max or request.n > int_max or request.k > int_max or request.batch > int_max) return null;
    std.debug.assert(request.m > 0 and request.n > 0 and request.k > 0 and request.batch > 0);
    const m: c_int = @intCast(request.m);
    const n: c_int = @intCast(request.n);
    const k: c_int = @intCast(request.k);
    return .{
        // cuBLAS's A is our B: stored k x n row-major (column-major n x k, leading dimension n,
        // used as is), or n x k row-major when transposed (column-major k x n, transposed).
        .transa = if (request.trans_b) op_t else op_n,
        .transb = if (request.trans_a) op_t else op_n,
        .m = n,
        .n = m,
        .k = k,
        .a = request.b,
        .lda = if (request.trans_b) k else n,
        .stride_a = if (request.broadcast_b) 0 else @intCast(request.k * request.n),
        // cuBLAS's B is our A: stored m x k row-major (column-major k x m, leading dimension k),
        // or k x m when transposed (leading dimension m).
        .b = request.a,
        .ldb = if (request.trans_a) m else k,
        .stride_b = @intCast(request.m * request.k),
        .c = request.c,
        .ldc = n,
        .stride_c = @intCast(request.m * request.n),
        .batch = @intCast(request.batch),
        .data_type = data_type(request.dtype).?,
        .beta = if (request.accumulate) 1.0 else 0.0,
    };
}

/// Queues C = op(A) op(B) (+ C) on the device's stream (no wait). k = 0 writes zeros (or leaves C
/// as it is when accumulating) without calling cuBLAS.
pub fn matmul(ordinal: u32, target: *driver.Device, request: *const Request) driver.Error!void {
    if (request.batch == 0 or request.m == 0 or request.n == 0) return;
    if (request.k == 0) {
        if (!request.accumulate) try driver.fill32(target, request.c, 0, request.batch * request.m * request.n);
        return;
    }
    const gemm = plan(request) orelse {
        driver.set_error("a matmul of {d} x {d} x {d} (batch {d}) exceeds cuBLAS's int32 dimensions: split it", .{ request.m, request.n, request.k, request.batch });
        return error.InvalidArgument;
    };
    const cublas = try handle_of(ordinal, target);
    const alpha: f32 = 1.0;
    const beta: f32 = gemm.beta;
    try check(api.cublasGemmStridedBatchedEx(
        cublas,
        gemm.transa,
        gemm.transb,
        gemm.m,
        gemm.n,
        gemm.k,
        &alpha,
        gemm.a,
        gemm.data_type,
        gemm.lda,
        gemm.stride_a,
        gemm.b,
        gemm.data_type,
        gemm.ldb,
        gemm.stride_b,
        &beta,
        gemm.c,
        cuda_r_32f,
        gemm.ldc,
        gemm.stride_c,
        gemm.batch,
        compute_32f,
        gemm_default,
    ), "cublasGemmStridedBatchedEx");
}

test "a row-major product becomes the column-major product of the transposes" {
    const plain = plan(&.{ .a = 1, .b = 2, .c = 3, .batch = 4, .m = 5, .n = 6, .k = 7, .dtype = .bfloat16, .trans_a = false, .trans_b = false, .accumulate = false, .broadcast_b = false }).?;
    try std.testing.expectEqual(op_n, plain.transa);
    try std.testing.expectEqual(op_n, plain.transb);
    try std.testing.expectEqual(@as(c_int, 6), plain.m);
    try std.testing.expectEqual(@as(c_int, 5), plain.n);
    try std.testing.expectEqual(@as(u64, 2), plain.a);
    try std.testing.expectEqual(@as(c_int, 6), plain.lda);
    try std.testing.expectEqual(@as(c_longlong, 42), plain.stride_a);
    try std.testing.expectEqual(@as(u64, 1), plain.b);
    try std.testing.expectEqual(@as(c_int, 7), plain.ldb);
    try std.testing.expectEqual(@as(c_longlong, 35), plain.stride_b);
    try std.testing.expectEqual(@as(c_int, 6), plain.ldc);
    try std.testing.expectEqual(@as(c_longlong, 30), plain.stride_c);
    try std.testing.expectEqual(cuda_r_16bf, plain.data_type);
    try std.testing.expectEqual(@as(f32, 0), plain.beta);
    const both = plan(&.{ .a = 1, .b = 2, .c = 3, .batch = 1, .m = 5, .n = 6, .k = 7, .dtype = .float16, .trans_a = true, .trans_b = true, .accumulate = true, .broadcast_b = true }).?;
    try std.testing.expectEqual(op_t, both.transa);
    try std.testing.expectEqual(op_t, both.transb);
    try std.testing.expectEqual(@as(c_int, 7), both.lda);
    try std.testing.expectEqual(@as(c_int, 5), both.ldb);
    try std.testing.expectEqual(@as(c_longlong, 0), both.stride_a);
    try std.testing.expectEqual(@as(f32, 1), both.beta);
    try std.testing.expectEqual(cuda_r_16f, both.data_type);
}

test "dimensions beyond int32 are refused before cuBLAS sees them" {
    try std.testing.expect(plan(&.{ .a = 1, .b = 2, .c = 3, .batch = 1, .m = 1 << 31, .n = 1, .k = 1, .dtype = .float32, .trans_a = false, .trans_b = false, .accumulate = false, .broadcast_b = false }) == null);
}
