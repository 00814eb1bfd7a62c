//! Multi-tensor unscale and non-finite check (PyTorch's _amp_foreach_non_finite_check_and_unscale_),
//! for float32, float16 and bfloat16 gradients alike, in one call over a table of tensors.

const std = @import("std");
const builtin = @import("builtin");
const numerics = @import("../numerics.zig");
const pool = @import("pool.zig");
const cast = @import("cast.zig");
const rows_loop = @import("rows.zig");
const dispatch = @import("dispatch.zig");

const Dtype = numerics.Dtype;

/// One tensor in a multi-tensor call: where its elements are, how many, and their dtype.
pub const TensorRow = extern struct {
    address: u64,
    count: u64,
    dtype: u32,
    reserved: u32,
};

comptime {
    std.debug.assert(@sizeOf(TensorRow) == 24);
}

/// One call's rows, as the baseline and the wide compilations of `unscale_range` both read it.
pub const Context = extern struct {
    rows: [*]const TensorRow,
    row_count: u64,
    inv_scale: f32,
    found: std.atomic.Value(u32),
};

/// Whether float16 <-> float32 conversions have hardware support here (x86 F16C, AArch64 FP).
/// Then float16 rows convert with the hardware instructions, which round to nearest even exactly
/// as numerics.zig does; only NaN results differ (the hardware keeps payload bits), so they are
/// replaced by the canonical quiet NaN. Elsewhere float16 rows use numerics.zig's integer code.
const f16_hardware = switch (builtin.cpu.arch) {
    .x86_64 => std.Target.x86.featureSetHas(builtin.cpu.features, .f16c),
    .aarch64 => true,
    else => false,
};

const exponent_mask: u32 = 0x7f80_0000;

/// float16 bits -> float32 values with the conversion instruction (exact; a NaN stays a NaN).
inline fn f16_widen(comptime n: comptime_int, bits: @Vector(n, u16)) @Vector(n, f32) {
    const halves: @Vector(n, f16) = @bitCast(bits);
    return @floatCast(halves);
}

/// float32 values -> float16 bits, nearest even, NaN -> sign | 0x7E00 (REFERENCE.md).
inline fn f16_narrow(comptime n: comptime_int, values: @Vector(n, f32)) @Vector(n, u16) {
    const halves: @Vector(n, f16) = @floatCast(values);
    const rounded: @Vector(n, u16) = @bitCast(halves);
    const wide: @Vector(n, u32) = @bitCast(values);
    const is_nan = (wide & @as(@Vector(n, u32), @splat(0x7fff_ffff))) > @as(@Vector(n, u32), @splat(exponent_mask));
    const nan: @Vector(n, u16) = @truncate((wide >> @splat(16)) & @as(@Vector(n, u32), @splat(0x8000)));
    return @select(u16, is_nan, nan | @as(@Vector(n, u16), @splat(0x7e00)), rounded);
}

/// float32 bits -> bfloat16 bits, nearest even, for lanes known not to be NaN: numerics.zig's rule
/// without its NaN branch (an inf rounds to 0x7F80 / 0xFF80 by the same formula).
inline fn bf16_round_not_nan(comptime n: comptime_int, u: @Vector(n, u32)) @Vector(n, u32) {
    const lsb = (u >> @splat(16)) & @as(@Vector(n, u32), @splat(1));
    return (u +% @as(@Vector(n, u32), @splat(0x7fff)) +% lsb) >> @splat(16);
}

/// The vector loop for float16 rows on hardware with conversion instructions.
fn unscale_f16_vectors(base: [*]u8, begin: u64, end: u64, inv_scale: f32) struct { u64, bool } {
    const n = cast.lanes;
    const typed: [*]align(1) u16 = @ptrCast(base);
    const exponent_all: @Vector(n, u32) = @splat(exponent_mask);
    const inv: @Vector(n, f32) = @splat(inv_scale);
    // With finite inputs and a finite inverse no product is NaN, so the NaN fix-up can be skipped.
    const inv_finite = std.math.isFinite(inv_scale);
    var found_lanes: @Vector(n, bool) = @splat(false);
    var index = begin;
    if (inv_scale == 1.0) {
        while (index + n <= end) : (index += n) {
            const bits: @Vector(n, u16) = typed[index..][0..n].*;
            const wide: @Vector(n, u32) = @bitCast(f16_widen(n, bits));
            found_lanes = found_lanes | ((wide & exponent_all) == exponent_all);
        }
    } else {
        while (index + n <= end) : (index += n) {
            const values = f16_widen(n, typed[index..][0..n].*);
            const wide: @Vector(n, u32) = @bitCast(values);
            const lanes_found = (wide & exponent_all) == exponent_all;
            found_lanes = found_lanes | lanes_found;
            const scaled = values * inv;
            if (inv_finite and !@reduce(.Or, lanes_found)) {
                const halves: @Vector(n, f16) = @floatCast(scaled);
                typed[index..][0..n].* = @bitCast(halves);
            } else {
                typed[index..][0..n].* = f16_narrow(n, scaled);
            }
        }
    }
    return .{ index, @reduce(.Or, found_lanes) };
}

