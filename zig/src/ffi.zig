//! Every function the library exports (C ABI). Each returns an i32 status from `Status`; results
//! come back through out-pointers. Arguments are checked here and the TypeScript side checks the
//! same things first (src/_ffi.ts), so a bad argument is an error, never undefined behaviour.

const std = @import("std");
const builtin = @import("builtin");
const numerics = @import("numerics.zig");
const pool = @import("cpu/pool.zig");
const cast = @import("cpu/cast.zig");
const unscale = @import("cpu/unscale.zig");
const sum_squares = @import("cpu/sum_squares.zig");
const adamw = @import("cpu/adamw.zig");
const sgd = @import("cpu/sgd.zig");
const matmul = @import("cpu/matmul.zig");
const dispatch = @import("cpu/dispatch.zig");
const convert = @import("cpu/convert.zig");
const storage = @import("ops/storage.zig");
const host_memory = @import("cpu/host_memory.zig");
const layout = @import("ops/layout.zig");

/// Bumped whenever an export's signature or meaning changes; src/_ffi.ts refuses a mismatch.
pub const abi_version: u32 = 3;

/// Status codes, mirrored by `Status` in src/_ffi.ts.
pub const Status = enum(i32) {
    ok = 0,
    invalid_dtype = 1,
    null_pointer = 2,
    out_of_memory = 3,
    invalid_argument = 4,
    overlap = 5,
    cuda_unavailable = 6,
    cuda_error = 7,
};

const ptx_source = @embedFile("mixprec_ptx");

fn status(code: Status) i32 {
    return @backingInt(code);
}

export fn mp_abi_version() u32 {
    return abi_version;
}

/// The running CPU and the kernels chosen for it (zig/src/cpu/dispatch.zig), mirrored by
/// cpuDevice() in src/device.ts. Bits 0..5: features of the running CPU that its OS enables
/// (cpuid and XCR0): 0 AVX2, 1 AVX512F, 2 AVX512-BF16, 3 F16C, 4 FMA, 5 BMI2. Bit 6: the
/// kernels convert float16 with F16C (the library's baseline CPU has it). Bit 7: the running CPU
/// lacks a feature the library's baseline was built for (calls may fault: rebuild with -Dcpu).
/// Bits 8..15: the thread count a call uses. Bits 16..19: the kernel path (1 baseline, 2 avx512,
/// 3 avx512bf16, 4 amx), after MIXPREC_CPU's cap. Bit 20: AMX-BF16, with the OS's tile state granted
/// to this process.
export fn mp_cpu_info(out_flags: ?*u32) i32 {
    const out = out_flags orelse return status(.null_pointer);
    out.* = cpu_flags(dispatch.detect(), dispatch.path(), pool.thread_count());
    return status(.ok);
}

fn cpu_flags(features: dispatch.Features, path: dispatch.Path, threads: u32) u32 {
    std.debug.assert(threads <= 0xff);
    var flags: u32 = 0;
    if (features.avx2) flags |= 1 << 0;
    if (features.avx512f) flags |= 1 << 1;
    if (features.avx512bf16) flags |= 1 << 2;
    if (features.f16c) flags |= 1 << 3;
    if (features.fma) flags |= 1 << 4;
    if (features.bmi2) flags |= 1 << 5;
    if (features.amx_bf16) flags |= 1 << 20;
    if (builtin.cpu.arch == .x86_64) {
        const has = std.Target.x86.featureSetHas;
        const built = builtin.cpu.features;
        if (has(built, .f16c)) flags |= 1 << 6;
        const lacking = (has(built, .avx2) and !features.avx2) or (has(built, .fma) and !features.fma) or
            (has(built, .f16c) and !features.f16c) or (has(built, .bmi2) and !features.bmi2) or
            (has(built, .avx512f) and !features.avx512f);
        if (lacking) flags |= 1 << 7;
    }
    flags |= threads << 8;
    flags |= @as(u32, @backingInt(path)) << 16;
    return flags;
}

test "mp_cpu_info reports the running CPU and the chosen path" {
    var flags: u32 = 0;
    try std.testing.expectEqual(status(.ok), mp_cpu_info(&flags));
    const path: dispatch.Path = @fromBackingInt(@intCast((flags >> 16) & 0xf));
    try std.testing.expectEqual(dispatch.path(), path);
    // The tests run on the machine that built them, so the baseline is never missing here.
    try std.testing.expect(flags & (1 << 7) == 0);
    if (path == .avx512bf16 or path == .amx) try std.testing.expect(flags & (1 << 2) != 0);
    if (path == .amx) try std.testing.expect(flags & (1 << 20) != 0);
    if (path != .baseline) try std.testing.expect(flags & (1 << 1) != 0);
    try std.testing.expectEqual(pool.thread_count(), (flags >> 8) & 0xff);
}

/// Sets the number of CPU threads kernels use (0: one per CPU).
export fn mp_set_threads(count: u32) i32 {
    if (count > pool.thread_count_max) return status(.invalid_argument);
    pool.set_thread_count(count);
    return status(.ok);
}

/// Allocates `size_bytes` bytes aligned to 64 bytes; `out_address` receives the address.
export fn mp_alloc(size_bytes: u64, out_address: ?*u64) i32 {
    const out = out_address orelse return status(.null_pointer);
    const memory = std.heap.c_allocator.alignedAlloc(u8, .@"64", @max(size_bytes, 1)) catch
        return status(.out_of_memory);
    out.* = @intFromPtr(memory.ptr);
    return status(.ok);
}

/// Frees memory from mp_alloc; `size_bytes` must be the size it was allocated with.
export fn mp_free(address: u64, size_bytes: u64) i32 {
    if (address == 0) return status(.null_pointer);
    const memory: [*]align(64) u8 = @ptrFromInt(address);
    std.heap.c_allocator.free(memory[0..@max(size_bytes, 1)]);
    return status(.ok);
}

/// Tensor storage (cpu/host_memory.zig): out receives (address, cell).
export fn mp_host_alloc(size_bytes: u64, out: ?*[2]u64) i32 {
    const target = out orelse return status(.null_pointer);
    const cell = host_memory.alloc(size_bytes) orelse return status(.out_of_memory);
    target.* = .{ cell.address, @intFromPtr(cell) };
    return status(.ok);
}

/// Frees a tensor's block now (dispose() with no view outside the tensor); idempotent.
export fn mp_host_free(cell: u64) i32 {
    if (cell == 0) return status(.null_pointer);
    host_memory.free_now(@ptrFromInt(cell));
    return status(.ok);
}

/// The deallocator an ArrayBuffer owning a tensor's block calls (context: the cell).
export fn mp_host_release_callback(out_address: ?*u64) i32 {
    const out = out_address orelse return status(.null_pointer);
    out.* = @intFromPtr(&host_memory.release);
    return status(.ok);
}

/// Live tensor blocks and their bytes, and the bytes of freed blocks kept for reuse.
export fn mp_host_stats(out: ?*[3]u64) i32 {
    const target = out orelse return status(.null_pointer);
    const live = host_memory.stats();
    target.* = .{ live[0], live[1], host_memory.cached() };
    return status(.ok);
}

/// Frees the blocks kept for reuse; out receives the bytes released.
export fn mp_host_empty_cache(out: ?*u64) i32 {
    const target = out orelse return status(.null_pointer);
    target.* = host_memory.empty_cache();
    return status(.ok);
}

/// Sets `size_bytes` bytes at `address` to zero.
export fn mp_zero(address: u64, size_bytes: u64) i32 {
    if (size_bytes == 0) return status(.ok);
    if (address == 0) return status(.null_pointer);
    const memory: [*]u8 = @ptrFromInt(address);
    @memset(memory[0..size_bytes], 0);
    return status(.ok);
}

/// The embedded PTX module (NUL-terminated text) for the CUDA backend.
export fn mp_ptx(out_address: ?*u64, out_length: ?*u64) i32 {
    const address = out_address orelse return status(.null_pointer);
    const length = out_length orelse return status(.null_pointer);
    address.* = @intFromPtr(ptx_source.ptr);
    length.* = ptx_source.len;
    return status(.ok);
}

/// Casts `count` elements from dtype `from` at `source` to dtype `to` at `target`.
/// flags: bit 0 stochastic rounding (float16 / bfloat16 targets), bit 1 saturate (fp8 targets).
export fn mp_cast(source: ?*const anyopaque, target: ?*anyopaque, count: u64, from: u32, to: u32, flags: u32, seed: u32) i32 {
    const from_dtype = numerics.Dtype.from_int(from) orelse return status(.invalid_dtype);
    const to_dtype = numerics.Dtype.from_int(to) orelse return status(.invalid_dtype);
    if (flags & ~(numerics.flag_stochastic | numerics.flag_saturate) != 0) return status(.invalid_argument);
    if (count == 0) return status(.ok);
    const source_bytes: [*]const u8 = @ptrCast(source orelse return status(.null_pointer));
    const target_bytes: [*]u8 = @ptrCast(target orelse return status(.null_pointer));
    const source_end = @intFromPtr(source_bytes) + count * from_dtype.size_bytes();
    const target_end = @intFromPtr(target_bytes) + count * to_dtype.size_bytes();
    if (source_end > @intFromPtr(target_bytes) and target_end > @intFromPtr(source_bytes)) return status(.overlap);
    cast.cast(.{
        .source = source_bytes,
        .target = target_bytes,
        .from = from_dtype,
        .to = to_dtype,
        .stochastic = flags & numerics.flag_stochastic != 0,
        .saturate = flags & numerics.flag_saturate != 0,
        .seed = seed,
    }, count);
    return status(.ok);
}

/// Unscales every tensor of the table in place by `inv_scale` and sets `out_found_inf` to 1 when
/// any element was inf or NaN, else 0. One call for the whole list of gradients.
export fn mp_unscale_check(table: ?[*]const unscale.TensorRow, row_count: u64, inv_scale: f32, out_found_inf: ?*u32) i32 {
    const out = out_found_inf orelse return status(.null_pointer);
    if (row_count == 0) {
        out.* = 0;
        return status(.ok);
    }
    const rows = (table orelse return status(.null_pointer))[0..row_count];
    if (!unscale.validate(rows)) return status(.invalid_dtype);
    out.* = @intFromBool(unscale.unscale_check(rows, inv_scale));
    return status(.ok);
}

// ---- Optimizers (src/optim/): global norm and fused AdamW / SGD steps ----

/// Sum over every element of (float32(x) * inv_scale)^2, accumulated in float64, and whether any
/// element was inf or NaN: the norm for clipping and the found-inf check in one read of the grads.
export fn mp_sum_squares(table: ?[*]const unscale.TensorRow, row_count: u64, inv_scale: f32, out_sum: ?*f64, out_found_inf: ?*u32) i32 {
    const sum_out = out_sum orelse return status(.null_pointer);
    const found_out = out_found_inf orelse return status(.null_pointer);
    if (row_count == 0) {
        sum_out.* = 0;
        found_out.* = 0;
        return status(.ok);
    }
    const rows = (table orelse return status(.null_pointer))[0..row_count];
    if (!unscale.validate(rows)) return status(.invalid_dtype);
    const result = sum_squares.sum_squares(rows, inv_scale);
    sum_out.* = result.sum;
    found_out.* = @intFromBool(result.found_inf);
    return status(.ok);
}

/// One fused AdamW step over a table of rows (zig/src/cpu/adamw.zig). When `found_inf` is given and
/// non-zero nothing is read or written and `out_applied` is 0; otherwise the step runs and it is 1.
export fn mp_fused_adamw(table: ?[*]const adamw.AdamRow, row_count: u64, hyper: ?*const adamw.AdamHyper, found_inf: ?*const u32, out_applied: ?*u32) i32 {
    const applied = out_applied orelse return status(.null_pointer);
    const h = hyper orelse return status(.null_pointer);
    if (h.flags & ~(adamw.flag_amsgrad | adamw.flag_stochastic) != 0) return status(.invalid_argument);
    if (found_inf) |flag| if (flag.* != 0) {
        applied.* = 0;
        return status(.ok);
    };
    applied.* = 1;
    if (row_count == 0) return status(.ok);
    const rows = (table orelse return status(.null_pointer))[0..row_count];
    if (!adamw.validate(rows)) return status(.invalid_argument);
    for (rows) |row| if (row.count != 0 and h.flags & adamw.flag_amsgrad != 0 and row.v_max == 0) return status(.null_pointer);
    adamw.step(rows, h);
    return status(.ok);
}

/// One fused SGD step over a table of rows (zig/src/cpu/sgd.zig); `found_inf` as for mp_fused_adamw.
export fn mp_fused_sgd(table: ?[*]const sgd.SgdRow, row_count: u64, hyper: ?*const sgd.SgdHyper, found_inf: ?*const u32, out_applied: ?*u32) i32 {
    const applied = out_applied orelse return status(.null_pointer);
    const h = hyper orelse return status(.null_pointer);
    const known = sgd.flag_nesterov | sgd.flag_stochastic | sgd.flag_first_step | sgd.flag_momentum;
    if (h.flags & ~known != 0) return status(.invalid_argument);
    if (found_inf) |flag| if (flag.* != 0) {
        applied.* = 0;
        return status(.ok);
    };
    applied.* = 1;
    if (row_count == 0) return status(.ok);
    const rows = (table orelse return status(.null_pointer))[0..row_count];
    if (!sgd.validate(rows, h)) return status(.invalid_argument);
    sgd.step(rows, h);
    return status(.ok);
}

test {
    _ = sum_squares;
    _ = adamw;
    _ = sgd;
}

