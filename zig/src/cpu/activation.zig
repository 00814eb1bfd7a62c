//! GELU (exact form, x * Phi(x)) forward and backward on float32 arrays with SIMD: the one
//! elementwise op whose TypeScript loop was a large share of a small transformer's step (an exp
//! and a polynomial per element). Phi uses the Abramowitz-Stegun 7.1.26 erf (|error| <= 1.5e-7),
//! the same formula as the TypeScript op (src/ops/elementwise.ts `erf`), and a vector exp good to
//! a few ulp, so native and TypeScript results differ by a few 1e-7 at most.

const std = @import("std");

const lanes = 16;
const V = @Vector(lanes, f32);

/// exp(x) for float32 vectors: x = n ln2 + r with |r| <= ln2 / 2, exp(r) by a degree-6 polynomial
/// (Taylor, relative error below 2e-7 on that range), scaled by 2^n through the exponent bits.
/// Inputs below -87 give 0 (no subnormals), above 88 give inf.
inline fn exp_vector(x: V) V {
    const clamped = @min(@max(x, @as(V, @splat(-87.0))), @as(V, @splat(88.7)));
    const n = @round(clamped * @as(V, @splat(1.4426950408889634)));
    const r = clamped - n * @as(V, @splat(0.693145751953125)) - n * @as(V, @splat(1.4286068203094172e-6));
    var p: V = @splat(1.0 / 720.0);
    p = p * r + @as(V, @splat(1.0 / 120.0));
    p = p * r + @as(V, @splat(1.0 / 24.0));
    p = p * r + @as(V, @splat(1.0 / 6.0));
    p = p * r + @as(V, @splat(0.5));
    p = p * r + @as(V, @splat(1.0));
    p = p * r + @as(V, @splat(1.0));
    const exponent: @Vector(lanes, i32) = @intFromFloat(n);
    const scale: V = @bitCast((exponent + @as(@Vector(lanes, i32), @splat(127))) << @splat(23));
    const result = p * scale;
    const low = x < @as(V, @splat(-87.0));
    const high = x > @as(V, @splat(88.7));
    const inf: V = @splat(std.math.inf(f32));
    return @select(f32, high, inf, @select(f32, low, @as(V, @splat(0)), result));
}

/// Phi(u) = 0.5 * (1 + erf(u / sqrt 2)).
inline fn normal_cdf(u: V) V {
    const x = u * @as(V, @splat(0.7071067811865476));
    const z = @abs(x);
    const t = @as(V, @splat(1.0)) / (@as(V, @splat(1.0)) + @as(V, @splat(0.3275911)) * z);
    var poly: V = @splat(1.061405429);
    poly = poly * t + @as(V, @splat(-1.453152027));
    poly = poly * t + @as(V, @splat(1.421413741));
    poly = poly * t + @as(V, @splat(-0.284496736));
    poly = poly * t + @as(V, @splat(0.254829592));
    poly = poly * t;
    const magnitude = @as(V, @splat(1.0)) - poly * exp_vector(-z * z);
    const erf = @select(f32, x < @as(V, @splat(0)), -magnitude, magnitude);
    return @as(V, @splat(0.5)) * (@as(V, @splat(1.0)) + erf);
}

inline fn load(source: []const f32, index: usize, count: usize) V {
    if (count == lanes) return source[index..][0..lanes].*;
    var buffer: [lanes]f32 = @splat(0);
    for (0..count) |i| buffer[i] = source[index + i];
    return buffer;
}

inline fn store(target: []f32, index: usize, count: usize, value: V) void {
    if (count == lanes) {
        target[index..][0..lanes].* = value;
        return;
    }
    const buffer: [lanes]f32 = value;
    for (0..count) |i| target[index + i] = buffer[i];
}

/// out = x * Phi(x) and cdf = Phi(x) (kept for the backward pass). NaN stays NaN.
pub fn gelu(x: []const f32, out: []f32, cdf: []f32) void {
    std.debug.assert(out.len == x.len and cdf.len == x.len);
    var i: usize = 0;
    while (i < x.len) : (i += lanes) {
        const count = @min(lanes, x.len - i);
        const u = load(x, i, count);
        const p = normal_cdf(u);
        store(cdf, i, count, p);
        store(out, i, count, u * p);
    }
}

/// d = g * (Phi(x) + x * phi(x)), phi the normal density.
pub fn gelu_backward(x: []const f32, cdf: []const f32, g: []const f32, d: []f32) void {
    std.debug.assert(cdf.len == x.len and g.len == x.len and d.len == x.len);
    var i: usize = 0;
    while (i < x.len) : (i += lanes) {
        const count = @min(lanes, x.len - i);
        const u = load(x, i, count);
        const density = @as(V, @splat(0.3989422804014327)) * exp_vector(@as(V, @splat(-0.5)) * u * u);
        store(d, i, count, load(g, i, count) * (load(cdf, i, count) + u * density));
    }
}

test "exp_vector is within 4 ulp-ish (3e-7 relative) of std.math.exp across the range" {
    var x: f32 = -87;
    while (x < 88) : (x += 0.0137) {
        const got = exp_vector(@splat(x))[0];
        const want = @exp(x);
        try std.testing.expect(@abs(got - want) <= 3e-7 * want);
    }
    try std.testing.expectEqual(@as(f32, 0), exp_vector(@splat(-100))[0]);
    try std.testing.expect(std.math.isInf(exp_vector(@splat(100))[0]));
}

test "gelu matches x * Phi(x) from a float64 erf within 3e-7 * (1 + |x|)" {
    var x: [37]f32 = undefined;
    for (&x, 0..) |*v, i| v.* = (@as(f32, @floatFromInt(i)) - 18) * 0.37;
    var out: [37]f32 = undefined;
    var cdf: [37]f32 = undefined;
    gelu(&x, &out, &cdf);
    for (x, out) |u, y| {
        const exact = 0.5 * @as(f64, u) * (1 + erf64(@as(f64, u) / std.math.sqrt2));
        try std.testing.expect(@abs(@as(f64, y) - exact) <= 3e-7 * (1 + @abs(@as(f64, u))));
    }
}

fn erf64(x: f64) f64 {
    // Series for |x| < 3, complementary continued fraction beyond (float64-accurate for the test).
    const z = @abs(x);
    var result: f64 = undefined;
    if (z < 3) {
        var term = z;
        var total = z;
        var n: f64 = 1;
        while (n < 80) : (n += 1) {
            term *= -z * z / n;
            total += term / (2 * n + 1);
        }
        result = 2.0 / @sqrt(@as(f64, std.math.pi)) * total;
    } else {
        var f = z;
        var n: f64 = 60;
        while (n >= 1) : (n -= 1) f = z + n / 2 / f;
        result = 1 - @exp(-z * z) / @sqrt(@as(f64, std.math.pi)) / f;
    }
    return if (x < 0) -result else result;
}
