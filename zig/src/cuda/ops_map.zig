//! Device kernels of the elementwise and layout families: the activations and swiglu forward and
//! backward, the broadcast map-reduce engine (binary ops, their gradients, sum, mean, broadcast
//! copies) and the strided copy. Every kernel is grid-stride, one element (or one map target) per
//! thread, and calls the element functions of zig/src/ops/elementwise.zig with n = 1 and the
//! loads and stores of zig/src/ops/storage.zig, so a thread computes exactly what a CPU lane
//! computes: the same float32 operations in the same order (PTX's add.rn / mul.rn / div.rn are
//! never contracted), the same float64 sums in the same term order, the same rounding on store.
//!
//! A map target's sum runs in one thread in ascending term order, split into the CPU's chunks
//! (elementwise.reduce_chunks) and combined in chunk order, which is what makes its bits the
//! CPU's; the price is little parallelism for a full reduction of many terms.
//!
//! Kernel arguments too large for a scalar (the map's iteration space, the copy's strides) are
//! passed by value as `.param` structs, so a launch needs no device allocation and no host copy.

const ops = @import("map_ops");
const storage = ops.storage;
const elementwise = ops.elementwise;
const layout = ops.layout;
const Dtype = ops.numerics.Dtype;
const Activation = elementwise.Activation;
const MapOp = elementwise.MapOp;
const Layout = elementwise.Layout;
const operands_max = elementwise.operands_max;
const dims_max = elementwise.dims_max;

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

const MapArgs = struct {
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

inline fn map_targets(comptime op: MapOp, comptime dtype: Dtype, args: *const MapArgs, space: *const Layout, scale: f32, chunks: u32) void {
    const kept_count = space.kept_count();
    const reduced_count = space.reduced_count();
    const no_sum = reduced_count == 1 and space.reduced_ndim == 0;
    var j = global_index();
    while (j < kept_count) : (j += grid_stride()) {
        const kept = offsets_of(space.kept_ndim, &space.kept_shape, &space.kept_strides, j);
        if (no_sum) {
            // Without reduced dimensions: scale * f in float32, no accumulator (the CPU's
            // `elementwise`).
            var value = term(op, dtype, args, kept);
            if (scale != 1) value *= scale;
            storage.store(1, dtype, args.target, j, @splat(value));
            continue;
        }
        var total = partial_sum(op, dtype, args, space, kept, 0, reduced_count / chunks);
        var chunk: u64 = 1;
        while (chunk < chunks) : (chunk += 1) {
            total += partial_sum(op, dtype, args, space, kept, reduced_count * chunk / chunks, reduced_count * (chunk + 1) / chunks);
        }
        const wide_scale: f64 = scale;
        storage.store(1, dtype, args.target, j, @splat(@as(f32, @floatCast(total * wide_scale))));
    }
}

/// target[j] = scale * sum over r of f(x0, x1, x2) at (j, r) (elementwise.map_run on the device).
/// Flags bit i: operand i reads `scalar` everywhere. `chunks` is elementwise.reduce_chunks(space).
export fn mp_map_kernel(target: u64, x0: u64, x1: u64, x2: u64, space: Layout, scalar: f32, scale: f32, op: u32, dtype: u32, flags: u32, chunks: u32) callconv(.kernel) void {
    @setEvalBranchQuota(100_000);
    const args = MapArgs{ .target = bytes(target), .operands = .{ bytes(x0), bytes(x1), bytes(x2) }, .flags = flags, .scalar = scalar };
    switch (@as(Dtype, @fromBackingInt(@intCast(dtype)))) {
        inline .float32, .float16, .bfloat16 => |d| switch (@as(MapOp, @fromBackingInt(op))) {
            inline else => |o| map_targets(o, d, &args, &space, scale, chunks),
        },
        else => {},
    }
}

// ---- Strided copies: bits move unchanged. ----

inline fn copy_elements(comptime T: type, source: u64, target: u64, copy: *const layout.DeviceCopy) void {
    const from: [*]const T = @ptrFromInt(source);
    const to: [*]T = @ptrFromInt(target);
    var index = global_index();
    while (index < copy.count) : (index += grid_stride()) {
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
        to[t] = from[s];
    }
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