test "the fused AdamW device kernel is a PTX entry taking (table, rows, total, hyper, found_inf) as u64" {
    const header = ".entry mp_fused_adamw_kernel(";
    const start = std.mem.indexOf(u8, ptx_source, header) orelse return error.MissingKernel;
    const end = std.mem.indexOfScalarPos(u8, ptx_source, start, ')') orelse return error.MalformedPtx;
    var lines = std.mem.tokenizeScalar(u8, ptx_source[start + header.len .. end], '\n');
    for (0..5) |_| {
        const line = lines.next() orelse return error.TooFewParameters;
        try std.testing.expect(std.mem.startsWith(u8, std.mem.trim(u8, line, " \t"), ".param .u64 "));
    }
    try std.testing.expect(lines.next() == null);
    comptime std.debug.assert(@sizeOf(adamw.AdamRow) == 72 and @sizeOf(adamw.AdamHyper) == 48);
}

// --- Layout ops (zig/src/ops/layout.zig): strided copies and the matmul epilogue ---

/// Copies a strided view: `ndim` (0..8) dimensions of `shape`, strides in elements for both sides
/// (the arrays hold 8 entries; the first `ndim` count), elements of 1, 2 or 4 bytes.
export fn mp_layout_copy(source: u64, target: u64, element_bytes: u64, ndim: u32, shape: ?*const [8]u64, source_strides: ?*const [8]u64, target_strides: ?*const [8]u64) i32 {
    if (element_bytes != 1 and element_bytes != 2 and element_bytes != 4) return status(.invalid_argument);
    if (ndim > layout.dims_max) return status(.invalid_argument);
    const dims = shape orelse return status(.null_pointer);
    const from = source_strides orelse return status(.null_pointer);
    const to = target_strides orelse return status(.null_pointer);
    var count: u64 = 1;
    for (dims[0..ndim]) |dim| count *= dim;
    if (count == 0) return status(.ok);
    if (source == 0 or target == 0) return status(.null_pointer);
    var copy = layout.StridedCopy{
        .source = @ptrFromInt(source),
        .target = @ptrFromInt(target),
        .element_bytes = element_bytes,
        .ndim = ndim,
        .shape = dims.*,
        .source_strides = from.*,
        .target_strides = to.*,
    };
    layout.simplify(&copy);
    layout.strided_copy(&copy);
    return status(.ok);
}

/// out (rows x cols, `dtype`) = float32 product + bias (a `dtype` row of cols, or 0 for none),
/// rounded once to nearest even.
export fn mp_matmul_epilogue(product: u64, bias: u64, out: u64, rows: u64, cols: u64, dtype: u32) i32 {
    const op_dtype = storage.op_dtype(dtype) orelse return status(.invalid_dtype);
    if (rows * cols == 0) return status(.ok);
    if (product == 0 or out == 0) return status(.null_pointer);
    layout.epilogue(op_dtype, &.{
        .product = @ptrFromInt(product),
        .bias = if (bias == 0) null else @ptrFromInt(bias),
        .out = @ptrFromInt(out),
        .rows = rows,
        .cols = cols,
    });
    return status(.ok);
}

test {
    _ = layout;
}

// --- Autodiff helper: matmul and peak FLOP/s (zig/src/cpu/matmul.zig) ---

/// Batched C = op(A) op(B) with float32 accumulation into a float32 C (row-major m x n per batch
/// element). A and B are float32, float16 or bfloat16, contiguous, batch-major; op(A) is m x k,
/// op(B) is k x n. flags: bit 0 A is stored transposed (k x m), bit 1 B is stored transposed
/// (n x k), bit 2 accumulate (C += ...), bit 3 use AVX512-BF16 dot products for bfloat16 x bfloat16 where the CPU has
/// them (default: widen to float32; see matmul.flag_bf16_dot),
/// bit 4 every batch element uses the same B.
export fn mp_matmul(a: u64, b: u64, c: u64, batch: u64, m: u64, n: u64, k: u64, a_dtype: u32, b_dtype: u32, flags: u32) i32 {
    const request = switch (matmul_request(a, b, c, batch, m, n, k, a_dtype, b_dtype, flags)) {
        .done => |code| return code,
        .request => |r| r,
    };
    matmul.matmul(&request);
    return status(.ok);
}

/// mp_matmul's argument checks and its request with C at `c`, or the status to return at once
/// (`ok` for an empty product).
fn matmul_request(a: u64, b: u64, c: u64, batch: u64, m: u64, n: u64, k: u64, a_dtype: u32, b_dtype: u32, flags: u32) union(enum) { done: i32, request: matmul.Request } {
    const a_type = numerics.Dtype.from_int(a_dtype) orelse return .{ .done = status(.invalid_dtype) };
    const b_type = numerics.Dtype.from_int(b_dtype) orelse return .{ .done = status(.invalid_dtype) };
    if (!matmul.input_dtype(a_type) or !matmul.input_dtype(b_type)) return .{ .done = status(.invalid_dtype) };
    if (flags & ~matmul.flags_all != 0) return .{ .done = status(.invalid_argument) };
    if (batch == 0 or m == 0 or n == 0) return .{ .done = status(.ok) };
    if (c == 0) return .{ .done = status(.null_pointer) };
    if (k != 0 and (a == 0 or b == 0)) return .{ .done = status(.null_pointer) };
    if (m > 1 << 31 or n > 1 << 31 or k > 1 << 31 or batch > 1 << 31) return .{ .done = status(.invalid_argument) };
    return .{ .request = .{
        .a = @ptrFromInt(if (a == 0) 64 else a),
        .b = @ptrFromInt(if (b == 0) 64 else b),
        .c = @ptrFromInt(c),
        .batch = batch,
        .m = m,
        .n = n,
        .k = k,
        .a_dtype = a_type,
        .b_dtype = b_type,
        .trans_a = flags & matmul.flag_trans_a != 0,
        .trans_b = flags & matmul.flag_trans_b != 0,
        .accumulate = flags & matmul.flag_accumulate != 0,
        .broadcast_b = flags & matmul.flag_broadcast_b != 0,
        .bf16_dot = flags & matmul.flag_bf16_dot != 0,
    } };
}

/// out = round(op(A) op(B) + bias) in `out_dtype` (float32, float16 or bfloat16), accumulated in
/// float32 as mp_matmul and rounded once, with the bits of mp_matmul into a float32 C followed by
/// mp_matmul_epilogue, but written by the micro-kernels straight from their accumulators: no
/// float32 product goes through memory. `bias` is a row of n values in out_dtype, or 0. `scratch`
/// is a float32 batch x m x n workspace for the partial sums of K slabs, needed (non-zero) only
/// for a float16 or bfloat16 out when k > mp_matmul_fused_depth() (256); otherwise it may be 0 (a
/// float32 out holds its own partial sums). flags as mp_matmul, except
/// accumulate (invalid_argument).
export fn mp_matmul_out(a: u64, b: u64, scratch: u64, bias: u64, out: u64, batch: u64, m: u64, n: u64, k: u64, a_dtype: u32, b_dtype: u32, out_dtype: u32, flags: u32) i32 {
    const out_type = storage.op_dtype(out_dtype) orelse return status(.invalid_dtype);
    if (flags & matmul.flag_accumulate != 0) return status(.invalid_argument);
    // A float32 result is its own C (partial sums of deep K in place, the bias added by the last
    // slab; without a bias it is the plain product). Otherwise C is the scratch, never touched
    // within one slab (fused_depth_max), so a missing one is a null C only for a deeper K.
    const in_place = out_type == .float32;
    const c: u64 = if (in_place) out else if (scratch != 0) scratch else if (k > matmul.fused_depth_max) 0 else 64;
    var request = switch (matmul_request(a, b, c, batch, m, n, k, a_dtype, b_dtype, flags)) {
        .done => |code| return code,
        .request => |r| r,
    };
    if (out == 0) return status(.null_pointer);
    request.out = if (in_place and bias == 0) null else @ptrFromInt(out);
    request.bias = if (bias == 0) null else @ptrFromInt(bias);
    request.out_dtype = out_type;
    matmul.matmul(&request);
    return status(.ok);
}

/// The deepest K that mp_matmul_out multiplies without a scratch.
export fn mp_matmul_fused_depth() u64 {
    return matmul.fused_depth_max;
}

/// Runs independent float32 FMA chains on `threads` threads for `iterations` steps (the machine's
/// peak FLOP/s, timed by the caller). `out_flops` receives the FLOPs done, `out_checksum` a value
/// that depends on every chain.
export fn mp_peak_fma(iterations: u64, threads: u32, out_flops: ?*f64, out_checksum: ?*f32) i32 {
    const flops = out_flops orelse return status(.null_pointer);
    const checksum = out_checksum orelse return status(.null_pointer);
    if (threads == 0 or threads > pool.thread_count_max) return status(.invalid_argument);
    checksum.* = matmul.peak_fma(iterations, threads);
    flops.* = @floatFromInt(iterations * threads * matmul.peak_flops_per_iteration());
    return status(.ok);
}

/// Casts `count` elements from `from` to `to` (nearest even) and writes the statistics of what the
/// rounding did to `out_stats` (convert.zig `Stats`: overflow, underflow, subnormal and counted
/// element counts, max and summed relative error). For checkpoint conversion (src/io/convert.ts).
export fn mp_convert_stats(source: ?*const anyopaque, target: ?*anyopaque, count: u64, from: u32, to: u32, out_stats: ?*convert.Stats) i32 {
    const out = out_stats orelse return status(.null_pointer);
    const from_dtype = numerics.Dtype.from_int(from) orelse return status(.invalid_dtype);
    const to_dtype = numerics.Dtype.from_int(to) orelse return status(.invalid_dtype);
    if (count == 0) {
        out.* = .{};
        return status(.ok);
    }
    const source_bytes: [*]const u8 = @ptrCast(source orelse return status(.null_pointer));
    const target_bytes: [*]u8 = @ptrCast(target orelse return status(.null_pointer));
    const source_end = @intFromPtr(source_bytes) + count * from_dtype.size_bytes();
    const target_end = @intFromPtr(target_bytes) + count * to_dtype.size_bytes();
    if (source_end > @intFromPtr(target_bytes) and target_end > @intFromPtr(source_bytes)) return status(.overlap);
    out.* = convert.convert(.{ .source = source_bytes, .target = target_bytes, .from = from_dtype, .to = to_dtype }, count);
    return status(.ok);
}

test {
    _ = @import("cpu/rows.zig");
    _ = storage;
    _ = host_memory;
    _ = matmul;
    _ = @import("ops/elementwise.zig");
    _ = numerics;
    _ = pool;
    _ = cast;
    _ = unscale;
    _ = convert;
    _ = driver;
    _ = step_math;
}

// ---- Elementwise family (zig/src/ops/elementwise.zig): broadcast arithmetic, sums over axes,
// activations and swiglu on float32 / float16 / bfloat16 storage. Tensors cross as u64 addresses
// and element counts; every operand of one call has the call's dtype.

const elementwise = @import("ops/elementwise.zig");

/// The broadcast map-reduce engine: target[j] = scale * sum over r of f(x0, x1, x2) at (j, r),
/// with the iteration space and every operand's strides in `layout` (an elementwise.Layout).
/// `op` picks f (elementwise.MapOp: copy, add, sub, mul, div, div_grad); flags bit i makes operand
/// i read `scalar` everywhere (its address is then ignored). Binary forward and backward ops, sum,
/// mean and the broadcast copy all run here.
export fn mp_elementwise_map(op: u32, dtype: u32, target: u64, x0: u64, x1: u64, x2: u64, layout_address: u64, scalar: f32, scale: f32, flags: u32) i32 {
    const call = map_arguments(op, dtype, target, .{ x0, x1, x2 }, layout_address, flags) catch |err| return map_status(err);
    var map = elementwise.Map{
        .layout = call.layout,
        .target = @ptrFromInt(target),
        .operands = undefined,
        .constant = undefined,
        .scalar = scalar,
        .scale = scale,
    };
    for (0..elementwise.operands_max) |i| {
        map.constant[i] = flags & (@as(u32, 1) << @intCast(i)) != 0;
        map.operands[i] = @ptrFromInt(call.operands[i]);
    }
    switch (call.op) {
        inline else => |o| switch (call.dtype) {
            inline .float32, .float16, .bfloat16 => |t| elementwise.map_run(o, t, &map),
            else => unreachable,
        },
    }
    return status(.ok);
}

/// The checked arguments of a map call (host or device): operands the op reads are non-zero, the
/// others (beyond the op's arity, or constants by `flags`) point at the target, and the layout is
/// valid for the operands read.
const MapArguments = struct {
    op: elementwise.MapOp,
    dtype: numerics.Dtype,
    layout: *const elementwise.Layout,
    operands: [elementwise.operands_max]u64,
};

const MapError = error{ invalid_argument, invalid_dtype, null_pointer };

fn map_status(err: MapError) i32 {
    return switch (err) {
        error.invalid_argument => status(.invalid_argument),
        error.invalid_dtype => status(.invalid_dtype),
        error.null_pointer => status(.null_pointer),
    };
}

