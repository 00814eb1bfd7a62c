//! The matmul epilogue on the GPU (cuBLAS writes the float32 product; this kernel adds the bias and
//! rounds once into the op's dtype): the element rule of zig/src/ops/layout.zig `epilogue`, one
//! element per thread in a grid-stride loop, so the device writes the CPU's bits for the same
//! product.

const numerics = @import("row_ops").numerics;
const Dtype = numerics.Dtype;

inline fn global_index() u64 {
    return @as(u64, @workGroupId(0)) * @workGroupSize(0) + @workItemId(0);
}

inline fn grid_stride() u64 {
    const blocks = asm ("mov.u32 %[r], %nctaid.x;"
        : [r] "=r" (-> u32),
    );
    return @as(u64, @workGroupSize(0)) * blocks;
}

/// The float32 value of element `index` of a float32, float16 or bfloat16 array (exact).
inline fn load(dtype: Dtype, base: u64, index: u64) f32 {
    const bits: u32 = switch (dtype) {
        .float32 => @as([*]const u32, @ptrFromInt(base))[index],
        else => @as([*]const u16, @ptrFromInt(base))[index],
    };
    return @bitCast(switch (dtype) {
        inline .float32, .float16, .bfloat16 => |d| numerics.to_f32(1, d, @splat(bits))[0],
        else => unreachable,
    });
}

/// Stores `value` rounded to nearest even in `dtype`.
inline fn store(dtype: Dtype, base: u64, index: u64, value: f32) void {
    const bits: u32 = switch (dtype) {
        inline .float32, .float16, .bfloat16 => |d| numerics.from_f32(1, d, @splat(@bitCast(value)), null, false)[0],
        else => unreachable,
    };
    switch (dtype) {
        .float32 => @as([*]u32, @ptrFromInt(base))[index] = bits,
        else => @as([*]u16, @ptrFromInt(base))[index] = @truncate(bits),
    }
}

/// out[r, j] = round(product[r, j] + bias[j]) into `dtype` (float32, float16 or bfloat16) for
/// rows x cols elements; `bias` (a row of cols in `dtype`) may be 0 for none. `out` may be
/// `product` itself (float32 in place): every element is read before it is written by its thread.
export fn mp_matmul_epilogue_kernel(product: u64, bias: u64, out: u64, rows: u64, cols: u64, dtype: u32) callconv(.kernel) void {
    const out_dtype: Dtype = @fromBackingInt(@intCast(dtype));
    const count = rows * cols;
    const values: [*]const f32 = @ptrFromInt(product);
    var index = global_index();
    while (index < count) : (index += grid_stride()) {
        var value = values[index];
        if (bias != 0) value += load(out_dtype, bias, index % cols);
        store(out_dtype, out, index, value);
    }
}
