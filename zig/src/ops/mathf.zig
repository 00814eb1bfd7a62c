//! float32 log, sin and cos written in Zig, so the CPU and the GPU (PTX has no libm, and Zig's
//! nvptx backend has no libcall for @log, @sin or @cos) compute the same bits. The CPU used to call
//! the C library's logf and sincosf, whose bits change with the glibc version; these do not.
//!
//! log is musl's logf (fdlibm's algorithm, error below 1 ulp, as ported in Zig's compiler_rt).
//! sincos reduces the argument modulo pi/2 in float64 (Cody-Waite with a 25 + 53 bit pi/2 for
//! |x| < 2^28 pi/2, as musl's __rem_pio2f; beyond, an exact Payne-Hanek product with 128 bits of
//! 2/pi from the 24-bit table musl uses) and evaluates musl's float64 kernels __sindf and __cosdf
//! (error below 1 ulp). Plain float operations only (no fused multiply-add, never contracted by
//! Zig), so every target rounds each step the same way.

const std = @import("std");

/// Natural logarithm: log(+-0) = -inf, log(x < 0) = NaN, log(inf) = inf, NaN stays NaN.
pub fn log(input: f32) f32 {
    const ln2_hi: f32 = 6.9313812256e-01;
    const ln2_lo: f32 = 9.0580006145e-06;
    const lg1: f32 = 0xaaaaaa.0p-24;
    const lg2: f32 = 0xccce13.0p-25;
    const lg3: f32 = 0x91e9ee.0p-25;
    const lg4: f32 = 0xf89e26.0p-26;
    var x = input;
    var ix: u32 = @bitCast(x);
    var k: i32 = 0;
    if (ix < 0x0080_0000 or ix >> 31 != 0) {
        if (ix << 1 == 0) return -std.math.inf(f32);
        if (ix >> 31 != 0) return if (x != x) x else std.math.nan(f32);
        // Subnormal: scale into the normal range.
        k -= 25;
        x *= 0x1.0p25;
        ix = @bitCast(x);
    } else if (ix >= 0x7f80_0000) {
        return x;
    } else if (ix == 0x3f80_0000) {
        return 0;
    }
    // x into [sqrt(2) / 2, sqrt(2)].
    ix += 0x3f80_0000 - 0x3f35_04f3;
    k += @as(i32, @intCast(ix >> 23)) - 0x7f;
    ix = (ix & 0x007f_ffff) + 0x3f35_04f3;
    x = @bitCast(ix);
    const f = x - 1.0;
    const s = f / (2.0 + f);
    const z = s * s;
    const w = z * z;
    const t1 = w * (lg2 + w * lg4);
    const t2 = z * (lg1 + w * lg3);
    const r = t2 + t1;
    const hfsq = 0.5 * f * f;
    const dk: f32 = @floatFromInt(k);
    return s * (hfsq + r) + dk * ln2_lo - hfsq + f + dk * ln2_hi;
}

/// sin(x) on [-pi/4, pi/4] from a float64 argument (musl's __sindf).
fn sin_kernel(x: f64) f32 {
    const s1 = -0x15555554cbac77.0p-55;
    const s2 = 0x111110896efbb2.0p-59;
    const s3 = -0x1a00f9e2cae774.0p-65;
    const s4 = 0x16cd878c3b46a7.0p-71;
    const z = x * x;
    const w = z * z;
    const r = s3 + z * s4;
    const s = z * x;
    return @floatCast((x + s * (s1 + z * s2)) + s * w * r);
}

/// cos(x) on [-pi/4, pi/4] from a float64 argument (musl's __cosdf).
fn cos_kernel(x: f64) f32 {
    const c0 = -0x1ffffffd0c5e81.0p-54;
    const c1 = 0x155553e1053a42.0p-57;
    const c2 = -0x16c087e80f1e27.0p-62;
    const c3 = 0x199342e0ee5069.0p-68;
    const z = x * x;
    const w = z * z;
    const r = c2 + z * c3;
    return @floatCast(((1.0 + z * c0) + w * c1) + (w * z) * r);
}

/// 2/pi in 24-bit chunks (bit i after the binary point is bit 23 - (i - 1) % 24 of chunk
/// (i - 1) / 24): enough for the largest float32 exponent plus a 128-bit window.
const two_over_pi = [_]u32{
    0xA2F983, 0x6E4E44, 0x1529FC, 0x2757D1, 0xF534DD, 0xC0DB62,
    0x95993C, 0x439041, 0xFE5163, 0xABDEBB, 0xC561B7, 0x246E3A,
    0x424DD2, 0xE00649, 0x2EEA09, 0xD1921C,
};

/// 64 bits of 2/pi whose first is bit `first` (1-based) after the binary point.
fn two_over_pi_bits(first: u32) u64 {
    const chunk = (first - 1) / 24;
    const offset = (first - 1) % 24;
    var window: u128 = 0;
    for (0..4) |i| window = (window << 24) | two_over_pi[chunk + i];
    return @truncate(window >> @intCast(32 - offset));
}