fn map_arguments(op: u32, dtype: u32, target: u64, addresses: [elementwise.operands_max]u64, layout_address: u64, flags: u32) MapError!MapArguments {
    const map_op = std.enums.fromInt(elementwise.MapOp, op) orelse return error.invalid_argument;
    const d = storage.op_dtype(dtype) orelse return error.invalid_dtype;
    if (flags >> elementwise.operands_max != 0) return error.invalid_argument;
    if (layout_address == 0 or target == 0) return error.null_pointer;
    if (layout_address % @alignOf(elementwise.Layout) != 0) return error.invalid_argument;
    const map_layout: *const elementwise.Layout = @ptrFromInt(layout_address);
    var operands = addresses;
    var reads: [elementwise.operands_max]bool = undefined;
    for (0..elementwise.operands_max) |i| {
        const used = i < map_op.arity() and flags & (@as(u32, 1) << @intCast(i)) == 0;
        if (used and addresses[i] == 0) return error.null_pointer;
        if (!used) operands[i] = target;
        reads[i] = used;
    }
    if (!map_layout.valid(reads)) return error.invalid_argument;
    return .{ .op = map_op, .dtype = d, .layout = map_layout, .operands = operands };
}

/// Activation forward (`op`: elementwise.Activation) on `count` contiguous elements: out = f(x).
export fn mp_elementwise_forward(op: u32, dtype: u32, x: u64, out: u64, count: u64) i32 {
    const activation = std.enums.fromInt(elementwise.Activation, op) orelse return status(.invalid_argument);
    const d = storage.op_dtype(dtype) orelse return status(.invalid_dtype);
    if (count == 0) return status(.ok);
    if (x == 0 or out == 0) return status(.null_pointer);
    const args = elementwise.Unary{ .source = @ptrFromInt(x), .second = @ptrFromInt(x), .target = @ptrFromInt(out), .count = count };
    switch (activation) {
        inline else => |a| switch (d) {
            inline .float32, .float16, .bfloat16 => |t| elementwise.activation_forward_run(a, t, &args),
            else => unreachable,
        },
    }
    return status(.ok);
}

/// Activation backward: dx = g f'(saved), where saved is the output y for tanh and exp and the
/// input x otherwise (elementwise.Activation.saves_output).
export fn mp_elementwise_backward(op: u32, dtype: u32, saved: u64, g: u64, dx: u64, count: u64) i32 {
    const activation = std.enums.fromInt(elementwise.Activation, op) orelse return status(.invalid_argument);
    const d = storage.op_dtype(dtype) orelse return status(.invalid_dtype);
    if (count == 0) return status(.ok);
    if (saved == 0 or g == 0 or dx == 0) return status(.null_pointer);
    const args = elementwise.Unary{ .source = @ptrFromInt(saved), .second = @ptrFromInt(g), .target = @ptrFromInt(dx), .count = count };
    switch (activation) {
        inline else => |a| switch (d) {
            inline .float32, .float16, .bfloat16 => |t| elementwise.activation_backward_run(a, t, &args),
            else => unreachable,
        },
    }
    return status(.ok);
}

/// swiglu forward on `count` elements: out = silu(a) * b.
export fn mp_elementwise_swiglu_forward(dtype: u32, a: u64, b: u64, out: u64, count: u64) i32 {
    const d = storage.op_dtype(dtype) orelse return status(.invalid_dtype);
    if (count == 0) return status(.ok);
    if (a == 0 or b == 0 or out == 0) return status(.null_pointer);
    const args = elementwise.Swiglu{ .a = @ptrFromInt(a), .b = @ptrFromInt(b), .g = @ptrFromInt(a), .out = @ptrFromInt(out), .out_b = @ptrFromInt(out), .count = count };
    switch (d) {
        inline .float32, .float16, .bfloat16 => |t| elementwise.swiglu_forward_run(t, &args),
        else => unreachable,
    }
    return status(.ok);
}

/// swiglu backward in one pass: da = g b silu'(a), db = g silu(a).
export fn mp_elementwise_swiglu_backward(dtype: u32, a: u64, b: u64, g: u64, da: u64, db: u64, count: u64) i32 {
    const d = storage.op_dtype(dtype) orelse return status(.invalid_dtype);
    if (count == 0) return status(.ok);
    if (a == 0 or b == 0 or g == 0 or da == 0 or db == 0) return status(.null_pointer);
    if (da == db) return status(.overlap);
    const args = elementwise.Swiglu{ .a = @ptrFromInt(a), .b = @ptrFromInt(b), .g = @ptrFromInt(g), .out = @ptrFromInt(da), .out_b = @ptrFromInt(db), .count = count };
    switch (d) {
        inline .float32, .float16, .bfloat16 => |t| elementwise.swiglu_backward_run(t, &args),
        else => unreachable,
    }
    return status(.ok);
}

// ---- Normalization, softmax / cross-entropy and embedding (zig/src/ops/norm.zig, softmax.zig,
// embedding.zig). Tensors cross as u64 addresses (0: absent), counts as u64, dtypes as u32 codes.

const norm_ops = @import("ops/norm.zig");

fn optional_bytes(address: u64) ?[*]u8 {
    return if (address == 0) null else @ptrFromInt(address);
}

fn optional_floats(address: u64) ?[*]f32 {
    if (address == 0 or address % @alignOf(f32) != 0) return null;
    return @ptrFromInt(address);
}

/// Layer norm (op 0) or RMS norm (op 1) over the last axis of x [rows, width]: out = normalized x
/// * weight + bias, rounded once into `dtype` (x, weight, bias and out share it). weight and bias
/// may be 0 (absent; RMS norm takes no bias). mean and rstd (float32 [rows]) receive the row
/// statistics when non-zero (RMS norm writes no mean).
export fn mp_norm_forward(op: u32, x: u64, weight: u64, bias: u64, out: u64, mean: u64, rstd: u64, rows: u64, width: u64, dtype: u32, eps: f32) i32 {
    const d = storage.op_dtype(dtype) orelse return status(.invalid_dtype);
    const kind = std.enums.fromInt(norm_ops.Kind, op) orelse return status(.invalid_argument);
    if (kind == .rms and bias != 0) return status(.invalid_argument);
    if (!(eps >= 0) or std.math.isInf(eps)) return status(.invalid_argument);
    if (rows == 0) return status(.ok);
    if (width == 0) return status(.invalid_argument);
    if (x == 0 or out == 0) return status(.null_pointer);
    if ((mean != 0 and optional_floats(mean) == null) or (rstd != 0 and optional_floats(rstd) == null)) return status(.invalid_argument);
    norm_ops.forward(d, &.{
        .kind = kind,
        .x = @ptrFromInt(x),
        .weight = optional_bytes(weight),
        .bias = optional_bytes(bias),
        .out = @ptrFromInt(out),
        .mean = optional_floats(mean),
        .rstd = optional_floats(rstd),
        .rows = rows,
        .width = width,
        .eps = eps,
    });
    return status(.ok);
}

/// The norms' backward pass: grad_x from x, weight (0: absent), the forward's mean and rstd and
/// grad_out; grad_weight and grad_bias (0: not wanted) in the same pass over the rows, through
/// `workspace` (float32, `workspace_count` elements, at least mp_norm_workspace_count's answer).
export fn mp_norm_backward(op: u32, x: u64, weight: u64, mean: u64, rstd: u64, grad_out: u64, grad_x: u64, grad_weight: u64, grad_bias: u64, workspace: u64, workspace_count: u64, rows: u64, width: u64, dtype: u32) i32 {
    const d = storage.op_dtype(dtype) orelse return status(.invalid_dtype);
    const kind = std.enums.fromInt(norm_ops.Kind, op) orelse return status(.invalid_argument);
    if (kind == .rms and grad_bias != 0) return status(.invalid_argument);
    if (rows == 0) return status(.ok);
    if (width == 0) return status(.invalid_argument);
    if (x == 0 or grad_out == 0 or grad_x == 0 or rstd == 0) return status(.null_pointer);
    if (kind == .layer and mean == 0) return status(.null_pointer);
    if ((mean != 0 and optional_floats(mean) == null) or optional_floats(rstd) == null) return status(.invalid_argument);
    if (grad_weight != 0 or grad_bias != 0) {
        if (workspace == 0) return status(.null_pointer);
        if (optional_floats(workspace) == null or workspace_count < norm_ops.workspace_count(rows, width)) return status(.invalid_argument);
    }
    norm_ops.backward(d, &.{
        .kind = kind,
        .x = @ptrFromInt(x),
        .weight = optional_bytes(weight),
        .mean = optional_floats(mean),
        .rstd = optional_floats(rstd).?,
        .grad_out = @ptrFromInt(grad_out),
        .grad_x = @ptrFromInt(grad_x),
        .grad_weight = optional_bytes(grad_weight),
        .grad_bias = optional_bytes(grad_bias),
        .workspace = if (grad_weight != 0 or grad_bias != 0) optional_floats(workspace) else null,
        .rows = rows,
        .width = width,
    });
    return status(.ok);
}

/// The float32 workspace elements mp_norm_backward needs for `rows` x `width` with weight or bias
/// gradients.
export fn mp_norm_workspace_count(rows: u64, width: u64, out_count: ?*u64) i32 {
    const out = out_count orelse return status(.null_pointer);
    out.* = norm_ops.workspace_count(rows, width);
    return status(.ok);
}

const softmax_ops = @import("ops/softmax.zig");

/// The labels of a cross-entropy call, checked: every one a class index in [0, width) or
/// ignore_index (and 4-byte aligned).
fn cross_entropy_labels(labels: u64, rows: u64, width: u64, ignore_index: i32) ?[*]const i32 {
    if (labels == 0 or labels % @alignOf(i32) != 0) return null;
    const typed: [*]const i32 = @ptrFromInt(labels);
    _ = softmax_ops.check_labels(typed[0..rows], width, ignore_index) orelse return null;
    return typed;
}

/// Over the last axis of x [rows, width] (`dtype`): softmax (op 0) or log-softmax (op 1) into out
/// (same dtype and shape); or cross-entropy (op 2) against `labels` (int32 [rows], each in
/// [0, width) or equal to ignore_index): out receives the float32 per-row losses (0 where ignored),
/// lse the float32 per-row log-sum-exp (0: not kept) and mean the float32 mean over kept rows
/// (NaN when none is kept). labels, ignore_index, lse and mean are unused by ops 0 and 1.
export fn mp_softmax_forward(op: u32, x: u64, out: u64, rows: u64, width: u64, dtype: u32, labels: u64, ignore_index: i32, lse: u64, mean: u64) i32 {
    const d = storage.op_dtype(dtype) orelse return status(.invalid_dtype);
    const kind = std.enums.fromInt(softmax_ops.Op, op) orelse return status(.invalid_argument);
    if (kind == .cross_entropy) {
        const mean_out = optional_floats(mean) orelse return status(if (mean == 0) .null_pointer else .invalid_argument);
        if (rows == 0) {
            mean_out[0] = std.math.nan(f32);
            return status(.ok);
        }
        if (width == 0) return status(.invalid_argument);
        if (x == 0 or out == 0) return status(.null_pointer);
        if (optional_floats(out) == null or (lse != 0 and optional_floats(lse) == null)) return status(.invalid_argument);
        const checked = cross_entropy_labels(labels, rows, width, ignore_index) orelse
            return status(if (labels == 0) .null_pointer else .invalid_argument);
        softmax_ops.forward(d, &.{ .op = kind, .x = @ptrFromInt(x), .out = @ptrFromInt(out), .rows = rows, .width = width, .labels = checked, .ignore_index = ignore_index, .lse = optional_floats(lse), .mean = &mean_out[0] });
        return status(.ok);
    }
    if (rows == 0) return status(.ok);
    if (width == 0) return status(.invalid_argument);
    if (x == 0 or out == 0) return status(.null_pointer);
    softmax_ops.forward(d, &.{ .op = kind, .x = @ptrFromInt(x), .out = @ptrFromInt(out), .rows = rows, .width = width });
    return status(.ok);
}

/// The backward passes: softmax / log-softmax (ops 0, 1) from the forward's output `saved` and
/// grad_out (both `dtype` [rows, width]); cross-entropy (op 2) from the logits `saved`, the labels,
/// the forward's lse and grad_out, the float32 gradient of the mean loss. grad_x is `dtype`
/// [rows, width].
export fn mp_softmax_backward(op: u32, saved: u64, grad_out: u64, grad_x: u64, rows: u64, width: u64, dtype: u32, labels: u64, ignore_index: i32, lse: u64) i32 {
    const d = storage.op_dtype(dtype) orelse return status(.invalid_dtype);
    const kind = std.enums.fromInt(softmax_ops.Op, op) orelse return status(.invalid_argument);
    if (rows == 0) return status(.ok);
    if (width == 0) return status(.invalid_argument);
    if (saved == 0 or grad_out == 0 or grad_x == 0) return status(.null_pointer);
    if (kind == .cross_entropy) {
        if (lse == 0) return status(.null_pointer);
        if (optional_floats(lse) == null or optional_floats(grad_out) == null) return status(.invalid_argument);
        const checked = cross_entropy_labels(labels, rows, width, ignore_index) orelse
            return status(if (labels == 0) .null_pointer else .invalid_argument);
        softmax_ops.backward(d, &.{ .op = kind, .saved = @ptrFromInt(saved), .grad_out = @ptrFromInt(grad_out), .grad_x = @ptrFromInt(grad_x), .rows = rows, .width = width, .labels = checked, .ignore_index = ignore_index, .lse = optional_floats(lse) });
        return status(.ok);
    }
    softmax_ops.backward(d, &.{ .op = kind, .saved = @ptrFromInt(saved), .grad_out = @ptrFromInt(grad_out), .grad_x = @ptrFromInt(grad_x), .rows = rows, .width = width });
    return status(.ok);
}

const embedding_ops = @import("ops/embedding.zig");

