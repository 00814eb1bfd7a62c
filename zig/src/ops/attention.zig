//! Scaled dot-product attention, forward and backward, tiled with an online softmax
//! (FlashAttention-2): no T x S matrix is ever formed. Memory per query row is O(head_dim) plus one
//! key/value tile, all in per-thread stack tiles; nothing is allocated.
//!
//! Layout: q [B, T, Hq, D], k and v [B, S, Hkv, D], out [B, T, Hq, D], each with its own row
//! stride (elements from position t to t + 1; the batch stride is steps * row stride), so q, k and
//! v may be views into one packed [B, T, 3 * H * D] projection. Hkv divides Hq: query head h reads
//! key/value head h / (Hq / Hkv) (grouped-query attention). Scores are q . k * scale in float32.
//!
//! Visibility of key j to query row i: `causal` keeps j <= i + S - T (bottom-right alignment, as
//! FlashAttention 2.1+: the last query sees every key; with S = T this is the usual lower
//! triangle), and the optional padding mask [B, S] keeps keys whose mask value is not 0. A row that
//! sees no key gets output 0 and log-sum-exp -inf (never NaN); its gradients are 0.
//!
//! Forward, per (batch, query head, tile of `block_q` rows): for each tile of `block_kv` keys,
//!   s = q k^T * scale, m' = max(m, rowmax s), p = exp(s - m'),
//!   l = l * exp(m - m') + rowsum p, acc = acc * exp(m - m') + p v,
//! then out = acc / l and lse = m + log l (float32 [B, Hq, T], saved for the backward pass).
//!
//! Backward, recomputing p = exp(s - lse) tile by tile, with delta_i = dO_i . O_i:
//!   dv_j = sum_i p_ij dO_i, dk_j = sum_i ds_ij q_i, dq_i = sum_j ds_ij k_j,
//!   ds_ij = p_ij (dO_i . v_j - delta_i) * scale.
//! Every sum runs in a fixed order: dk and dv of a key tile over the group's query heads in head
//! order and over query rows in row order; dq of a row over key tiles in order. Two passes do it
//! with fine tasks: one per (batch, kv head, key tile) gives dk and dv, one per (batch, query head,
//! query tile) gives dq, recomputing p and ds. Where a kv head's dq fits a stack tile and there are
//! enough (batch, kv head) tasks for the threads, one pass per (batch, kv head) runs the key tiles
//! in order and adds each ds row into dq as well, computing p and ds once: the same sums in the
//! same order, so the same bits. No task's result depends on which thread ran it, so outputs are
//! bit-identical on any thread count.
//!
//! Storage is float32, float16 or bfloat16 (storage.zig), loaded into float32 tiles; every output
//! is rounded once on store. Row functions are generic over the lane count n (the CPU runs
//! n = storage.lanes and a tail with n = 1). Every product-sum (q . k, dO . v, p v, ds k, p^T dO,
//! ds^T q) accumulates with fused multiply-adds in a fixed order over d or over the listed rows,
//! so a vector lane gives the bits of a scalar call (and a device kernel that keeps the order).

const std = @import("std");
const storage = @import("storage.zig");
const mathf = @import("mathf.zig");
const pool = @import("../cpu/pool.zig");

const Dtype = storage.Dtype;
const F = storage.F;
const lanes = storage.lanes;

/// The largest head dimension the stack tiles hold.
pub const head_dim_max: u64 = 256;
/// Query rows per tile.
pub const block_q: u64 = 16;
/// Key rows per tile.
pub const block_kv: u64 = 32;

/// Problem flags.
pub const flag_causal: u64 = 1;
pub const flags_all: u64 = flag_causal;

/// Shapes and strides of one call, as the FFI passes them (11 u64 values).
pub const Problem = extern struct {
    batch: u64,
    steps_q: u64,
    steps_kv: u64,
    heads_q: u64,
    heads_kv: u64,
    head_dim: u64,
    /// Elements from one position to the next in q (and dq), k (and dk), v (and dv), out (and dO).
    q_stride: u64,
    k_stride: u64,
    v_stride: u64,
    o_stride: u64,
    flags: u64,

    /// Whether every field is in range (the export returns invalid_argument otherwise).
    pub fn valid(p: Problem) bool {
        const limit: u64 = 1 << 31;
        if (p.head_dim == 0 or p.head_dim > head_dim_max) return false;
        if (p.heads_q == 0 or p.heads_kv == 0 or p.heads_q % p.heads_kv != 0) return false;
        if (p.batch > limit or p.steps_q > limit or p.steps_kv > limit or p.heads_q > 1 << 16) return false;
        if (p.flags & ~flags_all != 0) return false;
        if (p.q_stride < p.heads_q * p.head_dim or p.o_stride < p.heads_q * p.head_dim) return false;
        if (p.k_stride < p.heads_kv * p.head_dim or p.v_stride < p.heads_kv * p.head_dim) return false;
        return p.q_stride <= limit and p.k_stride <= limit and p.v_stride <= limit and p.o_stride <= limit;
    }

    pub fn causal(p: *const Problem) bool {
        return p.flags & flag_causal != 0;
    }

    pub fn group(p: *const Problem) u64 {
        return p.heads_q / p.heads_kv;
    }

    /// Keys [0, keys_end) are visible to query row i by causality (all keys when not causal).
    pub fn keys_end(p: *const Problem, row: u64) u64 {
        if (!p.causal()) return p.steps_kv;
        // Bottom-right alignment: row i is at position i + S - T among the keys.
        if (row + p.steps_kv + 1 <= p.steps_q) return 0;
        return @min(p.steps_kv, row + p.steps_kv + 1 - p.steps_q);
    }

    /// The first query row that sees key j by causality.
    pub fn rows_begin(p: *const Problem, key: u64) u64 {
        if (!p.causal()) return 0;
        if (key + p.steps_q <= p.steps_kv) return 0;
        return key + p.steps_q - p.steps_kv;
    }

    pub fn q_index(p: *const Problem, b: u64, t: u64, h: u64) u64 {
        return (b * p.steps_q + t) * p.q_stride + h * p.head_dim;
    }

    pub fn o_index(p: *const Problem, b: u64, t: u64, h: u64) u64 {
        return (b * p.steps_q + t) * p.o_stride + h * p.head_dim;
    }

    pub fn k_index(p: *const Problem, b: u64, s: u64, h: u64) u64 {
        return (b * p.steps_kv + s) * p.k_stride + h * p.head_dim;
    }

    pub fn v_index(p: *const Problem, b: u64, s: u64, h: u64) u64 {
        return (b * p.steps_kv + s) * p.v_stride + h * p.head_dim;
    }

    pub fn lse_index(p: *const Problem, b: u64, h: u64, t: u64) u64 {
        return (b * p.heads_q + h) * p.steps_q + t;
    }

    fn work(p: *const Problem) u64 {
        return p.batch * p.heads_q * p.steps_q * @max(p.steps_kv, 1) * p.head_dim;
    }
};

