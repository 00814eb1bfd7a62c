//! Layer norm and RMS norm over the last axis of a [rows, width] tensor, forward and backward
//! (llm.c's layernorm pair): statistics and arithmetic in float32 registers, one rounding on store
//! into the tensor's dtype (float32, float16 or bfloat16, through storage.zig).
//!
//! Forward, per row (RMS norm drops the mean and the bias):
//!   mean = sum(x) / width,  rstd = 1 / sqrt(sum((x - mean)^2) / width + eps)
//!   xhat = (x - mean) * rstd,  y = xhat * weight + bias
//! The per-row mean and rstd are kept (float32) for the backward pass, which recomputes xhat:
//!   dn = g * weight,  dx = rstd * (dn - mean(dn) - xhat * mean(dn * xhat))
//!   dweight = sum over rows of g * xhat,  dbias = sum over rows of g
//! The weight and bias gradients come from the same pass over the rows: rows are cut into at most
//! `block_count_max` blocks whose size depends on the row count only, each block sums its rows in
//! row order into its own slice of a caller-provided float32 workspace, and the blocks are added in
//! block order. So the result is the same bits on any thread count.
//!
//! Bytes moved per element: forward reads x and writes y (plus weight and bias once per row,
//! cached); backward reads x and g and writes dx.

const std = @import("std");
const assert = std.debug.assert;
const storage = @import("storage.zig");
const pool = @import("../cpu/pool.zig");
const dispatch = @import("../cpu/dispatch.zig");

const Dtype = storage.Dtype;
const F = storage.F;
const lanes = storage.lanes;

pub const Kind = enum(u32) {
    layer = 0,
    rms = 1,
};

/// The most blocks the rows of a backward pass are cut into (each needs 2 * width floats of
/// workspace): enough to keep 16 threads busy, few enough that the final combine is cheap.
pub const block_count_max: u64 = 64;

/// Rows per block of the backward pass: a function of the row count alone (never of the thread
/// count), so the weight and bias gradients are summed in the same order on any machine.
pub fn block_rows(rows: u64) u64 {
    assert(rows > 0);
    return (rows + block_count_max - 1) / block_count_max;
}

/// The number of row blocks of a backward pass over `rows` rows.
pub fn block_count(rows: u64) u64 {
    if (rows == 0) return 0;
    const size = block_rows(rows);
    return (rows + size - 1) / size;
}

/// Workspace floats a backward pass needs: one weight and one bias partial row per block.
pub fn workspace_count(rows: u64, width: u64) u64 {
    return block_count(rows) * 2 * width;
}

pub const Forward = struct {
    kind: Kind,
    x: [*]const u8,
    /// Absent: weight 1.
    weight: ?[*]const u8,
    /// Absent: bias 0 (always absent for RMS norm).
    bias: ?[*]const u8,
    out: [*]u8,
    /// Per-row statistics for the backward pass; absent when no gradient is needed.
    mean: ?[*]f32,
    rstd: ?[*]f32,
    rows: u64,
    width: u64,
    eps: f32,
};

pub const Backward = struct {
    kind: Kind,
    x: [*]const u8,
    weight: ?[*]const u8,
    /// The forward's statistics (mean is unused by RMS norm).
    mean: ?[*]const f32,
    rstd: [*]const f32,
    grad_out: [*]const u8,
    grad_x: [*]u8,
    grad_weight: ?[*]u8,
    grad_bias: ?[*]u8,
    /// `workspace_count(rows, width)` floats, needed when grad_weight or grad_bias is present.
    workspace: ?[*]f32,
    rows: u64,
    width: u64,
};

/// Mean and reciprocal standard deviation of one row (mean 0 for RMS norm): two passes, so the
/// variance has no cancellation error, each summed in n-lane partials then the scalar tail.
pub fn row_statistics(comptime dtype: Dtype, kind: Kind, x: [*]const u8, base: u64, width: u64, eps: f32) [2]f32 {
    assert(width > 0);
    const count: f32 = @floatFromInt(width);
    var mean: f32 = 0;
    if (kind == .layer) {
        var total: f32 = 0;
        var j: u64 = 0;
        inline for (.{ lanes, 1 }) |n| {
            var acc: F(n) = @splat(0);
            while (j + n <= width) : (j += n) acc += storage.load(n, dtype, x, base + j);
            total += @reduce(.Add, acc);
        }
        mean = total / count;
    }
    var squares: f32 = 0;
    var j: u64 = 0;
    inline for (.{ lanes, 1 }) |n| {
        var acc: F(n) = @splat(0);
        while (j + n <= width) : (j += n) {
            const centered = storage.load(n, dtype, x, base + j) - @as(F(n), @splat(mean));
            acc += centered * centered;
        }
        squares += @reduce(.Add, acc);
    }
    return .{ mean, 1.0 / @sqrt(squares / count + eps) };
}

