//! The fake libcuda's emulation of the row-op kernels (zig/src/cuda/ops_rows.zig): each launch
//! runs the CPU twin in zig/src/ops/ on the launch's arguments, read as the PTX parameter types
//! of driver.zig's Kernel table. cuda_fake.zig hands these entries function handles from
//! `function_base` on and forwards their launches here.

const std = @import("std");
const numerics = @import("numerics.zig");
const norm = @import("ops/norm.zig");
const softmax = @import("ops/softmax.zig");
const embedding = @import("ops/embedding.zig");
const rope = @import("ops/rope.zig");
const attention = @import("ops/attention.zig");

const Dtype = numerics.Dtype;

/// Function handles of these entries are function_base + index.
pub const function_base: usize = 0x1000;

pub const entries = [_][]const u8{
    "mp_norm_forward_kernel",
    "mp_norm_backward_rows_kernel",
    "mp_norm_backward_partials_kernel",
    "mp_norm_combine_kernel",
    "mp_softmax_forward_kernel",
    "mp_cross_entropy_mean_kernel",
    "mp_softmax_backward_kernel",
    "mp_cross_entropy_backward_kernel",
    "mp_embedding_forward_kernel",
    "mp_embedding_backward_kernel",
    "mp_rope_kernel",
    "mp_attention_forward_kernel",
    "mp_attention_backward_keys_kernel",
    "mp_attention_backward_queries_kernel",
};

/// The handle of entry `name`, or null when it is not one of these.
pub fn function(name: []const u8) ?usize {
    for (entries, 0..) |entry, index| {
        if (std.mem.eql(u8, entry, name)) return function_base + index;
    }
    return null;
}

fn param(comptime T: type, params: [*]?*anyopaque, index: usize) T {
    return @as(*const T, @ptrCast(@alignCast(params[index].?))).*;
}

/// A non-optional pointer: 0 (an operand the launch never reads, e.g. k with no keys) becomes an
/// aligned placeholder, as the CPU exports pass.
fn at(address: u64) [*]u8 {
    return @ptrFromInt(@max(address, 64));
}

fn bytes(address: u64) ?[*]u8 {
    return if (address == 0) null else @ptrFromInt(address);
}

fn floats(address: u64) ?[*]f32 {
    return if (address == 0) null else @ptrFromInt(address);
}

fn dtype_of(code: u32) Dtype {
    return Dtype.from_int(code).?;
}

/// Runs the launch of handle `handle` when it is one of these entries; false otherwise.
pub fn launch(handle: usize, params: [*]?*anyopaque) bool {
    if (handle < function_base or handle >= function_base + entries.len) return false;
    switch (handle - function_base) {
        0 => norm_forward(params),
        1 => norm_backward_rows(params),
        2 => norm_backward_partials(params),
        3 => norm_combine(params),
        4 => softmax_forward(params),
        5 => cross_entropy_mean(params),
        6 => softmax_backward(params),
        7 => cross_entropy_backward(params),
        8 => embedding_forward(params),
        9 => embedding_backward(params),
        10 => rope_launch(params),
        11 => attention_forward(params),
        12 => attention_backward(params, .keys),
        13 => attention_backward(params, .queries),
        else => unreachable,
    }
    return true;
}

fn norm_forward(params: [*]?*anyopaque) void {
    norm.forward(dtype_of(param(u32, params, 1)), &.{
        .kind = @fromBackingInt(@intCast(param(u32, params, 0))),
        .x = @ptrCast(@alignCast(at(param(u64, params, 2)))),
        .weight = bytes(param(u64, params, 3)),
        .bias = bytes(param(u64, params, 4)),
        .out = @ptrCast(@alignCast(at(param(u64, params, 5)))),
        .mean = floats(param(u64, params, 6)),
        .rstd = floats(param(u64, params, 7)),
        .rows = param(u64, params, 8),
        .width = param(u64, params, 9),
        .eps = param(f32, params, 10),
    });
}

fn norm_backward_rows(params: [*]?*anyopaque) void {
    norm.backward(dtype_of(param(u32, params, 1)), &.{
        .kind = @fromBackingInt(@intCast(param(u32, params, 0))),
        .x = @ptrCast(@alignCast(at(param(u64, params, 2)))),
        .weight = bytes(param(u64, params, 3)),
        .mean = floats(param(u64, params, 4)),
        .rstd = floats(param(u64, params, 5)).?,
        .grad_out = @ptrCast(@alignCast(at(param(u64, params, 6)))),
        .grad_x = @ptrCast(@alignCast(at(param(u64, params, 7)))),
        .grad_weight = null,
        .grad_bias = null,
        .workspace = null,
        .rows = param(u64, params, 8),
        .width = param(u64, params, 9),
    });
}