/// The padding mask: [B, S] values of `dtype`, a key is kept where its value is not 0.
pub const Mask = struct {
    values: [*]const u8,
    dtype: Dtype,

    pub fn keep(mask: Mask, index: u64) bool {
        return switch (mask.dtype) {
            inline .float32, .float16, .bfloat16 => |dtype| storage.load_one(dtype, mask.values, index) != 0,
            else => unreachable, // The export accepts op dtypes only.
        };
    }
};

pub const Forward = struct {
    problem: Problem,
    scale: f32,
    q: [*]const u8,
    k: [*]const u8,
    v: [*]const u8,
    mask: ?Mask,
    out: [*]u8,
    lse: [*]f32,
};

pub const Backward = struct {
    problem: Problem,
    scale: f32,
    q: [*]const u8,
    k: [*]const u8,
    v: [*]const u8,
    mask: ?Mask,
    out: [*]const u8,
    lse: [*]const f32,
    d_out: [*]const u8,
    dq: [*]u8,
    dk: [*]u8,
    dv: [*]u8,
};

// ---- Row functions, generic over the lane count n ----

/// exp(x) in float32: x = k ln2 + r with |r| <= ln2 / 2, exp(r) by a degree-6 Taylor polynomial
/// (relative error below 3e-7), scaled by 2^k through the exponent bits. x < -87 gives 0 (so
/// -inf gives 0: masked scores vanish), x > 88.7 gives inf. The same code for every n, so a lane
/// of a vector gives the bits of a scalar call.
pub inline fn exp(comptime n: comptime_int, x: F(n)) F(n) {
    const V = F(n);
    const clamped = @min(@max(x, @as(V, @splat(-87.0))), @as(V, @splat(88.7)));
    const k = @round(clamped * @as(V, @splat(1.4426950408889634)));
    const r = clamped - k * @as(V, @splat(0.693145751953125)) - k * @as(V, @splat(1.4286068203094172e-6));
    var p: V = @splat(1.0 / 720.0);
    p = p * r + @as(V, @splat(1.0 / 120.0));
    p = p * r + @as(V, @splat(1.0 / 24.0));
    p = p * r + @as(V, @splat(1.0 / 6.0));
    p = p * r + @as(V, @splat(0.5));
    p = p * r + @as(V, @splat(1.0));
    p = p * r + @as(V, @splat(1.0));
    const exponent: @Vector(n, i32) = @intFromFloat(k);
    const power: V = @bitCast((exponent + @as(@Vector(n, i32), @splat(127))) << @splat(23));
    const result = p * power;
    const low = x < @as(V, @splat(-87.0));
    const high = x > @as(V, @splat(88.7));
    return @select(f32, high, @as(V, @splat(std.math.inf(f32))), @select(f32, low, @as(V, @splat(0)), result));
}

/// sum a[i] * b[i]: n-lane partial sums over whole vectors, then a scalar tail, in a fixed order.
inline fn dot(a: []const f32, b: []const f32) f32 {
    std.debug.assert(a.len == b.len);
    var sums: F(lanes) = @splat(0);
    var i: usize = 0;
    while (i + lanes <= a.len) : (i += lanes) {
        sums += @as(F(lanes), a[i..][0..lanes].*) * @as(F(lanes), b[i..][0..lanes].*);
    }
    var total = @reduce(.Add, sums);
    while (i < a.len) : (i += 1) total += a[i] * b[i];
    return total;
}

/// target[j..j + n] = target[j..j + n] * factor + sum over i in `list` (in list order) of
/// weights[i * weight_stride] * tile[i * dim + j ..][0..n]: a weighted sum of tile rows, kept in
/// registers across the whole list (the P V, dS K, P^T dO and dS^T Q products of a tile).
pub inline fn gather_add(comptime n: comptime_int, target: []f32, factor: f32, weights: []const f32, weight_stride: usize, list: []const u8, tile: []const f32, dim: usize, j: usize) void {
    var total: F(n) = @as(F(n), target[j..][0..n].*) * @as(F(n), @splat(factor));
    for (list) |i| total = @mulAdd(F(n), @splat(weights[i * weight_stride]), tile[i * dim + j ..][0..n].*, total);
    target[j..][0..n].* = total;
}

/// gather_add of two neighbouring n-lane chunks [j, j + 2n) in one pass over the list: the same
/// sums in the same order, with two independent accumulator chains in flight instead of one (a
/// chain of dependent adds is latency-bound).
inline fn gather_add_two(target: []f32, factor: f32, weights: []const f32, weight_stride: usize, list: []const u8, tile: []const f32, dim: usize, j: usize) void {
    const V = F(lanes);
    var first: V = @as(V, target[j..][0..lanes].*) * @as(V, @splat(factor));
    var second: V = @as(V, target[j + lanes ..][0..lanes].*) * @as(V, @splat(factor));
    for (list) |i| {
        const w: V = @splat(weights[i * weight_stride]);
        first = @mulAdd(V, w, tile[i * dim + j ..][0..lanes].*, first);
        second = @mulAdd(V, w, tile[i * dim + j + lanes ..][0..lanes].*, second);
    }
    target[j..][0..lanes].* = first;
    target[j + lanes ..][0..lanes].* = second;
}

/// gather_add over a whole row of `dim` = target.len elements (vector body, scalar tail).
fn gather_add_row(target: []f32, factor: f32, weights: []const f32, weight_stride: usize, list: []const u8, tile: []const f32) void {
    const dim = target.len;
    var j: usize = 0;
    while (j + 2 * lanes <= dim) : (j += 2 * lanes) gather_add_two(target, factor, weights, weight_stride, list, tile, dim, j);
    while (j + lanes <= dim) : (j += lanes) gather_add(lanes, target, factor, weights, weight_stride, list, tile, dim, j);
    while (j < dim) : (j += 1) gather_add(1, target, factor, weights, weight_stride, list, tile, dim, j);
}

/// The list of every key of a full tile, in order.
const every_key: [block_kv]u8 = std.simd.iota(u8, block_kv);

/// Two gather_add_row sums over the same rows (`list`, or every row 0..count - 1 where `dense`):
/// x_target = x_target * x_factor + sum x_weights[i * weight_stride] * x_tile row i, and the same
/// for y. Each element is the same chain in the same order as gather_add_row's (the same bits); the
/// two sums share the row indices and keep twice the chains in flight.
fn gather_add_shared2(comptime dense: bool, x_target: []f32, x_factor: f32, x_weights: []const f32, x_tile: []const f32, y_target: []f32, y_factor: f32, y_weights: []const f32, y_tile: []const f32, weight_stride: usize, list: []const u8, count: usize) void {
    const dim = x_target.len;
    std.debug.assert(y_target.len == dim);
    var j: usize = 0;
    while (j + 2 * lanes <= dim) : (j += 2 * lanes) shared2_chunk(2 * lanes, dense, x_target, x_factor, x_weights, x_tile, y_target, y_factor, y_weights, y_tile, weight_stride, list, count, j);
    while (j + lanes <= dim) : (j += lanes) shared2_chunk(lanes, dense, x_target, x_factor, x_weights, x_tile, y_target, y_factor, y_weights, y_tile, weight_stride, list, count, j);
    while (j < dim) : (j += 1) shared2_chunk(1, dense, x_target, x_factor, x_weights, x_tile, y_target, y_factor, y_weights, y_tile, weight_stride, list, count, j);
}