/// y = (x - mean) * rstd * weight + bias for n lanes.
pub inline fn normalize(comptime n: comptime_int, x: F(n), mean: f32, rstd: f32, weight: F(n), bias: F(n)) F(n) {
    return (x - @as(F(n), @splat(mean))) * @as(F(n), @splat(rstd)) * weight + bias;
}

inline fn load_or(comptime n: comptime_int, comptime dtype: Dtype, base: ?[*]const u8, index: u64, default: f32) F(n) {
    return if (base) |b| storage.load(n, dtype, b, index) else @splat(default);
}

fn forward_row(comptime dtype: Dtype, args: *const Forward, row: u64) void {
    const base = row * args.width;
    const stats = row_statistics(dtype, args.kind, args.x, base, args.width, args.eps);
    if (args.mean) |mean| mean[row] = stats[0];
    if (args.rstd) |rstd| rstd[row] = stats[1];
    var j: u64 = 0;
    inline for (.{ lanes, 1 }) |n| {
        while (j + n <= args.width) : (j += n) {
            const x = storage.load(n, dtype, args.x, base + j);
            const y = normalize(n, x, stats[0], stats[1], load_or(n, dtype, args.weight, j, 1), load_or(n, dtype, args.bias, j, 0));
            storage.store(n, dtype, args.out, base + j, y);
        }
    }
}

/// One row's backward: dx, and g * xhat and g added into the block's partial rows.
fn backward_row(comptime dtype: Dtype, args: *const Backward, row: u64, partial_weight: ?[*]f32, partial_bias: ?[*]f32) void {
    const base = row * args.width;
    const mean: f32 = if (args.kind == .layer) args.mean.?[row] else 0;
    const rstd = args.rstd[row];
    const count: f32 = @floatFromInt(args.width);
    var sum_dn: f32 = 0;
    var sum_dn_xhat: f32 = 0;
    var j: u64 = 0;
    inline for (.{ lanes, 1 }) |n| {
        var acc_dn: F(n) = @splat(0);
        var acc_dn_xhat: F(n) = @splat(0);
        while (j + n <= args.width) : (j += n) {
            const xhat = normalize(n, storage.load(n, dtype, args.x, base + j), mean, rstd, @splat(1), @splat(0));
            const g = storage.load(n, dtype, args.grad_out, base + j);
            const dn = g * load_or(n, dtype, args.weight, j, 1);
            acc_dn += dn;
            acc_dn_xhat += dn * xhat;
            if (partial_weight) |p| p[j..][0..n].* = @as(F(n), p[j..][0..n].*) + g * xhat;
            if (partial_bias) |p| p[j..][0..n].* = @as(F(n), p[j..][0..n].*) + g;
        }
        sum_dn += @reduce(.Add, acc_dn);
        sum_dn_xhat += @reduce(.Add, acc_dn_xhat);
    }
    const mean_dn: f32 = if (args.kind == .layer) sum_dn / count else 0;
    const mean_dn_xhat = sum_dn_xhat / count;
    j = 0;
    inline for (.{ lanes, 1 }) |n| {
        while (j + n <= args.width) : (j += n) {
            const xhat = normalize(n, storage.load(n, dtype, args.x, base + j), mean, rstd, @splat(1), @splat(0));
            const dn = storage.load(n, dtype, args.grad_out, base + j) * load_or(n, dtype, args.weight, j, 1);
            const dx = @as(F(n), @splat(rstd)) * (dn - @as(F(n), @splat(mean_dn)) - xhat * @as(F(n), @splat(mean_dn_xhat)));
            storage.store(n, dtype, args.grad_x, base + j, dx);
        }
    }
}

