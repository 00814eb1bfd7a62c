//! Rotary position embedding, rotate-half form (Hugging Face LLaMA's apply_rotary_pos_emb, GPT-NeoX):
//! over the two halves x1 = x[..D/2], x2 = x[D/2..] of each head of x [B, T, H, D],
//!   out1 = x1 * cos - x2 * sin, out2 = x2 * cos + x1 * sin,
//! with angle_i = float32(position * inv_freq[i]) and cos, sin of that float32 angle (Hugging Face
//! computes the angles in float32 with autocast off: a [D/2, 1] x [1, T] product, one rounding).
//! The backward pass is the rotation by -angle: dx1 = g1 * cos + g2 * sin, dx2 = g2 * cos - g1 * sin,
//! which is exactly the forward at positions -p (cos is even and sin odd in float32 too).
//!
//! Storage is float32, float16 or bfloat16 (storage.zig): each element is computed in float32 and
//! rounded once. Hugging Face in bfloat16 rounds cos and sin to bfloat16 and rounds each product
//! and the sum: mixprec's result is the float32 value rounded once (in float32 the two agree, up
//! to the cos/sin implementations). Rows are independent, so any thread split gives the same bits.

const std = @import("std");
const storage = @import("storage.zig");
const mathf = @import("mathf.zig");
const pool = @import("../cpu/pool.zig");

const Dtype = storage.Dtype;
const F = storage.F;
const lanes = storage.lanes;

/// The largest head dimension (the cos/sin table of a row lives on the stack).
pub const head_dim_max: u64 = 1024;

/// Problem flags: explicit positions are given (else offset + t), and they are per batch ([B, T])
/// rather than shared ([T]).
pub const flag_positions: u64 = 1;
pub const flag_positions_per_batch: u64 = 2;
pub const flags_all: u64 = flag_positions | flag_positions_per_batch;

/// Shapes of one call, as the FFI passes them (6 x 64 bits).
pub const Problem = extern struct {
    batch: u64,
    steps: u64,
    heads: u64,
    head_dim: u64,
    /// Position of t = 0 when no positions are given.
    offset: i64,
    flags: u64,

    pub fn valid(p: Problem) bool {
        if (p.head_dim < 2 or p.head_dim % 2 != 0 or p.head_dim > head_dim_max) return false;
        if (p.flags & ~flags_all != 0) return false;
        if (p.flags & flag_positions_per_batch != 0 and p.flags & flag_positions == 0) return false;
        const limit: u64 = 1 << 31;
        if (p.batch > limit or p.steps > limit or p.heads > limit) return false;
        // Positions must be exact in float32 (as Hugging Face's position_ids.float()).
        return @abs(p.offset) <= 1 << 24 and p.steps <= 1 << 24;
    }

    fn row_size(p: *const Problem) u64 {
        return p.heads * p.head_dim;
    }

    fn count(p: *const Problem) u64 {
        return p.batch * p.steps * p.row_size();
    }
};

pub const Call = struct {
    problem: Problem,
    /// x (forward) or the output gradient (backward).
    source: [*]const u8,
    /// out (forward) or the input gradient (backward).
    target: [*]u8,
    /// head_dim / 2 inverse frequencies.
    inv_freq: [*]const f32,
    /// [T] or [B, T] positions when flag_positions is set.
    positions: ?[*]const i32,
    /// Rotate by -angle (the backward pass).
    inverse: bool,
};

/// One rotation on n lanes: (x1, x2) by the angle whose cosine and sine are (c, s), or by its
/// negative. The same code for every n, so vector lanes and scalar tails give the same bits.
pub inline fn rotate(comptime n: comptime_int, x1: F(n), x2: F(n), c: F(n), s: F(n), comptime inverse: bool) [2]F(n) {
    if (inverse) return .{ x1 * c + x2 * s, x2 * c - x1 * s };
    return .{ x1 * c - x2 * s, x2 * c + x1 * s };
}

fn position(call: *const Call, b: u64, t: u64) f32 {
    const p = &call.problem;
    if (call.positions) |positions| {
        const index = if (p.flags & flag_positions_per_batch != 0) b * p.steps + t else t;
        return @floatFromInt(positions[index]);
    }
    return @floatFromInt(p.offset + @as(i64, @intCast(t)));
}

