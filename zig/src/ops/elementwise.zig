//! Elementwise ops: binary arithmetic with NumPy broadcasting, sums over axes, the activations and
//! the fused gated MLP (swiglu), on float32, float16 and bfloat16 storage computed in float32
//! registers and rounded once on store (storage.zig).
//!
//! Broadcasting and reductions share one engine, `map`: target[j] = scale * sum over r of
//! f(x0, x1, x2) at (j, r), where j walks the kept dimensions of an iteration space (row-major,
//! the target is contiguous over them) and r walks the reduced dimensions. Every operand reads the
//! space through its own strides (0 where it broadcasts), so one kernel serves
//! - the binary forward ops (no reduced dimensions; f = x0 op x1),
//! - the binary backward ops (the gradient summed over an input's broadcast dimensions),
//! - sum and mean over axes, and the broadcast copy that is their backward.
//! Sums accumulate in float64, each target's terms in ascending r, so results are the same bits
//! on any thread count: threads split targets (or, for a handful of targets, fixed chunks of r
//! whose count depends only on the size and whose partials are combined in chunk order).
//!
//! Element functions are generic over the lane count `n`: the CPU runs `n = storage.lanes` and a
//! tail with `n = 1` through the same code (the same bits); a GPU kernel can call them with n = 1.

const std = @import("std");
const storage = @import("storage.zig");
const pool = @import("../cpu/pool.zig");
const dispatch = @import("../cpu/dispatch.zig");

const assert = std.debug.assert;
const Dtype = storage.Dtype;
const F = storage.F;
const lanes = storage.lanes;

pub const dims_max = 8;
pub const operands_max = 3;

/// Targets one tile accumulates at once (a float64 accumulator per target on the stack).
const tile_len: u32 = 256;
/// Reduced-space chunks when few targets sum many terms; a function of the size only.
const chunks_max: u32 = 16;
/// Terms per chunk at least: fixed (not the pool's threshold), since it decides the bits.
const chunk_len_min: u64 = 1 << 16;

// ---- Math shared by the activations (float32 lanes, a few ulp). ----

fn splat(comptime n: comptime_int, value: f32) F(n) {
    return @splat(value);
}

/// NaN inputs give NaN (the clamps below would otherwise turn NaN into a finite value).
inline fn keep_nan(comptime n: comptime_int, x: F(n), result: F(n)) F(n) {
    return @select(f32, x != x, x, result);
}

/// exp(x): x = k ln2 + r, |r| <= ln2 / 2, a degree-7 Taylor polynomial for exp(r) (relative error
/// below 1e-8 on that range) scaled by 2^k through the exponent bits. Below -87 gives 0, above
/// 88.7 gives inf.
pub inline fn exp(comptime n: comptime_int, x: F(n)) F(n) {
    const clamped = @min(@max(x, splat(n, -87.0)), splat(n, 88.7));
    const k = @round(clamped * splat(n, 1.4426950408889634));
    const r = clamped - k * splat(n, 0.693145751953125) - k * splat(n, 1.4286068203094172e-6);
    var p = splat(n, 1.0 / 5040.0);
    p = p * r + splat(n, 1.0 / 720.0);
    p = p * r + splat(n, 1.0 / 120.0);
    p = p * r + splat(n, 1.0 / 24.0);
    p = p * r + splat(n, 1.0 / 6.0);
    p = p * r + splat(n, 0.5);
    p = p * r + splat(n, 1.0);
    p = p * r + splat(n, 1.0);
    const exponent: @Vector(n, i32) = @intFromFloat(k);
    const power: F(n) = @bitCast((exponent + @as(@Vector(n, i32), @splat(127))) << @splat(23));
    const result = p * power;
    const low = x < splat(n, -87.0);
    const high = x > splat(n, 88.7);
    const bounded = @select(f32, high, splat(n, std.math.inf(f32)), @select(f32, low, splat(n, 0), result));
    return keep_nan(n, x, bounded);
}

/// exp(x) - 1 for x in [0, 18], accurate relative to the result near 0 (for tanh).
inline fn expm1_nonnegative(comptime n: comptime_int, x: F(n)) F(n) {
    const k = @round(x * splat(n, 1.4426950408889634));
    const r = x - k * splat(n, 0.693145751953125) - k * splat(n, 1.4286068203094172e-6);
    var p = splat(n, 1.0 / 5040.0);
    p = p * r + splat(n, 1.0 / 720.0);
    p = p * r + splat(n, 1.0 / 120.0);
    p = p * r + splat(n, 1.0 / 24.0);
    p = p * r + splat(n, 1.0 / 6.0);
    p = p * r + splat(n, 0.5);
    const q = r + r * r * p; // exp(r) - 1 without the cancellation of subtracting 1.
    const exponent: @Vector(n, i32) = @intFromFloat(k);
    const power: F(n) = @bitCast((exponent + @as(@Vector(n, i32), @splat(127))) << @splat(23));
    return power * q + (power - splat(n, 1.0));
}

/// tanh(x) = sign(x) e / (e + 2) with e = expm1(2 |x|); |x| >= 9 gives +-1 (exact in float32).
pub inline fn tanh(comptime n: comptime_int, x: F(n)) F(n) {
    const magnitude = @min(@abs(x), splat(n, 9.0));
    const e = expm1_nonnegative(n, magnitude + magnitude);
    const t = e / (e + splat(n, 2.0));
    return keep_nan(n, x, @select(f32, x < splat(n, 0), -t, t));
}

/// Natural log: x = m 2^e with m in [sqrt(1/2), sqrt(2)), log(m) = 2 atanh(s), s = (m-1)/(m+1),
/// by its series to s^9 (|s| <= 0.172). log(0) = -inf, log(x < 0) = NaN, log(inf) = inf.
pub inline fn log(comptime n: comptime_int, x: F(n)) F(n) {
    const U = @Vector(n, u32);
    const I = @Vector(n, i32);
    const subnormal = x < splat(n, std.math.floatMin(f32));
    const scaled = @select(f32, subnormal, x * splat(n, 8388608.0), x); // 2^23
    const bits: U = @bitCast(scaled);
    var e: I = @as(I, @intCast(bits >> @splat(23))) - @as(I, @splat(127));
    e -= @select(i32, subnormal, @as(I, @splat(23)), @as(I, @splat(0)));
    var m: F(n) = @bitCast((bits & @as(U, @splat(0x007f_ffff))) | @as(U, @splat(0x3f80_0000)));
    const high = m > splat(n, std.math.sqrt2);
    m = @select(f32, high, m * splat(n, 0.5), m);
    e += @select(i32, high, @as(I, @splat(1)), @as(I, @splat(0)));
    const f = m - splat(n, 1.0);
    const s = f / (f + splat(n, 2.0));
    const z = s * s;
    var p = splat(n, 1.0 / 9.0);
    p = p * z + splat(n, 1.0 / 7.0);
    p = p * z + splat(n, 1.0 / 5.0);
    p = p * z + splat(n, 1.0 / 3.0);
    const log_m = (s + s) + (s + s) * z * p;
    const ef: F(n) = @floatFromInt(e);
    var result = ef * splat(n, 0.693145751953125) + (log_m + ef * splat(n, 1.4286068203094172e-6));
    result = @select(f32, x == splat(n, 0), splat(n, -std.math.inf(f32)), result);
    result = @select(f32, x < splat(n, 0), splat(n, std.math.nan(f32)), result);
    result = @select(f32, x == splat(n, std.math.inf(f32)), x, result);
    return keep_nan(n, x, result);
}