/// Calls `body(context, begin, end)` over disjoint ranges of [0, count) items of `item_elements`
/// elements each, on as many threads as the element count pays for. Items are independent, so
/// the split never changes a result.
pub fn parallel_items(count: u64, item_elements: u64, context: anytype, comptime body: fn (@TypeOf(context), u64, u64) void) void {
    if (count == 0) return;
    const threads: u64 = pool.thread_count();
    if (threads <= 1 or count == 1 or count * item_elements < pool.parallel_threshold) {
        body(context, 0, count);
        return;
    }
    const workers = @min(threads, count);
    const Split = struct {
        inner: @TypeOf(context),
        count: u64,
        per_worker: u64,
        fn call(self: *const @This(), worker: u32) void {
            const begin = @min(self.count, worker * self.per_worker);
            const end = @min(self.count, begin + self.per_worker);
            if (begin < end) body(self.inner, begin, end);
        }
    };
    const split = Split{ .inner = context, .count = count, .per_worker = (count + workers - 1) / workers };
    pool.run_workers(@intCast(workers), &split, Split.call);
}

fn Kernels(comptime dtype: Dtype) type {
    return struct {
        fn forward_rows(args: *const Forward, begin: u64, end: u64) void {
            for (begin..end) |row| forward_row(dtype, args, row);
        }

        fn backward_blocks(args: *const Backward, begin: u64, end: u64) void {
            const size = block_rows(args.rows);
            for (begin..end) |block| {
                var partial_weight: ?[*]f32 = null;
                var partial_bias: ?[*]f32 = null;
                if (args.workspace) |workspace| {
                    const slice = workspace[block * 2 * args.width ..][0 .. 2 * args.width];
                    @memset(slice, 0);
                    if (args.grad_weight != null) partial_weight = slice.ptr;
                    if (args.grad_bias != null) partial_bias = slice.ptr + args.width;
                }
                const row_end = @min(args.rows, (block + 1) * size);
                for (block * size..row_end) |row| backward_row(dtype, args, row, partial_weight, partial_bias);
            }
        }

        /// Adds the blocks' partial rows in block order and rounds once into the gradient's dtype.
        fn combine(args: *const Backward, offset: u64, target: [*]u8) void {
            const workspace = args.workspace.?;
            const blocks = block_count(args.rows);
            var j: u64 = 0;
            inline for (.{ lanes, 1 }) |n| {
                while (j + n <= args.width) : (j += n) {
                    var total: F(n) = @splat(0);
                    for (0..blocks) |block| total += workspace[block * 2 * args.width + offset + j ..][0..n].*;
                    storage.store(n, dtype, target, j, total);
                }
            }
        }

        fn forward(args: *const Forward) void {
            const call = RangeCall(Forward){ .args = args, .pass = 0, .dtype = @backingInt(dtype), .range = picked_range() };
            parallel_items(args.rows, args.width, &call, RangeCall(Forward).run);
        }

        fn backward(args: *const Backward) void {
            const blocks = block_count(args.rows);
            const call = RangeCall(Backward){ .args = args, .pass = 1, .dtype = @backingInt(dtype), .range = picked_range() };
            parallel_items(blocks, block_rows(args.rows) * args.width, &call, RangeCall(Backward).run);
            if (args.grad_weight) |target| combine(args, 0, target);
            if (args.grad_bias) |target| combine(args, args.width, target);
        }
    };
}

/// Rows [begin, end) of a forward pass (`pass` 0, `args` a Forward) or row blocks of a backward
/// pass (1, a Backward), as a C function: zig/src/wide.zig exports its x86-64-v4 compilations,
/// whose zmm registers run the row sums and the bfloat16 and float16 conversions of
/// cache-resident rows faster. The same operations in the same order on every path: the same bits.
pub fn norm_range_c(pass: u32, dtype: u32, args: *const anyopaque, begin: u64, end: u64) callconv(.c) void {
    switch (@as(Dtype, @fromBackingInt(@intCast(dtype)))) {
        inline .float32, .float16, .bfloat16 => |d| if (pass == 0)
            Kernels(d).forward_rows(@ptrCast(@alignCast(args)), begin, end)
        else
            Kernels(d).backward_blocks(@ptrCast(@alignCast(args)), begin, end),
        else => unreachable,
    }
}

fn picked_range() *const @TypeOf(norm_range_c) {
    return dispatch.pick(*const @TypeOf(norm_range_c), "norm_range", &norm_range_c);
}

fn RangeCall(comptime Args: type) type {
    return struct {
        args: *const Args,
        pass: u32,
        dtype: u32,
        range: *const @TypeOf(norm_range_c),

        fn run(call: *const @This(), begin: u64, end: u64) void {
            call.range(call.pass, call.dtype, call.args, begin, end);
        }
    };
}