inline fn shared2_chunk(comptime n: comptime_int, comptime dense: bool, x_target: []f32, x_factor: f32, x_weights: []const f32, x_tile: []const f32, y_target: []f32, y_factor: f32, y_weights: []const f32, y_tile: []const f32, weight_stride: usize, list: []const u8, count: usize, j: usize) void {
    const dim = x_target.len;
    var x: F(n) = @as(F(n), x_target[j..][0..n].*) * @as(F(n), @splat(x_factor));
    var y: F(n) = @as(F(n), y_target[j..][0..n].*) * @as(F(n), @splat(y_factor));
    const length = if (dense) count else list.len;
    for (0..length) |k| {
        const i: usize = if (dense) k else list[k];
        x = @mulAdd(F(n), @splat(x_weights[i * weight_stride]), x_tile[i * dim + j ..][0..n].*, x);
        y = @mulAdd(F(n), @splat(y_weights[i * weight_stride]), y_tile[i * dim + j ..][0..n].*, y);
    }
    x_target[j..][0..n].* = x;
    y_target[j..][0..n].* = y;
}

/// Whether all `block_kv` weights of a row are nonzero (its list would be every column).
inline fn all_nonzero(row: *const [block_kv]f32) bool {
    const V = F(lanes);
    var nonzero = true;
    inline for (0..block_kv / lanes) |part| nonzero = nonzero and @reduce(.And, @as(V, row[part * lanes ..][0..lanes].*) != @as(V, @splat(0)));
    return nonzero;
}

/// Loads `target.len` elements of `dtype` from `base` at `index` into float32.
fn load_row(comptime dtype: Dtype, base: [*]const u8, index: u64, target: []f32) void {
    var i: usize = 0;
    while (i + lanes <= target.len) : (i += lanes) target[i..][0..lanes].* = storage.load(lanes, dtype, base, index + i);
    while (i < target.len) : (i += 1) target[i] = storage.load_one(dtype, base, index + i);
}

/// Stores `source * factor` rounded once into `dtype` at `base[index..]`.
fn store_row(comptime dtype: Dtype, base: [*]u8, index: u64, source: []const f32, factor: f32) void {
    var i: usize = 0;
    while (i + lanes <= source.len) : (i += lanes) {
        const value: F(lanes) = source[i..][0..lanes].*;
        storage.store(lanes, dtype, base, index + i, value * @as(F(lanes), @splat(factor)));
    }
    while (i < source.len) : (i += 1) storage.store_one(dtype, base, index + i, source[i] * factor);
}

/// exp over a row of scores in place (vector body, scalar tail: the same bits per element).
fn exp_row(row: []f32) void {
    var i: usize = 0;
    while (i + lanes <= row.len) : (i += lanes) row[i..][0..lanes].* = exp(lanes, row[i..][0..lanes].*);
    while (i < row.len) : (i += 1) row[i] = exp(1, @splat(row[i]))[0];
}

// ---- Tiles ----

const QTile = [block_q * head_dim_max]f32;
const KTile = [block_kv * head_dim_max]f32;

fn row_of(tile: []f32, r: u64, dim: u64) []f32 {
    return tile[r * dim ..][0..dim];
}

fn row_const(tile: []const f32, r: u64, dim: u64) []const f32 {
    return tile[r * dim ..][0..dim];
}

/// Key tile [k0, k0 + cols) of (batch b, kv head h): keys and values row by row (for the
/// per-key updates) and transposed, [d][block_kv] (so a query row's products with every key of
/// the tile are vectors over keys, with no horizontal sums), and which keys the mask keeps.
/// Transposed columns past `cols` are 0, so whole vectors can be computed and ignored.
const Keys = struct {
    k: KTile,
    v: KTile,
    k_t: KTile,
    v_t: KTile,
    keep: [block_kv]bool,

    fn load(keys: *Keys, comptime dtype: Dtype, p: *const Problem, kp: [*]const u8, vp: [*]const u8, mask: ?Mask, b: u64, h: u64, k0: u64, cols: u64) void {
        keys.load_parts(dtype, p, kp, vp, mask, b, h, k0, cols, true);
    }

    /// load, without the transposed values when `values_t` is false (the forward pass reads the
    /// value rows only): a third less copying per tile.
    fn load_parts(keys: *Keys, comptime dtype: Dtype, p: *const Problem, kp: [*]const u8, vp: [*]const u8, mask: ?Mask, b: u64, h: u64, k0: u64, cols: u64, comptime values_t: bool) void {
        std.debug.assert(cols >= 1 and cols <= block_kv);
        const dim = p.head_dim;
        for (0..cols) |c| {
            load_row(dtype, kp, p.k_index(b, k0 + c, h), row_of(&keys.k, c, dim));
            load_row(dtype, vp, p.v_index(b, k0 + c, h), row_of(&keys.v, c, dim));
            keys.keep[c] = if (mask) |m| m.keep(b * p.steps_kv + k0 + c) else true;
        }
        @memset(keys.keep[cols..], false);
        for (0..dim) |d| {
            for (0..cols) |c| keys.k_t[d * block_kv + c] = keys.k[c * dim + d];
            @memset(keys.k_t[d * block_kv + cols ..][0 .. block_kv - cols], 0);
            if (values_t) {
                for (0..cols) |c| keys.v_t[d * block_kv + c] = keys.v[c * dim + d];
                @memset(keys.v_t[d * block_kv + cols ..][0 .. block_kv - cols], 0);
            }
        }
    }
};

/// The products of one row `a` (length D) with n columns of a transposed tile [D][block_kv]
/// starting at `col`: sum over d of a[d] * tile[d][col + i], summed in order of d.
pub inline fn products(comptime n: comptime_int, a: []const f32, tile: []const f32, col: usize) F(n) {
    var total: F(n) = @splat(0);
    for (a, 0..) |x, d| total = @mulAdd(F(n), @splat(x), tile[d * block_kv + col ..][0..n].*, total);
    return total;
}

/// The products of row `a` with every column of a transposed tile, into out[0..block_kv].
fn products_row(a: []const f32, tile: []const f32, out: *[block_kv]f32) void {
    comptime std.debug.assert(block_kv % lanes == 0);
    var col: usize = 0;
    while (col < block_kv) : (col += lanes) out[col..][0..lanes].* = products(lanes, a, tile, col);
}