/// The vector loop for bfloat16 rows: 32 elements per step as 16 u32 words, each holding two
/// bfloat16 values (little-endian: the lower-addressed element in the low half). A bfloat16 value is
/// the top half of its float32, so the high element is `word & 0xFFFF0000` and the low one
/// `word << 16`, and the rounded results go back into the same halves: no lane shuffles. A step
/// whose inputs include inf or NaN (or whose inverse is not finite) takes numerics.zig's path.
fn unscale_bf16_pairs(base: [*]u8, begin: u64, end: u64, inv_scale: f32) struct { u64, bool } {
    const n = cast.lanes;
    const step = 2 * n;
    const halves: [*]align(1) u16 = @ptrCast(base);
    const exponent_half: @Vector(step, u16) = @splat(0x7f80);
    const high_mask: @Vector(n, u32) = @splat(0xffff_0000);
    const round_bias: @Vector(n, u32) = @splat(0x7fff);
    const one: @Vector(n, u32) = @splat(1);
    const inv: @Vector(n, f32) = @splat(inv_scale);
    const scaling = inv_scale != 1.0;
    const inv_finite = std.math.isFinite(inv_scale);
    var found = false;
    var index = begin;
    while (index + step <= end) : (index += step) {
        const source: *align(1) const @Vector(step, u16) = @ptrCast(halves + index);
        const pair = source.*;
        const lanes_found = (pair & exponent_half) == exponent_half;
        const any_found = @reduce(.Or, lanes_found);
        found = found or any_found;
        if (!scaling) continue;
        if (any_found or !inv_finite) {
            unscale_generic(.bfloat16, base, index, index + step, inv_scale);
            continue;
        }
        const w: @Vector(n, u32) = @bitCast(pair);
        const low: @Vector(n, f32) = @bitCast(w << @splat(16));
        const high: @Vector(n, f32) = @bitCast(w & high_mask);
        const low_scaled: @Vector(n, u32) = @bitCast(low * inv);
        const high_scaled: @Vector(n, u32) = @bitCast(high * inv);
        // numerics.zig's nearest-even rule without its NaN branch (no product here is NaN).
        const low_rounded = (low_scaled +% round_bias +% ((low_scaled >> @splat(16)) & one)) >> @splat(16);
        const high_rounded = (high_scaled +% round_bias +% ((high_scaled >> @splat(16)) & one)) & high_mask;
        const target: *align(1) @Vector(n, u32) = @ptrCast(halves + index);
        target.* = high_rounded | low_rounded;
    }
    return .{ index, found };
}

/// numerics.zig's path over [begin, end) (a multiple of the vector width), without the check.
fn unscale_generic(comptime dtype: Dtype, base: [*]u8, begin: u64, end: u64, inv_scale: f32) void {
    const n = cast.lanes;
    var index = begin;
    while (index + n <= end) : (index += n) {
        const values: @Vector(n, f32) = @bitCast(numerics.to_f32(n, dtype, cast.load(n, dtype, base, index)));
        const scaled: numerics.V(n) = @bitCast(values * @as(@Vector(n, f32), @splat(inv_scale)));
        cast.store(n, dtype, base, index, numerics.from_f32(n, dtype, scaled, null, false));
    }
}