/// Runs the forward pass. The arguments were validated by the caller (ffi.zig).
pub fn forward(dtype: Dtype, args: *const Forward) void {
    assert(storage.is_op_dtype(dtype));
    assert(args.kind == .layer or args.bias == null);
    assert(args.width > 0 or args.rows == 0);
    switch (dtype) {
        inline .float32, .float16, .bfloat16 => |d| Kernels(d).forward(args),
        else => unreachable,
    }
}

/// The backward pass's row-block step alone: grad_x, and each block's weight and bias partial
/// rows left in the workspace (the CUDA fake driver emulates the device's partials kernel with it).
pub fn backward_partials(dtype: Dtype, args: *const Backward) void {
    assert(storage.is_op_dtype(dtype));
    switch (dtype) {
        inline .float32, .float16, .bfloat16 => |d| parallel_items(block_count(args.rows), block_rows(args.rows) * args.width, args, Kernels(d).backward_blocks),
        else => unreachable,
    }
}

/// The backward pass's last step alone: the blocks' partial rows at `offset` (0: weight, width:
/// bias) added in block order and rounded once into `target`.
pub fn combine_partials(dtype: Dtype, args: *const Backward, offset: u64, target: [*]u8) void {
    assert(storage.is_op_dtype(dtype));
    switch (dtype) {
        inline .float32, .float16, .bfloat16 => |d| Kernels(d).combine(args, offset, target),
        else => unreachable,
    }
}

/// Runs the backward pass. The arguments were validated by the caller (ffi.zig).
pub fn backward(dtype: Dtype, args: *const Backward) void {
    assert(storage.is_op_dtype(dtype));
    assert(args.kind == .rms or args.mean != null);
    assert(args.kind == .layer or args.grad_bias == null);
    assert((args.grad_weight == null and args.grad_bias == null) or args.workspace != null);
    assert(args.width > 0 or args.rows == 0);
    switch (dtype) {
        inline .float32, .float16, .bfloat16 => |d| Kernels(d).backward(args),
        else => unreachable,
    }
}

// ---- Tests: against float64 transcriptions of the formulas above ----

const testing = std.testing;

fn fill(values: []f32, seed: u32) void {
    var state: u32 = seed *% 2654435761 +% 1;
    for (values) |*v| {
        state = state *% 1664525 +% 1013904223;
        v.* = @as(f32, @floatFromInt(state >> 8)) / @as(f32, 1 << 24) * 4.0 - 2.0;
    }
}

fn reference_forward(kind: Kind, x: []const f32, w: []const f32, b: []const f32, width: usize, eps: f64, out: []f64) void {
    for (0..x.len / width) |r| {
        const row = x[r * width ..][0..width];
        var mean: f64 = 0;
        if (kind == .layer) {
            for (row) |v| mean += v;
            mean /= @floatFromInt(width);
        }
        var squares: f64 = 0;
        for (row) |v| squares += (v - mean) * (v - mean);
        const rstd = 1 / @sqrt(squares / @as(f64, @floatFromInt(width)) + eps);
        for (row, 0..) |v, j| out[r * width + j] = (v - mean) * rstd * w[j] + (if (kind == .layer) b[j] else 0);
    }
}

test "layer and RMS norm forward match a float64 reference within a few float32 ulp on odd widths" {
    const rows = 5;
    inline for (.{ Kind.layer, Kind.rms }) |kind| {
        for ([_]usize{ 1, 3, 16, 37 }) |width| {
            var x: [rows * 37]f32 = undefined;
            var w: [37]f32 = undefined;
            var b: [37]f32 = undefined;
            fill(&x, 1);
            fill(&w, 2);
            fill(&b, 3);
            var out: [rows * 37]f32 = undefined;
            var mean: [rows]f32 = undefined;
            var rstd: [rows]f32 = undefined;
            forward(.float32, &.{
                .kind = kind,
                .x = @ptrCast(&x),
                .weight = @ptrCast(&w),
                .bias = if (kind == .layer) @ptrCast(&b) else null,
                .out = @ptrCast(&out),
                .mean = &mean,
                .rstd = &rstd,
                .rows = rows,
                .width = width,
                .eps = 1e-5,
            });
            var want: [rows * 37]f64 = undefined;
            reference_forward(kind, x[0 .. rows * width], &w, &b, width, 1e-5, want[0 .. rows * width]);
            for (0..rows * width) |i| try testing.expect(@abs(out[i] - want[i]) <= 1e-5 * (1 + @abs(want[i])));
        }
    }
}