/// products_row of two rows, each against its own transposed tile, in one pass over d: the same
/// sums in the same order as two products_row calls, with four accumulator chains in flight.
fn products_pair(a0: []const f32, tile0: []const f32, out0: *[block_kv]f32, a1: []const f32, tile1: []const f32, out1: *[block_kv]f32) void {
    comptime std.debug.assert(block_kv == 2 * lanes);
    std.debug.assert(a0.len == a1.len);
    const V = F(lanes);
    var x0: V = @splat(0);
    var y0: V = @splat(0);
    var x1: V = @splat(0);
    var y1: V = @splat(0);
    for (0..a0.len) |d| {
        const s0: V = @splat(a0[d]);
        const s1: V = @splat(a1[d]);
        x0 = @mulAdd(V, s0, tile0[d * block_kv ..][0..lanes].*, x0);
        y0 = @mulAdd(V, s0, tile0[d * block_kv + lanes ..][0..lanes].*, y0);
        x1 = @mulAdd(V, s1, tile1[d * block_kv ..][0..lanes].*, x1);
        y1 = @mulAdd(V, s1, tile1[d * block_kv + lanes ..][0..lanes].*, y1);
    }
    out0[0..lanes].* = x0;
    out0[lanes..][0..lanes].* = y0;
    out1[0..lanes].* = x1;
    out1[lanes..][0..lanes].* = y1;
}

/// Turns a row's products with the key tile (in `out`, from products_row or products_pair) into
/// its scores: times scale, minus `shift`, -inf where the row cannot see the key. Returns the
/// maximum before the shift (-inf: none seen).
fn finish_scores(p: *const Problem, keys: *const Keys, position: u64, k0: u64, cols: u64, scale: f32, shift: f32, out: *[block_kv]f32) f32 {
    comptime std.debug.assert(block_kv % lanes == 0 and block_kv < 1 << 16);
    const limit = p.keys_end(position);
    // Key c is visible when c < bound (inside the tile and causally visible) and the mask keeps it.
    const bound: u32 = @intCast(@min(cols, if (limit > k0) limit - k0 else 0));
    const V = F(lanes);
    const U = @Vector(lanes, u32);
    const none: V = @splat(-std.math.inf(f32));
    var max: V = none;
    inline for (0..block_kv / lanes) |part| {
        const j = part * lanes;
        const index = std.simd.iota(u32, lanes) + @as(U, @splat(j));
        const keep: @Vector(lanes, bool) = keys.keep[j..][0..lanes].*;
        const visible = @select(bool, index < @as(U, @splat(bound)), keep, @as(@Vector(lanes, bool), @splat(false)));
        const scaled = @as(V, out[j..][0..lanes].*) * @as(V, @splat(scale));
        // Float max ignores NaN as the scalar @max did; the maximum is order-free.
        max = @max(max, @select(f32, visible, scaled, none));
        out[j..][0..lanes].* = @select(f32, visible, scaled - @as(V, @splat(shift)), none);
    }
    return max_of(max);
}

/// The largest lane of v, ignoring NaN lanes as @max does (NaN only when every lane is NaN), by
/// halving: @reduce(.Max) of a float vector becomes a lane-by-lane scalar chain. Which of two
/// equal-magnitude zeros wins may differ from a scalar loop's; the results of the callers do not
/// depend on the sign of a zero maximum (x - 0 and x - -0 are equal unless x is a zero, and
/// exp of either zero is 1).
inline fn max_of(v: F(lanes)) f32 {
    comptime std.debug.assert(lanes == 16);
    const all: [16]f32 = v;
    const eight = @max(@as(F(8), all[0..8].*), @as(F(8), all[8..16].*));
    const e: [8]f32 = eight;
    const four = @max(@as(F(4), e[0..4].*), @as(F(4), e[4..8].*));
    const f: [4]f32 = four;
    const two = @max(@as(F(2), f[0..2].*), @as(F(2), f[2..4].*));
    return @max(two[0], two[1]);
}

pub fn q_tiles(p: *const Problem) u64 {
    return (p.steps_q + block_q - 1) / block_q;
}

/// Work item `item` of the per-query-tile passes (forward, dq): batch b, query head h, first row
/// q0 and row count of its tile; items run over tiles fastest, then heads, then batches.
fn query_item(p: *const Problem, item: u64) struct { u64, u64, u64, u64 } {
    const tile = item % q_tiles(p);
    const h = (item / q_tiles(p)) % p.heads_q;
    const b = item / q_tiles(p) / p.heads_q;
    const q0 = tile * block_q;
    return .{ b, h, q0, @min(block_q, p.steps_q - q0) };
}

pub fn kv_tiles(p: *const Problem) u64 {
    return (p.steps_kv + block_kv - 1) / block_kv;
}

// ---- Forward ----

