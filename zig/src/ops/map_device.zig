//! The map engine and the strided copy one target at a time: what one GPU thread of
//! zig/src/cuda/ops_map.zig computes, written without device builtins so that it also compiles for
//! the CPU, where the tests below run it for every target and compare its bits with the engine's
//! (`elementwise.map_run`) and the copy's (`layout.strided_copy`). The fake driver runs the CPU
//! code itself, so these tests are what checks the device's order of operations without a GPU.
//!
//! Order rules the device must keep to give the CPU's bits: without reduced dimensions, target =
//! f(...) in float32 times scale in float32 (when scale is not 1); with them, the float64 sum of
//! the terms in ascending reduced index, the first term assigned (so -0 stays -0), summed in the
//! chunks of `elementwise.reduce_chunks` and combined in chunk order, times scale in float64,
//! rounded once to float32 and then into the dtype.

const std = @import("std");
const storage = @import("storage.zig");
const elementwise = @import("elementwise.zig");
const layout = @import("layout.zig");

const Dtype = storage.Dtype;
const MapOp = elementwise.MapOp;
const Layout = elementwise.Layout;
const operands_max = elementwise.operands_max;
const dims_max = elementwise.dims_max;

/// Operand offsets of index `index` of a row-major space of `ndim` dimensions.
inline fn offsets_of(ndim: u64, shape: *const [dims_max]u64, strides: *const [operands_max][dims_max]u64, index: u64) [operands_max]u64 {
    var result: [operands_max]u64 = @splat(0);
    var rest = index;
    var d = ndim;
    while (d > 0) {
        d -= 1;
        const coordinate = rest % shape[d];
        rest /= shape[d];
        inline for (0..operands_max) |i| result[i] += coordinate * strides[i][d];
    }
    return result;
}

/// A map launch's operands: flags bit i makes operand i read `scalar` everywhere.
pub const MapArgs = struct {
    target: [*]u8,
    operands: [operands_max][*]const u8,
    flags: u32,
    scalar: f32,
};

/// f(x0, x1, x2) at operand offsets `at`: the engine's `term` with n = 1.
inline fn term(comptime op: MapOp, comptime dtype: Dtype, args: *const MapArgs, at: [operands_max]u64) f32 {
    var x: [operands_max]storage.F(1) = undefined;
    inline for (0..operands_max) |i| {
        x[i] = if (i >= op.arity())
            @splat(0)
        else if (args.flags & (1 << i) != 0)
            @splat(args.scalar)
        else
            storage.load(1, dtype, args.operands[i], at[i]);
    }
    return elementwise.map_apply(op, 1, x[0], x[1], x[2])[0];
}

/// The float64 sum of terms [r_begin, r_end) of the target whose kept offsets are `kept`, in
/// ascending order, the first term assigned (not added to 0), as the CPU's accumulate.
inline fn partial_sum(comptime op: MapOp, comptime dtype: Dtype, args: *const MapArgs, space: *const Layout, kept: [operands_max]u64, r_begin: u64, r_end: u64) f64 {
    const ndim = space.reduced_ndim;
    var reduced = offsets_of(ndim, &space.reduced_shape, &space.reduced_strides, r_begin);
    var counter: [dims_max]u64 = @splat(0);
    {
        var rest = r_begin;
        var d = ndim;
        while (d > 0) {
            d -= 1;
            counter[d] = rest % space.reduced_shape[d];
            rest /= space.reduced_shape[d];
        }
    }
    var sum: f64 = 0;
    var r = r_begin;
    while (r < r_end) : (r += 1) {
        var at: [operands_max]u64 = undefined;
        inline for (0..operands_max) |i| at[i] = kept[i] + reduced[i];
        const wide: f64 = term(op, dtype, args, at);
        sum = if (r == r_begin) wide else sum + wide;
        var d = ndim;
        while (d > 0) {
            d -= 1;
            counter[d] += 1;
            inline for (0..operands_max) |i| reduced[i] += space.reduced_strides[i][d];
            if (counter[d] < space.reduced_shape[d]) break;
            inline for (0..operands_max) |i| reduced[i] -= counter[d] * space.reduced_strides[i][d];
            counter[d] = 0;
        }
    }
    return sum;
}