test "norm backward gives dx, dweight and dbias of a float64 reference, and the same bits per block split" {
    const rows = 70; // More rows than block_count_max, so blocks hold two rows.
    const width = 19;
    var x: [rows * width]f32 = undefined;
    var g: [rows * width]f32 = undefined;
    var w: [width]f32 = undefined;
    fill(&x, 4);
    fill(&g, 5);
    fill(&w, 6);
    var out: [rows * width]f32 = undefined;
    var mean: [rows]f32 = undefined;
    var rstd: [rows]f32 = undefined;
    forward(.float32, &.{ .kind = .layer, .x = @ptrCast(&x), .weight = @ptrCast(&w), .bias = null, .out = @ptrCast(&out), .mean = &mean, .rstd = &rstd, .rows = rows, .width = width, .eps = 1e-5 });
    var dx: [rows * width]f32 = undefined;
    var dw: [width]f32 = undefined;
    var db: [width]f32 = undefined;
    var workspace: [block_count_max * 2 * width]f32 = undefined;
    try testing.expect(workspace_count(rows, width) <= workspace.len);
    backward(.float32, &.{ .kind = .layer, .x = @ptrCast(&x), .weight = @ptrCast(&w), .mean = &mean, .rstd = &rstd, .grad_out = @ptrCast(&g), .grad_x = @ptrCast(&dx), .grad_weight = @ptrCast(&dw), .grad_bias = @ptrCast(&db), .workspace = &workspace, .rows = rows, .width = width });
    for (0..width) |j| {
        var want_w: f64 = 0;
        var want_b: f64 = 0;
        for (0..rows) |r| {
            const xhat = (@as(f64, x[r * width + j]) - mean[r]) * rstd[r];
            want_w += g[r * width + j] * xhat;
            want_b += g[r * width + j];
        }
        try testing.expect(@abs(dw[j] - want_w) <= 1e-4 * (1 + @abs(want_w)));
        try testing.expect(@abs(db[j] - want_b) <= 1e-4 * (1 + @abs(want_b)));
    }
    // dx against the closed form in float64 for row 0.
    var sum_dn: f64 = 0;
    var sum_dn_xhat: f64 = 0;
    for (0..width) |j| {
        const xhat = (@as(f64, x[j]) - mean[0]) * rstd[0];
        sum_dn += @as(f64, g[j]) * w[j];
        sum_dn_xhat += @as(f64, g[j]) * w[j] * xhat;
    }
    for (0..width) |j| {
        const xhat = (@as(f64, x[j]) - mean[0]) * rstd[0];
        const want = rstd[0] * (@as(f64, g[j]) * w[j] - sum_dn / width - xhat * sum_dn_xhat / width);
        try testing.expect(@abs(dx[j] - want) <= 1e-5 * (1 + @abs(want)));
    }
}

test "bfloat16 norm stores equal the float32 kernel's result rounded once" {
    const rows = 3;
    const width = 21;
    var x32: [rows * width]f32 = undefined;
    fill(&x32, 7);
    var x16: [rows * width]u16 = undefined;
    for (&x16, x32) |*h, v| h.* = @truncate(@as(u32, @bitCast(v)) >> 16);
    for (&x32, x16) |*v, h| v.* = @bitCast(@as(u32, h) << 16);
    var out32: [rows * width]f32 = undefined;
    var out16: [rows * width]u16 = undefined;
    forward(.float32, &.{ .kind = .rms, .x = @ptrCast(&x32), .weight = null, .bias = null, .out = @ptrCast(&out32), .mean = null, .rstd = null, .rows = rows, .width = width, .eps = 1e-6 });
    forward(.bfloat16, &.{ .kind = .rms, .x = @ptrCast(&x16), .weight = null, .bias = null, .out = @ptrCast(&out16), .mean = null, .rstd = null, .rows = rows, .width = width, .eps = 1e-6 });
    for (out32, out16) |wide, narrow| {
        var rounded: [1]u16 = undefined;
        storage.store_one(.bfloat16, @ptrCast(&rounded), 0, wide);
        try testing.expectEqual(rounded[0], narrow);
    }
}

