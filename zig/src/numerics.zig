//! Scalar and vector number-format conversions shared by the CPU and GPU kernels.
//!
//! Every function works on `@Vector(n, u32)` lanes of raw bits, so the CPU SIMD loop, its scalar
//! tail (n = 1) and the PTX kernels (n = 1) run the same code and give the same bits. The rules are
//! those of shared/REFERENCE.md; the TypeScript reference in src/_numerics.ts mirrors them line for
//! line. Only integer arithmetic is used (plus exact int-to-float conversions), so no floating-point
//! mode (flush-to-zero, fast-math) can change a result.

const std = @import("std");

/// Storage formats, numbered as at the FFI boundary (src/_ffi.ts mirrors this table).
pub const Dtype = enum(u32) {
    float32 = 0,
    float16 = 1,
    bfloat16 = 2,
    float8_e4m3fn = 3,
    float8_e5m2 = 4,

    pub fn size_bytes(dtype: Dtype) u32 {
        return switch (dtype) {
            .float32 => 4,
            .float16, .bfloat16 => 2,
            .float8_e4m3fn, .float8_e5m2 => 1,
        };
    }

    pub fn from_int(value: u32) ?Dtype {
        return std.enums.fromInt(Dtype, value);
    }
};

/// Cast flags, a bit set (src/_ffi.ts mirrors it).
pub const flag_stochastic: u32 = 1;
pub const flag_saturate: u32 = 2;

pub fn V(comptime n: comptime_int) type {
    return @Vector(n, u32);
}

fn splat(comptime n: comptime_int, value: u32) V(n) {
    return @splat(value);
}

/// float32 bits -> bfloat16 bits, round to nearest even; NaN -> sign | 0x7FC0.
pub fn f32_to_bf16(comptime n: comptime_int, u: V(n)) V(n) {
    const abs = u & splat(n, 0x7fff_ffff);
    const is_nan = abs > splat(n, 0x7f80_0000);
    const lsb = (u >> @splat(16)) & splat(n, 1);
    const rounded = (u +% splat(n, 0x7fff) +% lsb) >> @splat(16);
    const nan = ((u >> @splat(16)) & splat(n, 0x8000)) | splat(n, 0x7fc0);
    return @select(u32, is_nan, nan, rounded);
}

/// bfloat16 bits -> float32 bits: exact, NaN payload kept.
pub fn bf16_to_f32(comptime n: comptime_int, h: V(n)) V(n) {
    return h << @splat(16);
}

/// Round `value >> shift` up in magnitude when the dropped bits exceed `threshold` (masked to the
/// same width), else truncate; lanes with shift >= 32 give 0.
fn shift_round_stochastic(comptime n: comptime_int, value: V(n), shift: V(n), threshold: V(n)) V(n) {
    const too_far = shift > splat(n, 31);
    const s = @min(shift, splat(n, 31));
    const mask = (splat(n, 1) << @intCast(s)) - splat(n, 1);
    const up = (value & mask) > (threshold & mask);
    const truncated = value >> @intCast(s);
    const rounded = truncated + @select(u32, up, splat(n, 1), splat(n, 0));
    return @select(u32, too_far, splat(n, 0), rounded);
}

/// A narrow IEEE-like format with `ebits` exponent bits, `mbits` mantissa bits and a subnormal range.
pub const Narrow = struct {
    ebits: u32,
    mbits: u32,

    inline fn bias(comptime f: Narrow) u32 {
        return (1 << (f.ebits - 1)) - 1;
    }
    inline fn drop(comptime f: Narrow) u32 {
        return 23 - f.mbits;
    }
    /// float32 bits of the format's smallest normal value.
    inline fn min_normal_bits(comptime f: Narrow) u32 {
        return (127 - f.bias() + 1) << 23;
    }
    /// The shift that turns a float32 significand (with its implicit bit) of biased exponent e into
    /// units of the format's smallest subnormal is `sub_shift_base - e`.
    inline fn sub_shift_base(comptime f: Narrow) u32 {
        return 151 - f.bias() - f.mbits;
    }
};

pub const format_f16 = Narrow{ .ebits = 5, .mbits = 10 };
pub const format_e4m3 = Narrow{ .ebits = 4, .mbits = 3 };
pub const format_e5m2 = Narrow{ .ebits = 5, .mbits = 2 };

