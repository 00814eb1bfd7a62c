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
//! Every sum runs in a fixed order: dk and dv of a key over the group's query heads in head order
//! and over query rows in row order; dq of a row over key tiles in order. Two passes do it with
//! fine tasks: one per (batch, kv head, key tile) gives dk and dv, one per (batch, query head,
//! query tile) gives dq, recomputing p and ds. Where there are enough (batch, kv head) tasks for
//! the threads (and, for 16-bit storage, the kv head's dk and dv sums fit a stack tile), one pass
//! per (batch, kv head) walks the group's heads, their query tiles and the key tiles each sees,
//! computes p and ds once and adds them into dq, dk and dv: the same sums in the same order, so
//! the same bits. No task's result depends on which thread ran it, so outputs are bit-identical
//! on any thread count.
//!
//! The forward pass and the one-pass backward hold a query tile transposed, [d][row], so the
//! scores of all the tile's rows with one key are one vector (block_q = the vector width): key
//! products are register-blocked over keys with no transposed key tiles and no horizontal sums;
//! the masking, running maxima, exp and row sums run over rows in the lanes; the weighted sums
//! (p v, ds k, p^T dO, ds^T q) run four rows or two keys at a time where the nonzero weights form
//! one run, else over the listed nonzero weights. These two are compiled again for x86-64-v4 in
//! zig/src/wide.zig and dispatched at run time (their key blocks are 8 keys there, 4 on AVX2).
//!
//! Storage is float32, float16 or bfloat16 (storage.zig), loaded into float32 tiles; every output
//! is rounded once on store. Row functions are generic over the lane count n (the CPU runs
//! n = storage.lanes and a tail with n = 1). Every product-sum (q . k, dO . v, p v, ds k, p^T dO,
//! ds^T q) accumulates with fused multiply-adds in a fixed order over d or over the listed rows,
//! so a vector lane gives the bits of a scalar call (and a device kernel that keeps the order).

const std = @import("std");
const builtin = @import("builtin");
const storage = @import("storage.zig");
const mathf = @import("mathf.zig");
const pool = @import("../cpu/pool.zig");
const dispatch = @import("../cpu/dispatch.zig");

const Dtype = storage.Dtype;
const F = storage.F;
const lanes = storage.lanes;

/// The largest head dimension the stack tiles hold.
pub const head_dim_max: u64 = 256;
/// Query rows per tile.
pub const block_q: u64 = 16;
/// Key rows per tile.
pub const block_kv: u64 = 32;

/// Keys whose products with a query tile the forward pass sums at once (accumulator chains in
/// flight): eight where AVX-512's 32 vector registers hold them, four on AVX2.
const key_block: usize = if (builtin.cpu.arch == .x86_64 and std.Target.x86.featureSetHas(builtin.cpu.features, .avx512f)) 8 else 4;

comptime {
    // The forward pass holds a query tile's rows in the lanes of one vector.
    std.debug.assert(block_q == lanes);
}

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
            for (0..cols) |c| keys.v_t[d * block_kv + c] = keys.v[c * dim + d];
            @memset(keys.v_t[d * block_kv + cols ..][0 .. block_kv - cols], 0);
        }
    }
};

/// The products of two rows, each against its own transposed tile [D][block_kv], with every
/// column: out[c] = sum over d of a[d] * tile[d][c], each summed with fused multiply-adds in order
/// of d from 0, four accumulator chains in flight.
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

