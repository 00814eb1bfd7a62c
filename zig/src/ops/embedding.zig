//! Embedding lookup: a gather of table rows (forward) and its gradient, a scatter-add of the
//! output rows' gradients into a [vocabulary, dim] gradient of the table's dtype (backward).
//!
//! The backward pass is deterministic: the token positions are first sorted by id with a stable
//! counting sort (positions of one id stay in token order) in a caller-provided u32 workspace,
//! then each table row is summed by one task, in token order, in float32 registers over column
//! tiles, and rounded once on store. Tasks own whole table rows, so 1 and 16 threads give the same
//! bits, and no two threads ever write one element.
//!
//! Bytes moved: forward copies count * dim elements; backward reads count * dim gradient elements
//! and writes vocabulary * dim (rows no token uses get zeros).

const std = @import("std");
const assert = std.debug.assert;
const storage = @import("storage.zig");
const norm = @import("norm.zig");

const Dtype = storage.Dtype;
const F = storage.F;
const lanes = storage.lanes;

/// Columns one task sums at a time: its float32 accumulators fit in registers and L1 (1 KiB).
const tile_columns = 256;
comptime {
    assert(tile_columns % lanes == 0);
}

pub const Forward = struct {
    table: [*]const u8,
    ids: [*]const i32,
    out: [*]u8,
    vocabulary: u64,
    dim: u64,
    count: u64,
};

pub const Backward = struct {
    ids: [*]const i32,
    grad_out: [*]const u8,
    grad_table: [*]u8,
    /// `workspace_count(vocabulary, count)` u32 values.
    workspace: [*]u32,
    vocabulary: u64,
    dim: u64,
    count: u64,
};

/// u32 workspace values a backward pass needs: a row end per id and a sorted position per token.
pub fn workspace_count(vocabulary: u64, count: u64) u64 {
    return vocabulary + count;
}

/// Whether every id is in [0, vocabulary).
pub fn check_ids(ids: []const i32, vocabulary: u64) bool {
    for (ids) |id| {
        if (id < 0 or @as(u64, @intCast(id)) >= vocabulary) return false;
    }
    return true;
}

fn gather_rows(args: *const Forward, size_bytes: u64, begin: u64, end: u64) void {
    const row_bytes = args.dim * size_bytes;
    for (begin..end) |i| {
        const id: u64 = @intCast(args.ids[i]);
        @memcpy(args.out[i * row_bytes ..][0..row_bytes], args.table[id * row_bytes ..][0..row_bytes]);
    }
}

/// Sums the gradient rows of `positions` (in the given order) into table row `row`, tile by tile.
fn scatter_row(comptime dtype: Dtype, args: *const Backward, row: u64, positions: []const u32) void {
    var column: u64 = 0;
    while (column < args.dim) : (column += tile_columns) {
        const width = @min(tile_columns, args.dim - column);
        var acc: [tile_columns]f32 = undefined;
        @memset(acc[0..width], 0);
        for (positions) |position| {
            const base = @as(u64, position) * args.dim + column;
            var j: u64 = 0;
            inline for (.{ lanes, 1 }) |n| {
                while (j + n <= width) : (j += n) {
                    acc[j..][0..n].* = @as(F(n), acc[j..][0..n].*) + storage.load(n, dtype, args.grad_out, base + j);
                }
            }
        }
        var j: u64 = 0;
        inline for (.{ lanes, 1 }) |n| {
            while (j + n <= width) : (j += n) storage.store(n, dtype, args.grad_table, row * args.dim + column + j, acc[j..][0..n].*);
        }
    }
}

/// A stable counting sort of the token positions by id: afterwards, id v's positions are
/// order[ends[v - 1] .. ends[v]] (from 0 for v = 0), in increasing token order.
pub fn sort_positions(args: *const Backward) void {
    const ends = args.workspace[0..args.vocabulary];
    const order = args.workspace[args.vocabulary..][0..args.count];
    @memset(ends, 0);
    for (args.ids[0..args.count]) |id| ends[@intCast(id)] += 1;
    // Exclusive prefix sums: ends[v] becomes the start of v's positions.
    var total: u32 = 0;
    for (ends) |*end| {
        const size = end.*;
        end.* = total;
        total += size;
    }
    // Placing each position advances its id's start to its end.
    for (args.ids[0..args.count], 0..) |id, position| {
        const slot = &ends[@intCast(id)];
        order[slot.*] = @intCast(position);
        slot.* += 1;
    }
}

fn Kernels(comptime dtype: Dtype) type {
    return struct {
        fn scatter_rows(args: *const Backward, begin: u64, end: u64) void {
            const ends = args.workspace[0..args.vocabulary];
            const order = args.workspace[args.vocabulary..][0..args.count];
            for (begin..end) |row| {
                const start: u64 = if (row == 0) 0 else ends[row - 1];
                scatter_row(dtype, args, row, order[start..ends[row]]);
            }
        }

        fn backward(args: *const Backward) void {
            sort_positions(args);
            norm.parallel_items(args.vocabulary, args.dim, args, scatter_rows);
        }
    };
}

