//! Softmax, log-softmax and softmax cross-entropy over the last axis of a [rows, width] tensor,
//! forward and backward: one row per task, the row maximum subtracted first (so logits of +-1e4
//! stay finite), a vector exp, float32 arithmetic and one rounding on store into the tensor's
//! dtype (float32, float16 or bfloat16, through storage.zig).
//!
//!   softmax:        y = exp(x - max) / sum(exp(x - max));   dx = y * (g - sum(g * y))
//!   log-softmax:    y = x - lse, lse = max + log(sum(exp(x - max)));   dx = g - exp(y) * sum(g)
//!   cross-entropy:  loss_r = lse_r - x[r, label_r] (0 for a row whose label is ignore_index),
//!                   loss = sum(loss_r) / kept (NaN when every row is ignored, as PyTorch);
//!                   dx = (exp(x - lse) - onehot(label)) * g / kept, zero rows for ignored labels.
//! The backward passes read what the forward kept: the output y (softmax, log-softmax) or the
//! per-row lse (float32, cross-entropy), never a float32 copy of the logits.
//!
//! A NaN anywhere in a row makes the whole row NaN (exp passes NaN through and the row sum is
//! NaN), so a loss scaler sees it; -inf logits get probability 0.

const std = @import("std");
const assert = std.debug.assert;
const storage = @import("storage.zig");
const norm = @import("norm.zig");
const mathf = @import("mathf.zig");

const Dtype = storage.Dtype;
const F = storage.F;
const lanes = storage.lanes;

pub const Op = enum(u32) {
    softmax = 0,
    log_softmax = 1,
    cross_entropy = 2,
};

/// exp(x) for n float32 lanes: x = k ln2 + r with |r| <= ln2 / 2, exp(r) by a degree-6 Taylor
/// polynomial (relative error below 2e-7 on that range), scaled by 2^k through the exponent bits.
/// Below -87 gives 0 (no subnormals), above 88.7 inf, NaN stays NaN. The same code for n = 16
/// and n = 1, so a row's tail gets the same bits as its vector body.
pub inline fn exp(comptime n: comptime_int, x: F(n)) F(n) {
    const V = F(n);
    const clamped = @min(@max(x, @as(V, @splat(-87.0))), @as(V, @splat(88.7)));
    const k = @round(clamped * @as(V, @splat(1.4426950408889634)));
    const r = clamped - k * @as(V, @splat(0.693145751953125)) - k * @as(V, @splat(1.4286068203094172e-6));
    var p: V = @splat(1.0 / 720.0);
    p = p * r + @as(V, @splat(1.0 / 120.0));
    p = p * r + @as(V, @splat(1.0 / 24.0));
    p = p * r + @as(V, @splat(1.0 / 6.0));
    p = p * r + @as(V, @splat(0.5));
    p = p * r + @as(V, @splat(1.0));
    p = p * r + @as(V, @splat(1.0));
    const exponent: @Vector(n, i32) = @intFromFloat(k);
    const scale: V = @bitCast((exponent + @as(@Vector(n, i32), @splat(127))) << @splat(23));
    const result = p * scale;
    const low = x < @as(V, @splat(-87.0));
    const high = x > @as(V, @splat(88.7));
    const finite = @select(f32, high, @as(V, @splat(std.math.inf(f32))), @select(f32, low, @as(V, @splat(0)), result));
    // @min/@max drop a NaN operand, so NaN is put back explicitly.
    return @select(f32, x != x, x, finite);
}

pub const Forward = struct {
    op: Op,
    x: [*]const u8,
    /// softmax / log-softmax: y [rows, width] in the dtype. cross-entropy: float32 [rows] per-row losses.
    out: [*]u8,
    rows: u64,
    width: u64,
    /// cross-entropy only: one label per row, and where the per-row lse and the mean loss go.
    labels: ?[*]const i32 = null,
    ignore_index: i32 = -100,
    lse: ?[*]f32 = null,
    mean: ?*f32 = null,
};

pub const Backward = struct {
    op: Op,
    /// softmax / log-softmax: the forward's output y. cross-entropy: the logits.
    saved: [*]const u8,
    /// softmax / log-softmax: g [rows, width] in the dtype. cross-entropy: a float32 scalar.
    grad_out: [*]const u8,
    grad_x: [*]u8,
    rows: u64,
    width: u64,
    labels: ?[*]const i32 = null,
    ignore_index: i32 = -100,
    lse: ?[*]const f32 = null,
};

/// Whether every label is a class index in [0, width) or ignore_index; the count of kept rows.
pub fn check_labels(labels: []const i32, width: u64, ignore_index: i32) ?u64 {
    var kept: u64 = 0;
    for (labels) |label| {
        if (label == ignore_index) continue;
        if (label < 0 or @as(u64, @intCast(label)) >= width) return null;
        kept += 1;
    }
    return kept;
}

