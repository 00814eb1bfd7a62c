//! Device kernels, compiled to PTX (nvptx64, sm_80) and embedded in the library. They call the same
//! numerics as the CPU (zig/src/numerics.zig), one element per thread in grid-stride loops, so a
//! cast or an unscale gives the CPU's bits.

const numerics = @import("numerics");
const Dtype = numerics.Dtype;

const TensorRow = extern struct {
    address: u64,
    count: u64,
    dtype: u32,
    reserved: u32,
};

inline fn global_index() u64 {
    return @as(u64, @workGroupId(0)) * @workGroupSize(0) + @workItemId(0);
}

inline fn grid_stride() u64 {
    return @as(u64, @workGroupSize(0)) * grid_dim_x();
}

inline fn grid_dim_x() u32 {
    return asm ("mov.u32 %[r], %nctaid.x;"
        : [r] "=r" (-> u32),
    );
}

inline fn load_bits(dtype: Dtype, base: u64, index: u64) u32 {
    return switch (dtype) {
        .float32 => @as([*]const u32, @ptrFromInt(base))[index],
        .float16, .bfloat16 => @as([*]const u16, @ptrFromInt(base))[index],
        .float8_e4m3fn, .float8_e5m2 => @as([*]const u8, @ptrFromInt(base))[index],
    };
}

inline fn store_bits(dtype: Dtype, base: u64, index: u64, bits: u32) void {
    switch (dtype) {
        .float32 => @as([*]u32, @ptrFromInt(base))[index] = bits,
        .float16, .bfloat16 => @as([*]u16, @ptrFromInt(base))[index] = @truncate(bits),
        .float8_e4m3fn, .float8_e5m2 => @as([*]u8, @ptrFromInt(base))[index] = @truncate(bits),
    }
}

fn to_f32_runtime(dtype: Dtype, bits: u32) u32 {
    return switch (dtype) {
        inline else => |d| numerics.to_f32(1, d, @splat(bits))[0],
    };
}

fn from_f32_runtime(dtype: Dtype, bits: u32, threshold: ?u32, saturate: bool) u32 {
    const t: ?numerics.V(1) = if (threshold) |x| @splat(x) else null;
    return switch (dtype) {
        inline else => |d| numerics.from_f32(1, d, @splat(bits), t, saturate)[0],
    };
}

/// Casts `count` elements; the same arguments and flags as mp_cast.
export fn mp_cast_kernel(source: u64, target: u64, count: u64, from: u32, to: u32, flags: u32, seed: u32) callconv(.kernel) void {
    const from_dtype: Dtype = @fromBackingInt(@intCast(from));
    const to_dtype: Dtype = @fromBackingInt(@intCast(to));
    const stochastic = flags & numerics.flag_stochastic != 0;
    const saturate = flags & numerics.flag_saturate != 0;
    var index = global_index();
    while (index < count) : (index += grid_stride()) {
        const wide = to_f32_runtime(from_dtype, load_bits(from_dtype, source, index));
        const threshold: ?u32 = if (stochastic) numerics.threshold_at(1, seed, index)[0] else null;
        store_bits(to_dtype, target, index, from_f32_runtime(to_dtype, wide, threshold, saturate));
    }
}

/// Sets `*flag` to 1 when `found` is true in any thread of the block: one store per block.
inline fn block_any_store(found: bool, flag: *u32) void {
    const any = asm volatile (
        \\{
        \\.reg .pred p;
        \\setp.ne.u32 p, %[x], 0;
        \\bar.red.or.pred p, 0, p;
        \\selp.u32 %[r], 1, 0, p;
        \\}
        : [r] "=r" (-> u32),
        : [x] "r" (@as(u32, @intFromBool(found))),
    );
    if (any != 0 and @workItemId(0) == 0) @atomicStore(u32, flag, 1, .monotonic);
}

/// Multi-tensor unscale and check: the table of rows lives in device memory, so any number of
/// tensors fits one launch. Rows are concatenated into one index space walked grid-stride.
export fn mp_unscale_check_kernel(table: u64, row_count: u64, total_count: u64, inv_scale: f32, found_inf: u64) callconv(.kernel) void {
    const rows: [*]const TensorRow = @ptrFromInt(table);
    var found = false;
    var row: u64 = 0;
    var row_start: u64 = 0;
    var index = global_index();
    // Every thread of the block runs the same number of iterations, so the barrier below is uniform.
    const iterations = (total_count + grid_stride() - 1) / grid_stride();
    var iteration: u64 = 0;
    while (iteration < iterations) : (iteration += 1) {
        if (index < total_count) {
            while (row < row_count and index >= row_start + rows[row].count) {
                row_start += rows[row].count;
                row += 1;
            }
            const dtype: Dtype = @fromBackingInt(@intCast(rows[row].dtype));
            const local = index - row_start;
            const wide = to_f32_runtime(dtype, load_bits(dtype, rows[row].address, local));
            found = found or (wide & 0x7f80_0000) == 0x7f80_0000;
            if (inv_scale != 1.0) {
                const scaled: u32 = @bitCast(@as(f32, @bitCast(wide)) * inv_scale);
                store_bits(dtype, rows[row].address, local, from_f32_runtime(dtype, scaled, null, false));
            }
        }
        index += grid_stride();
    }
    block_any_store(found, @ptrFromInt(found_inf));
}