/// x = n * pi/2 + r with |r| <= ~pi/4 (r in float64); returns n mod 4 and r.
fn reduce(x: f32) struct { u32, f64 } {
    const bits: u32 = @bitCast(x);
    const magnitude = bits & 0x7fff_ffff;
    if (magnitude < 0x4dc9_0fdb) {
        // |x| < 2^28 pi/2: musl's __rem_pio2f (25 + 53 bits of pi/2).
        const toint = 1.5 / std.math.floatEps(f64);
        const pio4 = 0x1.921fb6p-1;
        const invpio2 = 6.36619772367581382433e-01;
        const pio2_1 = 1.57079631090164184570e+00;
        const pio2_1t = 1.58932547735281966916e-08;
        const wide: f64 = x;
        var n = wide * invpio2 + toint - toint;
        var r = wide - n * pio2_1 - n * pio2_1t;
        if (r < -pio4) {
            n -= 1;
            r = wide - n * pio2_1 - n * pio2_1t;
        } else if (r > pio4) {
            n += 1;
            r = wide - n * pio2_1 - n * pio2_1t;
        }
        const quadrant: i32 = @intFromFloat(n);
        return .{ @bitCast(quadrant & 3), r };
    }
    // |x| = m * 2^e with m < 2^24 and e >= 5: the bits of 2/pi worth 4 or more times an integer
    // drop out mod 4, so x * 2/pi mod 4 = m * W * 2^-126 mod 4 for the 128 bits W of 2/pi from
    // bit e - 1 on (the truncation error is below 2^-102).
    const m: u128 = (magnitude & 0x007f_ffff) | 0x0080_0000;
    const e = (magnitude >> 23) - 150;
    const high: u128 = two_over_pi_bits(e - 1);
    const low: u128 = two_over_pi_bits(e - 1 + 64);
    const product = m *% low +% ((m *% high) << 64);
    var quadrant: u32 = @truncate(product >> 126);
    // The fraction as a signed 64-bit value in [-1/2, 1/2) of a quadrant.
    const fraction: u64 = @truncate(product >> 62);
    if (fraction >> 63 != 0) quadrant +%= 1;
    const signed: i64 = @bitCast(fraction);
    var r = @as(f64, @floatFromInt(signed)) * 0x1p-64 * (std.math.pi / 2.0);
    if (bits >> 31 != 0) {
        r = -r;
        quadrant = 0 -% quadrant;
    }
    return .{ quadrant & 3, r };
}

/// .{ sin(x), cos(x) }: NaN for inf and NaN, sin(+-0) = +-0.
pub fn sincos(x: f32) [2]f32 {
    const magnitude = @as(u32, @bitCast(x)) & 0x7fff_ffff;
    if (magnitude >= 0x7f80_0000) return .{ x - x, x - x };
    if (magnitude <= 0x3f49_0fda) {
        // |x| <= pi/4; below 2^-12, sin x = x and cos x = 1 in float32.
        if (magnitude < 0x3980_0000) return .{ x, 1.0 };
        return .{ sin_kernel(x), cos_kernel(x) };
    }
    const quadrant, const r = reduce(x);
    const s = sin_kernel(r);
    const c = cos_kernel(r);
    return switch (quadrant) {
        0 => .{ s, c },
        1 => .{ c, -s },
        2 => .{ -s, -c },
        else => .{ -c, s },
    };
}

const testing = std.testing;

fn ulp_distance(a: f32, b: f32) u32 {
    const x: i32 = @bitCast(a);
    const y: i32 = @bitCast(b);
    const ox: i64 = if (x < 0) -@as(i64, x & 0x7fff_ffff) else x;
    const oy: i64 = if (y < 0) -@as(i64, y & 0x7fff_ffff) else y;
    return @intCast(@abs(ox - oy));
}

test "log is within 1 ulp of the float64 logarithm and has the IEEE special values" {
    var state: u32 = 12345;
    for (0..200_000) |_| {
        state = state *% 1664525 +% 1013904223;
        const x: f32 = @bitCast(state & 0x7f7f_ffff);
        if (x == 0) continue;
        const want: f32 = @floatCast(@log(@as(f64, x)));
        try testing.expect(ulp_distance(log(x), want) <= 1);
    }
    try testing.expectEqual(-std.math.inf(f32), log(0));
    try testing.expectEqual(-std.math.inf(f32), log(-0.0));
    try testing.expect(std.math.isNan(log(-1)));
    try testing.expect(std.math.isNan(log(std.math.nan(f32))));
    try testing.expectEqual(std.math.inf(f32), log(std.math.inf(f32)));
    try testing.expectEqual(@as(f32, 0), log(1));
}

test "sincos is within 1 ulp of float64 sin and cos, also for huge arguments" {
    var state: u32 = 777;
    for (0..200_000) |i| {
        state = state *% 1664525 +% 1013904223;
        // Half the samples below 2^30, half anywhere in the finite range.
        const mask: u32 = if (i % 2 == 0) 0x4e7f_ffff else 0xff7f_ffff;
        const x: f32 = @bitCast(state & mask);
        if (std.math.isNan(x) or std.math.isInf(x)) continue;
        const got = sincos(x);
        const want_sin: f32 = @floatCast(@sin(@as(f64, x)));
        const want_cos: f32 = @floatCast(@cos(@as(f64, x)));
        try testing.expect(ulp_distance(got[0], want_sin) <= 1 or @abs(got[0] - want_sin) < 1e-9);
        try testing.expect(ulp_distance(got[1], want_cos) <= 1 or @abs(got[1] - want_cos) < 1e-9);
    }
    try testing.expect(std.math.isNan(sincos(std.math.inf(f32))[0]));
    try testing.expectEqual(@as(u32, 0x8000_0000), @as(u32, @bitCast(sincos(-0.0)[0])));
    try testing.expectEqual(@as(f32, 1), sincos(0)[1]);
}