fn row_max(comptime dtype: Dtype, x: [*]const u8, base: u64, width: u64) f32 {
    var max: f32 = -std.math.inf(f32);
    var j: u64 = 0;
    inline for (.{ lanes, 1 }) |n| {
        var acc: F(n) = @splat(-std.math.inf(f32));
        while (j + n <= width) : (j += n) acc = @max(acc, storage.load(n, dtype, x, base + j));
        max = @max(max, @reduce(.Max, acc));
    }
    return max;
}

fn row_sum_exp(comptime dtype: Dtype, x: [*]const u8, base: u64, width: u64, max: f32) f32 {
    var total: f32 = 0;
    var j: u64 = 0;
    inline for (.{ lanes, 1 }) |n| {
        var acc: F(n) = @splat(0);
        while (j + n <= width) : (j += n) acc += exp(n, storage.load(n, dtype, x, base + j) - @as(F(n), @splat(max)));
        total += @reduce(.Add, acc);
    }
    return total;
}

/// log(sum(exp(x))) of one row, the maximum subtracted first.
pub fn row_lse(comptime dtype: Dtype, x: [*]const u8, base: u64, width: u64) f32 {
    assert(width > 0);
    const max = row_max(dtype, x, base, width);
    return max + mathf.log(row_sum_exp(dtype, x, base, width, max));
}

/// The mean of the per-row losses over the rows whose label is kept, summed in row order in
/// float64 and rounded once (NaN when none is kept, as PyTorch). One thread on every device.
pub fn mean_over_kept(losses: [*]const f32, labels: [*]const i32, rows: u64, ignore_index: i32) f32 {
    var total: f64 = 0;
    var kept: u64 = 0;
    for (0..rows) |row| {
        if (labels[row] == ignore_index) continue;
        total += losses[row];
        kept += 1;
    }
    return @floatCast(total / @as(f64, @floatFromInt(kept)));
}

fn forward_row(comptime dtype: Dtype, args: *const Forward, row: u64) void {
    const base = row * args.width;
    const max = row_max(dtype, args.x, base, args.width);
    const total = row_sum_exp(dtype, args.x, base, args.width, max);
    switch (args.op) {
        .softmax => {
            const inverse = 1.0 / total;
            var j: u64 = 0;
            inline for (.{ lanes, 1 }) |n| {
                while (j + n <= args.width) : (j += n) {
                    const e = exp(n, storage.load(n, dtype, args.x, base + j) - @as(F(n), @splat(max)));
                    storage.store(n, dtype, args.out, base + j, e * @as(F(n), @splat(inverse)));
                }
            }
        },
        .log_softmax => {
            const lse = max + mathf.log(total);
            var j: u64 = 0;
            inline for (.{ lanes, 1 }) |n| {
                while (j + n <= args.width) : (j += n) {
                    storage.store(n, dtype, args.out, base + j, storage.load(n, dtype, args.x, base + j) - @as(F(n), @splat(lse)));
                }
            }
        },
        .cross_entropy => {
            const lse = max + mathf.log(total);
            if (args.lse) |target| target[row] = lse;
            const label = args.labels.?[row];
            const losses: [*]f32 = @ptrCast(@alignCast(args.out));
            losses[row] = if (label == args.ignore_index) 0 else lse - storage.load_one(dtype, args.x, base + @as(u64, @intCast(label)));
        },
    }
}

fn backward_row(comptime dtype: Dtype, args: *const Backward, row: u64) void {
    const base = row * args.width;
    switch (args.op) {
        .softmax, .log_softmax => {
            // softmax: sum(g * y); log-softmax: sum(g).
            var total: f32 = 0;
            var j: u64 = 0;
            inline for (.{ lanes, 1 }) |n| {
                var acc: F(n) = @splat(0);
                while (j + n <= args.width) : (j += n) {
                    const g = storage.load(n, dtype, args.grad_out, base + j);
                    acc += if (args.op == .softmax) g * storage.load(n, dtype, args.saved, base + j) else g;
                }
                total += @reduce(.Add, acc);
            }
            j = 0;
            inline for (.{ lanes, 1 }) |n| {
                while (j + n <= args.width) : (j += n) {
                    const g = storage.load(n, dtype, args.grad_out, base + j);
                    const y = storage.load(n, dtype, args.saved, base + j);
                    const dx = if (args.op == .softmax)
                        y * (g - @as(F(n), @splat(total)))
                    else
                        g - exp(n, y) * @as(F(n), @splat(total));
                    storage.store(n, dtype, args.grad_x, base + j, dx);
                }
            }
        },
        .cross_entropy => unreachable,
    }
}