/// erf(x) in float32, with no division: for |x| < 1, x S(x^2) with S a degree-5 fit of
/// erf(sqrt t) / sqrt t on [0, 1] (within 1.4 ulp); for 1 <= |x| < 4, 1 - exp(P(|x|) - x^2) with P a
/// degree-7 fit of log(erfc z) + z^2 on [1, 4], weighted by erfc (within 1.5e-7); beyond, erf
/// rounds to +-1. Both fits are least squares on Chebyshev nodes against mpmath; the Zig test
/// below checks every 0.0073 from -20 to 20 against a float64 erf.
pub inline fn erf(comptime n: comptime_int, x: F(n)) F(n) {
    const z = @abs(x);
    const t2 = z * z;
    const small_coefficients = [_]f32{ -0.0005654105916619301, 0.004923277534544468, -0.026716385036706924, 0.11280364543199539, -0.37612348794937134, 1.1283791065216064 };
    var series = splat(n, small_coefficients[0]);
    inline for (small_coefficients[1..]) |c| series = @mulAdd(F(n), series, t2, splat(n, c));
    const small = z * series;
    const clamped = @min(z, splat(n, 4.0));
    const large_coefficients = [_]f32{ -2.1790321625303477e-05, 0.0004426076775416732, -0.004211114253848791, 0.02522662840783596, -0.10844884812831879, 0.3668094277381897, -1.1295939683914185, 0.00019147849525325 };
    var tail = splat(n, large_coefficients[0]);
    inline for (large_coefficients[1..]) |c| tail = @mulAdd(F(n), tail, clamped, splat(n, c));
    const large = splat(n, 1.0) - exp(n, @mulAdd(F(n), -clamped, clamped, tail));
    const magnitude = @select(f32, z < splat(n, 1.0), small, large);
    return keep_nan(n, x, @select(f32, x < splat(n, 0), -magnitude, magnitude));
}

/// The standard normal CDF for exact GELU, with one exp and no division or branch blend:
/// Phi(x) = erfc(z) / 2 for x < 0, else 1 - erfc(z) / 2, where z = |x| / sqrt 2 and
/// erfc(z) = exp(Q(min(z, 4)) - z^2), Q a degree-10 least-squares fit (Chebyshev nodes, mpmath) of
/// log(erfc z) + z^2 on [0, 4]. Past z = 4 (|x| > 5.66) Q stays at Q(4): erfc below 1.6e-8 off by
/// at most its own size times log(z / 4). GELU and its gradient stay within 4e-7 (1 + |x|) of a
/// float64 reference (test/ops/elementwise_test.ts); -inf gives 0, +inf 1.
inline fn normal_cdf(comptime n: comptime_int, x: F(n)) F(n) {
    const z = @abs(x) * splat(n, sqrt_half);
    const clamped = @min(z, splat(n, 4.0));
    const coefficients = [_]f32{ -3.400320736091089e-07, 7.792098585923668e-06, -7.637167436769232e-05, 0.00040229709702543914, -0.001038477523252368, -0.0008100588456727564, 0.02002672478556633, -0.10322017967700958, 0.36349329352378845, -1.1283903121948242, 1.7997297163674375e-07 };
    var q = splat(n, coefficients[0]);
    inline for (coefficients[1..]) |c| q = @mulAdd(F(n), q, clamped, splat(n, c));
    const half_tail = splat(n, 0.5) * exp(n, @mulAdd(F(n), -z, z, q));
    return @select(f32, x < splat(n, 0), half_tail, splat(n, 1.0) - half_tail);
}

/// Unary ops. `saves_output` says whether the backward reads the output (y) or the input (x).
pub const Activation = enum(u32) {
    relu = 0,
    tanh = 1,
    silu = 2,
    exp = 3,
    log = 4,
    gelu = 5,
    gelu_tanh = 6,
    erf = 7,

    pub fn saves_output(self: Activation) bool {
        return self == .tanh or self == .exp;
    }
};

const sqrt_half: f32 = 0.7071067811865476;
const inv_sqrt_2pi: f32 = 0.3989422804014327;
const two_over_sqrt_pi: f32 = 1.1283791670955126;
const gelu_tanh_c: f32 = 0.7978845608028654; // sqrt(2 / pi)
const gelu_tanh_cubic: f32 = 0.044715;

inline fn sigmoid(comptime n: comptime_int, x: F(n)) F(n) {
    return splat(n, 1.0) / (splat(n, 1.0) + exp(n, -x));
}

pub inline fn activation_forward(comptime op: Activation, comptime n: comptime_int, x: F(n)) F(n) {
    return switch (op) {
        // x <= 0 is false for NaN, so NaN passes through (loss scaling must see it).
        .relu => @select(f32, x <= splat(n, 0), splat(n, 0), x),
        .tanh => tanh(n, x),
        .silu => x / (splat(n, 1.0) + exp(n, -x)),
        .exp => exp(n, x),
        .log => log(n, x),
        .gelu => x * normal_cdf(n, x),
        .gelu_tanh => blk: {
            const inner = splat(n, gelu_tanh_c) * (x + splat(n, gelu_tanh_cubic) * x * x * x);
            break :blk splat(n, 0.5) * x * (splat(n, 1.0) + tanh(n, inner));
        },
        .erf => erf(n, x),
    };
}

/// dx = g * f'(x), from `saved` (y for ops that save their output, else x).
pub inline fn activation_backward(comptime op: Activation, comptime n: comptime_int, saved: F(n), g: F(n)) F(n) {
    const one = splat(n, 1.0);
    return switch (op) {
        .relu => @select(f32, saved > splat(n, 0), g, splat(n, 0)),
        .tanh => g * (one - saved * saved),
        .silu => blk: {
            const s = sigmoid(n, saved);
            break :blk g * s * (one + saved * (one - s));
        },
        .exp => g * saved,
        .log => g / saved,
        .gelu => blk: {
            const density = splat(n, inv_sqrt_2pi) * exp(n, splat(n, -0.5) * saved * saved);
            break :blk g * (normal_cdf(n, saved) + saved * density);
        },
        .gelu_tanh => blk: {
            const u = saved;
            const t = tanh(n, splat(n, gelu_tanh_c) * (u + splat(n, gelu_tanh_cubic) * u * u * u));
            const inner_grad = splat(n, gelu_tanh_c) * (one + splat(n, 3.0 * gelu_tanh_cubic) * u * u);
            break :blk g * (splat(n, 0.5) * (one + t) + splat(n, 0.5) * u * (one - t * t) * inner_grad);
        },
        .erf => g * splat(n, two_over_sqrt_pi) * exp(n, -(saved * saved)),
    };
}

/// swiglu(a, b) = silu(a) * b.
pub inline fn swiglu_forward(comptime n: comptime_int, a: F(n), b: F(n)) F(n) {
    return a / (splat(n, 1.0) + exp(n, -a)) * b;
}

/// da = g b silu'(a), db = g silu(a).
pub inline fn swiglu_backward(comptime n: comptime_int, a: F(n), b: F(n), g: F(n)) [2]F(n) {
    const one = splat(n, 1.0);
    const s = sigmoid(n, a);
    return .{ g * b * (s * (one + a * (one - s))), g * (a * s) };
}

// ---- Contiguous unary and swiglu kernels. ----

pub const Unary = struct {
    source: [*]const u8,
    second: [*]const u8, // The gradient for backward passes; unused in forward.
    target: [*]u8,
    count: u64,
};

/// out[i] = f(x[i]) over `count` contiguous elements.
pub fn activation_forward_run(comptime op: Activation, comptime dtype: Dtype, args: *const Unary) void {
    assert(args.count > 0);
    run_pass(.activation_forward, @backingInt(op), dtype, args, args.count);
}

