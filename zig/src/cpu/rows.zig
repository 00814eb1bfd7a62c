//! The loop every fused multi-tensor optimizer step shares: the rows of a table are concatenated
//! into one index space that the thread pool splits; each piece of a row dispatches once on the
//! row's (gradient, parameter, state) dtypes and runs the step's lane function over whole vectors,
//! then the scalar tail, with the row and the step constants copied to locals (the kernel's stores
//! cannot alias them, so their fields stay in registers).

const std = @import("std");
const numerics = @import("../numerics.zig");
const pool = @import("pool.zig");
const cast = @import("cast.zig");

const Dtype = numerics.Dtype;

/// `step_lanes(width, grad_dtype, param_dtype, state_dtype, row, hyper, index)` updates elements
/// [index, index + width) of one row. Row has `count`, `grad_dtype`, `param_dtype`, `state_dtype`.
pub fn MultiTensorStep(comptime Row: type, comptime Hyper: type, comptime step_lanes: anytype) type {
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

        const Context = struct {
            rows: []const Row,
            hyper: *const Hyper,
        };

        fn range(context: *const Context, begin: u64, end: u64) void {
            var row_start: u64 = 0;
            for (context.rows) |*row| {
                const row_end = row_start + row.count;
                defer row_start = row_end;
                if (row_end <= begin) continue;
                if (row_start >= end) break;
                row_range(row, context.hyper, @max(begin, row_start) - row_start, @min(end, row_end) - row_start);
            }
        }

        /// One step over every row, split across the thread pool.
        pub fn run(rows: []const Row, hyper: *const Hyper) void {
            var total: u64 = 0;
            for (rows) |row| total += row.count;
            const context = Context{ .rows = rows, .hyper = hyper };
            pool.parallel_for(total, &context, range);
        }
    };
}
