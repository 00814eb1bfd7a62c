//! Multi-tensor tables: the rows of a table (tensors with a `count`) are concatenated into one
//! index space that the thread pool splits, and `pieces` walks the part of each row that falls in
//! one thread's range. `MultiTensorStep` is the loop the fused optimizer steps share on top: each
//! piece dispatches once on the row's (gradient, parameter, state) dtypes and runs the step's lane
//! function over whole vectors, then the scalar tail, with the row and the step constants copied to
//! locals (the kernel's stores cannot alias them, so their fields stay in registers).

const std = @import("std");
const numerics = @import("../numerics.zig");
const pool = @import("pool.zig");
const cast = @import("cast.zig");
const dispatch = @import("dispatch.zig");

const Dtype = numerics.Dtype;

/// The part [begin, end) (row-local indices) of one row inside a global element range.
pub fn Piece(comptime Row: type) type {
    return struct { row: *const Row, begin: u64, end: u64 };
}

/// Iterates over the rows overlapping the global range [begin, end) of the concatenated rows.
pub fn Pieces(comptime Row: type) type {
    return struct {
        rows: []const Row,
        begin: u64,
        end: u64,
        index: usize = 0,
        row_start: u64 = 0,

        pub fn next(self: *@This()) ?Piece(Row) {
            while (self.index < self.rows.len) {
                const row = &self.rows[self.index];
                const row_start = self.row_start;
                const row_end = row_start + row.count;
                self.index += 1;
                self.row_start = row_end;
                if (row_end <= self.begin) continue;
                if (row_start >= self.end) return null;
                return .{ .row = row, .begin = @max(self.begin, row_start) - row_start, .end = @min(self.end, row_end) - row_start };
            }
            return null;
        }
    };
}

pub fn pieces(comptime Row: type, rows: []const Row, begin: u64, end: u64) Pieces(Row) {
    return .{ .rows = rows, .begin = begin, .end = end };
}

/// `step_lanes(width, grad_dtype, param_dtype, state_dtype, row, hyper, index)` updates elements
/// [index, index + width) of one row. Row has `count`, `grad_dtype`, `param_dtype`, `state_dtype`.
/// Row and Hyper are extern structs: zig/src/wide.zig exports this loop's x86-64-v4 compilations
/// as `<name>_range` (in-cache steps run about 1.4x as fast with zmm registers, the same bits),
/// and `run` calls the one dispatch chose.
pub fn MultiTensorStep(comptime Row: type, comptime Hyper: type, comptime step_lanes: anytype, comptime name: []const u8) type {
    comptime std.debug.assert(@typeInfo(Row).@"struct".layout == .@"extern");
    comptime std.debug.assert(@typeInfo(Hyper).@"struct".layout == .@"extern");
    return struct {
        fn typed(comptime grad_dtype: Dtype, comptime param_dtype: Dtype, comptime state_dtype: Dtype, row_shared: *const Row, hyper_shared: *const Hyper, begin: u64, end: u64) void {
            const row_local = row_shared.*;
            const hyper_local = hyper_shared.*;
            const n = cast.lanes;
            var index = begin;
            while (index + n <= end) : (index += n) step_lanes(n, grad_dtype, param_dtype, state_dtype, &row_local, &hyper_local, index);
            while (index < end) : (index += 1) step_lanes(1, grad_dtype, param_dtype, state_dtype, &row_local, &hyper_local, index);
        }

        fn float_dtype(value: u32) Dtype {
            return @fromBackingInt(@intCast(value));
        }

        fn row_range(row: *const Row, hyper: *const Hyper, begin: u64, end: u64) void {
            switch (float_dtype(row.grad_dtype)) {
                inline .float32, .float16, .bfloat16 => |g| switch (float_dtype(row.param_dtype)) {
                    inline .float32, .float16, .bfloat16 => |p| switch (float_dtype(row.state_dtype)) {
                        inline .float32, .bfloat16 => |s| typed(g, p, s, row, hyper, begin, end),
                        else => unreachable, // Checked by the step's validate().
                    },
                    else => unreachable,
                },
                else => unreachable,
            }
        }

        pub const Context = extern struct {
            rows: [*]const Row,
            row_count: u64,
            hyper: *const Hyper,
        };

        pub fn range_c(context: *const Context, begin: u64, end: u64) callconv(.c) void {
            var it = pieces(Row, context.rows[0..context.row_count], begin, end);
            while (it.next()) |piece| row_range(piece.row, context.hyper, piece.begin, piece.end);
        }

        pub const symbol = name ++ "_range";

        const Call = struct {
            context: *const Context,
            range: *const @TypeOf(range_c),

            fn run(call: *const Call, begin: u64, end: u64) void {
                call.range(call.context, begin, end);
            }
        };

        /// One step over every row, split across the thread pool.
        pub fn run(rows: []const Row, hyper: *const Hyper) void {
            var total: u64 = 0;
            for (rows) |row| total += row.count;
            const context = Context{ .rows = rows.ptr, .row_count = rows.len, .hyper = hyper };
            const call = Call{ .context = &context, .range = dispatch.pick(*const @TypeOf(range_c), symbol, &range_c) };
            pool.parallel_for(total, &call, Call.run);
        }
    };
}

test "pieces covers a global range with the right row-local bounds" {
    const Row = struct { count: u64 };
    const table = [_]Row{ .{ .count = 3 }, .{ .count = 0 }, .{ .count = 5 }, .{ .count = 2 } };
    var it = pieces(Row, &table, 2, 9);
    const first = it.next().?;
    try std.testing.expectEqual(&table[0], first.row);
    try std.testing.expectEqual(@as(u64, 2), first.begin);
    try std.testing.expectEqual(@as(u64, 3), first.end);
    // An empty row inside the range yields an empty piece (the kernels' loops do nothing with it).
    const empty = it.next().?;
    try std.testing.expectEqual(&table[1], empty.row);
    try std.testing.expectEqual(empty.begin, empty.end);
    const second = it.next().?;
    try std.testing.expectEqual(&table[2], second.row);
    try std.testing.expectEqual(@as(u64, 0), second.begin);
    try std.testing.expectEqual(@as(u64, 5), second.end);
    const third = it.next().?;
    try std.testing.expectEqual(&table[3], third.row);
    try std.testing.expectEqual(@as(u64, 0), third.begin);
    try std.testing.expectEqual(@as(u64, 1), third.end);
    try std.testing.expect(it.next() == null);
}
