//! How op kernels read and write tensors: float32, float16 and bfloat16 storage loaded into float32
//! lanes and stored back with one round to nearest even (numerics.zig's rule, F16C for float16
//! where the CPU has it). Every op family in zig/src/ops/ computes in float32 registers this way,
//! so a bfloat16 tensor is never widened to a float32 copy in memory.
//!
//! The element functions of a family are generic over the lane count `n`: the CPU runs them with
//! `n = lanes` and a scalar tail with `n = 1` (the same code, so the tail gives the same bits),
//! and a GPU kernel can run them with `n = 1`.

const std = @import("std");
const builtin = @import("builtin");
const numerics = @import("../numerics.zig");

pub const Dtype = numerics.Dtype;

/// CPU vector width in float32 lanes (two AVX2 registers, one AVX-512 register).
pub const lanes = 16;

pub fn F(comptime n: comptime_int) type {
    return @Vector(n, f32);
}

/// The alignment loads and stores assume: none on the CPU (a view may start anywhere), the element
/// size on a GPU, where device storage is always element-aligned (allocator blocks, element
/// offsets) and an access declared unaligned is split into single bytes.
const device = builtin.cpu.arch.isNvptx();
const align32 = if (device) 4 else 1;
const align16 = if (device) 2 else 1;

const hardware_f16 = builtin.cpu.arch == .x86_64 and
    std.Target.x86.featureSetHas(builtin.cpu.features, .f16c);

/// Whether ops compute on this storage dtype (fp8 tensors are cast first).
pub fn is_op_dtype(dtype: Dtype) bool {
    return dtype == .float32 or dtype == .float16 or dtype == .bfloat16;
}

/// The op dtype for an FFI code, or null for fp8 and unknown codes.
pub fn op_dtype(code: u32) ?Dtype {
    const dtype = Dtype.from_int(code) orelse return null;
    return if (is_op_dtype(dtype)) dtype else null;
}

/// Loads `n` elements at `index` (counted in elements of `dtype`) as float32.
pub inline fn load(comptime n: comptime_int, comptime dtype: Dtype, base: [*]const u8, index: u64) F(n) {
    switch (dtype) {
        .float32 => {
            const typed: [*]align(align32) const f32 = @ptrCast(@alignCast(base));
            return typed[index..][0..n].*;
        },
        .bfloat16 => {
            const typed: [*]align(align16) const u16 = @ptrCast(@alignCast(base));
            const bits: @Vector(n, u16) = typed[index..][0..n].*;
            const wide: @Vector(n, u32) = bits;
            return @bitCast(wide << @splat(16));
        },
        .float16 => {
            const typed: [*]align(align16) const u16 = @ptrCast(@alignCast(base));
            const bits: @Vector(n, u16) = typed[index..][0..n].*;
            if (hardware_f16) return @floatCast(@as(@Vector(n, f16), @bitCast(bits)));
            return @bitCast(numerics.f16_to_f32(n, @as(@Vector(n, u32), bits)));
        },
        else => @compileError("ops compute on float32, float16 and bfloat16 only"),
    }
}

/// Stores `n` float32 lanes at `index`, rounded to nearest even into `dtype` (NaN stays NaN).
pub inline fn store(comptime n: comptime_int, comptime dtype: Dtype, base: [*]u8, index: u64, value: F(n)) void {
    switch (dtype) {
        .float32 => {
            const typed: [*]align(align32) f32 = @ptrCast(@alignCast(base));
            typed[index..][0..n].* = value;
        },
        .bfloat16, .float16 => {
            const bits: @Vector(n, u32) = @bitCast(value);
            const narrow = if (dtype == .bfloat16)
                numerics.f32_to_bf16(n, bits)
            else if (hardware_f16)
                f32_to_f16_hardware(n, bits)
            else
                numerics.f32_to_f16(n, bits, null);
            const typed: [*]align(align16) u16 = @ptrCast(@alignCast(base));
            typed[index..][0..n].* = @as(@Vector(n, u16), @truncate(narrow));
        },
        else => @compileError("ops compute on float32, float16 and bfloat16 only"),
    }
}

/// F16C's conversion (round to nearest even, as numerics.zig) with NaN made the canonical quiet NaN
/// of the same sign, as numerics.f32_to_f16 does.
inline fn f32_to_f16_hardware(comptime n: comptime_int, bits: @Vector(n, u32)) @Vector(n, u32) {
    const values: @Vector(n, f32) = @bitCast(bits);
    const halves: @Vector(n, u16) = @bitCast(@as(@Vector(n, f16), @floatCast(values)));
    const is_nan = (bits & @as(@Vector(n, u32), @splat(0x7fff_ffff))) > @as(@Vector(n, u32), @splat(0x7f80_0000));
    const nan = ((bits >> @splat(16)) & @as(@Vector(n, u32), @splat(0x8000))) | @as(@Vector(n, u32), @splat(0x7e00));
    return @select(u32, is_nan, nan, @as(@Vector(n, u32), halves));
}

/// One float32 value at `index`.
pub inline fn load_one(comptime dtype: Dtype, base: [*]const u8, index: u64) f32 {
    return load(1, dtype, base, index)[0];
}

/// One float32 value stored at `index`, rounded into `dtype`.
pub inline fn store_one(comptime dtype: Dtype, base: [*]u8, index: u64, value: f32) void {
    store(1, dtype, base, index, @splat(value));
}

test "bfloat16 and float16 stores round to nearest even and loads widen exactly" {
    const wide = [_]f32{ 1.0, 1.00390625, 1.01171875, -3.5, std.math.inf(f32), 65520.0, 1e-8 };
    var narrow: [wide.len]u16 = undefined;
    var back: [wide.len]f32 = undefined;
    inline for (.{ Dtype.bfloat16, Dtype.float16 }) |dtype| {
        for (0..wide.len) |i| store(1, dtype, @ptrCast(&narrow), i, @splat(wide[i]));
        for (0..wide.len) |i| {
            const reference = numerics.to_f32(1, dtype, @splat(@as(u32, narrow[i])))[0];
            back[i] = load(1, dtype, @ptrCast(&narrow), i)[0];
            try std.testing.expectEqual(reference, @as(u32, @bitCast(back[i])));
            const expected = numerics.from_f32(1, dtype, @splat(@as(u32, @bitCast(wide[i]))), null, false)[0];
            try std.testing.expectEqual(expected, @as(u32, narrow[i]));
        }
    }
    // Vector and scalar paths give the same bits.
    var vector_out: [lanes]u16 = undefined;
    var scalar_out: [lanes]u16 = undefined;
    var source: [lanes]f32 = undefined;
    for (&source, 0..) |*v, i| v.* = @as(f32, @floatFromInt(i)) * 0.3337 - 2.1;
    store(lanes, .bfloat16, @ptrCast(&vector_out), 0, source);
    for (0..lanes) |i| store_one(.bfloat16, @ptrCast(&scalar_out), i, source[i]);
    try std.testing.expectEqualSlices(u16, &scalar_out, &vector_out);
}