/// Magnitude bits of |x| in format f, round to nearest even, for finite or infinite non-NaN input.
/// The result may exceed the format's largest finite pattern; callers clamp per their overflow rule.
fn narrow_abs_nearest(comptime n: comptime_int, comptime f: Narrow, a: V(n)) V(n) {
    const rebias = splat(n, (127 - f.bias()) << 23);
    const half_minus_one = splat(n, (1 << (f.drop() - 1)) - 1);
    const is_normal = a >= splat(n, f.min_normal_bits());
    // Normal inputs: a >= rebias, and a <= 0x7F800000 so the sum cannot wrap.
    const normal = ((a -% rebias) +% half_minus_one +% ((a >> @splat(f.drop())) & splat(n, 1))) >> @splat(f.drop());
    // Below the format's smallest normal, adding magic = 2^(24 - bias - mbits), whose float32 ulp is
    // the format's smallest subnormal, makes the float32 adder round |x| to a whole number of
    // subnormal units (nearest even), read off the low bits. The sum is a normal float32 and
    // float32 subnormal inputs round to 0 either way, so flush-to-zero modes cannot change it.
    const magic: f32 = comptime std.math.ldexp(@as(f32, 1.0), 24 - @as(i32, f.bias()) - @as(i32, f.mbits));
    const magnitude: @Vector(n, f32) = @bitCast(a & splat(n, 0x7fff_ffff));
    const sum: V(n) = @bitCast(@min(magnitude, @as(@Vector(n, f32), @splat(magic))) + @as(@Vector(n, f32), @splat(magic)));
    const subnormal = sum -% splat(n, @as(u32, @bitCast(magic)));
    return @select(u32, is_normal, normal, subnormal);
}

/// Magnitude bits of |x| in format f, stochastic rounding against `threshold` (a random u32).
fn narrow_abs_stochastic(comptime n: comptime_int, comptime f: Narrow, a: V(n), threshold: V(n)) V(n) {
    const rebias = splat(n, (127 - f.bias()) << 23);
    const is_normal = a >= splat(n, f.min_normal_bits());
    const normal = shift_round_stochastic(n, a -% rebias, splat(n, f.drop()), threshold);
    const exponent = a >> @splat(23);
    const has_implicit = exponent != splat(n, 0);
    const significand = (a & splat(n, 0x7f_ffff)) | @select(u32, has_implicit, splat(n, 0x80_0000), splat(n, 0));
    // float32 subnormals have the scale of exponent 1 without the implicit bit.
    const exponent_scale = @max(exponent, splat(n, 1));
    const shift = splat(n, f.sub_shift_base()) -% @min(exponent_scale, splat(n, f.sub_shift_base() - 1));
    const subnormal = shift_round_stochastic(n, significand, shift, threshold);
    return @select(u32, is_normal, normal, subnormal);
}

/// float32 bits -> float16 bits, nearest even (stochastic when `threshold` is given).
pub fn f32_to_f16(comptime n: comptime_int, u: V(n), threshold: ?V(n)) V(n) {
    const sign = (u >> @splat(16)) & splat(n, 0x8000);
    const a = u & splat(n, 0x7fff_ffff);
    const is_nan = a > splat(n, 0x7f80_0000);
    const beyond = a >= splat(n, 0x4780_0000); // >= 65536: inf under either rounding.
    const magnitude = if (threshold) |t|
        @select(u32, beyond, splat(n, 0x7c00), narrow_abs_stochastic(n, format_f16, a, t))
    else
        narrow_abs_nearest(n, format_f16, a);
    const finite_or_inf = sign | @min(magnitude, splat(n, 0x7c00));
    return @select(u32, is_nan, sign | splat(n, 0x7e00), finite_or_inf);
}

/// float32 bits -> bfloat16 bits with stochastic rounding: up in magnitude when the 16 dropped bits
/// exceed the low 16 bits of `threshold`. NaN and inf follow the nearest-even rule.
pub fn f32_to_bf16_stochastic(comptime n: comptime_int, u: V(n), threshold: V(n)) V(n) {
    const a = u & splat(n, 0x7fff_ffff);
    const special = a >= splat(n, 0x7f80_0000);
    const up = (u & splat(n, 0xffff)) > (threshold & splat(n, 0xffff));
    const rounded = (u >> @splat(16)) + @select(u32, up, splat(n, 1), splat(n, 0));
    return @select(u32, special, f32_to_bf16(n, u), rounded);
}