/// Checked ids: `count` int32 values at `ids`, each in [0, vocabulary), 4-byte aligned.
fn embedding_ids(ids: u64, count: u64, vocabulary: u64) ?[*]const i32 {
    if (ids == 0 or ids % @alignOf(i32) != 0) return null;
    const typed: [*]const i32 = @ptrFromInt(ids);
    return if (embedding_ops.check_ids(typed[0..count], vocabulary)) typed else null;
}

/// Embedding gather: out [count, dim] = rows ids[i] of table [vocabulary, dim], all of `dtype`
/// (any dtype: the bits are copied); ids are int32 in [0, vocabulary).
export fn mp_embedding_forward(table: u64, ids: u64, out: u64, vocabulary: u64, dim: u64, count: u64, dtype: u32) i32 {
    const d = numerics.Dtype.from_int(dtype) orelse return status(.invalid_dtype);
    if (count == 0 or dim == 0) return status(.ok);
    if (table == 0 or out == 0) return status(.null_pointer);
    const checked = embedding_ids(ids, count, vocabulary) orelse return status(if (ids == 0) .null_pointer else .invalid_argument);
    embedding_ops.forward(d, &.{ .table = @ptrFromInt(table), .ids = checked, .out = @ptrFromInt(out), .vocabulary = vocabulary, .dim = dim, .count = count });
    return status(.ok);
}

/// Embedding backward: grad_table [vocabulary, dim] (`dtype`) = the sum, in token order and in
/// float32, of the grad_out [count, dim] rows of each id (zeros for ids no token has), through
/// `workspace` (u32, vocabulary + count values).
export fn mp_embedding_backward(ids: u64, grad_out: u64, grad_table: u64, workspace: u64, workspace_count: u64, vocabulary: u64, dim: u64, count: u64, dtype: u32) i32 {
    const d = storage.op_dtype(dtype) orelse return status(.invalid_dtype);
    if (vocabulary == 0 or dim == 0) return status(.ok);
    if (grad_table == 0 or workspace == 0) return status(.null_pointer);
    if (count != 0 and grad_out == 0) return status(.null_pointer);
    if (count >= std.math.maxInt(u32) or workspace % @alignOf(u32) != 0) return status(.invalid_argument);
    if (workspace_count < embedding_ops.workspace_count(vocabulary, count)) return status(.invalid_argument);
    const checked: [*]const i32 = if (count == 0) @ptrFromInt(@alignOf(i32)) else embedding_ids(ids, count, vocabulary) orelse
        return status(if (ids == 0) .null_pointer else .invalid_argument);
    embedding_ops.backward(d, &.{
        .ids = checked,
        .grad_out = if (count == 0) @ptrFromInt(@alignOf(f32)) else @ptrFromInt(grad_out),
        .grad_table = @ptrFromInt(grad_table),
        .workspace = @ptrFromInt(workspace),
        .vocabulary = vocabulary,
        .dim = dim,
        .count = count,
    });
    return status(.ok);
}

test {
    _ = @import("ops/norm.zig");
    _ = @import("ops/softmax.zig");
    _ = @import("ops/embedding.zig");
}

// ---- Attention and rotary position embedding (zig/src/ops/attention.zig, zig/src/ops/rope.zig) ----

const attention = @import("ops/attention.zig");

/// Op codes of mp_attention_forward / mp_attention_backward.
const attention_op_sdpa: u32 = 0;

fn attention_mask(mask: u64, mask_dtype: u32) error{Invalid}!?attention.Mask {
    if (mask == 0) return null;
    const dtype = storage.op_dtype(mask_dtype) orelse return error.Invalid;
    return .{ .values = @ptrFromInt(mask), .dtype = dtype };
}

/// Scaled dot-product attention forward (op 0), tiled with an online softmax. `problem` holds 11
/// u64 values (attention.Problem: batch, steps_q, steps_kv, heads_q, heads_kv, head_dim, the row
/// strides of q, k, v and out in elements, flags: bit 0 causal). q, k, v and out are `dtype`
/// storage (float32, float16 or bfloat16); `mask` is 0 or a [B, S] tensor of `mask_dtype` (a key
/// is kept where it is not 0); `lse` receives float32 [B, Hq, T] log-sum-exps for the backward.
export fn mp_attention_forward(op: u32, dtype: u32, problem: ?*const attention.Problem, scale: f32, q: u64, k: u64, v: u64, mask: u64, mask_dtype: u32, out: u64, lse: u64) i32 {
    if (op != attention_op_sdpa) return status(.invalid_argument);
    const storage_dtype = storage.op_dtype(dtype) orelse return status(.invalid_dtype);
    const p = (problem orelse return status(.null_pointer)).*;
    if (!p.valid() or std.math.isNan(scale) or std.math.isInf(scale)) return status(.invalid_argument);
    const keep = attention_mask(mask, mask_dtype) catch return status(.invalid_dtype);
    if (p.batch == 0 or p.steps_q == 0) return status(.ok);
    if (out == 0 or lse == 0 or q == 0) return status(.null_pointer);
    if (p.steps_kv != 0 and (k == 0 or v == 0)) return status(.null_pointer);
    const f = attention.Forward{
        .problem = p,
        .scale = scale,
        .q = @ptrFromInt(q),
        .k = @ptrFromInt(if (k == 0) 64 else k),
        .v = @ptrFromInt(if (v == 0) 64 else v),
        .mask = keep,
        .out = @ptrFromInt(out),
        .lse = @ptrFromInt(lse),
    };
    switch (storage_dtype) {
        inline .float32, .float16, .bfloat16 => |d| attention.forward(d, &f),
        else => unreachable,
    }
    return status(.ok);
}

/// The backward pass of mp_attention_forward (op 0): dq, dk, dv (the layouts and dtype of q, k and
/// v; every element written) from q, k, v, the mask, the forward's out and lse, and d_out (out's
/// layout and dtype). Bit-identical on any thread count.
export fn mp_attention_backward(op: u32, dtype: u32, problem: ?*const attention.Problem, scale: f32, q: u64, k: u64, v: u64, mask: u64, mask_dtype: u32, out: u64, lse: u64, d_out: u64, dq: u64, dk: u64, dv: u64) i32 {
    if (op != attention_op_sdpa) return status(.invalid_argument);
    const storage_dtype = storage.op_dtype(dtype) orelse return status(.invalid_dtype);
    const p = (problem orelse return status(.null_pointer)).*;
    if (!p.valid() or std.math.isNan(scale) or std.math.isInf(scale)) return status(.invalid_argument);
    const keep = attention_mask(mask, mask_dtype) catch return status(.invalid_dtype);
    if (p.batch == 0) return status(.ok);
    const has_q = p.steps_q != 0;
    const has_kv = p.steps_kv != 0;
    if (has_q and (q == 0 or out == 0 or lse == 0 or d_out == 0 or dq == 0)) return status(.null_pointer);
    if (has_kv and (k == 0 or v == 0 or dk == 0 or dv == 0)) return status(.null_pointer);
    const placeholder: u64 = 64; // Never read: the matching extent is 0.
    const g = attention.Backward{
        .problem = p,
        .scale = scale,
        .q = @ptrFromInt(if (has_q) q else placeholder),
        .k = @ptrFromInt(if (has_kv) k else placeholder),
        .v = @ptrFromInt(if (has_kv) v else placeholder),
        .mask = keep,
        .out = @ptrFromInt(if (has_q) out else placeholder),
        .lse = @ptrFromInt(if (has_q) lse else placeholder),
        .d_out = @ptrFromInt(if (has_q) d_out else placeholder),
        .dq = @ptrFromInt(if (has_q) dq else placeholder),
        .dk = @ptrFromInt(if (has_kv) dk else placeholder),
        .dv = @ptrFromInt(if (has_kv) dv else placeholder),
    };
    switch (storage_dtype) {
        inline .float32, .float16, .bfloat16 => |d| attention.backward(d, &g),
        else => unreachable,
    }
    return status(.ok);
}

const rope = @import("ops/rope.zig");

/// Op codes of mp_rope_forward / mp_rope_backward: the rotate-half form (Hugging Face LLaMA).
const rope_op_rotate_half: u32 = 0;

fn rope_call(op: u32, dtype: u32, problem: ?*const rope.Problem, source: u64, target: u64, inv_freq: u64, positions: u64, inverse: bool) i32 {
    if (op != rope_op_rotate_half) return status(.invalid_argument);
    const storage_dtype = storage.op_dtype(dtype) orelse return status(.invalid_dtype);
    const p = (problem orelse return status(.null_pointer)).*;
    if (!p.valid()) return status(.invalid_argument);
    const explicit = p.flags & rope.flag_positions != 0;
    if (p.batch * p.steps * p.heads == 0) return status(.ok);
    if (source == 0 or target == 0 or inv_freq == 0) return status(.null_pointer);
    if (explicit and positions == 0) return status(.null_pointer);
    const bytes = p.batch * p.steps * p.heads * p.head_dim * storage_dtype.size_bytes();
    if (source < target + bytes and target < source + bytes and source != target) return status(.overlap);
    const call = rope.Call{
        .problem = p,
        .source = @ptrFromInt(source),
        .target = @ptrFromInt(target),
        .inv_freq = @ptrFromInt(inv_freq),
        .positions = if (explicit) @ptrFromInt(positions) else null,
        .inverse = inverse,
    };
    switch (storage_dtype) {
        inline .float32, .float16, .bfloat16 => |d| rope.apply(d, &call),
        else => unreachable,
    }
    return status(.ok);
}

/// Rotary position embedding forward (op 0: rotate-half) of x [B, T, H, D] (`dtype` storage) into
/// out (same shape and dtype; may be x itself). `problem` holds 6 x 64 bits (rope.Problem: batch,
/// steps, heads, head_dim, offset as i64, flags: bit 0 explicit positions, bit 1 per batch).
/// `inv_freq` is D / 2 float32 values; `positions` is 0 or int32 [T] (or [B, T] with bit 1).
export fn mp_rope_forward(op: u32, dtype: u32, problem: ?*const rope.Problem, x: u64, out: u64, inv_freq: u64, positions: u64) i32 {
    return rope_call(op, dtype, problem, x, out, inv_freq, positions, false);
}

/// The backward pass of mp_rope_forward: dx = d_out rotated by -angle (same arguments).
export fn mp_rope_backward(op: u32, dtype: u32, problem: ?*const rope.Problem, d_out: u64, dx: u64, inv_freq: u64, positions: u64) i32 {
    return rope_call(op, dtype, problem, d_out, dx, inv_freq, positions, true);
}

test {
    _ = attention;
    _ = rope;
}

// ---- CUDA backend (zig/src/cuda/driver.zig). Device memory crosses as u64 addresses; every call
// names the device ordinal N of "cuda:N". A failure's reason is read with mp_last_error.

const driver = @import("cuda/driver.zig");
const step_math = @import("cuda/step_math.zig");

fn cuda_status(err: driver.Error) i32 {
    return status(switch (err) {
        error.CudaUnavailable => .cuda_unavailable,
        error.CudaError => .cuda_error,
        error.OutOfMemory => .out_of_memory,
        error.InvalidArgument => .invalid_argument,
    });
}

fn cuda_device(ordinal: u32) driver.Error!*driver.Device {
    return driver.device(ordinal, ptx_source);
}

/// Copies the message of the last failure (why CUDA is unavailable, or the CUresult name of a
/// failed driver call) into `buffer` (truncated to `capacity`); `out_length` gets its full length.
export fn mp_last_error(buffer: ?[*]u8, capacity: u64, out_length: ?*u64) i32 {
    const length = out_length orelse return status(.null_pointer);
    const message = driver.last_error();
    length.* = message.len;
    if (capacity == 0) return status(.ok);
    const target = buffer orelse return status(.null_pointer);
    const count = @min(message.len, capacity);
    @memcpy(target[0..count], message[0..count]);
    return status(.ok);
}

/// Loads libcuda.so.1 and initialises the driver; cuda_unavailable (reason in mp_last_error) on a
/// machine without an NVIDIA driver or device.
export fn mp_cuda_init() i32 {
    driver.init() catch |err| return cuda_status(err);
    return status(.ok);
}

/// The number of CUDA devices; 0 where CUDA is unavailable (this call never fails for that).
export fn mp_cuda_device_count(out_count: ?*u32) i32 {
    const out = out_count orelse return status(.null_pointer);
    out.* = driver.device_count();
    return status(.ok);
}

/// Device `ordinal`'s NUL-terminated name (into `name`, `capacity` >= 2 bytes) and its compute
/// capability, memory and multiprocessor count (into `out_info`, a driver.DeviceInfo of 24 bytes).
export fn mp_cuda_device_info(ordinal: u32, name: ?[*]u8, capacity: u64, out_info: ?*driver.DeviceInfo) i32 {
    const info = out_info orelse return status(.null_pointer);
    const target = name orelse return status(.null_pointer);
    if (capacity < 2 or capacity > 1 << 20) return status(.invalid_argument);
    driver.device_info(ordinal, target[0..capacity], info) catch |err| return cuda_status(err);
    return status(.ok);
}

/// Allocates `size_bytes` of device memory from the caching allocator; `out_address` receives it.
export fn mp_cuda_alloc(ordinal: u32, size_bytes: u64, out_address: ?*u64) i32 {
    const out = out_address orelse return status(.null_pointer);
    const target = cuda_device(ordinal) catch |err| return cuda_status(err);
    out.* = target.cache.alloc(size_bytes) catch |err| return cuda_status(err);
    return status(.ok);
}