/// One cross-entropy row's gradient: (exp(x - lse) - onehot) * factor, or zeros when ignored.
fn cross_entropy_backward_row(comptime dtype: Dtype, args: *const Backward, row: u64, factor: f32) void {
    const base = row * args.width;
    const label = args.labels.?[row];
    const ignored = label == args.ignore_index;
    const lse = args.lse.?[row];
    var j: u64 = 0;
    inline for (.{ lanes, 1 }) |n| {
        while (j + n <= args.width) : (j += n) {
            var dx: F(n) = @splat(0);
            if (!ignored) {
                const p = exp(n, storage.load(n, dtype, args.saved, base + j) - @as(F(n), @splat(lse)));
                const index = std.simd.iota(u64, n) + @as(@Vector(n, u64), @splat(j));
                const onehot = @select(f32, index == @as(@Vector(n, u64), @splat(@intCast(label))), @as(F(n), @splat(1)), @as(F(n), @splat(0)));
                dx = (p - onehot) * @as(F(n), @splat(factor));
            }
            storage.store(n, dtype, args.grad_x, base + j, dx);
        }
    }
}

fn Kernels(comptime dtype: Dtype) type {
    return struct {
        fn forward_rows(args: *const Forward, begin: u64, end: u64) void {
            for (begin..end) |row| forward_row(dtype, args, row);
        }

        const CrossEntropyBackward = struct { args: *const Backward, factor: f32 };

        fn backward_rows(args: *const Backward, begin: u64, end: u64) void {
            for (begin..end) |row| backward_row(dtype, args, row);
        }

        fn cross_entropy_rows(context: *const CrossEntropyBackward, begin: u64, end: u64) void {
            for (begin..end) |row| cross_entropy_backward_row(dtype, context.args, row, context.factor);
        }

        fn forward(args: *const Forward) void {
            norm.parallel_items(args.rows, args.width, args, forward_rows);
            if (args.op != .cross_entropy) return;
            args.mean.?.* = mean_over_kept(@ptrCast(@alignCast(args.out)), args.labels.?, args.rows, args.ignore_index);
        }

        fn backward(args: *const Backward) void {
            if (args.op != .cross_entropy) {
                norm.parallel_items(args.rows, args.width, args, backward_rows);
                return;
            }
            const kept = check_labels(args.labels.?[0..args.rows], args.width, args.ignore_index).?;
            const g: *const f32 = @ptrCast(@alignCast(args.grad_out));
            // Every row is ignored: no row uses the (infinite) factor, the gradient is all zeros.
            const factor = g.* / @as(f32, @floatFromInt(kept));
            const context = CrossEntropyBackward{ .args = args, .factor = factor };
            norm.parallel_items(args.rows, args.width, &context, cross_entropy_rows);
        }
    };
}

/// Runs a forward pass. The arguments were validated by the caller (ffi.zig).
pub fn forward(dtype: Dtype, args: *const Forward) void {
    assert(storage.is_op_dtype(dtype));
    assert(args.width > 0 or args.rows == 0);
    if (args.op == .cross_entropy) {
        assert(args.labels != null and args.mean != null);
        assert(check_labels(args.labels.?[0..args.rows], args.width, args.ignore_index) != null);
    }
    switch (dtype) {
        inline .float32, .float16, .bfloat16 => |d| Kernels(d).forward(args),
        else => unreachable,
    }
}

/// Runs a backward pass. The arguments were validated by the caller (ffi.zig).
pub fn backward(dtype: Dtype, args: *const Backward) void {
    assert(storage.is_op_dtype(dtype));
    assert(args.width > 0 or args.rows == 0);
    if (args.op == .cross_entropy) {
        assert(args.labels != null and args.lse != null);
        assert(check_labels(args.labels.?[0..args.rows], args.width, args.ignore_index) != null);
    }
    switch (dtype) {
        inline .float32, .float16, .bfloat16 => |d| Kernels(d).backward(args),
        else => unreachable,
    }
}

// ---- Tests: against float64 transcriptions of the formulas above ----

const testing = std.testing;

fn fill(values: []f32, seed: u32, spread: f32) void {
    var state: u32 = seed *% 2654435761 +% 1;
    for (values) |*v| {
        state = state *% 1664525 +% 1013904223;
        v.* = (@as(f32, @floatFromInt(state >> 8)) / @as(f32, 1 << 24) * 2.0 - 1.0) * spread;
    }
}