/// float16 bits -> float32 bits: exact; NaN payload kept with the quiet bit set.
pub fn f16_to_f32(comptime n: comptime_int, h: V(n)) V(n) {
    const sign = (h & splat(n, 0x8000)) << @splat(16);
    const exponent = (h >> @splat(10)) & splat(n, 0x1f);
    const mantissa = h & splat(n, 0x3ff);
    const normal = ((exponent + splat(n, 112)) << @splat(23)) | (mantissa << @splat(13));
    const mantissa_float: @Vector(n, f32) = @floatFromInt(mantissa);
    const subnormal: V(n) = @bitCast(mantissa_float * @as(@Vector(n, f32), @splat(0x1p-24)));
    const is_special = exponent == splat(n, 0x1f);
    const quiet = @select(u32, mantissa != splat(n, 0), splat(n, 0x40_0000), splat(n, 0));
    const special = splat(n, 0x7f80_0000) | (mantissa << @splat(13)) | quiet;
    const magnitude = @select(u32, exponent == splat(n, 0), subnormal, @select(u32, is_special, special, normal));
    return sign | magnitude;
}

/// float32 bits -> float8_e4m3fn bits. No infinity: overflow and inf give NaN (0x7F) unless
/// `saturate`, which clamps finite overflow and inf to 448 (0x7E). NaN stays NaN.
pub fn f32_to_e4m3(comptime n: comptime_int, u: V(n), saturate: bool) V(n) {
    const sign = (u >> @splat(24)) & splat(n, 0x80);
    const a = u & splat(n, 0x7fff_ffff);
    const is_nan = a > splat(n, 0x7f80_0000);
    const magnitude = narrow_abs_nearest(n, format_e4m3, @min(a, splat(n, 0x7f80_0000)));
    const overflow = if (saturate) splat(n, 0x7e) else splat(n, 0x7f);
    const clamped = @select(u32, magnitude > splat(n, 0x7e), overflow, magnitude);
    return sign | @select(u32, is_nan, splat(n, 0x7f), clamped);
}

/// float32 bits -> float8_e5m2 bits. Overflow gives inf (0x7C) unless `saturate` (57344, 0x7B).
pub fn f32_to_e5m2(comptime n: comptime_int, u: V(n), saturate: bool) V(n) {
    const sign = (u >> @splat(24)) & splat(n, 0x80);
    const a = u & splat(n, 0x7fff_ffff);
    const is_nan = a > splat(n, 0x7f80_0000);
    const magnitude = narrow_abs_nearest(n, format_e5m2, a);
    const limit = if (saturate) splat(n, 0x7b) else splat(n, 0x7c);
    return sign | @select(u32, is_nan, splat(n, 0x7f), @min(magnitude, limit));
}

/// float8_e4m3fn bits -> float32 bits: exact; NaN (S.1111.111) -> sign | 0x7FC00000.
pub fn e4m3_to_f32(comptime n: comptime_int, b: V(n)) V(n) {
    const sign = (b & splat(n, 0x80)) << @splat(24);
    const exponent = (b >> @splat(3)) & splat(n, 0xf);
    const mantissa = b & splat(n, 0x7);
    const normal = ((exponent + splat(n, 120)) << @splat(23)) | (mantissa << @splat(20));
    const mantissa_float: @Vector(n, f32) = @floatFromInt(mantissa);
    const subnormal: V(n) = @bitCast(mantissa_float * @as(@Vector(n, f32), @splat(0x1p-9)));
    const is_nan = (b & splat(n, 0x7f)) == splat(n, 0x7f);
    const magnitude = @select(u32, exponent == splat(n, 0), subnormal, normal);
    return sign | @select(u32, is_nan, splat(n, 0x7fc0_0000), magnitude);
}

/// float8_e5m2 bits -> float32 bits: e5m2 is the top byte of a float16.
pub fn e5m2_to_f32(comptime n: comptime_int, b: V(n)) V(n) {
    return f16_to_f32(n, b << @splat(8));
}