/// dx[i] = g[i] f'(saved[i]) over `count` contiguous elements (source: saved, second: g).
pub fn activation_backward_run(comptime op: Activation, comptime dtype: Dtype, args: *const Unary) void {
    assert(args.count > 0);
    run_pass(.activation_backward, @backingInt(op), dtype, args, args.count);
}

pub const Swiglu = struct {
    a: [*]const u8,
    b: [*]const u8,
    g: [*]const u8, // Backward only.
    out: [*]u8, // Forward: the output; backward: da.
    out_b: [*]u8, // Backward only: db.
    count: u64,
};

pub fn swiglu_forward_run(comptime dtype: Dtype, args: *const Swiglu) void {
    assert(args.count > 0);
    run_pass(.swiglu_forward, 0, dtype, args, args.count);
}

pub fn swiglu_backward_run(comptime dtype: Dtype, args: *const Swiglu) void {
    assert(args.count > 0);
    assert(args.out != args.out_b);
    run_pass(.swiglu_backward, 0, dtype, args, args.count);
}

/// The element loops of unary_range_c.
pub const Pass = enum(u32) { activation_forward, activation_backward, swiglu_forward, swiglu_backward };

fn Loops(comptime op: Activation, comptime dtype: Dtype) type {
    return struct {
        fn activation_forward_range(a: *const Unary, begin: u64, end: u64) void {
            var i = begin;
            while (i + lanes <= end) : (i += lanes) {
                storage.store(lanes, dtype, a.target, i, activation_forward(op, lanes, storage.load(lanes, dtype, a.source, i)));
            }
            while (i < end) : (i += 1) {
                storage.store(1, dtype, a.target, i, activation_forward(op, 1, storage.load(1, dtype, a.source, i)));
            }
        }

        inline fn activation_backward_step(comptime n: comptime_int, a: *const Unary, i: u64) void {
            const saved = storage.load(n, dtype, a.source, i);
            const g = storage.load(n, dtype, a.second, i);
            storage.store(n, dtype, a.target, i, activation_backward(op, n, saved, g));
        }

        fn activation_backward_range(a: *const Unary, begin: u64, end: u64) void {
            var i = begin;
            while (i + lanes <= end) : (i += lanes) activation_backward_step(lanes, a, i);
            while (i < end) : (i += 1) activation_backward_step(1, a, i);
        }

        inline fn swiglu_forward_step(comptime n: comptime_int, s: *const Swiglu, i: u64) void {
            const y = swiglu_forward(n, storage.load(n, dtype, s.a, i), storage.load(n, dtype, s.b, i));
            storage.store(n, dtype, s.out, i, y);
        }

        fn swiglu_forward_range(s: *const Swiglu, begin: u64, end: u64) void {
            var i = begin;
            while (i + lanes <= end) : (i += lanes) swiglu_forward_step(lanes, s, i);
            while (i < end) : (i += 1) swiglu_forward_step(1, s, i);
        }

        inline fn swiglu_backward_step(comptime n: comptime_int, s: *const Swiglu, i: u64) void {
            const a = storage.load(n, dtype, s.a, i);
            const b = storage.load(n, dtype, s.b, i);
            const grads = swiglu_backward(n, a, b, storage.load(n, dtype, s.g, i));
            storage.store(n, dtype, s.out, i, grads[0]);
            storage.store(n, dtype, s.out_b, i, grads[1]);
        }

        fn swiglu_backward_range(s: *const Swiglu, begin: u64, end: u64) void {
            var i = begin;
            while (i + lanes <= end) : (i += lanes) swiglu_backward_step(lanes, s, i);
            while (i < end) : (i += 1) swiglu_backward_step(1, s, i);
        }
    };
}

/// Elements [begin, end) of one activation or swiglu pass (`args`: the pass's Unary or Swiglu),
/// as a C function: zig/src/wide.zig exports its x86-64-v4 compilations, which run these
/// compute-bound loops (the erf, exp and tanh polynomials) on zmm registers, about 1.5 times as
/// fast. The values are the same on every path, bit for bit (the same operations in the same order,
/// no contraction into fused multiply-adds) but for a NaN's sign: where an operation meets two NaN
/// operands x86 returns the first, and the compilations order some operands differently.
pub fn unary_range_c(pass: u32, op: u32, dtype: u32, args: *const anyopaque, begin: u64, end: u64) callconv(.c) void {
    const d: Dtype = @fromBackingInt(@intCast(dtype));
    switch (@as(Pass, @fromBackingInt(@intCast(pass)))) {
        inline .activation_forward, .activation_backward => |p| switch (@as(Activation, @fromBackingInt(@intCast(op)))) {
            inline else => |a| switch (d) {
                inline .float32, .float16, .bfloat16 => |t| {
                    const unary: *const Unary = @ptrCast(@alignCast(args));
                    if (p == .activation_forward) Loops(a, t).activation_forward_range(unary, begin, end) else Loops(a, t).activation_backward_range(unary, begin, end);
                },
                else => unreachable,
            },
        },
        inline .swiglu_forward, .swiglu_backward => |p| switch (d) {
            inline .float32, .float16, .bfloat16 => |t| {
                const swiglu: *const Swiglu = @ptrCast(@alignCast(args));
                if (p == .swiglu_forward) Loops(.silu, t).swiglu_forward_range(swiglu, begin, end) else Loops(.silu, t).swiglu_backward_range(swiglu, begin, end);
            },
            else => unreachable,
        },
    }
}

const PassCall = struct {
    pass: u32,
    op: u32,
    dtype: u32,
    args: *const anyopaque,
    range: *const @TypeOf(unary_range_c),

    fn run(call: *const PassCall, begin: u64, end: u64) void {
        call.range(call.pass, call.op, call.dtype, call.args, begin, end);
    }
};

/// Runs `count` elements of a pass over the thread pool, on the dispatch path's compilation.
fn run_pass(pass: Pass, op: u32, dtype: Dtype, args: *const anyopaque, count: u64) void {
    const call = PassCall{
        .pass = @backingInt(pass),
        .op = op,
        .dtype = @backingInt(dtype),
        .args = args,
        .range = dispatch.pick(*const @TypeOf(unary_range_c), "unary_range", &unary_range_c),
    };
    pool.parallel_for(count, &call, PassCall.run);
}

// ---- The broadcast map-reduce engine. ----

/// f(x0, x1, x2) of the engine. `div_grad` is the divisor's gradient of a quotient before its sign:
/// (g a) / (b b) (the caller passes scale -1).
pub const MapOp = enum(u32) {
    copy = 0,
    add = 1,
    sub = 2,
    mul = 3,
    div = 4,
    div_grad = 5,

    pub fn arity(self: MapOp) u32 {
        return switch (self) {
            .copy => 1,
            .div_grad => 3,
            else => 2,
        };
    }
};

pub inline fn map_apply(comptime op: MapOp, comptime n: comptime_int, x0: F(n), x1: F(n), x2: F(n)) F(n) {
    return switch (op) {
        .copy => x0,
        .add => x0 + x1,
        .sub => x0 - x1,
        .mul => x0 * x1,
        .div => x0 / x1,
        .div_grad => (x0 * x1) / (x2 * x2),
    };
}