/// Returns a block from mp_cuda_alloc to the allocator's cache (no driver call, no sync).
export fn mp_cuda_free(ordinal: u32, address: u64) i32 {
    if (address == 0) return status(.null_pointer);
    const target = cuda_device(ordinal) catch |err| return cuda_status(err);
    target.cache.free(address) catch |err| return cuda_status(err);
    return status(.ok);
}

/// Gives the allocator's cached blocks back to the driver (synchronises).
export fn mp_cuda_empty_cache(ordinal: u32) i32 {
    const target = cuda_device(ordinal) catch |err| return cuda_status(err);
    driver.empty_cache(target) catch |err| return cuda_status(err);
    return status(.ok);
}

/// Bytes the allocator holds for live tensors (out_stats[0]) and in its cache (out_stats[1]).
export fn mp_cuda_memory_stats(ordinal: u32, out_stats: ?*[2]u64) i32 {
    const out = out_stats orelse return status(.null_pointer);
    const target = cuda_device(ordinal) catch |err| return cuda_status(err);
    out.* = .{ target.cache.live_bytes, target.cache.cached_bytes };
    return status(.ok);
}

/// Host -> device, `size_bytes` from `source` to device `target`. Returns once the bytes are in
/// pinned staging (the host buffer may be reused at once), before the device has them.
export fn mp_cuda_memcpy_h2d(ordinal: u32, target: u64, source: ?[*]const u8, size_bytes: u64) i32 {
    if (size_bytes == 0) return status(.ok);
    const bytes = source orelse return status(.null_pointer);
    if (target == 0) return status(.null_pointer);
    const device = cuda_device(ordinal) catch |err| return cuda_status(err);
    driver.copy_to_device(device, target, bytes[0..size_bytes]) catch |err| return cuda_status(err);
    return status(.ok);
}

/// Device -> host after all queued work (synchronises).
export fn mp_cuda_memcpy_d2h(ordinal: u32, target: ?[*]u8, source: u64, size_bytes: u64) i32 {
    if (size_bytes == 0) return status(.ok);
    const bytes = target orelse return status(.null_pointer);
    if (source == 0) return status(.null_pointer);
    const device = cuda_device(ordinal) catch |err| return cuda_status(err);
    driver.copy_to_host(device, bytes[0..size_bytes], source) catch |err| return cuda_status(err);
    return status(.ok);
}

/// Device -> device on the stream (no sync).
export fn mp_cuda_memcpy_d2d(ordinal: u32, target: u64, source: u64, size_bytes: u64) i32 {
    if (size_bytes == 0) return status(.ok);
    if (target == 0 or source == 0) return status(.null_pointer);
    const device = cuda_device(ordinal) catch |err| return cuda_status(err);
    driver.copy_on_device(device, target, source, size_bytes) catch |err| return cuda_status(err);
    return status(.ok);
}

/// Fills `count` u32 words at `target` with `value` on the stream (no sync), e.g. to zero found_inf.
export fn mp_cuda_fill32(ordinal: u32, target: u64, value: u32, count: u64) i32 {
    if (count == 0) return status(.ok);
    if (target == 0) return status(.null_pointer);
    const device = cuda_device(ordinal) catch |err| return cuda_status(err);
    driver.fill32(device, target, value, count) catch |err| return cuda_status(err);
    return status(.ok);
}

/// mp_cast on device memory: the same arguments, flags and bits (no sync).
export fn mp_cuda_launch_cast(ordinal: u32, source: u64, target: u64, count: u64, from: u32, to: u32, flags: u32, seed: u32) i32 {
    const from_dtype = numerics.Dtype.from_int(from) orelse return status(.invalid_dtype);
    const to_dtype = numerics.Dtype.from_int(to) orelse return status(.invalid_dtype);
    if (flags & ~(numerics.flag_stochastic | numerics.flag_saturate) != 0) return status(.invalid_argument);
    if (count == 0) return status(.ok);
    if (source == 0 or target == 0) return status(.null_pointer);
    const source_end = source + count * from_dtype.size_bytes();
    const target_end = target + count * to_dtype.size_bytes();
    if (source_end > target and target_end > source) return status(.overlap);
    const device = cuda_device(ordinal) catch |err| return cuda_status(err);
    const grid = driver.grid_blocks(device, count);
    driver.launch(device, .cast, grid, driver.block_threads, .{ source, target, count, from, to, flags, seed }) catch |err|
        return cuda_status(err);
    return status(.ok);
}

/// Multi-tensor unscale and check on the device. `table` is a device copy of `row_count` 24-byte
/// rows (unscale.TensorRow with device addresses) holding `total_count` elements in all. When
/// `scale` is not 0 it is the device address of the float32 loss scale and the kernel unscales by
/// float32(1 / float64(scale)); else by `inv_scale`. Sets the device u32 at `found_inf` to 1 when
/// any element is inf or NaN (never clears it). No sync.
export fn mp_cuda_launch_unscale_check(ordinal: u32, table: u64, row_count: u64, total_count: u64, inv_scale: f32, scale: u64, found_inf: u64) i32 {
    if (found_inf == 0) return status(.null_pointer);
    if (total_count == 0) return status(.ok);
    if (table == 0) return status(.null_pointer);
    if (row_count == 0) return status(.invalid_argument);
    const device = cuda_device(ordinal) catch |err| return cuda_status(err);
    const grid = driver.grid_blocks(device, total_count);
    driver.launch(device, .unscale_check, grid, driver.block_threads, .{ table, row_count, total_count, inv_scale, scale, found_inf }) catch |err|
        return cuda_status(err);
    return status(.ok);
}

/// PyTorch's _amp_update_scale_ on the device: `state` holds { scale: f32, tracker: i32 } and
/// `found_inf` the u32 flag from the unscale. No sync.
export fn mp_cuda_launch_update_scale(ordinal: u32, state: u64, found_inf: u64, growth_factor: f64, backoff_factor: f64, growth_interval: i32) i32 {
    if (state == 0 or found_inf == 0) return status(.null_pointer);
    if (growth_interval <= 0) return status(.invalid_argument);
    const device = cuda_device(ordinal) catch |err| return cuda_status(err);
    driver.launch(device, .update_scale, 1, 32, .{ state, found_inf, growth_factor, backoff_factor, growth_interval }) catch |err|
        return cuda_status(err);
    return status(.ok);
}

/// The global L2 norm of the tensors of a device row table (as mp_cuda_launch_unscale_check),
/// written as a float32 to device address `norm`. Two launches, a fixed summation order for a
/// given device (so the same inputs give the same bits), no sync.
export fn mp_cuda_launch_global_norm(ordinal: u32, table: u64, row_count: u64, total_count: u64, norm: u64) i32 {
    if (norm == 0) return status(.null_pointer);
    if (total_count != 0 and table == 0) return status(.null_pointer);
    if (total_count != 0 and row_count == 0) return status(.invalid_argument);
    const device = cuda_device(ordinal) catch |err| return cuda_status(err);
    const blocks: u32 = @min(driver.grid_blocks(device, total_count), driver.norm_partials_max);
    const partials = driver.scratch(device, @as(u64, blocks) * 4) catch |err| return cuda_status(err);
    if (total_count == 0) {
        driver.fill32(device, partials, 0, 1) catch |err| return cuda_status(err);
    } else {
        driver.launch(device, .sum_squares, blocks, driver.block_threads, .{ table, row_count, total_count, partials }) catch |err|
            return cuda_status(err);
    }
    driver.launch(device, .global_norm_finish, 1, driver.block_threads, .{ partials, blocks, norm }) catch |err|
        return cuda_status(err);
    return status(.ok);
}

/// Multiplies every element of a device row table's tensors by `factor`, or by the device float32
/// at `factor_address` when that is not 0, in float32, stored back nearest even (no sync).
export fn mp_cuda_launch_scale(ordinal: u32, table: u64, row_count: u64, total_count: u64, factor: f32, factor_address: u64) i32 {
    if (total_count == 0) return status(.ok);
    if (table == 0) return status(.null_pointer);
    if (row_count == 0) return status(.invalid_argument);
    const device = cuda_device(ordinal) catch |err| return cuda_status(err);
    const grid = driver.grid_blocks(device, total_count);
    driver.launch(device, .scale, grid, driver.block_threads, .{ table, row_count, total_count, factor, factor_address }) catch |err|
        return cuda_status(err);
    return status(.ok);
}

/// Clips a device row table's tensors to global norm `max_norm` given the device float32 norm at
/// `norm` (from mp_cuda_launch_global_norm): multiplies by max_norm / (norm + 1e-6) when that is
/// below 1, as PyTorch's clip_grad_norm_ (no sync).
export fn mp_cuda_launch_clip_by_norm(ordinal: u32, table: u64, row_count: u64, total_count: u64, max_norm: f32, norm: u64) i32 {
    if (norm == 0) return status(.null_pointer);
    if (total_count == 0) return status(.ok);
    if (table == 0) return status(.null_pointer);
    if (row_count == 0) return status(.invalid_argument);
    const device = cuda_device(ordinal) catch |err| return cuda_status(err);
    const grid = driver.grid_blocks(device, total_count);
    driver.launch(device, .clip_by_norm, grid, driver.block_threads, .{ table, row_count, total_count, max_norm, norm }) catch |err|
        return cuda_status(err);
    return status(.ok);
}

/// One fused AdamW step on the device (zig/src/cuda/kernels.zig, the CPU's mp_fused_adamw
/// arithmetic): `table` is a device copy of `row_count` adamw.AdamRow rows with device addresses
/// and `total_count` elements in all, `hyper` a device adamw.AdamHyper. When `found_inf` is not 0
/// and the device u32 there is set, the kernel skips the step on the device. No sync.
export fn mp_cuda_launch_fused_adamw(ordinal: u32, table: u64, row_count: u64, total_count: u64, hyper: u64, found_inf: u64) i32 {
    if (total_count == 0) return status(.ok);
    if (table == 0 or hyper == 0) return status(.null_pointer);
    if (row_count == 0) return status(.invalid_argument);
    const device = cuda_device(ordinal) catch |err| return cuda_status(err);
    const grid = driver.grid_blocks(device, total_count);
    driver.launch(device, .fused_adamw, grid, driver.block_threads, .{ table, row_count, total_count, hyper, found_inf }) catch |err|
        return cuda_status(err);
    return status(.ok);
}

/// One fused SGD step on the device (the CPU's mp_fused_sgd arithmetic), as
/// mp_cuda_launch_fused_adamw with sgd.SgdRow rows and a device sgd.SgdHyper. No sync.
export fn mp_cuda_launch_fused_sgd(ordinal: u32, table: u64, row_count: u64, total_count: u64, hyper: u64, found_inf: u64) i32 {
    if (total_count == 0) return status(.ok);
    if (table == 0 or hyper == 0) return status(.null_pointer);
    if (row_count == 0) return status(.invalid_argument);
    const device = cuda_device(ordinal) catch |err| return cuda_status(err);
    const grid = driver.grid_blocks(device, total_count);
    driver.launch(device, .fused_sgd, grid, driver.block_threads, .{ table, row_count, total_count, hyper, found_inf }) catch |err|
        return cuda_status(err);
    return status(.ok);
}

/// mp_sum_squares on the device, for the optimizers' host-side pre-check: the float64 sum over a
/// device row table of float64(float32(x * inv_scale))^2 into `out_sum`, and 1 in `out_found_inf`
/// when any element is inf or NaN. Reads the result back, so it waits for the device (counted).
export fn mp_cuda_sum_squares(ordinal: u32, table: u64, row_count: u64, total_count: u64, inv_scale: f32, out_sum: ?*f64, out_found_inf: ?*u32) i32 {
    const sum_out = out_sum orelse return status(.null_pointer);
    const found_out = out_found_inf orelse return status(.null_pointer);
    sum_out.* = 0;
    found_out.* = 0;
    if (total_count == 0) return status(.ok);
    if (table == 0) return status(.null_pointer);
    if (row_count == 0) return status(.invalid_argument);
    const device = cuda_device(ordinal) catch |err| return cuda_status(err);
    const blocks: u32 = @min(driver.grid_blocks(device, total_count), driver.norm_partials_max);
    // One scratch buffer: the found flag, padding, then the float64 partials.
    const scratch = driver.scratch(device, 8 + @as(u64, blocks) * 8) catch |err| return cuda_status(err);
    driver.fill32(device, scratch, 0, 1) catch |err| return cuda_status(err);
    driver.launch(device, .sum_squares_f64, blocks, driver.block_threads, .{ table, row_count, total_count, inv_scale, scratch + 8, scratch }) catch |err|
        return cuda_status(err);
    var result: [1 + driver.norm_partials_max]u64 = undefined;
    const bytes = std.mem.sliceAsBytes(result[0 .. 1 + blocks]);
    driver.copy_to_host(device, bytes, scratch) catch |err| return cuda_status(err);
    var sum: f64 = 0;
    for (result[1 .. 1 + blocks]) |partial| sum += @as(f64, @bitCast(partial));
    sum_out.* = sum;
    found_out.* = @intFromBool(@as(u32, @truncate(result[0])) != 0);
    return status(.ok);
}

/// Waits until the device has finished all queued work (a counted synchronisation).
export fn mp_cuda_sync(ordinal: u32) i32 {
    const device = cuda_device(ordinal) catch |err| return cuda_status(err);
    driver.synchronize(device) catch |err| return cuda_status(err);
    return status(.ok);
}

/// How many host-device synchronisations the library has performed since it was loaded: a test
/// reads it before and after a step to prove the step performed none.
export fn mp_cuda_sync_count(out_count: ?*u64) i32 {
    const out = out_count orelse return status(.null_pointer);
    out.* = driver.synchronisations();
    return status(.ok);
}