/// Turns a row's products with the key tile (in `out`, from products_pair) into
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
        const RowVec = F(block_q);
        const RowIndex = @Vector(block_q, u32);
        const none_row: RowVec = @splat(-std.math.inf(f32));

        /// The forward pass's tiles: the query tile transposed ([d] is a vector over the tile's
        /// rows), the rows' accumulators, one key/value tile as rows (float32 storage reads the
        /// operands in place instead), and the tile's scores and then weights transposed.
        const ForwardTiles = struct {
            q_t: [head_dim_max]RowVec,
            acc: QTile,
            k: KTile,
            v: KTile,
            s_t: [block_kv][block_q]f32,
            keep: [block_kv]bool,
        };

        /// Rows of a key or value tile: row c at rows[c * stride ..][0..dim].
        const TileRows = struct { rows: [*]const f32, stride: usize };

        /// A key or value tile [k0, k0 + cols) of kv head h: in place for float32 storage, else
        /// widened into `tile`.
        fn tile_rows(base: [*]const u8, first: u64, stride: u64, cols: u64, dim: u64, tile: *KTile) TileRows {
            if (dtype == .float32) {
                const all: [*]const f32 = @ptrCast(@alignCast(base));
                return .{ .rows = all + first, .stride = stride };
            }
            for (0..cols) |c| load_row(dtype, base, first + c * stride, row_of(tile, c, dim));
            return .{ .rows = tile, .stride = dim };
        }

        /// s_t[c0 + i] = the tile rows' products with key c0 + i, i < n: a vector over rows per
        /// key, each lane summed over d in order from 0 (the bits of products_pair), n chains in flight.
        inline fn key_products(comptime n: usize, q_t: *const [head_dim_max]RowVec, keys: TileRows, dim: usize, c0: usize, s_t: *[block_kv][block_q]f32) void {
            var sums: [n]RowVec = @splat(@splat(0));
            for (0..dim) |d| {
                const q = q_t[d];
                inline for (0..n) |i| sums[i] = @mulAdd(RowVec, q, @splat(keys.rows[(c0 + i) * keys.stride + d]), sums[i]);
            }
            inline for (0..n) |i| s_t[c0 + i] = sums[i];
        }

        /// acc rows r0 .. r0 + R, elements [j, j + n): times their factors, plus the weighted sum
        /// of value rows c in [c_begin, c_end) in order of c (each element the chain of
        /// gather_add's), with R * n / lanes chains in flight.
        inline fn weighted_chunk(comptime R: usize, comptime n: usize, acc: *QTile, dim: usize, r0: usize, factors: [R]f32, s_t: *const [block_kv][block_q]f32, values: TileRows, c_begin: usize, c_end: usize, j: usize) void {
            var sums: [R]F(n) = undefined;
            inline for (0..R) |i| sums[i] = @as(F(n), acc[(r0 + i) * dim + j ..][0..n].*) * @as(F(n), @splat(factors[i]));
            for (c_begin..c_end) |c| {
                const value: F(n) = values.rows[c * values.stride + j ..][0..n].*;
                inline for (0..R) |i| sums[i] = @mulAdd(F(n), @splat(s_t[c][r0 + i]), value, sums[i]);
            }
            inline for (0..R) |i| acc[(r0 + i) * dim + j ..][0..n].* = sums[i];
        }

        /// weighted_chunk over whole rows (two-vector chunks, a vector, then single elements).
        fn weighted_rows(comptime R: usize, acc: *QTile, dim: usize, r0: usize, factors: [R]f32, s_t: *const [block_kv][block_q]f32, values: TileRows, c_begin: usize, c_end: usize) void {
            var j: usize = 0;
            while (j + 2 * lanes <= dim) : (j += 2 * lanes) weighted_chunk(R, 2 * lanes, acc, dim, r0, factors, s_t, values, c_begin, c_end, j);
            while (j + lanes <= dim) : (j += lanes) weighted_chunk(R, lanes, acc, dim, r0, factors, s_t, values, c_begin, c_end, j);
            while (j < dim) : (j += 1) weighted_chunk(R, 1, acc, dim, r0, factors, s_t, values, c_begin, c_end, j);
        }

        /// The key and value rows of the tile [k0, k0 + cols) of (batch b, kv head h_kv), and in
        /// `keep` which keys the mask keeps.
        fn key_value_rows(p: *const Problem, kp: [*]const u8, vp: [*]const u8, mask: ?Mask, b: u64, h_kv: u64, k0: u64, cols: u64, k_tile: *KTile, v_tile: *KTile, keep: *[block_kv]bool) struct { TileRows, TileRows } {
            for (0..cols) |c| keep[c] = if (mask) |m| m.keep(b * p.steps_kv + k0 + c) else true;
            return .{
                tile_rows(kp, p.k_index(b, k0, h_kv), p.k_stride, cols, p.head_dim, k_tile),
                tile_rows(vp, p.v_index(b, k0, h_kv), p.v_stride, cols, p.head_dim, v_tile),
            };
        }

        /// tile rows [0, rows) of width dim, transposed into vectors over the rows (lanes past
        /// `rows` are 0).
        fn transpose_rows(tile: []const f32, rows: u64, dim: u64, out: *[head_dim_max]RowVec) void {
            for (0..dim) |d| {
                var column: [block_q]f32 = @splat(0);
                for (0..rows) |r| column[r] = tile[r * dim + d];
                out[d] = column;
            }
        }

        /// keys_end of each row of the query tile at q0 (lanes past `rows` repeat the last row's).
        fn row_limits(p: *const Problem, q0: u64, rows: u64) RowIndex {
            var limits: [block_q]u32 = undefined;
            for (&limits, 0..) |*limit, r| limit.* = @intCast(p.keys_end(q0 + @min(r, rows - 1)));
            return limits;
        }

        /// Which rows see key `index`: causally visible and kept by the mask.
        inline fn visible_rows(limits: RowIndex, index: u64, keep: bool) @Vector(block_q, bool) {
            const none: @Vector(block_q, bool) = @splat(false);
            return @select(bool, @as(RowIndex, @splat(@intCast(index))) < limits, @as(@Vector(block_q, bool), @splat(keep)), none);
        }

        /// out[c] = the tile rows' products with key c, for every key c < cols (blocks of key_block).
        fn tile_products(q_t: *const [head_dim_max]RowVec, keys: TileRows, dim: usize, cols: usize, out: *[block_kv][block_q]f32) void {
            var c0: usize = 0;
            while (c0 + key_block <= cols) : (c0 += key_block) key_products(key_block, q_t, keys, dim, c0, out);
            inline for (1..key_block) |n| {
                if (cols - c0 == n) key_products(n, q_t, keys, dim, c0, out);
            }
        }

        /// One (batch, query head, query tile) of the forward pass. The query tile is held
        /// transposed, so each key's scores for all the tile's rows are one vector: the products,
        /// scaling, masking, running maxima, exp and sums run over rows in vector lanes, with no
        /// horizontal reductions and no key transposes. Each row's sums are the same operations in
        /// the same order as a row-at-a-time pass (the weighted value sums skip exactly the keys
        /// whose weight is 0), so the bits do not depend on how rows are grouped.
        fn forward_item(f: *const Forward, item: u64) void {
            const p = &f.problem;
            const dim = p.head_dim;
            var tiles: ForwardTiles = undefined;
            const b, const h, const q0, const rows = query_item(p, item);
            const h_kv = h / p.group();
            // The query tile, transposed through the accumulator tile (then cleared).
            for (0..rows) |r| load_row(dtype, f.q, p.q_index(b, q0 + r, h), row_of(&tiles.acc, r, dim));
            transpose_rows(&tiles.acc, rows, dim, &tiles.q_t);
            @memset(tiles.acc[0 .. rows * dim], 0);
            const limits = row_limits(p, q0, rows);
            var m: RowVec = none_row;
            var l: RowVec = @splat(0);
            const kv_end = p.keys_end(q0 + rows - 1);
            var k0: u64 = 0;
            while (k0 < kv_end) : (k0 += block_kv) {
                const cols = @min(block_kv, kv_end - k0);
                const keys, const values = key_value_rows(p, f.k, f.v, f.mask, b, h_kv, k0, cols, &tiles.k, &tiles.v, &tiles.keep);
                tile_products(&tiles.q_t, keys, dim, cols, &tiles.s_t);
                // Scale, hide what a row cannot see, and take each row's maximum.
                var tile_max = none_row;
                for (0..cols) |c| {
                    const visible = visible_rows(limits, k0 + c, tiles.keep[c]);
                    const scaled = @as(RowVec, tiles.s_t[c]) * @as(RowVec, @splat(f.scale));
                    const score = @select(f32, visible, scaled, none_row);
                    tiles.s_t[c] = score;
                    tile_max = @max(tile_max, score);
                }
                const m_new = @max(m, tile_max);
                // A row that sees nothing here keeps its state: factor 1, weights 0.
                const seen = tile_max != none_row;
                const alpha = @select(f32, seen, exp(block_q, m - m_new), @as(RowVec, @splat(1)));
                const shift = @select(f32, m_new == none_row, @as(RowVec, @splat(0)), m_new);
                // Weights and their sums in order of keys.
                var total: RowVec = @splat(0);
                for (0..cols) |c| {
                    const weight = exp(block_q, @as(RowVec, tiles.s_t[c]) - shift);
                    tiles.s_t[c] = weight;
                    total += weight;
                }
                l = l * alpha + total;
                m = m_new;
                // acc = acc * alpha + weights . values, row by row in order of keys, over each
                // row's nonzero weights.
                const alphas: [block_q]f32 = alpha;
                add_weighted(&tiles.acc, dim, rows, &alphas, &tiles.s_t, &tiles.s_t, values, cols);
            }
            const totals: [block_q]f32 = l;
            const maxima: [block_q]f32 = m;
            for (0..rows) |r| {
                const seen = totals[r] > 0;
                // A row that sees no key: output 0 (its accumulators are 0) and lse -inf.
                store_row(dtype, f.out, p.o_index(b, q0 + r, h), row_of(&tiles.acc, r, dim), if (seen) 1 / totals[r] else 0);
                f.lse[p.lse_index(b, h, q0 + r)] = if (seen) maxima[r] + mathf.log(totals[r]) else -std.math.inf(f32);
            }
        }

        /// acc row r = acc row r * factor + sum over keys c in `list` (in order) of weight c * value row c.
        fn weighted_list(acc: *QTile, dim: usize, r: usize, factor: f32, s_t: *const [block_kv][block_q]f32, values: TileRows, list: []const u8) void {
            const row = row_of(acc, r, dim);
            for (row) |*x| x.* *= factor;
            for (list) |c| {
                const w = s_t[c][r];
                const value = values.rows[c * values.stride ..][0..dim];
                var j: usize = 0;
                while (j + lanes <= dim) : (j += lanes) row[j..][0..lanes].* = @mulAdd(F(lanes), @splat(w), value[j..][0..lanes].*, row[j..][0..lanes].*);
                while (j < dim) : (j += 1) row[j] = @mulAdd(f32, w, value[j], row[j]);
            }
        }

        /// Rows of float32 sums: row c at rows[c * stride ..][0..dim].
        const SumRows = struct {
            rows: [*]f32,
            stride: usize,
            fn row(s: SumRows, c: usize, dim: usize) []f32 {
                return s.rows[c * s.stride ..][0..dim];
            }
        };

        /// Where each row's weights over the tile's keys are nonzero, from `pattern` (vectors over
        /// rows, keys [0, cols)): how many, and whether they are a prefix of the keys.
        const RowPattern = struct { counts: [block_q]u32, prefix: [block_q]bool };

        fn row_pattern(pattern: *const [block_kv][block_q]f32, cols: usize) RowPattern {
            var nonzero: RowIndex = @splat(0);
            var first_zero: RowIndex = @splat(@intCast(cols));
            for (0..cols) |c| {
                const kept = @as(RowVec, pattern[c]) != @as(RowVec, @splat(0));
                nonzero += @select(u32, kept, @as(RowIndex, @splat(1)), @as(RowIndex, @splat(0)));
                first_zero = @select(u32, kept, first_zero, @min(first_zero, @as(RowIndex, @splat(@intCast(c)))));
            }
            return .{ .counts = nonzero, .prefix = nonzero == first_zero };
        }

        /// acc row r (r < rows) = acc row r * factors[r] + sum over the keys c where pattern[c][r]
        /// is not 0, in order, of weights[c][r] * value row c: gather_add's chain for every
        /// element. Rows whose keys are a prefix of the tile run four at a time.
        fn add_weighted(acc: *QTile, dim: usize, rows: usize, factors: *const [block_q]f32, pattern: *const [block_kv][block_q]f32, weights: *const [block_kv][block_q]f32, values: TileRows, cols: usize) void {
            const shape = row_pattern(pattern, cols);
            const counts = &shape.counts;
            const prefix = &shape.prefix;
            var r: usize = 0;
            while (r < rows) {
                if (r + 4 <= rows and prefix[r] and prefix[r + 1] and prefix[r + 2] and prefix[r + 3]) {
                    const shared = @min(@min(counts[r], counts[r + 1]), @min(counts[r + 2], counts[r + 3]));
                    weighted_rows(4, acc, dim, r, factors[r..][0..4].*, weights, values, 0, shared);
                    for (r..r + 4) |i| {
                        if (counts[i] > shared) weighted_rows(1, acc, dim, i, .{1}, weights, values, shared, counts[i]);
                    }
                    r += 4;
                    continue;
                }
                if (prefix[r]) {
                    weighted_rows(1, acc, dim, r, .{factors[r]}, weights, values, 0, counts[r]);
                } else {
                    var list: [block_kv]u8 = undefined;
                    var listed: usize = 0;
                    for (0..cols) |c| {
                        list[listed] = @intCast(c);
                        listed += @intFromBool(pattern[c][r] != 0);
                    }
                    weighted_list(acc, dim, r, factors[r], weights, values, list[0..listed]);
                }
                r += 1;
            }
        }

        /// dv row c += sum over rows r of probs[c][r] * dO row r and dk row c += sum of
        /// d_scores[c][r] * q row r, for C keys c0 .. c0 + C over rows [r_begin, r_end) in order,
        /// elements [j, j + n): 2 * C * n / lanes chains in flight.
        inline fn key_grads_chunk(comptime C: usize, comptime n: usize, t: *const BackwardTiles, dk: SumRows, dv: SumRows, c0: usize, k0: usize, dim: usize, r_begin: usize, r_end: usize, j: usize) void {
            var x: [C]F(n) = undefined;
            var y: [C]F(n) = undefined;
            inline for (0..C) |i| {
                x[i] = dv.rows[(k0 + c0 + i) * dv.stride + j ..][0..n].*;
                y[i] = dk.rows[(k0 + c0 + i) * dk.stride + j ..][0..n].*;
            }
            for (r_begin..r_end) |r| {
                const d_out: F(n) = t.d_out[r * dim + j ..][0..n].*;
                const q: F(n) = t.q[r * dim + j ..][0..n].*;
                inline for (0..C) |i| {
                    x[i] = @mulAdd(F(n), @splat(t.p_t[c0 + i][r]), d_out, x[i]);
                    y[i] = @mulAdd(F(n), @splat(t.ds_t[c0 + i][r]), q, y[i]);
                }
            }
            inline for (0..C) |i| {
                dv.rows[(k0 + c0 + i) * dv.stride + j ..][0..n].* = x[i];
                dk.rows[(k0 + c0 + i) * dk.stride + j ..][0..n].* = y[i];
            }
        }

        fn key_grads(comptime C: usize, t: *const BackwardTiles, dk: SumRows, dv: SumRows, c0: usize, k0: usize, dim: usize, r_begin: usize, r_end: usize) void {
            var j: usize = 0;
            while (j + 2 * lanes <= dim) : (j += 2 * lanes) key_grads_chunk(C, 2 * lanes, t, dk, dv, c0, k0, dim, r_begin, r_end, j);
            while (j + lanes <= dim) : (j += lanes) key_grads_chunk(C, lanes, t, dk, dv, c0, k0, dim, r_begin, r_end, j);
            while (j < dim) : (j += 1) key_grads_chunk(C, 1, t, dk, dv, c0, k0, dim, r_begin, r_end, j);
        }

        /// The rows of key c's nonzero probabilities as a bit set (bit r: row r).
        fn rows_of_key(t: *const BackwardTiles, c: usize, rows: usize) u32 {
            const bits: u32 = @as(u16, @bitCast(@as(RowVec, t.p_t[c]) != @as(RowVec, @splat(0))));
            return bits & ((@as(u32, 1) << @intCast(rows)) - 1);
        }

        /// Whether a row set is one run ending at the last row (rows >= the first set bit).
        fn is_suffix(set: u32, rows: usize) bool {
            return set != 0 and set >> @intCast(@ctz(set)) == (@as(u32, 1) << @intCast(rows - @ctz(set))) - 1;
        }

        /// Adds one query tile's terms to dk and dv of keys [k0, k0 + cols): each key over its
        /// rows with a nonzero probability, in order (backward_keys' sums). Two keys run together
        /// where both rows sets are runs ending at the tile's last row (all but the diagonal).
        fn add_key_grads(t: *const BackwardTiles, dk: SumRows, dv: SumRows, k0: usize, cols: usize, rows: usize, dim: usize) void {
            var c: usize = 0;
            while (c < cols) {
                const set = rows_of_key(t, c, rows);
                if (c + 1 < cols) {
                    const next = rows_of_key(t, c + 1, rows);
                    if (is_suffix(set, rows) and is_suffix(next, rows)) {
                        const first: usize = @ctz(set);
                        const second: usize = @ctz(next);
                        if (first < second) key_grads(1, t, dk, dv, c, k0, dim, first, second);
                        if (second < first) key_grads(1, t, dk, dv, c + 1, k0, dim, second, first);
                        key_grads(2, t, dk, dv, c, k0, dim, @max(first, second), rows);
                        c += 2;
                        continue;
                    }
                }
                if (is_suffix(set, rows)) {
                    key_grads(1, t, dk, dv, c, k0, dim, @ctz(set), rows);
                } else if (set != 0) {
                    var list: [block_q]u8 = undefined;
                    var listed: usize = 0;
                    for (0..rows) |r| {
                        list[listed] = @intCast(r);
                        listed += @intFromBool(set >> @intCast(r) & 1 != 0);
                    }
                    gather_add_shared2(false, dv.row(k0 + c, dim), 1, &t.p_t[c], &t.d_out, dk.row(k0 + c, dim), 1, &t.ds_t[c], &t.q, 1, list[0..listed], listed);
                }
                c += 1;
            }
        }

        const BackwardTiles = struct {
            q: QTile,
            d_out: QTile,
            q_t: [head_dim_max]RowVec,
            d_out_t: [head_dim_max]RowVec,
            dq: QTile,
            k: KTile,
            v: KTile,
            p_t: [block_kv][block_q]f32,
            ds_t: [block_kv][block_q]f32,
            keep: [block_kv]bool,
        };

        /// dq, dk and dv of one (batch, kv head) in one pass: for each of the group's query heads
        /// in order, each query tile in order, each key tile it sees in order, the tile's
        /// probabilities and score gradients are computed once (a vector over the query tile's
        /// rows per key, as the forward pass) and added into the query tile's dq and the kv
        /// head's dk and dv (float32 storage sums them in place in the outputs, else in
        /// `dkv_floats`-bounded stack rows). Every sum runs in the order of backward_keys and
        /// backward_queries: the same bits.
        fn backward_fused_item(g: *const Backward, item: u64) void {
            const p = &g.problem;
            const dim = p.head_dim;
            const h_kv = item % p.heads_kv;
            const b = item / p.heads_kv;
            var t: BackwardTiles = undefined;
            var stack_sums: [if (dtype == .float32) 1 else 2 * fused_kv_floats]f32 = undefined;
            const dk: SumRows, const dv: SumRows = if (dtype == .float32) .{
                .{ .rows = @as([*]f32, @ptrCast(@alignCast(g.dk))) + p.k_index(b, 0, h_kv), .stride = p.k_stride },
                .{ .rows = @as([*]f32, @ptrCast(@alignCast(g.dv))) + p.v_index(b, 0, h_kv), .stride = p.v_stride },
            } else .{
                .{ .rows = &stack_sums, .stride = dim },
                .{ .rows = stack_sums[fused_kv_floats..].ptr, .stride = dim },
            };
            for (0..p.steps_kv) |c| {
                @memset(dk.row(c, dim), 0);
                @memset(dv.row(c, dim), 0);
            }
            const ones: [block_q]f32 = @splat(1);
            for (0..p.group()) |member| {
                const h = h_kv * p.group() + member;
                var q0: u64 = 0;
                while (q0 < p.steps_q) : (q0 += block_q) {
                    const rows = @min(block_q, p.steps_q - q0);
                    var delta: [block_q]f32 = @splat(0);
                    var lse: [block_q]f32 = @splat(-std.math.inf(f32));
                    load_queries(g, b, h, q0, rows, &t.q, &t.d_out, &delta, &lse);
                    transpose_rows(&t.q, rows, dim, &t.q_t);
                    transpose_rows(&t.d_out, rows, dim, &t.d_out_t);
                    @memset(t.dq[0 .. rows * dim], 0);
                    const limits = row_limits(p, q0, rows);
                    const shift: RowVec = lse;
                    // A row that sees no key (lse -inf) gets no gradient: its probabilities are 0.
                    const live = shift != none_row;
                    const kv_end = p.keys_end(q0 + rows - 1);
                    var k0: u64 = 0;
                    while (k0 < kv_end) : (k0 += block_kv) {
                        const cols = @min(block_kv, kv_end - k0);
                        const keys, const values = key_value_rows(p, g.k, g.v, g.mask, b, h_kv, k0, cols, &t.k, &t.v, &t.keep);
                        tile_products(&t.q_t, keys, dim, cols, &t.p_t);
                        tile_products(&t.d_out_t, values, dim, cols, &t.ds_t);
                        const scale: RowVec = @splat(g.scale);
                        for (0..cols) |c| {
                            const visible = visible_rows(limits, k0 + c, t.keep[c]);
                            const seen = @select(bool, live, visible, @as(@Vector(block_q, bool), @splat(false)));
                            const scaled = @as(RowVec, t.p_t[c]) * scale;
                            const prob = exp(block_q, @select(f32, seen, scaled - shift, none_row));
                            t.p_t[c] = prob;
                            const d_score = prob * (@as(RowVec, t.ds_t[c]) - @as(RowVec, delta)) * scale;
                            t.ds_t[c] = @select(f32, prob == @as(RowVec, @splat(0)), @as(RowVec, @splat(0)), d_score);
                        }
                        add_weighted(&t.dq, dim, rows, &ones, &t.p_t, &t.ds_t, keys, cols);
                        add_key_grads(&t, dk, dv, k0, cols, rows, dim);
                    }
                    for (0..rows) |r| store_row(dtype, g.dq, p.q_index(b, q0 + r, h), row_of(&t.dq, r, dim), 1);
                }
            }
            if (dtype != .float32) {
                for (0..p.steps_kv) |c| {
                    store_row(dtype, g.dk, p.k_index(b, c, h_kv), dk.row(c, dim), 1);
                    store_row(dtype, g.dv, p.v_index(b, c, h_kv), dv.row(c, dim), 1);
                }
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
            key_tile(g, &tiles, b, h_kv, tile * block_kv);
        }

        /// dk and dv of the key tile at k0 of (batch b, kv head h_kv), stored.
        fn key_tile(g: *const Backward, t: *KeyTiles, b: u64, h_kv: u64, k0: u64) void {
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
                    }
                    key_sums(t, rows, cols, dim);
                }
            }
            for (0..cols) |c| {
                store_row(dtype, g.dk, p.k_index(b, k0 + c, h_kv), row_of(&t.dk, c, dim), 1);
                store_row(dtype, g.dv, p.v_index(b, k0 + c, h_kv), row_of(&t.dv, c, dim), 1);
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
    const picked = struct {
        fn item(args: *const Forward, index: u64) void {
            dispatch.pick(*const @TypeOf(forward_item_c), "attention_forward_item", &forward_item_c)(@backingInt(dtype), args, index);
        }
    };
    Items(Forward, picked.item).go(f, p.batch * p.heads_q * q_tiles(p), p.work());
}