fn Kernels(comptime dtype: Dtype) type {
    return struct {
        const ForwardTiles = struct { q: QTile, acc: QTile, keys: Keys, scores: [block_q][block_kv]f32 };

        fn forward_item(f: *const Forward, item: u64) void {
            const p = &f.problem;
            const dim = p.head_dim;
            var tiles: ForwardTiles = undefined;
            const b, const h, const q0, const rows = query_item(p, item);
            const h_kv = h / p.group();
            var m: [block_q]f32 = @splat(-std.math.inf(f32));
            var l: [block_q]f32 = @splat(0);
            for (0..rows) |r| {
                load_row(dtype, f.q, p.q_index(b, q0 + r, h), row_of(&tiles.q, r, dim));
                @memset(row_of(&tiles.acc, r, dim), 0);
            }
            const kv_end = p.keys_end(q0 + rows - 1);
            var k0: u64 = 0;
            while (k0 < kv_end) : (k0 += block_kv) {
                const cols = @min(block_kv, kv_end - k0);
                tiles.keys.load_parts(dtype, p, f.k, f.v, f.mask, b, h_kv, k0, cols, false);
                // The rows' products with the tile two rows at a time (independent chains in flight).
                var r0: u64 = 0;
                while (r0 + 2 <= rows) : (r0 += 2) {
                    products_pair(row_of(&tiles.q, r0, dim), &tiles.keys.k_t, &tiles.scores[r0], row_of(&tiles.q, r0 + 1, dim), &tiles.keys.k_t, &tiles.scores[r0 + 1]);
                }
                if (r0 < rows) products_row(row_of(&tiles.q, r0, dim), &tiles.keys.k_t, &tiles.scores[r0]);
                // A dense row whose sum waits for a second one.
                var waiting: ?u64 = null;
                var waiting_alpha: f32 = 0;
                for (0..rows) |r| {
                    const tile_max = finish_scores(p, &tiles.keys, q0 + r, k0, cols, f.scale, 0, &tiles.scores[r]);
                    if (tile_max == -std.math.inf(f32)) continue; // Nothing visible here.
                    const m_new = @max(m[r], tile_max);
                    // exp(-inf) = 0 on a row's first visible tile: the empty accumulators stay 0.
                    const alpha = exp(1, @splat(m[r] - m_new))[0];
                    const s = tiles.scores[r][0..cols];
                    for (s) |*x| x.* -= m_new;
                    exp_row(s);
                    var total: f32 = 0;
                    if (cols == block_kv and all_nonzero(&tiles.scores[r])) {
                        // Every key of the tile carries weight: no list to build or read, and the
                        // sums of two such rows run together (twice the chains in flight).
                        for (s) |x| total += x;
                        l[r] = l[r] * alpha + total;
                        m[r] = m_new;
                        if (waiting) |w| {
                            gather_add_shared2(true, row_of(&tiles.acc, w, dim), waiting_alpha, &tiles.scores[w], &tiles.keys.v, row_of(&tiles.acc, r, dim), alpha, s, &tiles.keys.v, 1, &.{}, block_kv);
                            waiting = null;
                        } else {
                            waiting = r;
                            waiting_alpha = alpha;
                        }
                        continue;
                    }
                    var list: [block_kv]u8 = undefined;
                    var listed: usize = 0;
                    for (s, 0..) |x, c| {
                        total += x;
                        list[listed] = @intCast(c);
                        listed += @intFromBool(x != 0);
                    }
                    l[r] = l[r] * alpha + total;
                    m[r] = m_new;
                    gather_add_row(row_of(&tiles.acc, r, dim), alpha, s, 1, list[0..listed], &tiles.keys.v);
                }
                if (waiting) |w| gather_add_row(row_of(&tiles.acc, w, dim), waiting_alpha, &tiles.scores[w], 1, &every_key, &tiles.keys.v);
            }
            for (0..rows) |r| {
                const seen = l[r] > 0;
                // A row that sees no key: output 0 (its accumulators are 0) and lse -inf.
                store_row(dtype, f.out, p.o_index(b, q0 + r, h), row_of(&tiles.acc, r, dim), if (seen) 1 / l[r] else 0);
                f.lse[p.lse_index(b, h, q0 + r)] = if (seen) m[r] + mathf.log(l[r]) else -std.math.inf(f32);
            }
        }

        /// Loads the query rows [q0, q0 + rows) of head h with their output gradients, delta_i =
        /// dO_i . O_i and lse_i.
        fn load_queries(g: *const Backward, b: u64, h: u64, q0: u64, rows: u64, q: *QTile, d_out: *QTile, delta: *[block_q]f32, lse: *[block_q]f32) void {
            const p = &g.problem;
            const dim = p.head_dim;
            var o: [head_dim_max]f32 = undefined;
            for (0..rows) |r| {
                load_row(dtype, g.q, p.q_index(b, q0 + r, h), row_of(q, r, dim));
                load_row(dtype, g.d_out, p.o_index(b, q0 + r, h), row_of(d_out, r, dim));
                load_row(dtype, g.out, p.o_index(b, q0 + r, h), o[0..dim]);
                delta[r] = dot(row_const(d_out, r, dim), o[0..dim]);
                lse[r] = g.lse[p.lse_index(b, h, q0 + r)];
            }
        }

        /// For query row r against the key tile: probs = exp(s - lse) and d_scores = probs *
        /// (dO . v - delta) * scale (0 where probs is 0).
        fn row_gradients(g: *const Backward, keys: *const Keys, q_row: []const f32, d_out: []const f32, position: u64, k0: u64, cols: u64, lse: f32, delta: f32, probs: *[block_kv]f32, d_scores: *[block_kv]f32) void {
            const p = &g.problem;
            if (lse == -std.math.inf(f32)) {
                // The row sees no key: no gradient flows through it.
                @memset(probs, 0);
                @memset(d_scores, 0);
                return;
            }
            products_pair(q_row, &keys.k_t, probs, d_out, &keys.v_t, d_scores);
            _ = finish_scores(p, keys, position, k0, cols, g.scale, lse, probs);
            exp_row(probs[0..cols]);
            for (0..cols) |c| d_scores[c] = if (probs[c] == 0) 0 else probs[c] * (d_scores[c] - delta) * g.scale;
        }

        const KeyTiles = struct {
            q: QTile,
            d_out: QTile,
            keys: Keys,
            dk: KTile,
            dv: KTile,
            probs: [block_q][block_kv]f32,
            d_scores: [block_q][block_kv]f32,
        };

        /// Adds a query tile's terms to the key tile's dk and dv: dv_c += sum_r probs[r][c] dO_r
        /// and dk_c += sum_r d_scores[r][c] q_r, over the rows with weight on key c, in order.
        fn key_sums(tiles: *KeyTiles, rows: u64, cols: u64, dim: u64) void {
            const probs: []const f32 = @ptrCast(&tiles.probs);
            const d_scores: []const f32 = @ptrCast(&tiles.d_scores);
            // Every row carrying weight on every key of the tile (rows past the diagonal):
            // each key's sums run over all the rows, with no list to build or read.
            var dense = true;
            for (0..rows) |r| dense = dense and all_nonzero(&tiles.probs[r]);
            for (0..cols) |c| {
                if (dense) {
                    gather_add_shared2(true, row_of(&tiles.dv, c, dim), 1, probs[c..], &tiles.d_out, row_of(&tiles.dk, c, dim), 1, d_scores[c..], &tiles.q, block_kv, &.{}, rows);
                    continue;
                }
                var list: [block_q]u8 = undefined;
                var listed: usize = 0;
                for (0..rows) |r| {
                    list[listed] = @intCast(r);
                    listed += @intFromBool(tiles.probs[r][c] != 0);
                }
                if (listed == 0) continue;
                gather_add_shared2(false, row_of(&tiles.dv, c, dim), 1, probs[c..], &tiles.d_out, row_of(&tiles.dk, c, dim), 1, d_scores[c..], &tiles.q, block_kv, list[0..listed], listed);
            }
        }

        /// dk and dv of one key tile: over the group's query heads in order, then query tiles in
        /// order, then rows in order.
        fn backward_keys_item(g: *const Backward, item: u64) void {
            const p = &g.problem;
            var tiles: KeyTiles = undefined;
            const tile = item % kv_tiles(p);
            const h_kv = (item / kv_tiles(p)) % p.heads_kv;
            const b = item / kv_tiles(p) / p.heads_kv;
            key_tile(g, &tiles, b, h_kv, tile * block_kv, null);
        }

        /// dk and dv of the key tile at k0 of (batch b, kv head h_kv), stored; with `dq` (every
        /// row of the group's heads, head by head), each row's ds over the tile is also added into
        /// its dq, in backward_queries_item's order.
        fn key_tile(g: *const Backward, t: *KeyTiles, b: u64, h_kv: u64, k0: u64, dq: ?[]f32) void {
            const p = &g.problem;
            const dim = p.head_dim;
            const cols = @min(block_kv, p.steps_kv - k0);
            t.keys.load(dtype, p, g.k, g.v, g.mask, b, h_kv, k0, cols);
            @memset(t.dk[0 .. cols * dim], 0);
            @memset(t.dv[0 .. cols * dim], 0);
            const first_row = p.rows_begin(k0);
            var delta: [block_q]f32 = undefined;
            var lse: [block_q]f32 = undefined;
            for (0..p.group()) |member| {
                const h = h_kv * p.group() + member;
                var q0 = first_row / block_q * block_q;
                while (q0 < p.steps_q) : (q0 += block_q) {
                    const rows = @min(block_q, p.steps_q - q0);
                    load_queries(g, b, h, q0, rows, &t.q, &t.d_out, &delta, &lse);
                    for (0..rows) |r| {
                        row_gradients(g, &t.keys, row_of(&t.q, r, dim), row_of(&t.d_out, r, dim), q0 + r, k0, cols, lse[r], delta[r], &t.probs[r], &t.d_scores[r]);
                        if (dq) |all| add_dq(row_of(all, member * p.steps_q + q0 + r, dim), &t.probs[r], &t.d_scores[r], cols, &t.keys);
                    }
                    key_sums(t, rows, cols, dim);
                }
            }
            for (0..cols) |c| {
                store_row(dtype, g.dk, p.k_index(b, k0 + c, h_kv), row_of(&t.dk, c, dim), 1);
                store_row(dtype, g.dv, p.v_index(b, k0 + c, h_kv), row_of(&t.dv, c, dim), 1);
            }
        }

        const FusedTiles = struct { key: KeyTiles, dq: [fused_dq_floats]f32 };

        /// dq, dk and dv of one (batch, kv head) in one pass: each key tile in order, as
        /// backward_keys_item, and each row's probabilities and score gradients, computed there
        /// once, also added into its dq (kept for every row of the group's heads), so no second
        /// pass recomputes them. Every sum runs in the two-pass order (dk and dv over the group's
        /// heads, query tiles and rows; dq over key tiles in order, then the tile's listed keys),
        /// so the bits are backward_keys' and backward_queries'.
        fn backward_fused_item(g: *const Backward, item: u64) void {
            const p = &g.problem;
            const dim = p.head_dim;
            var tiles: FusedTiles = undefined;
            const h_kv = item % p.heads_kv;
            const b = item / p.heads_kv;
            const dq_all = tiles.dq[0 .. p.group() * p.steps_q * dim];
            @memset(dq_all, 0);
            var k0: u64 = 0;
            while (k0 < p.steps_kv) : (k0 += block_kv) key_tile(g, &tiles.key, b, h_kv, k0, dq_all);
            for (0..p.group()) |member| {
                const h = h_kv * p.group() + member;
                for (0..p.steps_q) |row| store_row(dtype, g.dq, p.q_index(b, row, h), row_of(dq_all, member * p.steps_q + row, dim), 1);
            }
        }

        /// dq_row += sum over the tile's keys with weight (probs not 0), in order, of ds k.
        fn add_dq(dq_row: []f32, probs: *const [block_kv]f32, d_scores: *const [block_kv]f32, cols: u64, keys: *const Keys) void {
            var list: [block_kv]u8 = undefined;
            var listed: usize = 0;
            for (0..cols) |c| {
                list[listed] = @intCast(c);
                listed += @intFromBool(probs[c] != 0);
            }
            gather_add_row(dq_row, 1, d_scores, 1, list[0..listed], &keys.k);
        }

        const QueryTiles = struct { q: QTile, d_out: QTile, dq: QTile, keys: Keys, probs: [block_kv]f32, d_scores: [block_kv]f32 };

        /// dq of one query tile: over key tiles in order.
        fn backward_queries_item(g: *const Backward, item: u64) void {
            const p = &g.problem;
            const dim = p.head_dim;
            var tiles: QueryTiles = undefined;
            const b, const h, const q0, const rows = query_item(p, item);
            const h_kv = h / p.group();
            var lse: [block_q]f32 = undefined;
            var delta: [block_q]f32 = undefined;
            load_queries(g, b, h, q0, rows, &tiles.q, &tiles.d_out, &delta, &lse);
            @memset(tiles.dq[0 .. rows * dim], 0);
            const kv_end = p.keys_end(q0 + rows - 1);
            var k0: u64 = 0;
            while (k0 < kv_end) : (k0 += block_kv) {
                const cols = @min(block_kv, kv_end - k0);
                tiles.keys.load(dtype, p, g.k, g.v, g.mask, b, h_kv, k0, cols);
                for (0..rows) |r| {
                    if (lse[r] == -std.math.inf(f32)) continue;
                    row_gradients(g, &tiles.keys, row_of(&tiles.q, r, dim), row_of(&tiles.d_out, r, dim), q0 + r, k0, cols, lse[r], delta[r], &tiles.probs, &tiles.d_scores);
                    add_dq(row_of(&tiles.dq, r, dim), &tiles.probs, &tiles.d_scores, cols, &tiles.keys);
                }
            }
            for (0..rows) |r| store_row(dtype, g.dq, p.q_index(b, q0 + r, h), row_of(&tiles.dq, r, dim), 1);
        }
    };
}