/// Unscales one row's elements [begin, end) in place; returns true when any was inf or NaN.
fn unscale_typed(comptime dtype: Dtype, row: TensorRow, begin: u64, end: u64, inv_scale: f32) bool {
    const base: [*]u8 = @ptrFromInt(row.address);
    const n = cast.lanes;
    const exponent_all = @as(numerics.V(n), @splat(exponent_mask));
    var found_lanes: @Vector(n, bool) = @splat(false);
    var found_scalar = false;
    const scaling = inv_scale != 1.0;
    const inv_finite = std.math.isFinite(inv_scale);
    var index = begin;
    if (dtype == .float16 and f16_hardware) {
        index, found_scalar = unscale_f16_vectors(base, begin, end, inv_scale);
    } else {
        if (dtype == .bfloat16) index, found_scalar = unscale_bf16_pairs(base, begin, end, inv_scale);
        while (index + n <= end) : (index += n) {
            const wide = numerics.to_f32(n, dtype, cast.load(n, dtype, base, index));
            const lanes_found = (wide & exponent_all) == exponent_all;
            found_lanes = found_lanes | lanes_found;
            if (scaling) {
                const values: @Vector(n, f32) = @bitCast(wide);
                const scaled: numerics.V(n) = @bitCast(values * @as(@Vector(n, f32), @splat(inv_scale)));
                const bits = if (dtype == .bfloat16 and inv_finite and !@reduce(.Or, lanes_found))
                    bf16_round_not_nan(n, scaled)
                else
                    numerics.from_f32(n, dtype, scaled, null, false);
                cast.store(n, dtype, base, index, bits);
            }
        }
    }
    // The scalar tail runs numerics.zig's code on every target, so it checks the vector path too.
    while (index < end) : (index += 1) {
        const wide = numerics.to_f32(1, dtype, cast.load(1, dtype, base, index));
        found_scalar = found_scalar or (wide[0] & exponent_mask) == exponent_mask;
        if (scaling) {
            const value: f32 = @bitCast(wide[0]);
            const scaled: numerics.V(1) = @splat(@bitCast(value * inv_scale));
            cast.store(1, dtype, base, index, numerics.from_f32(1, dtype, scaled, null, false));
        }
    }
    return found_scalar or @reduce(.Or, found_lanes);
}

/// Handles the global element range [begin, end) of the concatenated rows.
fn unscale_range(context: *Context, begin: u64, end: u64) void {
    var found = false;
    var it = rows_loop.pieces(TensorRow, context.rows[0..context.row_count], begin, end);
    while (it.next()) |piece| {
        const row = piece.row.*;
        const row_found = switch (@as(Dtype, @fromBackingInt(@intCast(row.dtype)))) {
            .float32 => unscale_typed(.float32, row, piece.begin, piece.end, context.inv_scale),
            .float16 => unscale_typed(.float16, row, piece.begin, piece.end, context.inv_scale),
            .bfloat16 => unscale_typed(.bfloat16, row, piece.begin, piece.end, context.inv_scale),
            else => unreachable, // Checked by validate().
        };
        found = found or row_found;
    }
    if (found) context.found.store(1, .monotonic);
}

/// Returns false when a row has a dtype other than float32, float16 or bfloat16, or a null address
/// with a non-zero count.
pub fn validate(rows: []const TensorRow) bool {
    for (rows) |row| {
        const dtype = Dtype.from_int(row.dtype) orelse return false;
        if (dtype != .float32 and dtype != .float16 and dtype != .bfloat16) return false;
        if (row.address == 0 and row.count != 0) return false;
    }
    return true;
}

/// Multiplies every element by `inv_scale` in float32 (skipped when it is 1), stores it back in the
/// row's dtype with nearest-even rounding, and returns whether any element was inf or NaN.
pub fn unscale_check(rows: []const TensorRow, inv_scale: f32) bool {
    std.debug.assert(validate(rows));
    var total: u64 = 0;
    for (rows) |row| total += row.count;
    var context = Context{ .rows = rows.ptr, .row_count = rows.len, .inv_scale = inv_scale, .found = .init(0) };
    const call = Call{ .context = &context, .range = dispatch.pick(*const @TypeOf(unscale_range_c), "unscale_range", &unscale_range_c) };
    pool.parallel_for(total, &call, Call.run);
    return context.found.load(.monotonic) != 0;
}

/// unscale_range as a C function: zig/src/wide.zig exports its x86-64-v4 compilations (in-cache
/// gradients unscale up to half again as fast with zmm registers; the bits are the same).
pub fn unscale_range_c(context: *Context, begin: u64, end: u64) callconv(.c) void {
    unscale_range(context, begin, end);
}

const Call = struct {
    context: *Context,
    range: *const @TypeOf(unscale_range_c),

    fn run(call: *const Call, begin: u64, end: u64) void {
        call.range(call.context, begin, end);
    }
};

test "unscale_check finds a NaN in the scalar tail of a float16 row" {
    var a = [_]u32{ @bitCast(@as(f32, 4.0)), @bitCast(@as(f32, -8.0)) };
    var b: [19]u16 = @splat(0x3c00);
    const rows = [_]TensorRow{
        .{ .address = @intFromPtr(&a), .count = a.len, .dtype = 0, .reserved = 0 },
        .{ .address = @intFromPtr(&b), .count = b.len, .dtype = 1, .reserved = 0 },
    };
    try std.testing.expect(!unscale_check(&rows, 0.5));
    try std.testing.expectEqual(@as(u32, @bitCast(@as(f32, 2.0))), a[0]);
    try std.testing.expectEqual(@as(u16, 0x3800), b[18]);
    b[18] = 0x7e01;
    try std.testing.expect(unscale_check(&rows, 1.0));
}