/// SquirrelNoise5, a counter-based 32-bit hash (the one llm.c uses for stochastic rounding).
pub fn squirrel5(comptime n: comptime_int, position: V(n), seed: V(n)) V(n) {
    var bits = position *% splat(n, 0xd2a8_0a3f);
    bits +%= seed;
    bits ^= bits >> @splat(9);
    bits +%= splat(n, 0xa884_f197);
    bits ^= bits >> @splat(11);
    bits *%= splat(n, 0x6c73_6f4b);
    bits ^= bits >> @splat(13);
    bits +%= splat(n, 0xb79f_3abb);
    bits ^= bits >> @splat(15);
    bits *%= splat(n, 0x1b56_c4f5);
    bits ^= bits >> @splat(17);
    return bits;
}

/// The rounding threshold for element `index` under `seed`: the hash of the low 32 index bits with a
/// seed that also mixes in the high 32 bits, so arrays past 2^32 elements get fresh thresholds.
pub fn threshold_at(comptime n: comptime_int, seed: u32, index: u64) V(n) {
    const index_low: u32 = @truncate(index);
    const index_high: u32 = @truncate(index >> 32);
    const seed_mixed = seed +% index_high *% 0x9e37_79b9;
    const lane_offsets: V(n) = comptime iota: {
        var offsets: [n]u32 = undefined;
        for (0..n) |lane| offsets[lane] = lane;
        break :iota offsets;
    };
    return squirrel5(n, splat(n, index_low) +% lane_offsets, splat(n, seed_mixed));
}

/// Any dtype's bits (zero-extended to u32) -> float32 bits.
pub fn to_f32(comptime n: comptime_int, comptime from: Dtype, bits: V(n)) V(n) {
    return switch (from) {
        .float32 => bits,
        .float16 => f16_to_f32(n, bits),
        .bfloat16 => bf16_to_f32(n, bits),
        .float8_e4m3fn => e4m3_to_f32(n, bits),
        .float8_e5m2 => e5m2_to_f32(n, bits),
    };
}

/// float32 bits -> any dtype's bits. Stochastic rounding applies to float16 and bfloat16 targets
/// (`threshold` non-null); `saturate` to fp8 targets.
pub fn from_f32(comptime n: comptime_int, comptime to: Dtype, u: V(n), threshold: ?V(n), saturate: bool) V(n) {
    return switch (to) {
        .float32 => u,
        .float16 => f32_to_f16(n, u, threshold),
        .bfloat16 => if (threshold) |t| f32_to_bf16_stochastic(n, u, t) else f32_to_bf16(n, u),
        .float8_e4m3fn => f32_to_e4m3(n, u, saturate),
        .float8_e5m2 => f32_to_e5m2(n, u, saturate),
    };
}

fn one(x: u32) V(1) {
    return @splat(x);
}

fn scalar(v: V(1)) u32 {
    return v[0];
}

test "bfloat16 nearest-even edge cases from REFERENCE.md" {
    const cases = [_][2]u32{
        .{ 0x8000_0000, 0x8000 }, .{ 0x7f80_0000, 0x7f80 }, .{ 0xff80_0000, 0xff80 },
        .{ 0x007f_ffff, 0x0080 }, .{ 0x7f7f_8000, 0x7f80 }, .{ 0x7f7f_7fff, 0x7f7f },
        .{ 0x7f80_0001, 0x7fc0 }, .{ 0x7fff_ffff, 0x7fc0 }, .{ 0xffc0_0000, 0xffc0 },
        .{ 0x3f80_8000, 0x3f80 }, .{ 0x3f81_8000, 0x3f82 },
    };
    for (cases) |case| try std.testing.expectEqual(case[1], scalar(f32_to_bf16(1, one(case[0]))));
}

test "float16 nearest-even edge cases from REFERENCE.md" {
    const cases = [_][2]u32{
        .{ 0x477f_effd, 0x7bff }, // 65519.99 -> 65504
        .{ 0x477f_f000, 0x7c00 }, // 65520 -> inf
        .{ 0x3300_0000, 0x0000 }, // 2^-25 ties to even (0)
        .{ 0x3300_0001, 0x0001 }, // next float up rounds to the smallest subnormal
        .{ 0x3340_0000, 0x0001 }, // 3 * 2^-26 rounds up to the smallest subnormal
        .{ 0x33c0_0000, 0x0002 }, // 1.5 * 2^-24 ties to even (2)
        .{ 0x8000_0000, 0x8000 },
        .{ 0x7fc0_0001, 0x7e00 },
        .{ 0xff80_0000, 0xfc00 },
        .{ 0x3880_0000, 0x0400 }, // 2^-14, the smallest normal
    };
    for (cases) |case| try std.testing.expectEqual(case[1], scalar(f32_to_f16(1, one(case[0]), null)));
}

