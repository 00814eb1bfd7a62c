//! Checkpoint conversion: a cast fused with the statistics of what it did (overflow, underflow,
//! subnormal results, relative error), in one pass over the source. The definitions are those of
//! src/io/convert.ts `accumulateStatistics`, the TypeScript reference: counts and the maximum agree
//! exactly; the error sum is added in another order (per lane, per thread), so the mean agrees to
//! rounding.

const std = @import("std");
const numerics = @import("../numerics.zig");
const pool = @import("pool.zig");
const cast = @import("cast.zig");

const Dtype = numerics.Dtype;
const lanes = cast.lanes;

/// The statistics of one conversion, as the FFI returns them.
pub const Stats = extern struct {
    overflow: u64 = 0,
    underflow: u64 = 0,
    subnormal: u64 = 0,
    error_count: u64 = 0,
    max_error: f64 = 0,
    error_sum: f64 = 0,

    fn merge(stats: *Stats, other: Stats) void {
        stats.overflow += other.overflow;
        stats.underflow += other.underflow;
        stats.subnormal += other.subnormal;
        stats.error_count += other.error_count;
        stats.max_error = @max(stats.max_error, other.max_error);
        stats.error_sum += other.error_sum;
    }
};

comptime {
    std.debug.assert(@sizeOf(Stats) == 48);
}

/// The smallest positive normal value of a dtype.
fn min_normal(comptime dtype: Dtype) f32 {
    return switch (dtype) {
        .float32, .bfloat16 => std.math.pow(f32, 2, -126),
        .float16, .float8_e5m2 => std.math.pow(f32, 2, -14),
        .float8_e4m3fn => std.math.pow(f32, 2, -6),
    };
}

pub const Request = struct {
    source: [*]const u8,
    target: [*]u8,
    from: Dtype,
    to: Dtype,
};

const Partial = struct { begin: u64, stats: Stats };

const Context = struct {
    request: Request,
    partials: [pool.thread_count_max]Partial = undefined,
    partial_count: std.atomic.Value(u32) = .init(0),
};

/// Statistics of `n` lanes: `source` and `result` are float32 bits before and after the cast.
inline fn accumulate(
    comptime n: comptime_int,
    comptime to: Dtype,
    source: numerics.V(n),
    result: numerics.V(n),
    stats: *Stats,
    max_error: *@Vector(n, f64),
    error_sum: *@Vector(n, f64),
) void {
    const Vf = @Vector(n, f64);
    const Vb = @Vector(n, bool);
    const exponent_all: numerics.V(n) = @splat(0x7f80_0000);
    const magnitude: numerics.V(n) = @splat(0x7fff_ffff);
    const zero: numerics.V(n) = @splat(0);
    const x_finite = (source & exponent_all) != exponent_all;
    const y_finite = (result & exponent_all) != exponent_all;
    const x_nonzero = (source & magnitude) != zero;
    const y_zero = (result & magnitude) == zero;
    const overflow = x_finite & !y_finite;
    const counted = x_finite & y_finite & x_nonzero;
    const underflow = counted & y_zero;
    const Vs = @Vector(n, f32);
    const x: Vs = @bitCast(source);
    const y: Vs = @bitCast(result);
    const subnormal = counted & !y_zero & (@abs(y) < @as(Vs, @splat(min_normal(to))));
    const ones: Vs = @splat(1);
    const zeros: Vs = @splat(0);
    // The error is float32 arithmetic (|y - x| then / |x|, each rounded once), summed in float64.
    // Non-counted lanes divide by a nonzero stand-in and are masked out afterwards.
    const safe_x = @select(f32, counted, @abs(x), ones);
    const relative = @select(f32, underflow, ones, @abs(y - x) / safe_x);
    const masked = @select(f32, counted, relative, zeros);
    const wide: Vf = @floatCast(masked);
    max_error.* = @max(max_error.*, wide);
    error_sum.* += wide;
    stats.overflow += @popCount(@as(@Int(.unsigned, n), @bitCast(@as(Vb, overflow))));
    stats.underflow += @popCount(@as(@Int(.unsigned, n), @bitCast(@as(Vb, underflow))));
    stats.subnormal += @popCount(@as(@Int(.unsigned, n), @bitCast(@as(Vb, subnormal))));
    stats.error_count += @popCount(@as(@Int(.unsigned, n), @bitCast(@as(Vb, counted))));
}