/// Records a start event on the device's stream (for benchmarks).
export fn mp_cuda_timer_start(ordinal: u32) i32 {
    const device = cuda_device(ordinal) catch |err| return cuda_status(err);
    driver.timer_start(device) catch |err| return cuda_status(err);
    return status(.ok);
}

/// Records a stop event, waits for it (counted) and writes the device milliseconds since the start.
export fn mp_cuda_timer_stop(ordinal: u32, out_milliseconds: ?*f32) i32 {
    const out = out_milliseconds orelse return status(.null_pointer);
    const device = cuda_device(ordinal) catch |err| return cuda_status(err);
    out.* = driver.timer_stop(device) catch |err| return cuda_status(err);
    return status(.ok);
}

// ---- Matmul on the GPU: cuBLAS for the product (zig/src/cuda/cublas.zig), our PTX for the
// epilogue (zig/src/cuda/ops_matmul.zig).

const cublas = @import("cuda/cublas.zig");

/// mp_matmul on device addresses through cuBLAS (cublasGemmStridedBatchedEx, float32 accumulation
/// into a float32 C): the same layout and flags; A and B have one dtype (float32, float16 or
/// bfloat16). cuda_unavailable with the reason in mp_last_error when cuBLAS cannot be loaded. No sync.
export fn mp_cuda_matmul(ordinal: u32, a: u64, b: u64, c: u64, batch: u64, m: u64, n: u64, k: u64, a_dtype: u32, b_dtype: u32, flags: u32) i32 {
    const a_type = numerics.Dtype.from_int(a_dtype) orelse return status(.invalid_dtype);
    const b_type = numerics.Dtype.from_int(b_dtype) orelse return status(.invalid_dtype);
    if (!matmul.input_dtype(a_type) or a_type != b_type) return status(.invalid_dtype);
    if (flags & ~matmul.flags_all != 0) return status(.invalid_argument);
    if (batch == 0 or m == 0 or n == 0) return status(.ok);
    if (c == 0) return status(.null_pointer);
    if (k != 0 and (a == 0 or b == 0)) return status(.null_pointer);
    const device = cuda_device(ordinal) catch |err| return cuda_status(err);
    cublas.matmul(ordinal, device, &.{
        .a = a,
        .b = b,
        .c = c,
        .batch = batch,
        .m = m,
        .n = n,
        .k = k,
        .dtype = a_type,
        .trans_a = flags & matmul.flag_trans_a != 0,
        .trans_b = flags & matmul.flag_trans_b != 0,
        .accumulate = flags & matmul.flag_accumulate != 0,
        .broadcast_b = flags & matmul.flag_broadcast_b != 0,
    }) catch |err| return cuda_status(err);
    return status(.ok);
}

/// mp_matmul_epilogue on device addresses (the same arguments and bits), as one PTX launch. No sync.
export fn mp_cuda_launch_matmul_epilogue(ordinal: u32, product: u64, bias: u64, out: u64, rows: u64, cols: u64, dtype: u32) i32 {
    _ = storage.op_dtype(dtype) orelse return status(.invalid_dtype);
    if (rows * cols == 0) return status(.ok);
    if (product == 0 or out == 0) return status(.null_pointer);
    const device = cuda_device(ordinal) catch |err| return cuda_status(err);
    const grid = driver.grid_blocks(device, rows * cols);
    driver.launch(device, .matmul_epilogue, grid, driver.block_threads, .{ product, bias, out, rows, cols, dtype }) catch |err|
        return cuda_status(err);
    return status(.ok);
}

test {
    _ = cublas;
}

// ---- A step under a device-resident loss scale (zig/src/cuda/ops_amp.zig): nothing read back.

/// target = round(source * scale) for `count` elements of `dtype`, with the scale the device
/// float32 at `factor_address` (GradScaler.scale on a cuda loss, and its gradient). No sync.
export fn mp_cuda_launch_amp_scale_tensor(ordinal: u32, source: u64, target: u64, count: u64, dtype: u32, factor_address: u64) i32 {
    _ = numerics.Dtype.from_int(dtype) orelse return status(.invalid_dtype);
    if (count == 0) return status(.ok);
    if (source == 0 or target == 0 or factor_address == 0) return status(.null_pointer);
    const device = cuda_device(ordinal) catch |err| return cuda_status(err);
    driver.launch(device, .amp_scale_tensor, driver.grid_blocks(device, count), driver.block_threads, .{ source, target, count, dtype, factor_address }) catch |err|
        return cuda_status(err);
    return status(.ok);
}

/// The partial sums mp_cuda_launch_amp_sum_squares writes for `total_count` elements.
fn amp_partial_count(device: *const driver.Device, total_count: u64) u32 {
    return @min(driver.grid_blocks(device, total_count), driver.norm_partials_max);
}

/// The optimizers' sum of squares after unscaling by the device scale at `scale` (0: by 1), as
/// float64 partials into `partials` (room for 1024) and the found-inf flag. No sync.
export fn mp_cuda_launch_amp_sum_squares(ordinal: u32, table: u64, row_count: u64, total_count: u64, scale: u64, partials: u64, found_inf: u64) i32 {
    if (total_count == 0) return status(.ok);
    if (table == 0 or partials == 0 or found_inf == 0) return status(.null_pointer);
    if (row_count == 0) return status(.invalid_argument);
    const device = cuda_device(ordinal) catch |err| return cuda_status(err);
    driver.launch(device, .amp_sum_squares, amp_partial_count(device, total_count), driver.block_threads, .{ table, row_count, total_count, scale, partials, found_inf }) catch |err|
        return cuda_status(err);
    return status(.ok);
}

/// Prepares a fused AdamW step on the device (zig/src/cuda/amp_math.zig): writes `current` from
/// `hyper_table[count]` with the inverse of the device scale at `scale` (0: 1) and, when
/// `sum_total_count` is not 0, the clip factor of the partials mp_cuda_launch_amp_sum_squares wrote
/// for that many elements; rewrites the rows' stochastic seeds when `stochastic`; advances the u32
/// count at `counter` unless the flag at `found_inf` (0: none) is set. No sync.
export fn mp_cuda_launch_amp_adam_prepare(ordinal: u32, hyper_table: u64, hyper_count: u64, current: u64, counter: u64, scale: u64, found_inf: u64, partials: u64, sum_total_count: u64, max_norm: f32, rows: u64, row_count: u64, seed: u32, stochastic: u32) i32 {
    if (hyper_table == 0 or current == 0 or counter == 0 or rows == 0) return status(.null_pointer);
    if (hyper_count == 0 or row_count == 0) return status(.invalid_argument);
    if (sum_total_count != 0 and partials == 0) return status(.null_pointer);
    const device = cuda_device(ordinal) catch |err| return cuda_status(err);
    const partial_count: u32 = if (sum_total_count == 0) 0 else amp_partial_count(device, sum_total_count);
    const partials_used: u64 = if (sum_total_count == 0) 0 else partials;
    driver.launch(device, .amp_adam_prepare, 1, 32, .{ hyper_table, hyper_count, current, counter, scale, found_inf, partials_used, partial_count, max_norm, rows, row_count, seed, stochastic }) catch |err|
        return cuda_status(err);
    return status(.ok);
}

test {
    _ = @import("cuda/amp_math.zig");
}

// ---- The elementwise and layout families on the device (zig/src/cuda/ops_map.zig): the same
// arguments and checks as mp_elementwise_* and mp_layout_copy, on device addresses of `ordinal`.
// Host arrays (the map layout, the copy's shape and strides) are read here and passed to the
// kernel by value: no device allocation, no copy, no sync.

/// mp_elementwise_map on device memory.
export fn mp_cuda_launch_map(ordinal: u32, op: u32, dtype: u32, target: u64, x0: u64, x1: u64, x2: u64, layout_address: u64, scalar: f32, scale: f32, flags: u32) i32 {
    const call = map_arguments(op, dtype, target, .{ x0, x1, x2 }, layout_address, flags) catch |err| return map_status(err);
    const space = call.layout;
    const addresses = call.operands;
    const device = cuda_device(ordinal) catch |err| return cuda_status(err);
    const grid = driver.grid_blocks(device, space.kept_count());
    driver.launch(device, .map, grid, driver.block_threads, .{ target, addresses[0], addresses[1], addresses[2], space.*, scalar, scale, op, dtype, flags, elementwise.reduce_chunks(space) }) catch |err|
        return cuda_status(err);
    return status(.ok);
}

/// mp_elementwise_forward on device memory.
export fn mp_cuda_launch_activation_forward(ordinal: u32, op: u32, dtype: u32, x: u64, out: u64, count: u64) i32 {
    _ = std.enums.fromInt(elementwise.Activation, op) orelse return status(.invalid_argument);
    _ = storage.op_dtype(dtype) orelse return status(.invalid_dtype);
    if (count == 0) return status(.ok);
    if (x == 0 or out == 0) return status(.null_pointer);
    const device = cuda_device(ordinal) catch |err| return cuda_status(err);
    driver.launch(device, .activation_forward, driver.grid_blocks(device, count), driver.block_threads, .{ x, out, count, op, dtype }) catch |err|
        return cuda_status(err);
    return status(.ok);
}

/// mp_elementwise_backward on device memory.
export fn mp_cuda_launch_activation_backward(ordinal: u32, op: u32, dtype: u32, saved: u64, g: u64, dx: u64, count: u64) i32 {
    _ = std.enums.fromInt(elementwise.Activation, op) orelse return status(.invalid_argument);
    _ = storage.op_dtype(dtype) orelse return status(.invalid_dtype);
    if (count == 0) return status(.ok);
    if (saved == 0 or g == 0 or dx == 0) return status(.null_pointer);
    const device = cuda_device(ordinal) catch |err| return cuda_status(err);
    driver.launch(device, .activation_backward, driver.grid_blocks(device, count), driver.block_threads, .{ saved, g, dx, count, op, dtype }) catch |err|
        return cuda_status(err);
    return status(.ok);
}

/// mp_elementwise_swiglu_forward on device memory.
export fn mp_cuda_launch_swiglu_forward(ordinal: u32, dtype: u32, a: u64, b: u64, out: u64, count: u64) i32 {
    _ = storage.op_dtype(dtype) orelse return status(.invalid_dtype);
    if (count == 0) return status(.ok);
    if (a == 0 or b == 0 or out == 0) return status(.null_pointer);
    const device = cuda_device(ordinal) catch |err| return cuda_status(err);
    driver.launch(device, .swiglu_forward, driver.grid_blocks(device, count), driver.block_threads, .{ a, b, out, count, dtype }) catch |err|
        return cuda_status(err);
    return status(.ok);
}

/// mp_elementwise_swiglu_backward on device memory.
export fn mp_cuda_launch_swiglu_backward(ordinal: u32, dtype: u32, a: u64, b: u64, g: u64, da: u64, db: u64, count: u64) i32 {
    _ = storage.op_dtype(dtype) orelse return status(.invalid_dtype);
    if (count == 0) return status(.ok);
    if (a == 0 or b == 0 or g == 0 or da == 0 or db == 0) return status(.null_pointer);
    if (da == db) return status(.overlap);
    const device = cuda_device(ordinal) catch |err| return cuda_status(err);
    driver.launch(device, .swiglu_backward, driver.grid_blocks(device, count), driver.block_threads, .{ a, b, g, da, db, count, dtype }) catch |err|
        return cuda_status(err);
    return status(.ok);
}

/// mp_layout_copy on device memory.
export fn mp_cuda_launch_strided_copy(ordinal: u32, source: u64, target: u64, element_bytes: u64, ndim: u32, shape: ?*const [8]u64, source_strides: ?*const [8]u64, target_strides: ?*const [8]u64) i32 {
    if (element_bytes != 1 and element_bytes != 2 and element_bytes != 4) return status(.invalid_argument);
    if (ndim > layout.dims_max) return status(.invalid_argument);
    const dims = shape orelse return status(.null_pointer);
    const from = source_strides orelse return status(.null_pointer);
    const to = target_strides orelse return status(.null_pointer);
    var count: u64 = 1;
    for (dims[0..ndim]) |dim| count = std.math.mul(u64, count, dim) catch return status(.invalid_argument);
    if (count == 0) return status(.ok);
    if (source == 0 or target == 0) return status(.null_pointer);
    var copy = layout.StridedCopy{
        .source = @ptrFromInt(source),
        .target = @ptrFromInt(target),
        .element_bytes = element_bytes,
        .ndim = ndim,
        .shape = dims.*,
        .source_strides = from.*,
        .target_strides = to.*,
    };
    layout.simplify(&copy);
    const device = cuda_device(ordinal) catch |err| return cuda_status(err);
    const params = layout.DeviceCopy{
        .element_bytes = element_bytes,
        .ndim = copy.ndim,
        .count = count,
        .shape = copy.shape,
        .source_strides = copy.source_strides,
        .target_strides = copy.target_strides,
    };
    driver.launch(device, .strided_copy, driver.grid_blocks(device, count), driver.block_threads, .{ source, target, params }) catch |err|
        return cuda_status(err);
    return status(.ok);
}