/// Writes target `j` (kept index, row-major) of a map: one device thread's work. `chunks` is
/// elementwise.reduce_chunks(space).
pub inline fn map_target(comptime op: MapOp, comptime dtype: Dtype, args: *const MapArgs, space: *const Layout, scale: f32, chunks: u32, j: u64) void {
    const kept = offsets_of(space.kept_ndim, &space.kept_shape, &space.kept_strides, j);
    const reduced_count = space.reduced_count();
    if (reduced_count == 1 and space.reduced_ndim == 0) {
        // Without reduced dimensions: scale * f in float32, no accumulator (the engine's
        // `elementwise`).
        var value = term(op, dtype, args, kept);
        if (scale != 1) value *= scale;
        storage.store(1, dtype, args.target, j, @splat(value));
        return;
    }
    var total = partial_sum(op, dtype, args, space, kept, 0, reduced_count / chunks);
    var chunk: u64 = 1;
    while (chunk < chunks) : (chunk += 1) {
        total += partial_sum(op, dtype, args, space, kept, reduced_count * chunk / chunks, reduced_count * (chunk + 1) / chunks);
    }
    const wide_scale: f64 = scale;
    storage.store(1, dtype, args.target, j, @splat(@as(f32, @floatCast(total * wide_scale))));
}

/// Copies element `index` (row-major over the copy's shape) of a simplified strided copy.
pub inline fn copy_element(comptime T: type, source: [*]const T, target: [*]T, copy: *const layout.DeviceCopy, index: u64) void {
    var rest = index;
    var s: u64 = 0;
    var t: u64 = 0;
    var d = copy.ndim;
    while (d > 0) {
        d -= 1;
        const coordinate = rest % copy.shape[d];
        rest /= copy.shape[d];
        s += coordinate * copy.source_strides[d];
        t += coordinate * copy.target_strides[d];
    }
    target[t] = source[s];
}

// ---- Tests: every target through map_target against map_run, bit for bit. ----

const testing = std.testing;

/// Values of both signs over a wide range of exponents, so that float64 sums of many of them round
/// and a different summation order gives different bits.
fn fill_random(comptime dtype: Dtype, buffer: []u8, count: usize, seed: u64) void {
    var rng = std.Random.DefaultPrng.init(seed);
    const spread: i32 = if (dtype == .float16) 12 else 40;
    for (0..count) |i| {
        const exponent = rng.random().intRangeAtMost(i32, -spread, spread);
        storage.store_one(dtype, buffer.ptr, i, std.math.ldexp(rng.random().float(f32) * 2 - 1, exponent));
    }
}

/// Runs `space` with op and dtype through the engine and through map_target for every target, and
/// expects equal bytes.
fn expect_same(comptime op: MapOp, comptime dtype: Dtype, space: *const Layout, flags: u32, scalar: f32, scale: f32) !void {
    return expect_same_mirrored(op, dtype, space, flags, scalar, scale, false);
}

/// With `mirror`, the second half of operand 0 is the negated first half: a long sum then cancels
/// to its rounding errors, whose bits depend on the summation order (chunks included).
fn expect_same_mirrored(comptime op: MapOp, comptime dtype: Dtype, space: *const Layout, flags: u32, scalar: f32, scale: f32, mirror: bool) !void {
    const size = dtype.size_bytes();
    var operands: [operands_max][]u8 = undefined;
    for (&operands, 0..) |*operand, i| {
        const count = @max(space.operand_counts[i], 1);
        operand.* = try testing.allocator.alloc(u8, count * size);
        fill_random(dtype, operand.*, count, 7 + i);
        if (mirror and i == 0) {
            const half = count / 2;
            for (0..half) |k| storage.store_one(dtype, operand.ptr, half + k, -storage.load_one(dtype, operand.ptr, k));
        }
    }
    defer for (operands) |operand| testing.allocator.free(operand);
    const targets = space.kept_count();
    const expected = try testing.allocator.alloc(u8, targets * size);
    defer testing.allocator.free(expected);
    const actual = try testing.allocator.alloc(u8, targets * size);
    defer testing.allocator.free(actual);
    var map = elementwise.Map{
        .layout = space,
        .target = expected.ptr,
        .operands = .{ operands[0].ptr, operands[1].ptr, operands[2].ptr },
        .constant = undefined,
        .scalar = scalar,
        .scale = scale,
    };
    for (0..operands_max) |i| map.constant[i] = flags & (@as(u32, 1) << @intCast(i)) != 0;
    elementwise.map_run(op, dtype, &map);
    const args = MapArgs{ .target = actual.ptr, .operands = map.operands, .flags = flags, .scalar = scalar };
    const chunks = elementwise.reduce_chunks(space);
    for (0..targets) |j| map_target(op, dtype, &args, space, scale, chunks, j);
    try testing.expectEqualSlices(u8, expected, actual);
}

fn empty_layout() Layout {
    return std.mem.zeroes(Layout);
}