fn convert_typed(comptime from: Dtype, comptime to: Dtype, request: *const Request, begin: u64, end: u64) Stats {
    var stats = Stats{};
    var max_error: @Vector(lanes, f64) = @splat(0);
    var error_sum: @Vector(lanes, f64) = @splat(0);
    var index = begin;
    while (index + lanes <= end) : (index += lanes) {
        const wide = numerics.to_f32(lanes, from, cast.load(lanes, from, request.source, index));
        const narrow = numerics.from_f32(lanes, to, wide, null, false);
        cast.store(lanes, to, request.target, index, narrow);
        accumulate(lanes, to, wide, numerics.to_f32(lanes, to, narrow), &stats, &max_error, &error_sum);
    }
    var max_tail: @Vector(1, f64) = @splat(0);
    var sum_tail: @Vector(1, f64) = @splat(0);
    while (index < end) : (index += 1) {
        const wide = numerics.to_f32(1, from, cast.load(1, from, request.source, index));
        const narrow = numerics.from_f32(1, to, wide, null, false);
        cast.store(1, to, request.target, index, narrow);
        accumulate(1, to, wide, numerics.to_f32(1, to, narrow), &stats, &max_tail, &sum_tail);
    }
    stats.max_error = @max(@reduce(.Max, max_error), max_tail[0]);
    stats.error_sum = @reduce(.Add, error_sum) + sum_tail[0];
    return stats;
}

fn convert_range(context: *Context, begin: u64, end: u64) void {
    const request = &context.request;
    const stats = switch (request.from) {
        inline else => |from| switch (request.to) {
            inline else => |to| convert_typed(from, to, request, begin, end),
        },
    };
    const slot = context.partial_count.fetchAdd(1, .monotonic);
    std.debug.assert(slot < pool.thread_count_max);
    context.partials[slot] = .{ .begin = begin, .stats = stats };
}

fn before(_: void, a: Partial, b: Partial) bool {
    return a.begin < b.begin;
}

/// Casts `count` elements nearest-even (as cast.zig does) and returns the statistics. The partial
/// results of the threads are merged in element order, so a thread count gives one result.
pub fn convert(request: Request, count: u64) Stats {
    var context = Context{ .request = request };
    if (count == 0) return .{};
    pool.parallel_for(count, &context, convert_range);
    const partials = context.partials[0..context.partial_count.load(.monotonic)];
    std.mem.sort(Partial, partials, {}, before);
    var total = Stats{};
    for (partials) |partial| total.merge(partial.stats);
    return total;
}

test "convert counts overflow, underflow and subnormal results of float32 -> float16" {
    const values = [_]f32{ 1e5, -7e4, 65504, 1e-8, -2e-8, 1e-6, 3e-5, 1.0, 0.0, std.math.inf(f32), std.math.nan(f32), 0.1 };
    var target: [values.len]u16 = undefined;
    const stats = convert(.{
        .source = @ptrCast(&values),
        .target = @ptrCast(&target),
        .from = .float32,
        .to = .float16,
    }, values.len);
    try std.testing.expectEqual(@as(u64, 2), stats.overflow);
    try std.testing.expectEqual(@as(u64, 2), stats.underflow);
    try std.testing.expectEqual(@as(u64, 2), stats.subnormal);
    try std.testing.expectEqual(@as(u64, 7), stats.error_count);
    try std.testing.expectEqual(@as(f64, 1), stats.max_error);
    try std.testing.expectEqual(@as(u16, 0x7c00), target[0]);
    try std.testing.expectEqual(@as(u16, 0x3c00), target[7]);
}

test "convert gives the same statistics on one thread and on several" {
    const count = pool.parallel_threshold * 2 + 77;
    const source = try std.testing.allocator.alloc(u32, count);
    defer std.testing.allocator.free(source);
    const target = try std.testing.allocator.alloc(u16, count);
    defer std.testing.allocator.free(target);
    var prng = std.Random.DefaultPrng.init(11);
    for (source) |*x| x.* = prng.random().int(u32);
    const request = Request{ .source = @ptrCast(source.ptr), .target = @ptrCast(target.ptr), .from = .float32, .to = .float16 };
    pool.set_thread_count(1);
    const single = convert(request, count);
    pool.set_thread_count(3);
    defer pool.set_thread_count(0);
    const multi = convert(request, count);
    try std.testing.expectEqual(single.overflow, multi.overflow);
    try std.testing.expectEqual(single.max_error, multi.max_error);
    try std.testing.expectApproxEqRel(single.error_sum, multi.error_sum, 1e-12);
}