/// One work item of the forward pass, as a C function: zig/src/wide.zig exports its x86-64-v4
/// compilations, whose 32 zmm registers hold a query tile's rows in one vector and eight keys'
/// products in flight. The same operations in the same order on every path: the same bits.
pub fn forward_item_c(dtype: u32, args: *const Forward, item: u64) callconv(.c) void {
    switch (@as(Dtype, @fromBackingInt(@intCast(dtype)))) {
        inline .float32, .float16, .bfloat16 => |d| Kernels(d).forward_item(args, item),
        else => unreachable,
    }
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
    if (fused_fits(dtype, p) and p.batch * p.heads_kv >= pool.thread_count()) return backward_fused(dtype, g);
    Items(Backward, K.backward_keys_item).go(g, p.batch * p.heads_kv * kv_tiles(p), p.work());
    Items(Backward, K.backward_queries_item).go(g, p.batch * p.heads_q * q_tiles(p), p.work());
}

/// The one-pass backward (`fused_fits` must hold).
pub fn backward_fused(comptime dtype: Dtype, g: *const Backward) void {
    const p = &g.problem;
    std.debug.assert(p.valid() and fused_fits(dtype, p));
    const picked = struct {
        fn item(args: *const Backward, index: u64) void {
            dispatch.pick(*const @TypeOf(backward_fused_item_c), "attention_backward_item", &backward_fused_item_c)(@backingInt(dtype), args, index);
        }
    };
    Items(Backward, picked.item).go(g, p.batch * p.heads_kv, p.work());
}