// ---- Scheduling ----

/// Independent work items handed out from an atomic counter: which thread runs an item never
/// changes its result.
fn Items(comptime Args: type, comptime item_fn: fn (*const Args, u64) void) type {
    return struct {
        args: *const Args,
        count: u64,
        next: std.atomic.Value(u64) = .init(0),

        fn run(self: *@This(), worker: u32) void {
            _ = worker;
            while (true) {
                const item = self.next.fetchAdd(1, .monotonic);
                if (item >= self.count) break;
                item_fn(self.args, item);
            }
        }

        fn go(args: *const Args, count: u64, work: u64) void {
            if (count == 0) return;
            var items = @This(){ .args = args, .count = count };
            // Below ~64K multiply-adds one thread is faster than waking workers.
            const workers: u32 = if (work < pool.parallel_threshold) 1 else @intCast(@min(pool.thread_count(), count));
            pool.run_workers(workers, &items, run);
        }
    };
}

/// out [B, T, Hq, D] in the storage dtype and lse [B, Hq, T] float32.
pub fn forward(comptime dtype: Dtype, f: *const Forward) void {
    const p = &f.problem;
    std.debug.assert(p.valid());
    std.debug.assert(f.scale == f.scale); // Not NaN.
    const K = Kernels(dtype);
    Items(Forward, K.forward_item).go(f, p.batch * p.heads_q * q_tiles(p), p.work());
}

/// The backward pass's first half alone: dk and dv (the CUDA fake driver emulates the device's
/// key-tile kernel with it).
pub fn backward_keys(comptime dtype: Dtype, g: *const Backward) void {
    const p = &g.problem;
    Items(Backward, Kernels(dtype).backward_keys_item).go(g, p.batch * p.heads_kv * kv_tiles(p), p.work());
}

/// The backward pass's second half alone: dq.
pub fn backward_queries(comptime dtype: Dtype, g: *const Backward) void {
    const p = &g.problem;
    Items(Backward, Kernels(dtype).backward_queries_item).go(g, p.batch * p.heads_q * q_tiles(p), p.work());
}

/// dq, dk, dv (each in its operand's layout and the storage dtype) from the forward's out and lse.
/// One pass per (batch, kv head) where its dq fits the stack tile and there are at least as many
/// such items as threads; else the two passes, which split the work finer. The bits are the same.
pub fn backward(comptime dtype: Dtype, g: *const Backward) void {
    const p = &g.problem;
    std.debug.assert(p.valid());
    const K = Kernels(dtype);
    if (fused_fits(p) and p.batch * p.heads_kv >= pool.thread_count()) return backward_fused(dtype, g);
    Items(Backward, K.backward_keys_item).go(g, p.batch * p.heads_kv * kv_tiles(p), p.work());
    Items(Backward, K.backward_queries_item).go(g, p.batch * p.heads_q * q_tiles(p), p.work());
}