/// The iteration space as it crosses the FFI (66 + 3 u64): dimension counts, the kept and the
/// reduced dimensions' extents, each operand's strides in elements over them (0 where it
/// broadcasts), and each operand's element count (to check that every read is in bounds).
pub const Layout = extern struct {
    kept_ndim: u64,
    reduced_ndim: u64,
    kept_shape: [dims_max]u64,
    reduced_shape: [dims_max]u64,
    kept_strides: [operands_max][dims_max]u64,
    reduced_strides: [operands_max][dims_max]u64,
    operand_counts: [operands_max]u64,

    pub fn kept_count(self: *const Layout) u64 {
        var count: u64 = 1;
        for (self.kept_shape[0..self.kept_ndim]) |d| count *= d;
        return count;
    }

    pub fn reduced_count(self: *const Layout) u64 {
        var count: u64 = 1;
        for (self.reduced_shape[0..self.reduced_ndim]) |d| count *= d;
        return count;
    }

    /// Whether the dimensions fit and every operand `i` with `reads[i]` is read only inside its
    /// storage (constant operands read no memory).
    pub fn valid(self: *const Layout, reads: [operands_max]bool) bool {
        if (self.kept_ndim < 1 or self.kept_ndim > dims_max or self.reduced_ndim > dims_max) return false;
        var total: u64 = 1;
        for (self.kept_shape[0..self.kept_ndim]) |d| {
            if (d == 0 or d > 1 << 40) return false;
            total = std.math.mul(u64, total, d) catch return false;
        }
        for (self.reduced_shape[0..self.reduced_ndim]) |d| {
            if (d == 0 or d > 1 << 40) return false;
            total = std.math.mul(u64, total, d) catch return false;
        }
        if (total > 1 << 48) return false;
        for (0..operands_max) |i| {
            if (!reads[i]) continue;
            var last: u64 = 0;
            for (0..self.kept_ndim) |d| {
                last = std.math.add(u64, last, std.math.mul(u64, self.kept_shape[d] - 1, self.kept_strides[i][d]) catch return false) catch return false;
            }
            for (0..self.reduced_ndim) |d| {
                last = std.math.add(u64, last, std.math.mul(u64, self.reduced_shape[d] - 1, self.reduced_strides[i][d]) catch return false) catch return false;
            }
            if (last >= self.operand_counts[i]) return false;
        }
        return true;
    }
};

comptime {
    // src/backend/cpu/elementwise.ts packs exactly this many u64 values.
    assert(@sizeOf(Layout) == (2 + 2 * dims_max + 2 * operands_max * dims_max + operands_max) * 8);
}

pub const Map = struct {
    layout: *const Layout,
    target: [*]u8,
    operands: [operands_max][*]const u8,
    /// Operand i reads `scalar` everywhere instead of memory (a number operand: add(x, 2)).
    constant: [operands_max]bool,
    scalar: f32,
    scale: f32,
};

/// Operand offsets of kept index `kept` (row-major over the kept dimensions) or reduced index.
fn offsets_of(shape: []const u64, strides: *const [operands_max][dims_max]u64, index: u64) [operands_max]u64 {
    var result: [operands_max]u64 = @splat(0);
    var rest = index;
    var d = shape.len;
    while (d > 0) {
        d -= 1;
        const coordinate = rest % shape[d];
        rest /= shape[d];
        for (0..operands_max) |i| result[i] += coordinate * strides[i][d];
    }
    assert(rest == 0);
    return result;
}

/// The operand offsets of reduced index r and its odometer over the reduced dimensions, stepped
/// one r at a time.
const Walk = struct {
    reduced: [operands_max]u64,
    counter: [dims_max]u64,

    fn start(layout: *const Layout, r: u64) Walk {
        var walk = Walk{ .reduced = @splat(0), .counter = undefined };
        var rest = r;
        var d: usize = layout.reduced_ndim;
        while (d > 0) {
            d -= 1;
            walk.counter[d] = rest % layout.reduced_shape[d];
            rest /= layout.reduced_shape[d];
            for (0..operands_max) |i| walk.reduced[i] += walk.counter[d] * layout.reduced_strides[i][d];
        }
        assert(rest == 0);
        return walk;
    }

    inline fn base(walk: *const Walk, kept_base: [operands_max]u64) [operands_max]u64 {
        var result: [operands_max]u64 = undefined;
        for (0..operands_max) |i| result[i] = kept_base[i] + walk.reduced[i];
        return result;
    }

    inline fn step(walk: *Walk, layout: *const Layout) void {
        var d: usize = layout.reduced_ndim;
        while (d > 0) {
            d -= 1;
            walk.counter[d] += 1;
            for (0..operands_max) |i| walk.reduced[i] += layout.reduced_strides[i][d];
            if (walk.counter[d] < layout.reduced_shape[d]) break;
            for (0..operands_max) |i| walk.reduced[i] -= walk.counter[d] * layout.reduced_strides[i][d];
            walk.counter[d] = 0;
        }
    }
};