test "map_target gives the engine's bits: broadcast binary ops, numbers and a scale" {
    // [4, 3, 5] = a [4, 1, 5] op b [3, 5].
    var space = empty_layout();
    space.kept_ndim = 3;
    space.kept_shape[0..3].* = .{ 4, 3, 5 };
    space.kept_strides[0][0..3].* = .{ 5, 0, 1 };
    space.kept_strides[1][0..3].* = .{ 0, 5, 1 };
    space.operand_counts[0..2].* = .{ 20, 15 };
    inline for (.{ Dtype.float32, Dtype.float16, Dtype.bfloat16 }) |dtype| {
        inline for (.{ MapOp.add, MapOp.sub, MapOp.mul, MapOp.div }) |op| {
            try expect_same(op, dtype, &space, 0, 0, 1);
            try expect_same(op, dtype, &space, 0, 0, -0.37);
            try expect_same(op, dtype, &space, 0b10, 2.5, 1); // b is the number 2.5.
        }
    }
}

test "map_target gives the engine's bits for reductions: gradients, sums over strided axes, div_grad" {
    // Sum [6, 7, 9] over axes 0 and 2 into [7]: one kept dimension, two reduced ones.
    var space = empty_layout();
    space.kept_ndim = 1;
    space.kept_shape[0] = 7;
    space.kept_strides[0][0] = 9;
    space.kept_strides[1][0] = 1;
    space.kept_strides[2][0] = 9;
    space.reduced_ndim = 2;
    space.reduced_shape[0..2].* = .{ 6, 9 };
    space.reduced_strides[0][0..2].* = .{ 63, 1 };
    space.reduced_strides[1][0..2].* = .{ 0, 0 };
    space.reduced_strides[2][0..2].* = .{ 63, 1 };
    space.operand_counts[0..3].* = .{ 378, 7, 378 };
    inline for (.{ Dtype.float32, Dtype.float16, Dtype.bfloat16 }) |dtype| {
        try expect_same(.copy, dtype, &space, 0, 0, 1);
        try expect_same(.copy, dtype, &space, 0, 0, 1.0 / 54.0);
        try expect_same(.mul, dtype, &space, 0, 0, 1);
        try expect_same(.div_grad, dtype, &space, 0, 0, -1);
    }
    // Reduced dimensions of extent 1 still go through the float64 accumulator.
    var ones = empty_layout();
    ones.kept_ndim = 1;
    ones.kept_shape[0] = 33;
    ones.kept_strides[0][0] = 1;
    ones.reduced_ndim = 1;
    ones.reduced_shape[0] = 1;
    ones.operand_counts[0] = 33;
    try expect_same(.copy, .bfloat16, &ones, 0, 0, 0.3);
}

test "map_target splits long reductions into the engine's chunks" {
    // [140000, 3] summed over axis 0: three targets in one tile, two chunks of the terms.
    var space = empty_layout();
    space.kept_ndim = 1;
    space.kept_shape[0] = 3;
    space.kept_strides[0][0] = 1;
    space.reduced_ndim = 1;
    space.reduced_shape[0] = 140000;
    space.reduced_strides[0][0] = 3;
    space.operand_counts[0] = 420000;
    try testing.expect(elementwise.reduce_chunks(&space) > 1);
    inline for (.{ Dtype.float32, Dtype.float16, Dtype.bfloat16 }) |dtype| {
        try expect_same(.copy, dtype, &space, 0, 0, 1.0 / 140000.0);
        try expect_same_mirrored(.copy, dtype, &space, 0, 0, 1, true);
    }
    // A full reduction of 2^20 + 7 terms into one target: sixteen chunks.
    const full = elementwise.full_reduction_layout((1 << 20) + 7);
    try testing.expectEqual(@as(u32, 16), elementwise.reduce_chunks(&full));
    try expect_same(.copy, .float32, &full, 0, 0, 1);
    try expect_same_mirrored(.copy, .float32, &full, 0, 0, 1, true);
}

test "copy_element moves every element where the host strided copy does" {
    var source: [2 * 3 * 4]u16 = undefined;
    for (&source, 0..) |*v, i| v.* = @intCast(i * 7 + 1);
    var expected: [24]u16 = @splat(0);
    var actual: [24]u16 = @splat(0);
    var copy = layout.StridedCopy{
        .source = @ptrCast(&source),
        .target = @ptrCast(&expected),
        .element_bytes = 2,
        .ndim = 3,
        .shape = .{ 4, 2, 3, 0, 0, 0, 0, 0 },
        .source_strides = .{ 1, 12, 4, 0, 0, 0, 0, 0 },
        .target_strides = .{ 6, 3, 1, 0, 0, 0, 0, 0 },
    };
    layout.simplify(&copy);
    layout.strided_copy(&copy);
    const device_copy = layout.DeviceCopy{ .element_bytes = 2, .ndim = copy.ndim, .count = 24, .shape = copy.shape, .source_strides = copy.source_strides, .target_strides = copy.target_strides };
    for (0..24) |index| copy_element(u16, &source, &actual, &device_copy, index);
    try testing.expectEqualSlices(u16, &expected, &actual);
}