/// The one-pass backward (`fused_fits` must hold).
pub fn backward_fused(comptime dtype: Dtype, g: *const Backward) void {
    const p = &g.problem;
    std.debug.assert(p.valid() and fused_fits(p));
    Items(Backward, Kernels(dtype).backward_fused_item).go(g, p.batch * p.heads_kv, p.work());
}

/// Floats of the fused pass's dq tile: dq of every row of a kv head's group of query heads.
const fused_dq_floats: u64 = 64 * 1024;

pub fn fused_fits(p: *const Problem) bool {
    return p.group() * p.steps_q * p.head_dim <= fused_dq_floats;
}

// ---- Tests ----

const testing = std.testing;

test "exp gives the same bits in a vector lane and in a scalar call, and 0 for -inf" {
    var x: [lanes]f32 = undefined;
    for (&x, 0..) |*v, i| v.* = @as(f32, @floatFromInt(i)) * 1.37 - 11.1;
    const vector: [lanes]f32 = exp(lanes, x);
    for (x, vector) |v, e| {
        try testing.expectEqual(@as(u32, @bitCast(exp(1, @splat(v))[0])), @as(u32, @bitCast(e)));
        try testing.expect(@abs(e - @exp(v)) <= 3e-7 * @exp(v));
    }
    try testing.expectEqual(@as(f32, 0), exp(1, @splat(-std.math.inf(f32)))[0]);
}

test "gather_add gives the same bits in a vector lane and in the scalar tail" {
    var tile: [3 * lanes]f32 = undefined;
    for (&tile, 0..) |*x, i| x.* = @sin(@as(f32, @floatFromInt(i)) * 0.91) * 3;
    const weights = [_]f32{ 0.37, -1.25, 2.5 };
    const list = [_]u8{ 2, 0, 1 };
    var vector: [lanes]f32 = @splat(0.5);
    var scalar: [lanes]f32 = @splat(0.5);
    gather_add(lanes, &vector, 0.75, &weights, 1, &list, &tile, lanes, 0);
    for (0..lanes) |j| gather_add(1, &scalar, 0.75, &weights, 1, &list, &tile, lanes, j);
    for (vector, scalar) |a, b| try testing.expectEqual(@as(u32, @bitCast(b)), @as(u32, @bitCast(a)));
}

/// Naive float64 attention of one problem with contiguous f32 operands (for the tests).
fn reference(p: Problem, scale: f64, q: []const f32, k: []const f32, v: []const f32, mask: ?[]const f32, out: []f64) void {
    for (0..p.batch) |b| for (0..p.heads_q) |h| for (0..p.steps_q) |i| reference_row(p, scale, q, k, v, mask, out, b, h, i);
}

fn reference_row(p: Problem, scale: f64, q: []const f32, k: []const f32, v: []const f32, mask: ?[]const f32, out: []f64, b: u64, h: u64, i: u64) void {
    const dim = p.head_dim;
    {
        const h_kv = h / p.group();
        var max: f64 = -std.math.inf(f64);
        for (0..p.keys_end(i)) |j| {
            if (mask) |m| if (m[b * p.steps_kv + j] == 0) continue;
            var s: f64 = 0;
            for (0..dim) |d| s += @as(f64, q[p.q_index(b, i, h) + d]) * k[p.k_index(b, j, h_kv) + d];
            max = @max(max, s * scale);
        }
        var total: f64 = 0;
        const o = out[p.o_index(b, i, h)..][0..dim];
        @memset(o, 0);
        for (0..p.keys_end(i)) |j| {
            if (mask) |m| if (m[b * p.steps_kv + j] == 0) continue;
            var s: f64 = 0;
            for (0..dim) |d| s += @as(f64, q[p.q_index(b, i, h) + d]) * k[p.k_index(b, j, h_kv) + d];
            const e = @exp(s * scale - max);
            total += e;
            for (0..dim) |d| o[d] += e * v[p.v_index(b, j, h_kv) + d];
        }
        if (total > 0) {
            for (o) |*x| x.* /= total;
        }
    }
}

fn fill(values: []f32, seed: u32) void {
    for (values, 0..) |*x, i| x.* = @sin(@as(f32, @floatFromInt(i * 7 + seed)) * 0.731) * 1.3;
}

/// fill's values stored in `dtype` at the start of `values`.
fn fill_as(comptime dtype: Dtype, values: []f32, seed: u32) void {
    for (0..values.len) |i| storage.store_one(dtype, @ptrCast(values.ptr), i, @sin(@as(f32, @floatFromInt(i * 7 + seed)) * 0.731) * 1.3);
}

test "the tiled forward matches float64 attention for causal GQA with a padding mask, and a fully padded row gives 0" {
    const p = Problem{
        .batch = 2,
        .steps_q = 37,
        .steps_kv = 41,
        .heads_q = 4,
        .heads_kv = 2,
        .head_dim = 19,
        .q_stride = 4 * 19,
        .k_stride = 2 * 19,
        .v_stride = 2 * 19,
        .o_stride = 4 * 19,
        .flags = flag_causal,
    };
    var q: [2 * 37 * 4 * 19]f32 = undefined;
    var k: [2 * 41 * 2 * 19]f32 = undefined;
    var v: [2 * 41 * 2 * 19]f32 = undefined;
    fill(&q, 1);
    fill(&k, 2);
    fill(&v, 3);
    // Batch 1 keeps only keys 30..40, so its rows 0..25 (positions 4..29) see nothing.
    var mask: [2 * 41]f32 = @splat(1);
    for (41..71) |j| mask[j] = 0;
    mask[3] = 0;
    var out: [q.len]f32 = undefined;
    var lse: [2 * 4 * 37]f32 = undefined;
    const scale: f32 = 1.0 / @sqrt(19.0);
    const f = Forward{
        .problem = p,
        .scale = scale,
        .q = @ptrCast(&q),
        .k = @ptrCast(&k),
        .v = @ptrCast(&v),
        .mask = .{ .values = @ptrCast(&mask), .dtype = .float32 },
        .out = @ptrCast(&out),
        .lse = &lse,
    };
    forward(.float32, &f);
    var expected: [q.len]f64 = undefined;
    reference(p, scale, &q, &k, &v, &mask, &expected);
    for (out, expected) |got, want| try testing.expect(@abs(got - want) <= 2e-6 * (1 + @abs(want)));
    for (0..19) |d| try testing.expectEqual(@as(f32, 0), out[p.o_index(1, 0, 0) + d]);
    try testing.expect(lse[p.lse_index(1, 0, 0)] == -std.math.inf(f32));
}