fn Engine(comptime op: MapOp, comptime dtype: Dtype) type {
    return struct {
        const Self = @This();
        const arity = op.arity();

        state: *const MapState,

        // The loops read the call's Map through a local copy (`map`): through the shared state the
        // compiler must reload its fields after every store to the target, which may alias them.
        inline fn operand(map: *const Map, comptime n: comptime_int, comptime i: usize, index: u64, stride: u64) F(n) {
            if (i >= arity) return splat(n, 0);
            if (map.constant[i]) return splat(n, map.scalar);
            if (n == 1 or stride == 0) return @splat(storage.load_one(dtype, map.operands[i], index));
            return storage.load(n, dtype, map.operands[i], index);
        }

        inline fn term(map: *const Map, comptime n: comptime_int, base: [operands_max]u64, k: u64, inner: [operands_max]u64) F(n) {
            return map_apply(
                op,
                n,
                operand(map, n, 0, base[0] + k * inner[0], inner[0]),
                operand(map, n, 1, base[1] + k * inner[1], inner[1]),
                operand(map, n, 2, base[2] + k * inner[2], inner[2]),
            );
        }

        /// Sums terms r in [r_begin, r_end) for `len` targets starting at kept index `first`
        /// (within one run of the innermost kept dimension) into `sums`.
        fn accumulate(self: *const Self, first: u64, len: u32, r_begin: u64, r_end: u64, sums: *[tile_len]f64) void {
            assert(len >= 1 and len <= tile_len and r_begin < r_end);
            const map = self.state.map.*;
            const layout = map.layout;
            const kept_ndim = layout.kept_ndim;
            const kept_base = offsets_of(layout.kept_shape[0..kept_ndim], &layout.kept_strides, first);
            var inner: [operands_max]u64 = undefined;
            var vector = true;
            for (0..operands_max) |i| {
                inner[i] = layout.kept_strides[i][kept_ndim - 1];
                if (i < arity and !self.state.map.constant[i] and inner[i] > 1) vector = false;
            }
            // Each target's terms in order of r, in float64. Over contiguous targets the loops run
            // over r innermost, a block of targets at a time, so the running sums stay in
            // registers (a target's order of additions does not depend on the blocking).
            var k: u32 = 0;
            if (vector) {
                const V64 = @Vector(lanes, f64);
                while (k + 4 * lanes <= len) : (k += 4 * lanes) {
                    var walk = Walk.start(layout, r_begin);
                    var totals: [4]V64 = undefined;
                    var r = r_begin;
                    while (r < r_end) : (r += 1) {
                        const base = walk.base(kept_base);
                        inline for (0..4) |q| {
                            const x: V64 = term(&map, lanes, base, k + q * lanes, inner);
                            totals[q] = if (r == r_begin) x else totals[q] + x;
                        }
                        walk.step(layout);
                    }
                    inline for (0..4) |q| sums[k + q * lanes ..][0..lanes].* = totals[q];
                }
                while (k + 2 * lanes <= len) : (k += 2 * lanes) {
                    var walk = Walk.start(layout, r_begin);
                    var first_half: V64 = undefined;
                    var second_half: V64 = undefined;
                    var r = r_begin;
                    while (r < r_end) : (r += 1) {
                        const base = walk.base(kept_base);
                        const x: V64 = term(&map, lanes, base, k, inner);
                        const y: V64 = term(&map, lanes, base, k + lanes, inner);
                        first_half = if (r == r_begin) x else first_half + x;
                        second_half = if (r == r_begin) y else second_half + y;
                        walk.step(layout);
                    }
                    sums[k..][0..lanes].* = first_half;
                    sums[k + lanes ..][0..lanes].* = second_half;
                }
                while (k + lanes <= len) : (k += lanes) {
                    var walk = Walk.start(layout, r_begin);
                    var total: V64 = undefined;
                    var r = r_begin;
                    while (r < r_end) : (r += 1) {
                        const x: V64 = term(&map, lanes, walk.base(kept_base), k, inner);
                        total = if (r == r_begin) x else total + x;
                        walk.step(layout);
                    }
                    sums[k..][0..lanes].* = total;
                }
            }
            if (k == len) return;
            // The rest (a tail, or targets that are not contiguous): r outer, so the targets'
            // independent sums interleave instead of one long dependent chain at a time.
            var walk = Walk.start(layout, r_begin);
            var r = r_begin;
            while (r < r_end) : (r += 1) {
                const base = walk.base(kept_base);
                for (k..len) |j| {
                    const x: f64 = term(&map, 1, base, @intCast(j), inner)[0];
                    sums[j] = if (r == r_begin) x else sums[j] + x;
                }
                walk.step(layout);
            }
        }

        /// Without reduced dimensions: target = scale * f, vector by vector, no accumulator. `len`
        /// may span many tiles of one row of the innermost kept dimension.
        fn elementwise(self: *const Self, first: u64, len: u64) void {
            const map = self.state.map.*;
            const layout = map.layout;
            const kept_ndim = layout.kept_ndim;
            const base = offsets_of(layout.kept_shape[0..kept_ndim], &layout.kept_strides, first);
            var inner: [operands_max]u64 = undefined;
            var kinds: [operands_max]Kind = @splat(.unused);
            for (0..arity) |i| {
                inner[i] = layout.kept_strides[i][kept_ndim - 1];
                kinds[i] = if (map.constant[i]) .constant else if (inner[i] == 0) .broadcast else if (inner[i] == 1) .contiguous else .strided;
            }
            for (arity..operands_max) |i| inner[i] = 0;
            var k: u64 = 0;
            // The common operand kinds run loops specialized for them (no per-vector tests of
            // the kinds or the scale); the rest run the general loop.
            inline for (fast_kinds) |fast| {
                if (std.mem.eql(Kind, &kinds, &fast)) {
                    k = if (map.scale == 1) fast_loop(fast, false, &map, base, first, len) else fast_loop(fast, true, &map, base, first, len);
                    break;
                }
            } else {
                const vector = std.mem.indexOfScalar(Kind, &kinds, .strided) == null;
                if (vector) {
                    while (k + lanes <= len) : (k += lanes) {
                        var value = term(&map, lanes, base, k, inner);
                        if (map.scale != 1) value *= splat(lanes, map.scale);
                        storage.store(lanes, dtype, map.target, first + k, value);
                    }
                }
            }
            while (k < len) : (k += 1) {
                var value = term(&map, 1, base, k, inner);
                if (map.scale != 1) value *= splat(1, map.scale);
                storage.store(1, dtype, map.target, first + k, value);
            }
        }

        /// How an elementwise pass reads an operand along the innermost kept dimension.
        const Kind = enum { unused, contiguous, broadcast, constant, strided };

        /// The operand kinds with loops of their own: every operand contiguous, or one a broadcast
        /// or a number beside a contiguous one.
        const fast_kinds: []const [operands_max]Kind = switch (arity) {
            1 => &.{.{ .contiguous, .unused, .unused }},
            2 => &.{
                .{ .contiguous, .contiguous, .unused },
                .{ .contiguous, .broadcast, .unused },
                .{ .broadcast, .contiguous, .unused },
                .{ .contiguous, .constant, .unused },
                .{ .constant, .contiguous, .unused },
            },
            else => &.{.{ .contiguous, .contiguous, .contiguous }},
        };

        /// Whole vectors of an elementwise pass whose operand kinds are `kinds`; returns how many
        /// elements it did (the same values as the general loop: the same loads and operations).
        inline fn fast_loop(comptime kinds: [operands_max]Kind, comptime scaled: bool, map: *const Map, base: [operands_max]u64, first: u64, len: u64) u64 {
            var fixed: [operands_max]F(lanes) = undefined;
            inline for (0..operands_max) |i| {
                switch (kinds[i]) {
                    .constant => fixed[i] = splat(lanes, map.scalar),
                    .broadcast => fixed[i] = @splat(storage.load_one(dtype, map.operands[i], base[i])),
                    else => fixed[i] = splat(lanes, 0),
                }
            }
            const scale = splat(lanes, map.scale);
            var k: u64 = 0;
            while (k + lanes <= len) : (k += lanes) {
                var x: [operands_max]F(lanes) = undefined;
                inline for (0..operands_max) |i| {
                    x[i] = if (kinds[i] == .contiguous) storage.load(lanes, dtype, map.operands[i], base[i] + k) else fixed[i];
                }
                var value = map_apply(op, lanes, x[0], x[1], x[2]);
                if (scaled) value *= scale;
                storage.store(lanes, dtype, map.target, first + k, value);
            }
            return k;
        }

        fn finish(self: *const Self, first: u64, len: u32, sums: *const [tile_len]f64) void {
            // A float32 scale times a float32-rounded sum is exact in float64 before the one
            // rounding to float32, so this equals a float32 multiply when nothing was summed.
            const scale: f64 = self.state.map.scale;
            var k: u32 = 0;
            while (k + lanes <= len) : (k += lanes) {
                const wide: @Vector(lanes, f64) = sums[k..][0..lanes].*;
                const value: F(lanes) = @floatCast(wide * @as(@Vector(lanes, f64), @splat(scale)));
                storage.store(lanes, dtype, self.state.map.target, first + k, value);
            }
            while (k < len) : (k += 1) {
                storage.store_one(dtype, self.state.map.target, first + k, @floatCast(sums[k] * scale));
            }
        }

        fn tile_bounds(self: *const Self, tile: u64) struct { u64, u32 } {
            const row = tile / self.state.tiles_per_row;
            const column = (tile % self.state.tiles_per_row) * self.state.tile_width;
            const len: u32 = @intCast(@min(self.state.tile_width, self.state.inner_len - column));
            return .{ row * self.state.inner_len + column, len };
        }

        fn run_tile(self: *const Self, tile: u64) void {
            const first, const len = self.tile_bounds(tile);
            if (self.state.reduced_count == 1 and self.state.map.layout.reduced_ndim == 0) {
                self.elementwise(first, len);
                return;
            }
            var sums: [tile_len]f64 = undefined;
            self.accumulate(first, len, 0, self.state.reduced_count, &sums);
            self.finish(first, len, &sums);
        }

        fn run_chunk(self: *const Self, chunk: u32) void {
            assert(self.state.tile_count == 1);
            assert(chunk < self.state.chunk_count);
            const first, const len = self.tile_bounds(0);
            const begin = self.state.reduced_count * chunk / self.state.chunk_count;
            const end = self.state.reduced_count * (chunk + 1) / self.state.chunk_count;
            self.accumulate(first, len, begin, end, &self.state.partials[chunk]);
        }

        /// Worker `worker` of `workers` takes a contiguous share of the units (tiles or chunks).
        fn body(self: *const Self, worker: u32, workers: u32) void {
            const units: u64 = if (self.state.chunk_count > 1) self.state.chunk_count else self.state.tile_count;
            const begin = units * worker / workers;
            const end = units * (worker + 1) / workers;
            if (self.state.reduced_count == 1 and self.state.map.layout.reduced_ndim == 0) {
                // Elementwise: the share's tiles of one row run as one stretch.
                var tile = begin;
                while (tile < end) {
                    const row_end = @min(end, (tile / self.state.tiles_per_row + 1) * self.state.tiles_per_row);
                    const first, _ = self.tile_bounds(tile);
                    const last_first, const last_len = self.tile_bounds(row_end - 1);
                    self.elementwise(first, last_first + last_len - first);
                    tile = row_end;
                }
                return;
            }
            var unit = begin;
            while (unit < end) : (unit += 1) {
                if (self.state.chunk_count > 1) self.run_chunk(@intCast(unit)) else self.run_tile(unit);
            }
        }
    };
}