test "every kernel of the driver's table is a PTX entry with exactly the parameter types it launches with" {
    inline for (comptime std.meta.fieldNames(driver.Kernel)) |field_name| {
        const kernel: driver.Kernel = @field(driver.Kernel, field_name);
        const header = ".entry " ++ comptime kernel.entry() ++ "(";
        const start = std.mem.indexOf(u8, ptx_source, header) orelse return error.MissingKernel;
        const end = std.mem.indexOfScalarPos(u8, ptx_source, start, ')') orelse return error.MalformedPtx;
        var lines = std.mem.tokenizeScalar(u8, ptx_source[start + header.len .. end], '\n');
        inline for (comptime kernel.params()) |param| {
            const line = lines.next() orelse return error.TooFewParameters;
            const expected = switch (param) {
                u64 => ".param .u64 ",
                u32, i32 => ".param .u32 ",
                f32 => ".param .f32 ",
                f64 => ".param .f64 ",
                else => if (@typeInfo(param) == .@"struct")
                    std.fmt.comptimePrint(".param .align {d} .b8 ", .{@alignOf(param)})
                else
                    @compileError("unsupported parameter type"),
            };
            try std.testing.expect(std.mem.startsWith(u8, std.mem.trim(u8, line, " \t"), expected));
            if (@typeInfo(param) == .@"struct") {
                const size = std.fmt.comptimePrint("[{d}]", .{@sizeOf(param)});
                try std.testing.expect(std.mem.indexOf(u8, line, size) != null);
            }
        }
        try std.testing.expect(lines.next() == null);
    }
}

test "the CUDA exports report cuda_unavailable with a reason when libcuda.so.1 cannot be loaded" {
    if (driver.device_count() != 0) return error.SkipZigTest; // A machine with a driver.
    try std.testing.expectEqual(status(.cuda_unavailable), mp_cuda_init());
    var address: u64 = 0;
    try std.testing.expectEqual(status(.cuda_unavailable), mp_cuda_alloc(0, 16, &address));
    var count: u32 = 99;
    try std.testing.expectEqual(status(.ok), mp_cuda_device_count(&count));
    try std.testing.expectEqual(@as(u32, 0), count);
    var message: [256]u8 = undefined;
    var length: u64 = 0;
    try std.testing.expectEqual(status(.ok), mp_last_error(&message, message.len, &length));
    try std.testing.expect(std.mem.indexOf(u8, message[0..@min(length, message.len)], "libcuda.so.1") != null);
}

// ---- CUDA row-op families (kernels in zig/src/cuda/ops_rows.zig): the mp_norm_*, mp_softmax_*,
// mp_embedding_*, mp_rope_* and mp_attention_* exports on device memory. The same arguments and
// checks as the CPU exports, plus the device ordinal first; tensors are device addresses, while
// what the CPU interface passes from the host (labels, ids, positions, inv_freq, the problem
// records) is checked on the host and copied to the device through pinned staging, in stream
// order, without a synchronisation. No export waits for the device.

/// Device copies of host arrays for one launch: given back to the allocator's cache after the
/// launch is queued (safe: a later user of the block is ordered after it on the one stream).
const Uploads = struct {
    device: *driver.Device,
    addresses: [4]u64 = @splat(0),
    count: u32 = 0,

    fn add(uploads: *Uploads, source: []const u8) driver.Error!u64 {
        std.debug.assert(uploads.count < uploads.addresses.len);
        const address = try uploads.device.cache.alloc(@max(source.len, 4));
        uploads.addresses[uploads.count] = address;
        uploads.count += 1;
        try driver.copy_to_device(uploads.device, address, source);
        return address;
    }

    fn release(uploads: *Uploads) void {
        for (uploads.addresses[0..uploads.count]) |address| uploads.device.cache.free(address) catch {};
    }
};

/// Blocks of a row kernel: 16 rows per block of 256 threads, capped as grid-stride launches are.
fn row_blocks(device: *const driver.Device, rows: u64) u32 {
    return driver.grid_blocks(device, rows * (driver.block_threads / 16));
}

fn cuda_result(result: driver.Error!void) i32 {
    result catch |err| return cuda_status(err);
    return status(.ok);
}

/// mp_norm_forward on device memory (no sync).
export fn mp_cuda_launch_norm_forward(ordinal: u32, op: u32, x: u64, weight: u64, bias: u64, out: u64, mean: u64, rstd: u64, rows: u64, width: u64, dtype: u32, eps: f32) i32 {
    _ = storage.op_dtype(dtype) orelse return status(.invalid_dtype);
    const kind = std.enums.fromInt(norm_ops.Kind, op) orelse return status(.invalid_argument);
    if (kind == .rms and bias != 0) return status(.invalid_argument);
    if (!(eps >= 0) or std.math.isInf(eps)) return status(.invalid_argument);
    if (rows == 0) return status(.ok);
    if (width == 0) return status(.invalid_argument);
    if (x == 0 or out == 0) return status(.null_pointer);
    if (mean % 4 != 0 or rstd % 4 != 0) return status(.invalid_argument);
    const device = cuda_device(ordinal) catch |err| return cuda_status(err);
    return cuda_result(driver.launch(device, .norm_forward, row_blocks(device, rows), driver.block_threads, .{ op, dtype, x, weight, bias, out, mean, rstd, rows, width, eps }));
}

/// mp_norm_backward on device memory: grad_x, and grad_weight / grad_bias through the device
/// float32 workspace (at least mp_norm_workspace_count elements) in three launches (no sync).
/// With no rows, the requested weight and bias gradients are zeros.
export fn mp_cuda_launch_norm_backward(ordinal: u32, op: u32, x: u64, weight: u64, mean: u64, rstd: u64, grad_out: u64, grad_x: u64, grad_weight: u64, grad_bias: u64, workspace: u64, workspace_count: u64, rows: u64, width: u64, dtype: u32) i32 {
    _ = storage.op_dtype(dtype) orelse return status(.invalid_dtype);
    const kind = std.enums.fromInt(norm_ops.Kind, op) orelse return status(.invalid_argument);
    if (kind == .rms and grad_bias != 0) return status(.invalid_argument);
    if (width == 0) return status(if (rows == 0) .ok else .invalid_argument);
    const gradients = grad_weight != 0 or grad_bias != 0;
    if (rows != 0) {
        if (x == 0 or grad_out == 0 or grad_x == 0 or rstd == 0) return status(.null_pointer);
        if (kind == .layer and mean == 0) return status(.null_pointer);
        if (mean % 4 != 0 or rstd % 4 != 0) return status(.invalid_argument);
        if (gradients) {
            if (workspace == 0) return status(.null_pointer);
            if (workspace % 4 != 0 or workspace_count < norm_ops.workspace_count(rows, width)) return status(.invalid_argument);
        }
    }
    const device = cuda_device(ordinal) catch |err| return cuda_status(err);
    return cuda_result(norm_backward_launches(device, op, x, weight, mean, rstd, grad_out, grad_x, grad_weight, grad_bias, workspace, rows, width, dtype));
}

fn norm_backward_launches(device: *driver.Device, op: u32, x: u64, weight: u64, mean: u64, rstd: u64, grad_out: u64, grad_x: u64, grad_weight: u64, grad_bias: u64, workspace: u64, rows: u64, width: u64, dtype: u32) driver.Error!void {
    const threads = driver.block_threads;
    if (rows != 0) {
        try driver.launch(device, .norm_backward_rows, row_blocks(device, rows), threads, .{ op, dtype, x, weight, mean, rstd, grad_out, grad_x, rows, width });
        if (grad_weight != 0 or grad_bias != 0) {
            const items = norm_ops.block_count(rows) * width;
            try driver.launch(device, .norm_backward_partials, driver.grid_blocks(device, items), threads, .{ op, dtype, x, mean, rstd, grad_out, workspace, rows, width });
        }
    }
    // With no rows the combine reads no block and writes zeros.
    const blocks = driver.grid_blocks(device, width);
    if (grad_weight != 0) try driver.launch(device, .norm_combine, blocks, threads, .{ dtype, workspace, grad_weight, @as(u64, 0), rows, width });
    if (grad_bias != 0) try driver.launch(device, .norm_combine, blocks, threads, .{ dtype, workspace, grad_bias, width, rows, width });
}

/// mp_softmax_forward on device memory. For cross-entropy (op 2) `labels` is a host array of
/// int32 [rows] (checked here, copied to the device), `out` is unused (the per-row losses live in
/// a device block of the allocator for the launch), lse (0: not kept) and mean are device float32.
export fn mp_cuda_launch_softmax_forward(ordinal: u32, op: u32, x: u64, out: u64, rows: u64, width: u64, dtype: u32, labels: ?[*]const i32, ignore_index: i32, lse: u64, mean: u64) i32 {
    _ = storage.op_dtype(dtype) orelse return status(.invalid_dtype);
    const kind = std.enums.fromInt(softmax_ops.Op, op) orelse return status(.invalid_argument);
    if (kind == .cross_entropy) {
        if (mean == 0) return status(.null_pointer);
        if (mean % 4 != 0 or lse % 4 != 0) return status(.invalid_argument);
        if (rows != 0) {
            if (width == 0) return status(.invalid_argument);
            if (x == 0) return status(.null_pointer);
            const host = labels orelse return status(.null_pointer);
            _ = softmax_ops.check_labels(host[0..rows], width, ignore_index) orelse return status(.invalid_argument);
        }
        const device = cuda_device(ordinal) catch |err| return cuda_status(err);
        return cuda_result(cross_entropy_launches(device, x, rows, width, dtype, if (rows == 0) &.{} else labels.?[0..rows], ignore_index, lse, mean));
    }
    if (rows == 0) return status(.ok);
    if (width == 0) return status(.invalid_argument);
    if (x == 0 or out == 0) return status(.null_pointer);
    const device = cuda_device(ordinal) catch |err| return cuda_status(err);
    return cuda_result(driver.launch(device, .softmax_forward, row_blocks(device, rows), driver.block_threads, .{ op, dtype, x, out, rows, width, @as(u64, 0), ignore_index, @as(u64, 0) }));
}

fn cross_entropy_launches(device: *driver.Device, x: u64, rows: u64, width: u64, dtype: u32, labels: []const i32, ignore_index: i32, lse: u64, mean: u64) driver.Error!void {
    if (rows == 0) return driver.fill32(device, mean, @bitCast(std.math.nan(f32)), 1);
    var uploads = Uploads{ .device = device };
    defer uploads.release();
    const labels_address = try uploads.add(std.mem.sliceAsBytes(labels));
    const losses = try device.cache.alloc(rows * 4);
    defer device.cache.free(losses) catch {};
    const op: u32 = @backingInt(softmax_ops.Op.cross_entropy);
    try driver.launch(device, .softmax_forward, row_blocks(device, rows), driver.block_threads, .{ op, dtype, x, losses, rows, width, labels_address, ignore_index, lse });
    try driver.launch(device, .cross_entropy_mean, 1, 32, .{ losses, labels_address, ignore_index, rows, mean });
}

/// mp_softmax_backward on device memory; for cross-entropy `labels` is the host int32 [rows]
/// array (checked, copied to the device) and grad_out the device float32 gradient of the mean.
export fn mp_cuda_launch_softmax_backward(ordinal: u32, op: u32, saved: u64, grad_out: u64, grad_x: u64, rows: u64, width: u64, dtype: u32, labels: ?[*]const i32, ignore_index: i32, lse: u64) i32 {
    _ = storage.op_dtype(dtype) orelse return status(.invalid_dtype);
    const kind = std.enums.fromInt(softmax_ops.Op, op) orelse return status(.invalid_argument);
    if (rows == 0) return status(.ok);
    if (width == 0) return status(.invalid_argument);
    if (saved == 0 or grad_out == 0 or grad_x == 0) return status(.null_pointer);
    if (kind != .cross_entropy) {
        const device = cuda_device(ordinal) catch |err| return cuda_status(err);
        return cuda_result(driver.launch(device, .softmax_backward, row_blocks(device, rows), driver.block_threads, .{ op, dtype, saved, grad_out, grad_x, rows, width }));
    }
    if (lse == 0) return status(.null_pointer);
    if (lse % 4 != 0 or grad_out % 4 != 0) return status(.invalid_argument);
    const host = labels orelse return status(.null_pointer);
    const kept = softmax_ops.check_labels(host[0..rows], width, ignore_index) orelse return status(.invalid_argument);
    const device = cuda_device(ordinal) catch |err| return cuda_status(err);
    return cuda_result(cross_entropy_backward_launch(device, saved, grad_out, grad_x, rows, width, dtype, host[0..rows], ignore_index, lse, kept));
}

fn cross_entropy_backward_launch(device: *driver.Device, logits: u64, grad_mean: u64, grad_x: u64, rows: u64, width: u64, dtype: u32, labels: []const i32, ignore_index: i32, lse: u64, kept: u64) driver.Error!void {
    var uploads = Uploads{ .device = device };
    defer uploads.release();
    const labels_address = try uploads.add(std.mem.sliceAsBytes(labels));
    try driver.launch(device, .cross_entropy_backward, driver.grid_blocks(device, rows * width), driver.block_threads, .{ dtype, logits, grad_mean, grad_x, rows, width, labels_address, ignore_index, lse, kept });
}

/// mp_embedding_forward on device memory: `ids` is the host int32 [count] array (checked, copied).
export fn mp_cuda_launch_embedding_forward(ordinal: u32, table: u64, ids: ?[*]const i32, out: u64, vocabulary: u64, dim: u64, count: u64, dtype: u32) i32 {
    const d = numerics.Dtype.from_int(dtype) orelse return status(.invalid_dtype);
    if (count == 0 or dim == 0) return status(.ok);
    if (table == 0 or out == 0) return status(.null_pointer);
    const host = ids orelse return status(.null_pointer);
    if (!embedding_ops.check_ids(host[0..count], vocabulary)) return status(.invalid_argument);
    const device = cuda_device(ordinal) catch |err| return cuda_status(err);
    return cuda_result(embedding_forward_launch(device, table, host[0..count], out, dim, d.size_bytes()));
}

