//! Multi-tensor sum of squares with a non-finite check: the first of the fused optimizer's two
//! passes (the global norm for clipping), and the norm behind `clipByGlobalNorm`. Each element is
//! first multiplied by `inv_scale` in float32 (as an unscale would store it), then squared and
//! summed in float64. Partials are kept per pool slot and added in slot order, so a result depends
//! only on the elements and the thread count, never on timing.

const std = @import("std");
const numerics = @import("../numerics.zig");
const pool = @import("pool.zig");
const cast = @import("cast.zig");
const unscale = @import("unscale.zig");
const rows_loop = @import("rows.zig");

const Dtype = numerics.Dtype;
const TensorRow = unscale.TensorRow;
const n = cast.lanes;

const Context = struct {
    rows: []const TensorRow,
    inv_scale: f32,
    partials: [pool.slot_count_max]f64,
    found: [pool.slot_count_max]bool,
};

const Partial = struct { sum: f64, found: bool };

fn sum_typed(comptime dtype: Dtype, row: TensorRow, begin: u64, end: u64, inv_scale: f32) Partial {
    const base: [*]const u8 = @ptrFromInt(row.address);
    const exponent_all: numerics.V(n) = @splat(0x7f80_0000);
    const scaling = inv_scale != 1.0;
    var sums: @Vector(n, f64) = @splat(0);
    var found_lanes: @Vector(n, bool) = @splat(false);
    var index = begin;
    while (index + n <= end) : (index += n) {
        const wide = numerics.to_f32(n, dtype, cast.load(n, dtype, base, index));
        found_lanes = found_lanes | ((wide & exponent_all) == exponent_all);
        var values: @Vector(n, f32) = @bitCast(wide);
        if (scaling) values = values * @as(@Vector(n, f32), @splat(inv_scale));
        const wide_values: @Vector(n, f64) = values;
        sums += wide_values * wide_values;
    }
    var sum = @reduce(.Add, sums);
    var found = @reduce(.Or, found_lanes);
    while (index < end) : (index += 1) {
        const wide = numerics.to_f32(1, dtype, cast.load(1, dtype, base, index))[0];
        found = found or (wide & 0x7f80_0000) == 0x7f80_0000;
        var value: f32 = @bitCast(wide);
        if (scaling) value = value * inv_scale;
        const wide_value: f64 = value;
        sum += wide_value * wide_value;
    }
    return .{ .sum = sum, .found = found };
}

fn sum_range(context: *Context, slot: u32, begin: u64, end: u64) void {
    var sum: f64 = 0;
    var found = false;
    var it = rows_loop.pieces(TensorRow, context.rows, begin, end);
    while (it.next()) |piece| {
        const row = piece.row.*;
        const partial = switch (@as(Dtype, @fromBackingInt(@intCast(row.dtype)))) {
            .float32 => sum_typed(.float32, row, piece.begin, piece.end, context.inv_scale),
            .float16 => sum_typed(.float16, row, piece.begin, piece.end, context.inv_scale),
            .bfloat16 => sum_typed(.bfloat16, row, piece.begin, piece.end, context.inv_scale),
            else => unreachable, // Checked by unscale.validate().
        };
        sum += partial.sum;
        found = found or partial.found;
    }
    context.partials[slot] = sum;
    context.found[slot] = found;
}

pub const Result = struct { sum: f64, found_inf: bool };

/// Sum over every element of every row of (f32(x) * inv_scale)^2, and whether any x was inf or NaN.
pub fn sum_squares(rows: []const TensorRow, inv_scale: f32) Result {
    std.debug.assert(unscale.validate(rows));
    var total: u64 = 0;
    for (rows) |row| total += row.count;
    var context = Context{ .rows = rows, .inv_scale = inv_scale, .partials = @splat(0), .found = @splat(false) };
    pool.parallel_for_slots(total, &context, sum_range);
    var result = Result{ .sum = 0, .found_inf = false };
    for (context.partials, context.found) |partial, found| {
        result.sum += partial;
        result.found_inf = result.found_inf or found;
    }
    return result;
}

test "sum_squares adds float32, float16 and bfloat16 rows and finds an infinity" {
    var a = [_]f32{ 3, 4 } ++ @as([17]f32, @splat(1));
    var b = [_]u16{ 0x4000, 0x3c00 }; // float16 2, 1
    var c = [_]u16{0x4040}; // bfloat16 3
    const rows = [_]TensorRow{
        .{ .address = @intFromPtr(&a), .count = a.len, .dtype = 0, .reserved = 0 },
        .{ .address = @intFromPtr(&b), .count = b.len, .dtype = 1, .reserved = 0 },
        .{ .address = @intFromPtr(&c), .count = c.len, .dtype = 2, .reserved = 0 },
    };
    const result = sum_squares(&rows, 1.0);
    try std.testing.expectEqual(@as(f64, 9 + 16 + 17 + 4 + 1 + 9), result.sum);
    try std.testing.expect(!result.found_inf);
    const halved = sum_squares(&rows, 0.5);
    try std.testing.expectEqual(@as(f64, (9 + 16 + 17 + 4 + 1 + 9) / 4.0), halved.sum);
    c[0] = 0xff80;
    try std.testing.expect(sum_squares(&rows, 1.0).found_inf);
}

test "sum_squares gives the same bits on one thread and on several" {
    const count = pool.parallel_threshold * 2 + 77;
    const values = try std.testing.allocator.alloc(f32, count);
    defer std.testing.allocator.free(values);
    var prng = std.Random.DefaultPrng.init(3);
    for (values) |*x| x.* = prng.random().floatNorm(f32);
    const rows = [_]TensorRow{.{ .address = @intFromPtr(values.ptr), .count = count, .dtype = 0, .reserved = 0 }};
    pool.set_thread_count(1);
    const single = sum_squares(&rows, 1.0);
    pool.set_thread_count(3);
    defer pool.set_thread_count(0);
    const multi = sum_squares(&rows, 1.0);
    try std.testing.expectApproxEqRel(single.sum, multi.sum, 1e-12);
    try std.testing.expectEqual(multi.sum, sum_squares(&rows, 1.0).sum);
}