/// How many chunks of the reduced space `map_run` sums separately (combined in chunk order): more
/// than 1 only when the targets fit one tile and each sums many terms. A function of the layout
/// alone, so the device kernel (zig/src/cuda/ops_map.zig) splits the terms exactly as the CPU.
/// Chunk c sums terms [R c / chunks, R (c + 1) / chunks) of the R = reduced_count() terms.
pub fn reduce_chunks(layout: *const Layout) u32 {
    const kept_count = layout.kept_count();
    const reduced_count = layout.reduced_count();
    const inner_len = layout.kept_shape[layout.kept_ndim - 1];
    const tile_count = kept_count / inner_len * ((inner_len + tile_len - 1) / tile_len);
    // Few targets with many terms each: split the terms into chunks fixed by the size alone.
    return if (tile_count == 1 and reduced_count >= 2 * chunk_len_min)
        @intCast(@min(chunks_max, reduced_count / chunk_len_min))
    else
        1;
}

/// What one map_run call's engine works from, shared by every worker.
pub const MapState = struct {
    map: *const Map,
    reduced_count: u64,
    inner_len: u64,
    /// Targets per tile: tile_len, or less for a reduction with few tiles.
    tile_width: u64,
    tiles_per_row: u64,
    tile_count: u64,
    chunk_count: u32,
    /// Per chunk and tile element: the float64 partials of a chunked (single-tile) reduction.
    partials: *[chunks_max][tile_len]f64,
};

/// One worker's share of a map_run as a C function: zig/src/wide.zig exports its x86-64-v4
/// compilations, where zmm registers run the loads, the op and the rounding store (bfloat16 and
/// float16 conversions above all) of cache-resident tensors up to twice as fast. The same
/// operations in the same order on every path: the same bits.
pub fn map_body_c(op: u32, dtype: u32, state: *const MapState, worker: u32, workers: u32) callconv(.c) void {
    switch (@as(MapOp, @fromBackingInt(@intCast(op)))) {
        inline else => |o| switch (@as(Dtype, @fromBackingInt(@intCast(dtype)))) {
            inline .float32, .float16, .bfloat16 => |d| (Engine(o, d){ .state = state }).body(worker, workers),
            else => unreachable,
        },
    }
}

/// Runs the engine: target[j] = scale * sum_r f(operands at (j, r)).
pub fn map_run(comptime op: MapOp, comptime dtype: Dtype, map: *const Map) void {
    const layout = map.layout;
    var reads: [operands_max]bool = undefined;
    for (0..operands_max) |i| reads[i] = i < op.arity() and !map.constant[i];
    assert(layout.valid(reads));
    const kept_count = layout.kept_count();
    const reduced_count = layout.reduced_count();
    const inner_len = layout.kept_shape[layout.kept_ndim - 1];
    assert(kept_count >= 1 and reduced_count >= 1);
    assert(kept_count % inner_len == 0);
    const chunk_count = reduce_chunks(layout);
    // A reduction over few tiles splits its targets finer, so every thread gets a share (each
    // target's sum is the same chain whatever the tile it is in: the same bits).
    const reduces = reduced_count > 1 or layout.reduced_ndim > 0;
    var tile_width: u64 = tile_len;
    if (reduces and chunk_count == 1) {
        while (tile_width > 64 and kept_count / inner_len * ((inner_len + tile_width - 1) / tile_width) < 4 * pool.thread_count()) tile_width /= 2;
    }
    const tiles_per_row = (inner_len + tile_width - 1) / tile_width;
    const tile_count = kept_count / inner_len * tiles_per_row;
    var partials: [chunks_max][tile_len]f64 = undefined;
    const state = MapState{
        .map = map,
        .reduced_count = reduced_count,
        .inner_len = inner_len,
        .tile_width = tile_width,
        .tiles_per_row = tiles_per_row,
        .tile_count = tile_count,
        .chunk_count = chunk_count,
        .partials = &partials,
    };
    const units: u64 = if (chunk_count > 1) chunk_count else tile_count;
    const work = kept_count * reduced_count;
    const wanted = @max(1, work / pool.parallel_threshold);
    const workers: u32 = @intCast(@min(@min(pool.thread_count(), units), wanted));
    assert(workers >= 1 and workers <= pool.thread_count_max);
    const Split = struct {
        state: *const MapState,
        workers: u32,
        body: *const @TypeOf(map_body_c),
        fn call(self: *const @This(), worker: u32) void {
            self.body(@backingInt(op), @backingInt(dtype), self.state, worker, self.workers);
        }
    };
    const split = Split{ .state = &state, .workers = workers, .body = dispatch.pick(*const @TypeOf(map_body_c), "map_body", &map_body_c) };
    pool.run_workers(workers, &split, Split.call);
    if (chunk_count > 1) {
        const engine = Engine(op, dtype){ .state = &state };
        const first, const len = engine.tile_bounds(0);
        var sums = partials[0];
        for (partials[1..chunk_count]) |*partial| {
            for (sums[0..len], partial[0..len]) |*total, extra| total.* += extra;
        }
        engine.finish(first, len, &sums);
    }
}

// ---- Tests. ----

test {
    // The device kernels' one-target-at-a-time form of the engine, checked against map_run.
    _ = @import("map_device.zig");
}

const testing = std.testing;

fn erf64(x: f64) f64 {
    const z = @abs(x);
    var result: f64 = undefined;
    if (z < 3) {
        var term_value = z;
        var total = z;
        var k: f64 = 1;
        while (k < 80) : (k += 1) {
            term_value *= -z * z / k;
            total += term_value / (2 * k + 1);
        }
        result = 2.0 / @sqrt(@as(f64, std.math.pi)) * total;
    } else {
        var f = z;
        var k: f64 = 60;
        while (k >= 1) : (k -= 1) f = z + k / 2 / f;
        result = 1 - @exp(-z * z) / @sqrt(@as(f64, std.math.pi)) / f;
    }
    return if (x < 0) -result else result;
}

test "exp, tanh, log and erf are within a few float32 ulp of float64 across their ranges" {
    const eps: f64 = std.math.floatEps(f32);
    var x: f32 = -20;
    while (x < 20) : (x += 0.00731) {
        const xd: f64 = x;
        try testing.expect(@abs(exp(1, @splat(x))[0] - @exp(xd)) <= 2 * eps * @exp(xd));
        try testing.expect(@abs(tanh(1, @splat(x))[0] - std.math.tanh(xd)) <= 3 * eps * @abs(std.math.tanh(xd)));
        const e = erf64(xd);
        try testing.expect(@abs(erf(1, @splat(x))[0] - e) <= 3 * eps * @abs(e) + 1.5e-7);
        if (x > 0) try testing.expect(@abs(log(1, @splat(x))[0] - @log(xd)) <= 3 * eps * @abs(@log(xd)) + 1e-12);
    }
    try testing.expect(@abs(erf(1, @splat(1e-4))[0] - erf64(1e-4)) <= 2 * eps * erf64(1e-4));
    try testing.expectEqual(@as(f32, 0), log(1, @splat(1))[0]);
    try testing.expect(@abs(log(1, @splat(1e-40))[0] - @log(@as(f64, 1e-40))) < 1e-4);
}