/// The CPU's block pass leaves the partial rows in the workspace; the grad_x it also writes goes
/// to a scratch buffer (the device kernel computes partials only).
fn norm_backward_partials(params: [*]?*anyopaque) void {
    const dtype = dtype_of(param(u32, params, 1));
    const rows = param(u64, params, 7);
    const width = param(u64, params, 8);
    const workspace: [*]f32 = @ptrCast(@alignCast(at(param(u64, params, 6))));
    const scratch = std.heap.c_allocator.alloc(u8, rows * width * dtype.size_bytes()) catch @panic("fake driver: out of host memory");
    defer std.heap.c_allocator.free(scratch);
    norm.backward_partials(dtype, &.{
        .kind = @fromBackingInt(@intCast(param(u32, params, 0))),
        .x = @ptrCast(@alignCast(at(param(u64, params, 2)))),
        .weight = null,
        .mean = floats(param(u64, params, 3)),
        .rstd = floats(param(u64, params, 4)).?,
        .grad_out = @ptrCast(@alignCast(at(param(u64, params, 5)))),
        .grad_x = scratch.ptr,
        // Non-null, so both partial rows are summed; never written by the block pass.
        .grad_weight = @ptrCast(workspace),
        .grad_bias = @ptrCast(workspace),
        .workspace = workspace,
        .rows = rows,
        .width = width,
    });
}

fn norm_combine(params: [*]?*anyopaque) void {
    const args = norm.Backward{
        .kind = .layer,
        .x = @ptrFromInt(64),
        .weight = null,
        .mean = null,
        .rstd = @ptrFromInt(64),
        .grad_out = @ptrFromInt(64),
        .grad_x = @ptrFromInt(64),
        .grad_weight = null,
        .grad_bias = null,
        // Not read when there are no rows, and then possibly 0.
        .workspace = @ptrCast(@alignCast(at(param(u64, params, 1)))),
        .rows = param(u64, params, 4),
        .width = param(u64, params, 5),
    };
    norm.combine_partials(dtype_of(param(u32, params, 0)), &args, param(u64, params, 3), @ptrCast(@alignCast(at(param(u64, params, 2)))));
}

fn softmax_forward(params: [*]?*anyopaque) void {
    var mean: f32 = 0;
    const op: softmax.Op = @fromBackingInt(@intCast(param(u32, params, 0)));
    softmax.forward(dtype_of(param(u32, params, 1)), &.{
        .op = op,
        .x = @ptrCast(@alignCast(at(param(u64, params, 2)))),
        .out = @ptrCast(@alignCast(at(param(u64, params, 3)))),
        .rows = param(u64, params, 4),
        .width = param(u64, params, 5),
        .labels = if (op == .cross_entropy) @ptrCast(@alignCast(at(param(u64, params, 6)))) else null,
        .ignore_index = param(i32, params, 7),
        .lse = floats(param(u64, params, 8)),
        .mean = &mean,
    });
}

fn cross_entropy_mean(params: [*]?*anyopaque) void {
    const mean: *f32 = @ptrCast(@alignCast(at(param(u64, params, 4))));
    mean.* = softmax.mean_over_kept(@ptrCast(@alignCast(at(param(u64, params, 0)))), @ptrCast(@alignCast(at(param(u64, params, 1)))), param(u64, params, 3), param(i32, params, 2));
}

fn softmax_backward(params: [*]?*anyopaque) void {
    softmax.backward(dtype_of(param(u32, params, 1)), &.{
        .op = @fromBackingInt(@intCast(param(u32, params, 0))),
        .saved = @ptrCast(@alignCast(at(param(u64, params, 2)))),
        .grad_out = @ptrCast(@alignCast(at(param(u64, params, 3)))),
        .grad_x = @ptrCast(@alignCast(at(param(u64, params, 4)))),
        .rows = param(u64, params, 5),
        .width = param(u64, params, 6),
    });
}

fn cross_entropy_backward(params: [*]?*anyopaque) void {
    softmax.backward(dtype_of(param(u32, params, 0)), &.{
        .op = .cross_entropy,
        .saved = @ptrCast(@alignCast(at(param(u64, params, 1)))),
        .grad_out = @ptrCast(@alignCast(at(param(u64, params, 2)))),
        .grad_x = @ptrCast(@alignCast(at(param(u64, params, 3)))),
        .rows = param(u64, params, 4),
        .width = param(u64, params, 5),
        .labels = @ptrCast(@alignCast(at(param(u64, params, 6)))),
        .ignore_index = param(i32, params, 7),
        .lse = floats(param(u64, params, 8)),
    });
}

