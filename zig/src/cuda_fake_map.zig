//! The fake libcuda's emulation of the elementwise and layout kernels (zig/src/cuda/ops_map.zig):
//! each launch runs the CPU twin in zig/src/ops/ (elementwise.zig, layout.zig) on the launch's
//! arguments, read as the PTX parameter types of driver.zig's Kernel table (a struct parameter is
//! read from the address the launch passes). cuda_fake.zig hands these entries function handles
//! from `function_base` on and forwards their launches here.

const std = @import("std");
const numerics = @import("numerics.zig");
const storage = @import("ops/storage.zig");
const elementwise = @import("ops/elementwise.zig");
const layout = @import("ops/layout.zig");

const Dtype = numerics.Dtype;

/// Function handles of these entries are function_base + index.
pub const function_base: usize = 0x2000;

pub const entries = [_][]const u8{
    "mp_activation_forward_kernel",
    "mp_activation_backward_kernel",
    "mp_swiglu_forward_kernel",
    "mp_swiglu_backward_kernel",
    "mp_map_kernel",
    "mp_strided_copy_kernel",
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

fn at(address: u64) [*]u8 {
    return @ptrFromInt(address);
}

fn op_dtype(code: u32) Dtype {
    return storage.op_dtype(code) orelse @panic("fake driver: a launch with a dtype that is not float32, float16 or bfloat16");
}

/// Runs the launch when `handle` is one of these entries; false otherwise.
pub fn launch(handle: usize, params: [*]?*anyopaque) bool {
    const index = handle -% function_base;
    if (index >= entries.len) return false;
    switch (index) {
        0, 1 => {
            const backward = index == 1;
            const o: usize = if (backward) 1 else 0; // Backward has one more address before count.
            const args = elementwise.Unary{
                .source = at(param(u64, params, 0)),
                .second = at(param(u64, params, if (backward) 1 else 0)),
                .target = at(param(u64, params, 1 + o)),
                .count = param(u64, params, 2 + o),
            };
            const activation: elementwise.Activation = @fromBackingInt(@intCast(param(u32, params, 3 + o)));
            switch (activation) {
                inline else => |a| switch (op_dtype(param(u32, params, 4 + o))) {
                    inline .float32, .float16, .bfloat16 => |d| if (backward)
                        elementwise.activation_backward_run(a, d, &args)
                    else
                        elementwise.activation_forward_run(a, d, &args),
                    else => unreachable,
                },
            }
        },
        2 => {
            const a = param(u64, params, 0);
            const args = elementwise.Swiglu{ .a = at(a), .b = at(param(u64, params, 1)), .g = at(a), .out = at(param(u64, params, 2)), .out_b = at(param(u64, params, 2)), .count = param(u64, params, 3) };
            switch (op_dtype(param(u32, params, 4))) {
                inline .float32, .float16, .bfloat16 => |d| elementwise.swiglu_forward_run(d, &args),
                else => unreachable,
            }
        },
        3 => {
            const args = elementwise.Swiglu{ .a = at(param(u64, params, 0)), .b = at(param(u64, params, 1)), .g = at(param(u64, params, 2)), .out = at(param(u64, params, 3)), .out_b = at(param(u64, params, 4)), .count = param(u64, params, 5) };
            switch (op_dtype(param(u32, params, 6))) {
                inline .float32, .float16, .bfloat16 => |d| elementwise.swiglu_backward_run(d, &args),
                else => unreachable,
            }
        },
        4 => {
            const space = param(elementwise.Layout, params, 4);
            const flags = param(u32, params, 9);
            var map = elementwise.Map{
                .layout = &space,
                .target = at(param(u64, params, 0)),
                .operands = .{ at(param(u64, params, 1)), at(param(u64, params, 2)), at(param(u64, params, 3)) },
                .constant = undefined,
                .scalar = param(f32, params, 5),
                .scale = param(f32, params, 6),
            };
            for (0..elementwise.operands_max) |i| map.constant[i] = flags & (@as(u32, 1) << @intCast(i)) != 0;
            // The kernel's chunk count must be the CPU's, or the device would sum in another order.
            if (param(u32, params, 10) != elementwise.reduce_chunks(&space)) @panic("fake driver: mp_map_kernel launched with a chunk count that is not reduce_chunks(layout)");
            const op: elementwise.MapOp = @fromBackingInt(@intCast(param(u32, params, 7)));
            switch (op) {
                inline else => |o| switch (op_dtype(param(u32, params, 8))) {
                    inline .float32, .float16, .bfloat16 => |d| elementwise.map_run(o, d, &map),
                    else => unreachable,
                },
            }
        },
        5 => {
            const device_copy = param(layout.DeviceCopy, params, 2);
            const copy = layout.StridedCopy{
                .source = at(param(u64, params, 0)),
                .target = at(param(u64, params, 1)),
                .element_bytes = device_copy.element_bytes,
                .ndim = @intCast(device_copy.ndim),
                .shape = device_copy.shape,
                .source_strides = device_copy.source_strides,
                .target_strides = device_copy.target_strides,
            };
            layout.strided_copy(&copy);
        },
        else => unreachable,
    }
    return true;
}