test "the special values: NaN stays NaN, log(0) = -inf, log(-1) = NaN, tanh(+-inf) = +-1" {
    const nan = std.math.nan(f32);
    const inf = std.math.inf(f32);
    try testing.expect(std.math.isNan(exp(1, @splat(nan))[0]));
    try testing.expect(std.math.isNan(tanh(1, @splat(nan))[0]));
    try testing.expect(std.math.isNan(log(1, @splat(nan))[0]));
    try testing.expect(std.math.isNan(erf(1, @splat(nan))[0]));
    try testing.expect(std.math.isNan(log(1, @splat(-1))[0]));
    try testing.expectEqual(-inf, log(1, @splat(0))[0]);
    try testing.expectEqual(inf, log(1, @splat(inf))[0]);
    try testing.expectEqual(@as(f32, 1), tanh(1, @splat(inf))[0]);
    try testing.expectEqual(@as(f32, -1), tanh(1, @splat(-inf))[0]);
    try testing.expect(std.math.isNan(activation_forward(.relu, 1, @splat(nan))[0]));
}

test "the vector path and the scalar tail give the same bits for every activation" {
    @setEvalBranchQuota(100_000);
    var source: [lanes]f32 = undefined;
    for (&source, 0..) |*v, i| v.* = (@as(f32, @floatFromInt(i)) - 7.5) * 0.731;
    inline for (comptime std.enums.values(Activation)) |op| {
        const vector: [lanes]f32 = activation_forward(op, lanes, source);
        const grad: [lanes]f32 = activation_backward(op, lanes, source, @splat(0.37));
        for (0..lanes) |i| {
            try testing.expectEqual(@as(u32, @bitCast(vector[i])), @as(u32, @bitCast(activation_forward(op, 1, @splat(source[i]))[0])));
            try testing.expectEqual(@as(u32, @bitCast(grad[i])), @as(u32, @bitCast(activation_backward(op, 1, @splat(source[i]), @splat(0.37))[0])));
        }
    }
}

test "every dispatch path (baseline, and the wide x86-64-v4 objects where the CPU runs them) gives the same values for every activation and swiglu pass in every dtype" {
    const count = 3 * pool.parallel_threshold + 21; // Threaded, with a scalar tail.
    const allocator = testing.allocator;
    const x = try allocator.alloc(f32, count);
    defer allocator.free(x);
    const g = try allocator.alloc(f32, count);
    defer allocator.free(g);
    const want = try allocator.alloc(f32, 2 * count);
    defer allocator.free(want);
    const got = try allocator.alloc(f32, 2 * count);
    defer allocator.free(got);
    var prng = std.Random.DefaultPrng.init(5);
    for (x, g) |*a, *b| {
        a.* = (prng.random().float(f32) - 0.5) * 24;
        b.* = prng.random().float(f32) - 0.5;
    }
    for ([_]f32{ 0, -0.0, std.math.inf(f32), -std.math.inf(f32), std.math.nan(f32), 1e-30, -88, 89, 0.5, -9.5 }, 0..) |special, i| x[i * 7] = special;
    defer dispatch.set_path_for_test(null);
    inline for (.{ Dtype.float32, Dtype.bfloat16, Dtype.float16 }) |dtype| {
        inline for (comptime std.enums.values(Pass)) |pass| {
            const ops: []const Activation = if (pass == .swiglu_forward or pass == .swiglu_backward) &.{.silu} else comptime std.enums.values(Activation);
            for (ops) |op| {
                for (dispatch.paths_available(), 0..) |path, index| {
                    dispatch.set_path_for_test(path);
                    const target = if (index == 0) want else got;
                    @memset(target, 0);
                    // The f32 buffers hold 16-bit values in their first halves for 16-bit dtypes:
                    // any bits are valid inputs, and each path reads the same ones.
                    const out: [*]u8 = @ptrCast(target.ptr);
                    const out_b: [*]u8 = @ptrCast(target[count..].ptr);
                    switch (pass) {
                        .activation_forward => activation_range_run(op, dtype, &.{ .source = @ptrCast(x.ptr), .second = @ptrCast(g.ptr), .target = out, .count = count }, pass),
                        .activation_backward => activation_range_run(op, dtype, &.{ .source = @ptrCast(x.ptr), .second = @ptrCast(g.ptr), .target = out, .count = count }, pass),
                        .swiglu_forward => run_pass(pass, 0, dtype, &Swiglu{ .a = @ptrCast(x.ptr), .b = @ptrCast(g.ptr), .g = @ptrCast(g.ptr), .out = out, .out_b = out_b, .count = count }, count),
                        .swiglu_backward => run_pass(pass, 0, dtype, &Swiglu{ .a = @ptrCast(x.ptr), .b = @ptrCast(g.ptr), .g = @ptrCast(x.ptr), .out = out, .out_b = out_b, .count = count }, count),
                    }
                    if (index > 0) try expect_same_values(dtype, want, got);
                }
            }
        }
    }
}

/// The same bits in every element of `dtype`, but that two NaNs may differ in sign: where an
/// operation meets two NaN operands, x86 returns the first one, and the wide compilations order
/// some operands differently (a NaN input gives a NaN output on every path).
fn expect_same_values(comptime dtype: Dtype, want: []const f32, got: []const f32) !void {
    const Bits = if (dtype == .float32) u32 else u16;
    const nan_above: Bits = switch (dtype) {
        .float32 => 0x7f80_0000,
        .bfloat16 => 0x7f80,
        else => 0x7c00,
    };
    const sign: Bits = 1 << (@bitSizeOf(Bits) - 1);
    const w: []const Bits = @ptrCast(want);
    const g: []const Bits = @ptrCast(got);
    for (w, g) |a, b| {
        if (a == b) continue;
        try testing.expect(a & ~sign > nan_above and b & ~sign > nan_above);
    }
}

fn activation_range_run(op: Activation, dtype: Dtype, args: *const Unary, pass: Pass) void {
    run_pass(pass, @backingInt(op), dtype, args, args.count);
}

fn test_layout() Layout {
    return std.mem.zeroes(Layout);
}

/// The sum of all `count` elements of every operand into one target (each read contiguously); for
/// tests, here and in map_device.zig.
pub fn full_reduction_layout(count: u64) Layout {
    var layout = test_layout();
    layout.kept_ndim = 1;
    layout.kept_shape[0] = 1;
    layout.reduced_ndim = 1;
    layout.reduced_shape[0] = count;
    for (0..operands_max) |i| {
        layout.reduced_strides[i][0] = 1;
        layout.operand_counts[i] = count;
    }
    return layout;
}

