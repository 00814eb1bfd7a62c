//! Device kernels of the elementwise and layout families: the activations and swiglu forward and
//! backward, the broadcast map-reduce engine (binary ops, their gradients, sum, mean, broadcast
//! copies) and the strided copy. Every kernel is grid-stride, one element (or one map target) per
//! thread, and calls the element functions of zig/src/ops/elementwise.zig with n = 1 and the
//! loads and stores of zig/src/ops/storage.zig, so a thread computes exactly what a CPU lane
//! computes: the same float32 operations in the same order (PTX's add.rn / mul.rn / div.rn are
//! never contracted), the same float64 sums in the same term order, the same rounding on store.
//!
//! One map target and one copied element are computed by zig/src/ops/map_device.zig, whose tests
//! compare them with the CPU engine bit for bit on the CPU. A map target's sum runs in one thread in ascending term order, split into the CPU's chunks
//! (elementwise.reduce_chunks) and combined in chunk order, which is what makes its bits the
//! CPU's; the price is little parallelism for a full reduction of many terms.
//!
//! Kernel arguments too large for a scalar (the map's iteration space, the copy's strides) are
//! passed by value as `.param` structs, so a launch needs no device allocation and no host copy.

const ops = @import("row_ops");
const storage = ops.storage;
const elementwise = ops.elementwise;
const layout = ops.layout;
const map_device = ops.map_device;
const Dtype = ops.numerics.Dtype;
const Activation = elementwise.Activation;
const MapOp = elementwise.MapOp;
const Layout = elementwise.Layout;

inline fn global_index() u64 {
    return @as(u64, @workGroupId(0)) * @workGroupSize(0) + @workItemId(0);
}

inline fn grid_stride() u64 {
    const blocks = asm ("mov.u32 %[r], %nctaid.x;"
        : [r] "=r" (-> u32),
    );
    return @as(u64, @workGroupSize(0)) * blocks;
}

inline fn bytes(address: u64) [*]u8 {
    return @ptrFromInt(address);
}

// ---- Activations and swiglu: contiguous, one element per thread. ----

/// out[i] = f(x[i]) (elementwise.activation_forward_run on the device).
export fn mp_activation_forward_kernel(x: u64, out: u64, count: u64, op: u32, dtype: u32) callconv(.kernel) void {
    @setEvalBranchQuota(100_000);
    switch (@as(Dtype, @fromBackingInt(@intCast(dtype)))) {
        inline .float32, .float16, .bfloat16 => |d| switch (@as(Activation, @fromBackingInt(op))) {
            inline else => |a| {
                var i = global_index();
                while (i < count) : (i += grid_stride()) {
                    const value = elementwise.activation_forward(a, 1, storage.load(1, d, bytes(x), i));
                    storage.store(1, d, bytes(out), i, value);
                }
            },
        },
        else => {},
    }
}

/// dx[i] = g[i] f'(saved[i]) (elementwise.activation_backward_run on the device).
export fn mp_activation_backward_kernel(saved: u64, g: u64, dx: u64, count: u64, op: u32, dtype: u32) callconv(.kernel) void {
    @setEvalBranchQuota(100_000);
    switch (@as(Dtype, @fromBackingInt(@intCast(dtype)))) {
        inline .float32, .float16, .bfloat16 => |d| switch (@as(Activation, @fromBackingInt(op))) {
            inline else => |a| {
                var i = global_index();
                while (i < count) : (i += grid_stride()) {
                    const s = storage.load(1, d, bytes(saved), i);
                    const grad = storage.load(1, d, bytes(g), i);
                    storage.store(1, d, bytes(dx), i, elementwise.activation_backward(a, 1, s, grad));
                }
            },
        },
        else => {},
    }
}

/// out[i] = silu(a[i]) * b[i].
export fn mp_swiglu_forward_kernel(a: u64, b: u64, out: u64, count: u64, dtype: u32) callconv(.kernel) void {
    @setEvalBranchQuota(100_000);
    switch (@as(Dtype, @fromBackingInt(@intCast(dtype)))) {
        inline .float32, .float16, .bfloat16 => |d| {
            var i = global_index();
            while (i < count) : (i += grid_stride()) {
                const y = elementwise.swiglu_forward(1, storage.load(1, d, bytes(a), i), storage.load(1, d, bytes(b), i));
                storage.store(1, d, bytes(out), i, y);
            }
        },
        else => {},
    }
}

/// da[i] = g b silu'(a), db[i] = g silu(a), in one pass.
export fn mp_swiglu_backward_kernel(a: u64, b: u64, g: u64, da: u64, db: u64, count: u64, dtype: u32) callconv(.kernel) void {
    @setEvalBranchQuota(100_000);
    switch (@as(Dtype, @fromBackingInt(@intCast(dtype)))) {
        inline .float32, .float16, .bfloat16 => |d| {
            var i = global_index();
            while (i < count) : (i += grid_stride()) {
                const av = storage.load(1, d, bytes(a), i);
                const bv = storage.load(1, d, bytes(b), i);
                const grads = elementwise.swiglu_backward(1, av, bv, storage.load(1, d, bytes(g), i));
                storage.store(1, d, bytes(da), i, grads[0]);
                storage.store(1, d, bytes(db), i, grads[1]);
            }
        },
        else => {},
    }
}

// ---- The broadcast map-reduce engine: one thread per target. ----

const MapArgs = map_device.MapArgs;

/// target[j] = scale * sum over r of f(x0, x1, x2) at (j, r) (elementwise.map_run on the device).
/// Flags bit i: operand i reads `scalar` everywhere. `chunks` is elementwise.reduce_chunks(space).
export fn mp_map_kernel(target: u64, x0: u64, x1: u64, x2: u64, space: Layout, scalar: f32, scale: f32, op: u32, dtype: u32, flags: u32, chunks: u32) callconv(.kernel) void {
    @setEvalBranchQuota(100_000);
    const args = MapArgs{ .target = bytes(target), .operands = .{ bytes(x0), bytes(x1), bytes(x2) }, .flags = flags, .scalar = scalar };
    const kept_count = space.kept_count();
    switch (@as(Dtype, @fromBackingInt(@intCast(dtype)))) {
        inline .float32, .float16, .bfloat16 => |d| switch (@as(MapOp, @fromBackingInt(op))) {
            inline else => |o| {
                var j = global_index();
                while (j < kept_count) : (j += grid_stride()) map_device.map_target(o, d, &args, &space, scale, chunks, j);
            },
        },
        else => {},
    }
}

// ---- Strided copies: bits move unchanged. ----

inline fn copy_elements(comptime T: type, source: u64, target: u64, copy: *const layout.DeviceCopy) void {
    var index = global_index();
    while (index < copy.count) : (index += grid_stride()) map_device.copy_element(T, @ptrFromInt(source), @ptrFromInt(target), copy, index);
}

/// Copies `copy.count` elements of `copy.element_bytes` (1, 2 or 4) bytes, walking the target's
/// index space row-major (layout.strided_copy on the device, after layout.simplify on the host).
export fn mp_strided_copy_kernel(source: u64, target: u64, copy: layout.DeviceCopy) callconv(.kernel) void {
    @setEvalBranchQuota(100_000);
    switch (copy.element_bytes) {
        1 => copy_elements(u8, source, target, &copy),
        2 => copy_elements(u16, source, target, &copy),
        4 => copy_elements(u32, source, target, &copy),
        else => {},
    }
}