fn embedding_forward(params: [*]?*anyopaque) void {
    const dtype: Dtype = switch (param(u32, params, 0)) {
        1 => .float8_e4m3fn,
        2 => .float16,
        else => .float32,
    };
    embedding.forward(dtype, &.{
        .table = @ptrCast(@alignCast(at(param(u64, params, 1)))),
        .ids = @ptrCast(@alignCast(at(param(u64, params, 2)))),
        .out = @ptrCast(@alignCast(at(param(u64, params, 3)))),
        .vocabulary = std.math.maxInt(i32),
        .dim = param(u64, params, 4),
        .count = param(u64, params, 5),
    });
}

fn embedding_backward(params: [*]?*anyopaque) void {
    const workspace: [*]u32 = @ptrCast(@alignCast(at(param(u64, params, 1))));
    const vocabulary = param(u64, params, 4);
    embedding.scatter_sorted(dtype_of(param(u32, params, 0)), &.{
        .ids = @ptrFromInt(4),
        .grad_out = @ptrCast(@alignCast(at(param(u64, params, 2)))),
        .grad_table = @ptrCast(@alignCast(at(param(u64, params, 3)))),
        .workspace = workspace,
        .vocabulary = vocabulary,
        .dim = param(u64, params, 5),
        .count = workspace[vocabulary - 1],
    });
}

fn rope_launch(params: [*]?*anyopaque) void {
    const problem = @as(*const rope.Problem, @ptrCast(@alignCast(at(param(u64, params, 2))))).*;
    const call = rope.Call{
        .problem = problem,
        .source = @ptrCast(@alignCast(at(param(u64, params, 3)))),
        .target = @ptrCast(@alignCast(at(param(u64, params, 4)))),
        .inv_freq = @ptrCast(@alignCast(at(param(u64, params, 5)))),
        .positions = if (problem.flags & rope.flag_positions != 0) @ptrCast(@alignCast(at(param(u64, params, 6)))) else null,
        .inverse = param(u32, params, 1) != 0,
    };
    switch (dtype_of(param(u32, params, 0))) {
        inline .float32, .float16, .bfloat16 => |d| rope.apply(d, &call),
        else => unreachable,
    }
}

fn mask_of(params: [*]?*anyopaque) ?attention.Mask {
    const address = param(u64, params, 6);
    if (address == 0) return null;
    return .{ .values = @ptrFromInt(address), .dtype = dtype_of(param(u32, params, 7)) };
}

fn attention_forward(params: [*]?*anyopaque) void {
    const f = attention.Forward{
        .problem = @as(*const attention.Problem, @ptrCast(@alignCast(at(param(u64, params, 1))))).*,
        .scale = param(f32, params, 2),
        .q = @ptrCast(@alignCast(at(param(u64, params, 3)))),
        .k = @ptrCast(@alignCast(at(param(u64, params, 4)))),
        .v = @ptrCast(@alignCast(at(param(u64, params, 5)))),
        .mask = mask_of(params),
        .out = @ptrCast(@alignCast(at(param(u64, params, 8)))),
        .lse = @ptrCast(@alignCast(at(param(u64, params, 9)))),
    };
    switch (dtype_of(param(u32, params, 0))) {
        inline .float32, .float16, .bfloat16 => |d| attention.forward(d, &f),
        else => unreachable,
    }
}

/// The keys pass writes dk (param 11) and dv (12); the queries pass dq (11). The gradients a pass
/// does not write are given a pointer it never touches.
fn attention_backward(params: [*]?*anyopaque, comptime pass: enum { keys, queries }) void {
    const first = param(u64, params, 11);
    const g = attention.Backward{
        .problem = @as(*const attention.Problem, @ptrCast(@alignCast(at(param(u64, params, 1))))).*,
        .scale = param(f32, params, 2),
        .q = @ptrCast(@alignCast(at(param(u64, params, 3)))),
        .k = @ptrCast(@alignCast(at(param(u64, params, 4)))),
        .v = @ptrCast(@alignCast(at(param(u64, params, 5)))),
        .mask = mask_of(params),
        .out = @ptrCast(@alignCast(at(param(u64, params, 8)))),
        .lse = @ptrCast(@alignCast(at(param(u64, params, 9)))),
        .d_out = @ptrCast(@alignCast(at(param(u64, params, 10)))),
        .dq = at(first),
        .dk = at(first),
        .dv = at(if (pass == .keys) param(u64, params, 12) else first),
    };
    switch (dtype_of(param(u32, params, 0))) {
        inline .float32, .float16, .bfloat16 => |d| switch (pass) {
            .keys => attention.backward_keys(d, &g),
            .queries => attention.backward_queries(d, &g),
        },
        else => unreachable,
    }
}