test "map adds a broadcast row to a matrix and sums the matrix back over its rows" {
    // x [3, 20] + b [20] -> y; then sum y over axis 0 -> [20].
    var x: [60]f32 = undefined;
    var b: [20]f32 = undefined;
    for (&x, 0..) |*v, i| v.* = @floatFromInt(i);
    for (&b, 0..) |*v, i| v.* = @as(f32, @floatFromInt(i)) * 0.5;
    var y: [60]f32 = undefined;
    var layout = test_layout();
    layout.kept_ndim = 2;
    layout.kept_shape[0..2].* = .{ 3, 20 };
    layout.kept_strides[0][0..2].* = .{ 20, 1 };
    layout.kept_strides[1][0..2].* = .{ 0, 1 };
    layout.operand_counts[0..2].* = .{ 60, 20 };
    var map = Map{ .layout = &layout, .target = @ptrCast(&y), .operands = .{ @ptrCast(&x), @ptrCast(&b), @ptrCast(&x) }, .constant = @splat(false), .scalar = 0, .scale = 1 };
    map_run(.add, .float32, &map);
    for (y, 0..) |v, i| try testing.expectEqual(x[i] + b[i % 20], v);
    var column: [20]f32 = undefined;
    var reduce = test_layout();
    reduce.kept_ndim = 1;
    reduce.kept_shape[0] = 20;
    reduce.kept_strides[0][0] = 1;
    reduce.reduced_ndim = 1;
    reduce.reduced_shape[0] = 3;
    reduce.reduced_strides[0][0] = 20;
    reduce.operand_counts[0] = 60;
    map = Map{ .layout = &reduce, .target = @ptrCast(&column), .operands = .{ @ptrCast(&y), @ptrCast(&y), @ptrCast(&y) }, .constant = @splat(false), .scalar = 0, .scale = 1 };
    map_run(.copy, .float32, &map);
    for (column, 0..) |v, i| try testing.expectEqual(y[i] + y[i + 20] + y[i + 40], v);
}

test "every dispatch path gives the map engine's bits for every op and dtype: broadcast, row reduction and chunked full reduction" {
    const rows = 40;
    const cols = 1000;
    const count = 5 * chunk_len_min + 3;
    const allocator = testing.allocator;
    const buffers = try allocator.alloc(f32, 3 * count + 2 * count);
    defer allocator.free(buffers);
    const inputs = buffers[0 .. 3 * count];
    const want = buffers[3 * count ..][0..count];
    const got = buffers[4 * count ..][0..count];
    var prng = std.Random.DefaultPrng.init(9);
    // Values in [0.5, 2) in the first half of each buffer for 16-bit dtypes too: no zero divisors.
    var elementwise_layout = test_layout();
    elementwise_layout.kept_ndim = 2;
    elementwise_layout.kept_shape[0..2].* = .{ rows, cols };
    elementwise_layout.kept_strides[0][0..2].* = .{ cols, 1 };
    elementwise_layout.kept_strides[1][0..2].* = .{ 0, 1 };
    elementwise_layout.kept_strides[2][0..2].* = .{ cols, 1 };
    elementwise_layout.operand_counts[0..3].* = .{ rows * cols, cols, rows * cols };
    var rows_layout = test_layout();
    rows_layout.kept_ndim = 1;
    rows_layout.kept_shape[0] = cols;
    rows_layout.kept_strides[0][0] = 1;
    rows_layout.kept_strides[1][0] = 1;
    rows_layout.kept_strides[2][0] = 1;
    rows_layout.reduced_ndim = 1;
    rows_layout.reduced_shape[0] = rows;
    rows_layout.reduced_strides[0][0] = cols;
    rows_layout.reduced_strides[1][0] = 0;
    rows_layout.reduced_strides[2][0] = cols;
    rows_layout.operand_counts[0..3].* = .{ rows * cols, cols, rows * cols };
    const full_layout = full_reduction_layout(count);
    defer dispatch.set_path_for_test(null);
    inline for (.{ Dtype.float32, Dtype.bfloat16, Dtype.float16 }) |dtype| {
        for (0..inputs.len) |i| storage.store_one(dtype, @ptrCast(inputs.ptr), i, 0.5 + 1.5 * prng.random().float(f32));
        const operands: [operands_max][*]const u8 = .{ @ptrCast(inputs.ptr), @ptrCast(inputs[count..].ptr), @ptrCast(inputs[2 * count ..].ptr) };
        inline for (comptime std.enums.values(MapOp)) |op| {
            for ([_]*const Layout{ &elementwise_layout, &rows_layout, &full_layout }) |layout| {
                for (dispatch.paths_available(), 0..) |path, index| {
                    dispatch.set_path_for_test(path);
                    const target = if (index == 0) want else got;
                    @memset(target, 0);
                    const map = Map{ .layout = layout, .target = @ptrCast(target.ptr), .operands = operands, .constant = @splat(false), .scalar = 0, .scale = 0.75 };
                    map_run(op, dtype, &map);
                    if (index > 0) try expect_same_values(dtype, want, got);
                }
            }
        }
    }
}

test "a chunked full reduction gives the same bits on one and on four threads" {
    const count = 5 * chunk_len_min + 3;
    const x = try testing.allocator.alloc(u16, count);
    defer testing.allocator.free(x);
    for (x, 0..) |*v, i| v.* = @truncate((i * 2654435761) >> 7 & 0x3fff | 0x3c00);
    const layout = full_reduction_layout(count);
    var totals: [2]u16 = undefined;
    for (&totals, [_]u32{ 1, 4 }) |*total, threads| {
        pool.set_thread_count(threads);
        const map = Map{ .layout = &layout, .target = @ptrCast(total), .operands = @splat(@ptrCast(x.ptr)), .constant = @splat(false), .scalar = 0, .scale = 0.5 };
        map_run(.copy, .bfloat16, &map);
    }
    pool.set_thread_count(0);
    try testing.expectEqual(totals[0], totals[1]);
}

test "a layout that would read past an operand, or has a zero or too many dimensions, is refused" {
    var layout = test_layout();
    layout.kept_ndim = 2;
    layout.kept_shape[0..2].* = .{ 3, 4 };
    layout.kept_strides[0][0..2].* = .{ 4, 1 };
    layout.operand_counts[0] = 12;
    try testing.expect(layout.valid(.{ true, false, false }));
    layout.operand_counts[0] = 11;
    try testing.expect(!layout.valid(.{ true, false, false }));
    try testing.expect(layout.valid(.{ false, false, false })); // A constant reads nothing.
    layout.operand_counts[0] = 12;
    layout.kept_shape[1] = 0;
    try testing.expect(!layout.valid(.{ true, false, false }));
    layout.kept_shape[1] = 4;
    layout.reduced_ndim = dims_max + 1;
    try testing.expect(!layout.valid(.{ true, false, false }));
    layout.reduced_ndim = 0;
    layout.kept_ndim = 0;
    try testing.expect(!layout.valid(.{ true, false, false }));
}

test "swiglu's vector path and scalar tail give the same bits, and its gradients match silu's" {
    var a: [lanes]f32 = undefined;
    var b: [lanes]f32 = undefined;
    for (&a, &b, 0..) |*x, *y, i| {
        x.* = (@as(f32, @floatFromInt(i)) - 8) * 0.61;
        y.* = @as(f32, @floatFromInt(i)) * 0.17 - 1;
    }
    const forward: [lanes]f32 = swiglu_forward(lanes, a, b);
    const grads = swiglu_backward(lanes, a, b, @splat(1.0));
    const da: [lanes]f32 = grads[0];
    for (0..lanes) |i| {
        try testing.expectEqual(@as(u32, @bitCast(forward[i])), @as(u32, @bitCast(swiglu_forward(1, @splat(a[i]), @splat(b[i]))[0])));
        const silu_grad = activation_backward(.silu, 1, @splat(a[i]), @splat(b[i]))[0];
        try testing.expect(@abs(da[i] - silu_grad) <= 4 * std.math.floatEps(f32) * (@abs(silu_grad) + 1e-6));
    }
}