test "every dispatch path gives the same bits: layer and RMS norm, forward and backward, every dtype" {
    const rows = 300;
    const width = 77; // Vector body and scalar tail.
    const allocator = testing.allocator;
    const n = rows * width;
    const buffers = try allocator.alloc(f32, 3 * n + 2 * width + 2 * rows + workspace_count(rows, width) + 2 * (n + 2 * width + 2 * rows));
    defer allocator.free(buffers);
    var rest = buffers;
    const take = struct {
        fn f(from: *[]f32, count: u64) []f32 {
            const out = from.*[0..count];
            from.* = from.*[count..];
            return out;
        }
    }.f;
    const x = take(&rest, n);
    const grad_out = take(&rest, n);
    const out = take(&rest, n);
    const weight = take(&rest, width);
    const bias = take(&rest, width);
    const mean = take(&rest, rows);
    const rstd = take(&rest, rows);
    const workspace = take(&rest, workspace_count(rows, width));
    // Per path: out | grad_x, grad_weight, grad_bias, mean, rstd (what the passes write).
    const results = [_][]f32{ take(&rest, n + 2 * width + 2 * rows), take(&rest, n + 2 * width + 2 * rows) };
    var prng = std.Random.DefaultPrng.init(3);
    defer dispatch.set_path_for_test(null);
    inline for (.{ Dtype.float32, Dtype.bfloat16, Dtype.float16 }) |dtype| {
        for (x, 0..) |_, i| storage.store_one(dtype, @ptrCast(x.ptr), i, (prng.random().float(f32) - 0.3) * 4);
        for (grad_out, 0..) |_, i| storage.store_one(dtype, @ptrCast(grad_out.ptr), i, prng.random().float(f32) - 0.5);
        for (0..width) |i| {
            storage.store_one(dtype, @ptrCast(weight.ptr), i, 0.5 + prng.random().float(f32));
            storage.store_one(dtype, @ptrCast(bias.ptr), i, prng.random().float(f32) - 0.5);
        }
        for ([_]Kind{ .layer, .rms }) |kind| {
            for (dispatch.paths_available(), 0..) |path, index| {
                dispatch.set_path_for_test(path);
                const result = results[@min(index, 1)];
                @memset(result, 0);
                forward(dtype, &.{ .kind = kind, .x = @ptrCast(x.ptr), .weight = @ptrCast(weight.ptr), .bias = if (kind == .layer) @ptrCast(bias.ptr) else null, .out = @ptrCast(out.ptr), .mean = mean.ptr, .rstd = rstd.ptr, .rows = rows, .width = width, .eps = 1e-5 });
                backward(dtype, &.{
                    .kind = kind,
                    .x = @ptrCast(x.ptr),
                    .weight = @ptrCast(weight.ptr),
                    .mean = mean.ptr,
                    .rstd = rstd.ptr,
                    .grad_out = @ptrCast(grad_out.ptr),
                    .grad_x = @ptrCast(result.ptr),
                    .grad_weight = @ptrCast(result[n..].ptr),
                    .grad_bias = if (kind == .layer) @ptrCast(result[n + width ..].ptr) else null,
                    .workspace = workspace.ptr,
                    .rows = rows,
                    .width = width,
                });
                // The forward's statistics join the compared results, its output by a hash.
                @memcpy(result[n + 2 * width ..][0..rows], mean);
                @memcpy(result[n + 2 * width + rows ..][0..rows], rstd);
                const out_bits: []const u32 = @ptrCast(out);
                var out_hash: u64 = 0;
                for (out_bits) |bits| out_hash = out_hash *% 1_000_003 +% bits;
                if (index == 0) {
                    forward_hash = out_hash;
                } else {
                    try testing.expectEqual(forward_hash, out_hash);
                    try testing.expectEqualSlices(u32, @ptrCast(results[0]), @ptrCast(results[1]));
                }
            }
        }
    }
}

var forward_hash: u64 = 0;

test "block sizes depend on the row count only and cover every row" {
    for ([_]u64{ 1, 2, 63, 64, 65, 127, 128, 1000, 4097 }) |rows| {
        const size = block_rows(rows);
        const blocks = block_count(rows);
        try testing.expect(blocks <= block_count_max);
        try testing.expect(blocks * size >= rows);
        try testing.expect((blocks - 1) * size < rows);
    }
    try testing.expectEqual(@as(u64, 0), block_count(0));
}