test "fp8 overflow rules from REFERENCE.md" {
    // 464 ties to 448; just above 464 is NaN (0x7F) unless saturating.
    try std.testing.expectEqual(@as(u32, 0x7e), scalar(f32_to_e4m3(1, one(0x43e8_0000), false)));
    try std.testing.expectEqual(@as(u32, 0x7f), scalar(f32_to_e4m3(1, one(0x43e8_0001), false)));
    try std.testing.expectEqual(@as(u32, 0x7e), scalar(f32_to_e4m3(1, one(0x43e8_0001), true)));
    try std.testing.expectEqual(@as(u32, 0xfe), scalar(f32_to_e4m3(1, one(0xff80_0000), true)));
    try std.testing.expectEqual(@as(u32, 0x7f), scalar(f32_to_e4m3(1, one(0x7fc0_0000), true)));
    try std.testing.expectEqual(@as(u32, 0x7c), scalar(f32_to_e5m2(1, one(0x4770_0000), false)));
    try std.testing.expectEqual(@as(u32, 0x7b), scalar(f32_to_e5m2(1, one(0x4770_0000), true)));
    try std.testing.expectEqual(@as(u32, 0x7b), scalar(f32_to_e5m2(1, one(0x476f_ffff), false)));
    // Underflow: e4m3fn |x| <= 2^-10 -> 0, e5m2 |x| <= 2^-17 -> 0 (ties to even).
    try std.testing.expectEqual(@as(u32, 0x00), scalar(f32_to_e4m3(1, one(0x3a80_0000), false)));
    try std.testing.expectEqual(@as(u32, 0x01), scalar(f32_to_e4m3(1, one(0x3a80_0001), false)));
    try std.testing.expectEqual(@as(u32, 0x00), scalar(f32_to_e5m2(1, one(0x3700_0000), false)));
    try std.testing.expectEqual(@as(u32, 0x01), scalar(f32_to_e5m2(1, one(0x3700_0001), false)));
}

test "every fp8 pattern survives a round trip through float32" {
    for (0..256) |b| {
        const bits: u32 = @intCast(b);
        if (bits & 0x7f != 0x7f) try std.testing.expectEqual(bits, scalar(f32_to_e4m3(1, e4m3_to_f32(1, one(bits)), false)));
        if (bits & 0x7f <= 0x7c) try std.testing.expectEqual(bits, scalar(f32_to_e5m2(1, e5m2_to_f32(1, one(bits)), false)));
    }
}

test "every non-NaN float16 pattern survives a round trip through float32" {
    for (0..65536) |h| {
        const bits: u32 = @intCast(h);
        if (bits & 0x7fff > 0x7c00) continue;
        try std.testing.expectEqual(bits, scalar(f32_to_f16(1, f16_to_f32(1, one(bits)), null)));
    }
}

test "vector lanes equal scalar results" {
    var inputs: V(8) = .{ 0x3f80_8000, 0x007f_ffff, 0x7f80_0001, 0xc780_0000, 0x3300_0001, 0x0000_0001, 0x4770_0000, 0x43e8_0001 };
    const t = threshold_at(8, 42, 1000);
    const f16_nearest = f32_to_f16(8, inputs, null);
    const f16_sr = f32_to_f16(8, inputs, t);
    const bf16_sr = f32_to_bf16_stochastic(8, inputs, t);
    const inputs_array: [8]u32 = inputs;
    const f16_nearest_array: [8]u32 = f16_nearest;
    const f16_sr_array: [8]u32 = f16_sr;
    const bf16_sr_array: [8]u32 = bf16_sr;
    for (0..8) |lane| {
        const t1 = threshold_at(1, 42, 1000 + lane);
        const x = one(inputs_array[lane]);
        try std.testing.expectEqual(f16_nearest_array[lane], scalar(f32_to_f16(1, x, null)));
        try std.testing.expectEqual(f16_sr_array[lane], scalar(f32_to_f16(1, x, t1)));
        try std.testing.expectEqual(bf16_sr_array[lane], scalar(f32_to_bf16_stochastic(1, x, t1)));
    }
    inputs = inputs;
}
