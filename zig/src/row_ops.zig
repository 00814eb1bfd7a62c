//! The op families of zig/src/ops/ as one module for the PTX build (zig/src/cuda/ops_rows.zig and
//! ops_map.zig import it as "row_ops", kernels.zig reaches numerics.zig through it): a module may
//! only import files under its root's folder, numerics.zig cannot be in two modules, and the ops
//! reach numerics.zig one folder up. Only what a kernel calls is compiled for nvptx64: the CPU
//! scheduling (thread pool) of these files is never referenced there.
//!
//! It also pins down the one CPU behaviour the device kernels rely on to give the CPU's bits: a
//! 16-lane float32 `@reduce(.Add)` adds the lanes in order, ((-0 + v0) + v1) + ... + v15 (LLVM's
//! ordered reduction, as no fast-math flag is set); the test below checks it on this CPU.

pub const numerics = @import("numerics.zig");
pub const storage = @import("ops/storage.zig");
pub const mathf = @import("ops/mathf.zig");
pub const norm = @import("ops/norm.zig");
pub const softmax = @import("ops/softmax.zig");
pub const embedding = @import("ops/embedding.zig");
pub const rope = @import("ops/rope.zig");
pub const attention = @import("ops/attention.zig");
// The elementwise and layout families (zig/src/cuda/ops_map.zig).
pub const elementwise = @import("ops/elementwise.zig");
pub const layout = @import("ops/layout.zig");
pub const map_device = @import("ops/map_device.zig");
pub const pool_parallel_threshold = @import("cpu/pool.zig").parallel_threshold;

/// The lane count of every CPU row reduction (storage.lanes): device kernels give each row 16
/// threads that sum the elements j = lane, lane + 16, ... of the vector body, as the CPU's vector
/// lanes do, then add the 16 partials in lane order.
pub const lanes = storage.lanes;

comptime {
    if (lanes != 16) @compileError("the device row kernels assume 16 CPU lanes");
}

/// The CPU's order of a `lanes`-wide float32 @reduce(.Add), written out.
pub fn reduce_in_order(values: [lanes]f32) f32 {
    var total: f32 = -0.0;
    for (values) |v| total += v;
    return total;
}

const std = @import("std");

test "a 16-lane @reduce(.Add) adds the lanes in order, the order the device kernels reproduce" {
    var state: u32 = 99;
    for (0..20_000) |_| {
        var values: [lanes]f32 = undefined;
        for (&values) |*v| {
            state = state *% 1664525 +% 1013904223;
            // Mixed magnitudes, so that any other order changes the rounded sum.
            const exponent: u32 = 100 + (state >> 27);
            v.* = @bitCast((state & 0x8000_0000) | (exponent << 23) | (state & 0x7f_ffff));
        }
        const vector: @Vector(lanes, f32) = values;
        try std.testing.expectEqual(@as(u32, @bitCast(reduce_in_order(values))), @as(u32, @bitCast(@reduce(.Add, vector))));
    }
}