/// One work item of the one-pass backward, as a C function (exported by zig/src/wide.zig as
/// forward_item_c is): the same bits on every path.
pub fn backward_fused_item_c(dtype: u32, args: *const Backward, item: u64) callconv(.c) void {
    switch (@as(Dtype, @fromBackingInt(@intCast(dtype)))) {
        inline .float32, .float16, .bfloat16 => |d| Kernels(d).backward_fused_item(args, item),
        else => unreachable,
    }
}

/// Floats of each of the one-pass backward's dk and dv sums of a kv head on the stack, for
/// bfloat16 and float16 storage (float32 storage sums in place in the outputs).
const fused_kv_floats: usize = 32 * 1024;

pub fn fused_fits(comptime dtype: Dtype, p: *const Problem) bool {
    return dtype == .float32 or p.steps_kv * p.head_dim <= fused_kv_floats;
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

test "the one-pass backward gives the two passes' bits, and every dispatch path the same forward and one-pass bits: GQA, masks, causal or not, T != S, tile tails, every dtype" {
    defer dispatch.set_path_for_test(null);
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
            try testing.expect(fused_fits(dtype, &p));
            const q_len = p.batch * p.steps_q * p.q_stride;
            const k_len = p.batch * p.steps_kv * p.k_stride;
            const lse_len = p.batch * p.heads_q * p.steps_q;
            const buffers = try allocator.alloc(f32, 7 * q_len + 8 * k_len + 2 * lse_len + p.batch * p.steps_kv);
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
            // The first path's forward and one-pass results, for the other paths to match.
            const first_out = take(&rest, q_len);
            const first_lse = take(&rest, lse_len);
            const first_grads = [_][]f32{ take(&rest, q_len), take(&rest, k_len), take(&rest, k_len) };
            for (dispatch.paths_available(), 0..) |path, path_index| {
                dispatch.set_path_for_test(path);
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
                if (path_index == 0) {
                    @memcpy(first_out, out);
                    @memcpy(first_lse, lse);
                    for (first_grads, grads[3..]) |first, grad| @memcpy(first, grad);
                } else {
                    try testing.expectEqualSlices(u32, @ptrCast(first_out), @ptrCast(out));
                    try testing.expectEqualSlices(u32, @ptrCast(first_lse), @ptrCast(lse));
                    for (first_grads, grads[3..]) |first, grad| try testing.expectEqualSlices(u32, @ptrCast(first), @ptrCast(grad));
                }
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