test "exp is within 3e-7 relative of std.math.exp, gives 0 and inf at the ends and keeps NaN, in both lane counts" {
    var x: f32 = -87;
    while (x < 88) : (x += 0.0137) {
        const want = @exp(@as(f64, x));
        const one = exp(1, @splat(x))[0];
        const wide = exp(lanes, @splat(x))[3];
        try testing.expectEqual(@as(u32, @bitCast(one)), @as(u32, @bitCast(wide)));
        try testing.expect(@abs(one - want) <= 3e-7 * want);
    }
    try testing.expectEqual(@as(f32, 0), exp(1, @splat(-std.math.inf(f32)))[0]);
    try testing.expect(std.math.isInf(exp(1, @splat(100))[0]));
    try testing.expect(std.math.isNan(exp(lanes, @splat(std.math.nan(f32)))[0]));
    try testing.expectEqual(@as(f32, 1), exp(1, @splat(0))[0]);
}

test "softmax and log-softmax rows match float64 and their backward passes match the closed forms" {
    const rows = 4;
    const width = 35;
    var x: [rows * width]f32 = undefined;
    var g: [rows * width]f32 = undefined;
    fill(&x, 1, 8);
    fill(&g, 2, 1);
    inline for (.{ Op.softmax, Op.log_softmax }) |op| {
        var y: [rows * width]f32 = undefined;
        var dx: [rows * width]f32 = undefined;
        forward(.float32, &.{ .op = op, .x = @ptrCast(&x), .out = @ptrCast(&y), .rows = rows, .width = width });
        backward(.float32, &.{ .op = op, .saved = @ptrCast(&y), .grad_out = @ptrCast(&g), .grad_x = @ptrCast(&dx), .rows = rows, .width = width });
        for (0..rows) |r| {
            const row = x[r * width ..][0..width];
            var max: f64 = -std.math.inf(f64);
            for (row) |v| max = @max(max, v);
            var total: f64 = 0;
            for (row) |v| total += @exp(v - max);
            var dot: f64 = 0;
            var g_sum: f64 = 0;
            for (0..width) |j| {
                dot += @as(f64, g[r * width + j]) * y[r * width + j];
                g_sum += g[r * width + j];
            }
            for (0..width) |j| {
                const i = r * width + j;
                const p = @exp(row[j] - max) / total;
                const want = if (op == .softmax) p else row[j] - max - @log(total);
                try testing.expect(@abs(y[i] - want) <= 1e-6 * (1 + @abs(want)));
                const want_dx = if (op == .softmax) y[i] * (g[i] - dot) else g[i] - @exp(@as(f64, y[i])) * g_sum;
                try testing.expect(@abs(dx[i] - want_dx) <= 1e-6 * (1 + @abs(want_dx)));
            }
        }
    }
}

test "cross-entropy skips ignored rows, means over the kept ones and writes zero gradient rows for the ignored" {
    const rows = 3;
    const width = 5;
    var x: [rows * width]f32 = undefined;
    fill(&x, 3, 4);
    const labels = [rows]i32{ 4, -100, 0 };
    var losses: [rows]f32 = undefined;
    var lse: [rows]f32 = undefined;
    var mean: f32 = undefined;
    forward(.float32, &.{ .op = .cross_entropy, .x = @ptrCast(&x), .out = @ptrCast(&losses), .rows = rows, .width = width, .labels = &labels, .lse = &lse, .mean = &mean });
    try testing.expectEqual(@as(f32, 0), losses[1]);
    try testing.expectEqual(@as(f32, @floatCast((@as(f64, losses[0]) + losses[2]) / 2)), mean);
    const g: f32 = 2;
    var dx: [rows * width]f32 = undefined;
    backward(.float32, &.{ .op = .cross_entropy, .saved = @ptrCast(&x), .grad_out = @ptrCast(&g), .grad_x = @ptrCast(&dx), .rows = rows, .width = width, .labels = &labels, .lse = &lse });
    for (dx[width .. 2 * width]) |v| try testing.expectEqual(@as(f32, 0), v);
    var total: f32 = 0;
    for (dx[0..width]) |v| total += v;
    try testing.expect(@abs(total) < 1e-6);
    try testing.expect(dx[4] < 0 and dx[2 * width] < 0);
    // Every row ignored: the mean is NaN (0 / 0, as PyTorch) and the gradient zeros.
    const ignored = [rows]i32{ -100, -100, -100 };
    forward(.float32, &.{ .op = .cross_entropy, .x = @ptrCast(&x), .out = @ptrCast(&losses), .rows = rows, .width = width, .labels = &ignored, .lse = &lse, .mean = &mean });
    try testing.expect(std.math.isNan(mean));
    backward(.float32, &.{ .op = .cross_entropy, .saved = @ptrCast(&x), .grad_out = @ptrCast(&g), .grad_x = @ptrCast(&dx), .rows = rows, .width = width, .labels = &ignored, .lse = &lse });
    for (dx) |v| try testing.expectEqual(@as(f32, 0), v);
    try testing.expect(check_labels(&[_]i32{ 0, 5 }, width, -100) == null);
    try testing.expect(check_labels(&[_]i32{ -1, 4 }, width, -100) == null);
}