/// out[i] = table[ids[i]] for each of `count` ids, rows of `dim` elements of `dtype` (any dtype:
/// the bits are copied). The arguments were validated by the caller (ffi.zig).
pub fn forward(dtype: Dtype, args: *const Forward) void {
    assert(args.dim > 0);
    assert(check_ids(args.ids[0..args.count], args.vocabulary));
    const Context = struct {
        args: *const Forward,
        size_bytes: u64,
        fn body(self: *const @This(), begin: u64, end: u64) void {
            gather_rows(self.args, self.size_bytes, begin, end);
        }
    };
    const context = Context{ .args = args, .size_bytes = dtype.size_bytes() };
    norm.parallel_items(args.count, args.dim, &context, Context.body);
}

/// The backward pass after sort_positions filled the workspace: each table row summed from its
/// sorted positions (the CUDA fake driver emulates the device's scatter kernel with it).
pub fn scatter_sorted(dtype: Dtype, args: *const Backward) void {
    assert(storage.is_op_dtype(dtype));
    switch (dtype) {
        inline .float32, .float16, .bfloat16 => |d| norm.parallel_items(args.vocabulary, args.dim, args, Kernels(d).scatter_rows),
        else => unreachable,
    }
}

/// grad_table[v] = sum of grad_out[i] over the tokens i with ids[i] = v, in token order, rounded
/// once into `dtype` (zeros for ids no token has). The arguments were validated by the caller.
pub fn backward(dtype: Dtype, args: *const Backward) void {
    assert(storage.is_op_dtype(dtype));
    assert(args.dim > 0 and args.vocabulary > 0);
    assert(args.count < std.math.maxInt(u32));
    assert(check_ids(args.ids[0..args.count], args.vocabulary));
    switch (dtype) {
        inline .float32, .float16, .bfloat16 => |d| Kernels(d).backward(args),
        else => unreachable,
    }
}

const testing = std.testing;

test "embedding gathers rows and scatter-adds repeated ids in token order, zero rows for unused ids" {
    const vocabulary = 4;
    const dim = 300; // More than one column tile, with a tail.
    var table: [vocabulary * dim]f32 = undefined;
    for (&table, 0..) |*v, i| v.* = @floatFromInt(i);
    const ids = [_]i32{ 2, 0, 2, 3, 2 };
    var out: [ids.len * dim]f32 = undefined;
    forward(.float32, &.{ .table = @ptrCast(&table), .ids = &ids, .out = @ptrCast(&out), .vocabulary = vocabulary, .dim = dim, .count = ids.len });
    for (ids, 0..) |id, i| {
        try testing.expectEqualSlices(f32, table[@as(usize, @intCast(id)) * dim ..][0..dim], out[i * dim ..][0..dim]);
    }
    var grad_out: [ids.len * dim]f32 = undefined;
    for (&grad_out, 0..) |*v, i| v.* = 1.0 + @as(f32, @floatFromInt(i % 7)) * 0.1;
    var grad_table: [vocabulary * dim]u16 = undefined;
    var workspace: [vocabulary + ids.len]u32 = undefined;
    var grad_bf16: [ids.len * dim]u16 = undefined;
    for (&grad_bf16, grad_out) |*h, v| storage.store_one(.bfloat16, @ptrCast(h), 0, v);
    backward(.bfloat16, &.{ .ids = &ids, .grad_out = @ptrCast(&grad_bf16), .grad_table = @ptrCast(&grad_table), .workspace = &workspace, .vocabulary = vocabulary, .dim = dim, .count = ids.len });
    for (0..dim) |j| {
        const at = struct {
            fn f(bits: []const u16, i: usize) f32 {
                return storage.load_one(.bfloat16, @ptrCast(bits.ptr), i);
            }
        }.f;
        // Row 2 sums tokens 0, 2 and 4 in that order, in float32, rounded once.
        const sum = (at(&grad_bf16, j) + at(&grad_bf16, 2 * dim + j)) + at(&grad_bf16, 4 * dim + j);
        var rounded: [1]u16 = undefined;
        storage.store_one(.bfloat16, @ptrCast(&rounded), 0, sum);
        try testing.expectEqual(rounded[0], grad_table[2 * dim + j]);
        try testing.expectEqual(@as(u16, 0), grad_table[1 * dim + j]);
        try testing.expectEqual(grad_bf16[3 * dim + j], grad_table[3 * dim + j]);
    }
    try testing.expect(!check_ids(&[_]i32{ 0, 4 }, vocabulary));
    try testing.expect(!check_ids(&[_]i32{-1}, vocabulary));
}