test "the float16 vector path equals numerics.zig's integer conversions on every float16 value" {
    // 65,536 elements: a multiple of the vector width, so every element takes the vector path.
    const count = 1 << 16;
    const data = try std.testing.allocator.alloc(u16, count);
    defer std.testing.allocator.free(data);
    const inv_scales = [_]f32{ 0.5, 2.0, 1.0 / 3.0, 0x1p-20, 0x1p-130, 65536.0, 1.0e-45 };
    for (inv_scales) |inv_scale| {
        for (data, 0..) |*x, i| x.* = @intCast(i);
        const rows = [_]TensorRow{.{ .address = @intFromPtr(data.ptr), .count = count, .dtype = 1, .reserved = 0 }};
        try std.testing.expect(unscale_check(&rows, inv_scale));
        for (data, 0..) |got, i| {
            const wide = numerics.to_f32(1, .float16, @splat(@as(u32, @intCast(i))));
            const value: f32 = @bitCast(wide[0]);
            const expected = numerics.from_f32(1, .float16, @splat(@bitCast(value * inv_scale)), null, false);
            try std.testing.expectEqual(@as(u16, @intCast(expected[0])), got);
        }
    }
}

test "the bfloat16 vector path equals numerics.zig's rule on every bfloat16 value, at any alignment" {
    const count = 1 << 16;
    const data = try std.testing.allocator.alloc(u16, count + 1);
    defer std.testing.allocator.free(data);
    const inv_scales = [_]f32{ 0.5, 2.0, 1.0 / 3.0, 0x1p-20, 0x1p-130, 0x1p100, 1.0e-45 };
    for (inv_scales) |inv_scale| {
        // Offset 1 starts the rows on an odd element, so pairs straddle u32 boundaries.
        for ([_]usize{ 0, 1 }) |offset| {
            const row_data = data[offset..][0..count];
            for (row_data, 0..) |*x, i| x.* = @intCast(i);
            const rows = [_]TensorRow{.{ .address = @intFromPtr(row_data.ptr), .count = count, .dtype = 2, .reserved = 0 }};
            try std.testing.expect(unscale_check(&rows, inv_scale));
            for (row_data, 0..) |got, i| {
                const value: f32 = @bitCast(numerics.to_f32(1, .bfloat16, @splat(@as(u32, @intCast(i))))[0]);
                const expected = numerics.from_f32(1, .bfloat16, @splat(@bitCast(value * inv_scale)), null, false);
                try std.testing.expectEqual(@as(u16, @intCast(expected[0])), got);
            }
        }
    }
}

test "unscale gives the same bits and the same verdict on every path this machine has" {
    const count = 4 * cast.lanes * 32 + 7;
    const allocator = std.testing.allocator;
    const source = try allocator.alloc(u32, count);
    defer allocator.free(source);
    const want = try allocator.alloc(u32, count);
    defer allocator.free(want);
    const got = try allocator.alloc(u32, count);
    defer allocator.free(got);
    var prng = std.Random.DefaultPrng.init(5);
    // Finite values mostly; one row gets a NaN, so both verdicts are exercised.
    for (source) |*x| x.* = prng.random().int(u32) & 0xbfff_bfff;
    defer dispatch.set_path_for_test(null);
    for ([_]u32{ 0, 1, 2 }) |dtype| {
        for ([_]bool{ false, true }) |with_nan| {
            var found_first = false;
            for (dispatch.paths_available(), 0..) |path, index| {
                dispatch.set_path_for_test(path);
                const target = if (index == 0) want else got;
                @memcpy(target, source);
                if (with_nan) target[count / 2] = 0x7fc0_7fc0;
                const size: u64 = if (dtype == 0) 4 else 2;
                const elements = count * 4 / size;
                const rows = [_]TensorRow{
                    .{ .address = @intFromPtr(target.ptr), .count = elements / 3, .dtype = dtype, .reserved = 0 },
                    .{ .address = @intFromPtr(target.ptr) + elements / 3 * size, .count = elements - elements / 3, .dtype = dtype, .reserved = 0 },
                };
                const found = unscale_check(&rows, 0.37);
                try std.testing.expectEqual(with_nan, found);
                if (index == 0) found_first = found else {
                    try std.testing.expectEqual(found_first, found);
                    try std.testing.expectEqualSlices(u32, want, got);
                }
            }
        }
    }
}