fn Kernel(comptime dtype: Dtype, comptime inverse: bool) type {
    return struct {
        inline fn pair(comptime n: comptime_int, call: *const Call, base: u64, half: u64, i: u64, c: []const f32, s: []const f32) void {
            const x1 = storage.load(n, dtype, call.source, base + i);
            const x2 = storage.load(n, dtype, call.source, base + half + i);
            const r = rotate(n, x1, x2, c[i..][0..n].*, s[i..][0..n].*, inverse);
            storage.store(n, dtype, call.target, base + i, r[0]);
            storage.store(n, dtype, call.target, base + half + i, r[1]);
        }

        /// The cosines and sines of row `r`'s angles (batch r / T, step r % T).
        fn angles(call: *const Call, r: u64, cos: []f32, sin: []f32) void {
            const p = &call.problem;
            const at = position(call, r / p.steps, r % p.steps);
            for (0..p.head_dim / 2) |i| {
                const angle = at * call.inv_freq[i];
                const sin_cos = mathf.sincos(angle);
                sin[i] = sin_cos[0];
                cos[i] = sin_cos[1];
            }
        }

        fn rotate_row(call: *const Call, r: u64, cos: []const f32, sin: []const f32) void {
            const p = &call.problem;
            const half = p.head_dim / 2;
            for (0..p.heads) |h| {
                const base = r * p.row_size() + h * p.head_dim;
                var i: u64 = 0;
                while (i + lanes <= half) : (i += lanes) pair(lanes, call, base, half, i, cos, sin);
                while (i < half) : (i += 1) pair(1, call, base, half, i, cos, sin);
            }
        }

        /// Rows whose first element lies in [begin, end): each row is in exactly one range.
        fn rows(call: *const Call, begin: u64, end: u64) void {
            const size = call.problem.row_size();
            var cos: [head_dim_max / 2]f32 = undefined;
            var sin: [head_dim_max / 2]f32 = undefined;
            var r = (begin + size - 1) / size;
            while (r * size < end) : (r += 1) {
                angles(call, r, &cos, &sin);
                rotate_row(call, r, &cos, &sin);
            }
        }

        /// Positions shared by every batch element: steps t whose first element, counting the
        /// batch's rows of a step as one unit, lies in [begin, end); the angles of a step are
        /// computed once for all its rows (the same float32 values a row would compute).
        fn steps(call: *const Call, begin: u64, end: u64) void {
            const p = &call.problem;
            const size = p.batch * p.row_size();
            var cos: [head_dim_max / 2]f32 = undefined;
            var sin: [head_dim_max / 2]f32 = undefined;
            var t = (begin + size - 1) / size;
            while (t * size < end) : (t += 1) {
                angles(call, t, &cos, &sin);
                for (0..p.batch) |b| rotate_row(call, b * p.steps + t, &cos, &sin);
            }
        }
    };
}

/// target = the rotation of source (by -angle when call.inverse); every element written.
pub fn apply(comptime dtype: Dtype, call: *const Call) void {
    const p = &call.problem;
    std.debug.assert(p.valid());
    std.debug.assert((p.flags & flag_positions != 0) == (call.positions != null));
    if (p.count() == 0) return;
    const shared = p.flags & flag_positions_per_batch == 0;
    inline for (.{ false, true }) |inverse| {
        if (call.inverse == inverse) {
            const K = Kernel(dtype, inverse);
            if (shared) pool.parallel_for(p.count(), call, K.steps) else pool.parallel_for(p.count(), call, K.rows);
        }
    }
}

const testing = std.testing;

test "rope matches a float64 transcription of Hugging Face's formula, and the inverse undoes it" {
    const p = Problem{ .batch = 2, .steps = 5, .heads = 3, .head_dim = 38, .offset = 7, .flags = 0 };
    var x: [2 * 5 * 3 * 38]f32 = undefined;
    for (&x, 0..) |*v, i| v.* = @sin(@as(f32, @floatFromInt(i)) * 0.37) * 2;
    var inv_freq: [19]f32 = undefined;
    for (&inv_freq, 0..) |*f, i| f.* = 1 / std.math.pow(f32, 10000, @as(f32, @floatFromInt(2 * i)) / 38);
    var out: [x.len]f32 = undefined;
    var back: [x.len]f32 = undefined;
    apply(.float32, &.{ .problem = p, .source = @ptrCast(&x), .target = @ptrCast(&out), .inv_freq = &inv_freq, .positions = null, .inverse = false });
    apply(.float32, &.{ .problem = p, .source = @ptrCast(&out), .target = @ptrCast(&back), .inv_freq = &inv_freq, .positions = null, .inverse = true });
    for (0..2 * 5) |r| for (0..3) |h| for (0..19) |i| {
        const base = r * 3 * 38 + h * 38;
        const angle: f64 = @as(f32, @floatFromInt(7 + r % 5)) * inv_freq[i];
        const x1: f64 = x[base + i];
        const x2: f64 = x[base + 19 + i];
        const eps: f64 = std.math.floatEps(f32);
        try testing.expect(@abs(out[base + i] - (x1 * @cos(angle) - x2 * @sin(angle))) <= 4 * eps * (@abs(x1) + @abs(x2)));
        try testing.expect(@abs(out[base + 19 + i] - (x2 * @cos(angle) + x1 * @sin(angle))) <= 4 * eps * (@abs(x1) + @abs(x2)));
        try testing.expect(@abs(back[base + i] - x1) <= 8 * eps * (@abs(x1) + @abs(x2)));
    };
}