test "the one-pass backward gives the two passes' bits: GQA, masks, causal or not, T != S, tile tails, every dtype" {
    const cases = [_]struct { u64, u64, u64, u64, u64, u64, u64, bool }{
        // batch, steps_q, steps_kv, heads_q, heads_kv, head_dim, flags, mask
        .{ 2, 37, 41, 4, 2, 19, flag_causal, true },
        .{ 1, 70, 33, 4, 1, 24, 0, true },
        .{ 2, 16, 96, 2, 2, 32, flag_causal, false },
        .{ 1, 1, 1, 1, 1, 8, flag_causal, false },
        .{ 1, 50, 50, 2, 2, 16, 0, false },
    };
    const allocator = testing.allocator;
    inline for (.{ Dtype.float32, Dtype.bfloat16, Dtype.float16 }) |dtype| {
        for (cases) |case| {
            const p = Problem{
                .batch = case[0],
                .steps_q = case[1],
                .steps_kv = case[2],
                .heads_q = case[3],
                .heads_kv = case[4],
                .head_dim = case[5],
                .q_stride = case[3] * case[5],
                .k_stride = case[4] * case[5],
                .v_stride = case[4] * case[5],
                .o_stride = case[3] * case[5],
                .flags = case[6],
            };
            try testing.expect(fused_fits(&p));
            const q_len = p.batch * p.steps_q * p.q_stride;
            const k_len = p.batch * p.steps_kv * p.k_stride;
            const buffers = try allocator.alloc(f32, 5 * q_len + 6 * k_len + p.batch * p.heads_q * p.steps_q + p.batch * p.steps_kv);
            defer allocator.free(buffers);
            var rest = buffers;
            const take = struct {
                fn f(from: *[]f32, n: u64) []f32 {
                    const out = from.*[0..n];
                    from.* = from.*[n..];
                    return out;
                }
            }.f;
            const q = take(&rest, q_len);
            const k = take(&rest, k_len);
            const v = take(&rest, k_len);
            const out = take(&rest, q_len);
            const d_out = take(&rest, q_len);
            const lse = take(&rest, p.batch * p.heads_q * p.steps_q);
            const mask = take(&rest, p.batch * p.steps_kv);
            const grads = [_][]f32{ take(&rest, q_len), take(&rest, k_len), take(&rest, k_len), take(&rest, q_len), take(&rest, k_len), take(&rest, k_len) };
            fill_as(dtype, q, 1);
            fill_as(dtype, k, 2);
            fill_as(dtype, v, 3);
            fill_as(dtype, d_out, 4);
            for (mask, 0..) |*x, i| x.* = if (i % 5 == 2) 0 else 1;
            const m: ?Mask = if (case[7]) .{ .values = @ptrCast(mask.ptr), .dtype = .float32 } else null;
            const scale: f32 = 0.37;
            forward(dtype, &.{ .problem = p, .scale = scale, .q = @ptrCast(q.ptr), .k = @ptrCast(k.ptr), .v = @ptrCast(v.ptr), .mask = m, .out = @ptrCast(out.ptr), .lse = lse.ptr });
            for (0..2) |pass| {
                const g = Backward{
                    .problem = p,
                    .scale = scale,
                    .q = @ptrCast(q.ptr),
                    .k = @ptrCast(k.ptr),
                    .v = @ptrCast(v.ptr),
                    .mask = m,
                    .out = @ptrCast(out.ptr),
                    .lse = lse.ptr,
                    .d_out = @ptrCast(d_out.ptr),
                    .dq = @ptrCast(grads[3 * pass].ptr),
                    .dk = @ptrCast(grads[3 * pass + 1].ptr),
                    .dv = @ptrCast(grads[3 * pass + 2].ptr),
                };
                for (grads[3 * pass ..][0..3]) |grad| @memset(grad, std.math.nan(f32));
                if (pass == 0) {
                    backward_keys(dtype, &g);
                    backward_queries(dtype, &g);
                } else backward_fused(dtype, &g);
            }
            const size = if (dtype == .float32) 4 else 2;
            for (0..3) |i| {
                const want: []const u8 = @as([*]const u8, @ptrCast(grads[i].ptr))[0 .. grads[i].len * size];
                const got: []const u8 = @as([*]const u8, @ptrCast(grads[3 + i].ptr))[0 .. grads[i].len * size];
                try testing.expectEqualSlices(u8, want, got);
                // dv is not all zero: the comparison saw gradients (one key alone has ds = 0).
                if (i == 2) try testing.expect(std.mem.indexOfNone(u8, want, &.{0}) != null);
            }
        }
    }
}

test "the backward pass matches finite differences of float64 attention, with GQA, causality and a mask" {
    inline for (.{ 0, flag_causal }) |flags| {
        const p = Problem{
            .batch = 2,
            .steps_q = 5,
            .steps_kv = 7,
            .heads_q = 2,
            .heads_kv = 1,
            .head_dim = 3,
            .q_stride = 6,
            .k_stride = 3,
            .v_stride = 3,
            .o_stride = 6,
            .flags = flags,
        };
        var q: [2 * 5 * 6]f32 = undefined;
        var k: [2 * 7 * 3]f32 = undefined;
        var v: [2 * 7 * 3]f32 = undefined;
        var weights: [q.len]f32 = undefined;
        fill(&q, 4);
        fill(&k, 5);
        fill(&v, 6);
        fill(&weights, 7);
        var mask: [2 * 7]f32 = @splat(1);
        mask[1] = 0;
        mask[7 + 6] = 0;
        const scale: f32 = 0.61;
        var out: [q.len]f32 = undefined;
        var lse: [2 * 2 * 5]f32 = undefined;
        const m = Mask{ .values = @ptrCast(&mask), .dtype = .float32 };
        forward(.float32, &.{ .problem = p, .scale = scale, .q = @ptrCast(&q), .k = @ptrCast(&k), .v = @ptrCast(&v), .mask = m, .out = @ptrCast(&out), .lse = &lse });
        var dq: [q.len]f32 = undefined;
        var dk: [k.len]f32 = undefined;
        var dv: [v.len]f32 = undefined;
        backward(.float32, &.{
            .problem = p,
            .scale = scale,
            .q = @ptrCast(&q),
            .k = @ptrCast(&k),
            .v = @ptrCast(&v),
            .mask = m,
            .out = @ptrCast(&out),
            .lse = &lse,
            .d_out = @ptrCast(&weights),
            .dq = @ptrCast(&dq),
            .dk = @ptrCast(&dk),
            .dv = @ptrCast(&dv),
        });
        const operands = [_][]f32{ &q, &k, &v };
        const grads = [_][]const f32{ &dq, &dk, &dv };
        for (operands, grads) |operand, grad| {
            for (operand, grad) |*x, analytic| {
                const saved = x.*;
                var loss: [2]f64 = undefined;
                for (0..2) |side| {
                    x.* = saved + (if (side == 0) @as(f32, 1e-2) else -1e-2);
                    var result: [q.len]f64 = undefined;
                    reference(p, scale, &q, &k, &v, &mask, &result);
                    loss[side] = 0;
                    for (result, weights) |o, w| loss[side] += o * w;
                }
                x.* = saved;
                const numeric = (loss[0] - loss[1]) / (@as(f64, saved + 1e-2) - @as(f64, saved - 1e-2));
                try testing.expect(@abs(analytic - numeric) <= 2e-4 * (1 + @abs(numeric)));
            }
        }
    }
}