fn embedding_forward_launch(device: *driver.Device, table: u64, ids: []const i32, out: u64, dim: u64, element_bytes: u32) driver.Error!void {
    var uploads = Uploads{ .device = device };
    defer uploads.release();
    const ids_address = try uploads.add(std.mem.sliceAsBytes(ids));
    const count: u64 = ids.len;
    try driver.launch(device, .embedding_forward, driver.grid_blocks(device, count * dim), driver.block_threads, .{ element_bytes, table, ids_address, out, dim, count });
}

/// mp_embedding_backward on device memory: the stable counting sort of the host `ids` runs on
/// the host (embedding.sort_positions, the CPU's), its result goes to the device, and one thread
/// per grad_table element sums its id's rows in token order.
export fn mp_cuda_launch_embedding_backward(ordinal: u32, ids: ?[*]const i32, grad_out: u64, grad_table: u64, vocabulary: u64, dim: u64, count: u64, dtype: u32) i32 {
    _ = storage.op_dtype(dtype) orelse return status(.invalid_dtype);
    if (vocabulary == 0 or dim == 0) return status(.ok);
    if (grad_table == 0) return status(.null_pointer);
    if (count != 0 and grad_out == 0) return status(.null_pointer);
    if (count >= std.math.maxInt(u32) or vocabulary >= std.math.maxInt(u32)) return status(.invalid_argument);
    const host: []const i32 = if (count == 0) &.{} else (ids orelse return status(.null_pointer))[0..count];
    if (!embedding_ops.check_ids(host, vocabulary)) return status(.invalid_argument);
    const sorted = std.heap.c_allocator.alloc(u32, embedding_ops.workspace_count(vocabulary, count)) catch return status(.out_of_memory);
    defer std.heap.c_allocator.free(sorted);
    embedding_ops.sort_positions(&.{
        .ids = if (count == 0) @ptrFromInt(@alignOf(i32)) else host.ptr,
        .grad_out = @ptrFromInt(@alignOf(f32)),
        .grad_table = @ptrFromInt(@alignOf(f32)),
        .workspace = sorted.ptr,
        .vocabulary = vocabulary,
        .dim = dim,
        .count = count,
    });
    const device = cuda_device(ordinal) catch |err| return cuda_status(err);
    return cuda_result(embedding_backward_launch(device, sorted, grad_out, grad_table, vocabulary, dim, dtype));
}

fn embedding_backward_launch(device: *driver.Device, sorted: []const u32, grad_out: u64, grad_table: u64, vocabulary: u64, dim: u64, dtype: u32) driver.Error!void {
    var uploads = Uploads{ .device = device };
    defer uploads.release();
    const workspace = try uploads.add(std.mem.sliceAsBytes(sorted));
    try driver.launch(device, .embedding_backward, driver.grid_blocks(device, vocabulary * dim), driver.block_threads, .{ dtype, workspace, grad_out, grad_table, vocabulary, dim });
}

fn cuda_rope_call(ordinal: u32, op: u32, dtype: u32, problem: ?*const rope.Problem, source: u64, target: u64, inv_freq: ?[*]const f32, positions: ?[*]const i32, inverse: bool) i32 {
    if (op != rope_op_rotate_half) return status(.invalid_argument);
    const storage_dtype = storage.op_dtype(dtype) orelse return status(.invalid_dtype);
    const p = (problem orelse return status(.null_pointer)).*;
    if (!p.valid()) return status(.invalid_argument);
    const explicit = p.flags & rope.flag_positions != 0;
    const half = p.head_dim / 2;
    const pairs = p.batch * p.steps * p.heads * half;
    if (pairs == 0) return status(.ok);
    if (source == 0 or target == 0) return status(.null_pointer);
    const frequencies = inv_freq orelse return status(.null_pointer);
    if (explicit and positions == null) return status(.null_pointer);
    const bytes = pairs * 2 * storage_dtype.size_bytes();
    if (source < target + bytes and target < source + bytes and source != target) return status(.overlap);
    const position_count = if (p.flags & rope.flag_positions_per_batch != 0) p.batch * p.steps else p.steps;
    const device = cuda_device(ordinal) catch |err| return cuda_status(err);
    return cuda_result(rope_launch(device, dtype, inverse, &p, source, target, frequencies[0..half], if (explicit) positions.?[0..position_count] else &.{}, pairs));
}

fn rope_launch(device: *driver.Device, dtype: u32, inverse: bool, p: *const rope.Problem, source: u64, target: u64, inv_freq: []const f32, positions: []const i32, pairs: u64) driver.Error!void {
    var uploads = Uploads{ .device = device };
    defer uploads.release();
    const problem_address = try uploads.add(std.mem.asBytes(p));
    const inv_freq_address = try uploads.add(std.mem.sliceAsBytes(inv_freq));
    const positions_address: u64 = if (positions.len == 0) 0 else try uploads.add(std.mem.sliceAsBytes(positions));
    try driver.launch(device, .rope, driver.grid_blocks(device, pairs), driver.block_threads, .{ dtype, @as(u32, @intFromBool(inverse)), problem_address, source, target, inv_freq_address, positions_address });
}

/// mp_rope_forward on device memory: x and out are device addresses; the problem record,
/// inv_freq and positions are host arrays (copied to the device).
export fn mp_cuda_launch_rope_forward(ordinal: u32, op: u32, dtype: u32, problem: ?*const rope.Problem, x: u64, out: u64, inv_freq: ?[*]const f32, positions: ?[*]const i32) i32 {
    return cuda_rope_call(ordinal, op, dtype, problem, x, out, inv_freq, positions, false);
}

/// mp_rope_backward on device memory (same arguments as mp_cuda_launch_rope_forward).
export fn mp_cuda_launch_rope_backward(ordinal: u32, op: u32, dtype: u32, problem: ?*const rope.Problem, d_out: u64, dx: u64, inv_freq: ?[*]const f32, positions: ?[*]const i32) i32 {
    return cuda_rope_call(ordinal, op, dtype, problem, d_out, dx, inv_freq, positions, true);
}

/// mp_attention_forward on device memory: the problem record is a host array (copied); every
/// tensor, the mask and lse are device addresses.
export fn mp_cuda_launch_attention_forward(ordinal: u32, op: u32, dtype: u32, problem: ?*const attention.Problem, scale: f32, q: u64, k: u64, v: u64, mask: u64, mask_dtype: u32, out: u64, lse: u64) i32 {
    if (op != attention_op_sdpa) return status(.invalid_argument);
    _ = storage.op_dtype(dtype) orelse return status(.invalid_dtype);
    const p = (problem orelse return status(.null_pointer)).*;
    if (!p.valid() or std.math.isNan(scale) or std.math.isInf(scale)) return status(.invalid_argument);
    if (mask != 0 and storage.op_dtype(mask_dtype) == null) return status(.invalid_dtype);
    if (p.batch == 0 or p.steps_q == 0) return status(.ok);
    if (out == 0 or lse == 0 or q == 0) return status(.null_pointer);
    if (lse % 4 != 0) return status(.invalid_argument);
    if (p.steps_kv != 0 and (k == 0 or v == 0)) return status(.null_pointer);
    const device = cuda_device(ordinal) catch |err| return cuda_status(err);
    return cuda_result(attention_launches(device, .forward, dtype, &p, scale, .{ q, k, v, mask, mask_dtype, out, lse, 0, 0, 0, 0 }));
}

/// mp_attention_backward on device memory (two launches: dk and dv, then dq).
export fn mp_cuda_launch_attention_backward(ordinal: u32, op: u32, dtype: u32, problem: ?*const attention.Problem, scale: f32, q: u64, k: u64, v: u64, mask: u64, mask_dtype: u32, out: u64, lse: u64, d_out: u64, dq: u64, dk: u64, dv: u64) i32 {
    if (op != attention_op_sdpa) return status(.invalid_argument);
    _ = storage.op_dtype(dtype) orelse return status(.invalid_dtype);
    const p = (problem orelse return status(.null_pointer)).*;
    if (!p.valid() or std.math.isNan(scale) or std.math.isInf(scale)) return status(.invalid_argument);
    if (mask != 0 and storage.op_dtype(mask_dtype) == null) return status(.invalid_dtype);
    if (p.batch == 0) return status(.ok);
    const has_q = p.steps_q != 0;
    const has_kv = p.steps_kv != 0;
    if (has_q and (q == 0 or out == 0 or lse == 0 or d_out == 0 or dq == 0)) return status(.null_pointer);
    if (has_kv and (k == 0 or v == 0 or dk == 0 or dv == 0)) return status(.null_pointer);
    if (lse % 4 != 0) return status(.invalid_argument);
    const device = cuda_device(ordinal) catch |err| return cuda_status(err);
    return cuda_result(attention_launches(device, .backward, dtype, &p, scale, .{ q, k, v, mask, mask_dtype, out, lse, d_out, dq, dk, dv }));
}

fn attention_launches(device: *driver.Device, comptime pass: enum { forward, backward }, dtype: u32, p: *const attention.Problem, scale: f32, t: struct { u64, u64, u64, u64, u32, u64, u64, u64, u64, u64, u64 }) driver.Error!void {
    var uploads = Uploads{ .device = device };
    defer uploads.release();
    const record = try uploads.add(std.mem.asBytes(p));
    const threads = driver.block_threads;
    const q_items = p.batch * p.heads_q * attention.q_tiles(p);
    const kv_items = p.batch * p.heads_kv * attention.kv_tiles(p);
    // One block per work item (grid-stride beyond the cap).
    const q_blocks = driver.grid_blocks(device, q_items * threads);
    const kv_blocks = driver.grid_blocks(device, kv_items * threads);
    if (pass == .forward) {
        try driver.launch(device, .attention_forward, q_blocks, threads, .{ dtype, record, scale, t[0], t[1], t[2], t[3], t[4], t[5], t[6] });
        return;
    }
    if (kv_items != 0) try driver.launch(device, .attention_backward_keys, kv_blocks, threads, .{ dtype, record, scale, t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], t[9], t[10] });
    if (q_items != 0) try driver.launch(device, .attention_backward_queries, q_blocks, threads, .{ dtype, record, scale, t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], t[8] });
}

test {
    _ = @import("ops/mathf.zig");
    _ = @import("row_ops.zig");
}

test "the row-op CUDA exports check their host arguments before asking for a device" {
    // Each of these fails on its arguments alone, so the answer is the same with or without a GPU.
    const labels = [_]i32{ 0, 5, -100 };
    try std.testing.expectEqual(status(.invalid_argument), mp_cuda_launch_softmax_forward(0, 2, 64, 0, 3, 5, 0, &labels, -100, 0, 64));
    try std.testing.expectEqual(status(.invalid_argument), mp_cuda_launch_softmax_backward(0, 2, 64, 64, 64, 3, 5, 0, &labels, -100, 64));
    try std.testing.expectEqual(status(.null_pointer), mp_cuda_launch_softmax_backward(0, 2, 64, 64, 64, 3, 5, 0, null, -100, 64));
    const ids = [_]i32{ 1, 4 };
    try std.testing.expectEqual(status(.invalid_argument), mp_cuda_launch_embedding_forward(0, 64, &ids, 64, 4, 2, 2, 2));
    try std.testing.expectEqual(status(.invalid_argument), mp_cuda_launch_embedding_backward(0, &ids, 64, 64, 4, 2, 2, 2));
    try std.testing.expectEqual(status(.invalid_dtype), mp_cuda_launch_norm_forward(0, 0, 64, 0, 0, 64, 0, 0, 2, 2, 3, 1e-5));
    try std.testing.expectEqual(status(.invalid_argument), mp_cuda_launch_norm_forward(0, 1, 64, 0, 64, 64, 0, 0, 2, 2, 0, 1e-5));
    try std.testing.expectEqual(status(.invalid_argument), mp_cuda_launch_norm_backward(0, 0, 64, 0, 64, 64, 64, 64, 64, 0, 64, 1, 70, 5, 0));
    const odd = rope.Problem{ .batch = 1, .steps = 2, .heads = 1, .head_dim = 3, .offset = 0, .flags = 0 };
    const frequencies = [_]f32{ 1, 0.5 };
    try std.testing.expectEqual(status(.invalid_argument), mp_cuda_launch_rope_forward(0, 0, 0, &odd, 64, 64, &frequencies, null));
    var grouped = attention.Problem{ .batch = 1, .steps_q = 2, .steps_kv = 2, .heads_q = 3, .heads_kv = 2, .head_dim = 4, .q_stride = 12, .k_stride = 8, .v_stride = 8, .o_stride = 12, .flags = 0 };
    try std.testing.expectEqual(status(.invalid_argument), mp_cuda_launch_attention_forward(0, 0, 0, &grouped, 0.5, 64, 64, 64, 0, 0, 64, 64));
    grouped.heads_kv = 3;
    grouped.k_stride = 12;
    grouped.v_stride = 12;
    try std.testing.expectEqual(status(.invalid_dtype), mp_cuda_launch_attention_backward(0, 0, 3, &grouped, 0.5, 64, 64, 64, 0, 0, 64, 64, 64, 64, 64, 64));
    try std.testing.expectEqual(status(.invalid_argument), mp_cuda_launch_attention_backward(0, 0, 0, &grouped, std.math.nan(f32), 64, 64, 64, 0, 0, 64, 64, 64, 64, 64, 64));
}
