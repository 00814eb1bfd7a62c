//! Fused causal self-attention for short sequences, forward and backward, straight from the packed
//! [B, T, 3C] projections (queries, keys, values; heads contiguous, as llm.c lays them out). Each
//! (batch, head) pair is one task on the thread pool: its Q, K and V are widened to float32 into
//! stack buffers, and scores, the causal softmax and the products run in float32. Sequences and
//! heads too large for the buffers are refused (status), and the TypeScript op falls back to its
//! batched-matmul path.

const std = @import("std");
const numerics = @import("../numerics.zig");
const pool = @import("pool.zig");

const Dtype = numerics.Dtype;

/// Limits of the fused path: T <= steps_max, D <= head_dim_max and T * D <= tile_max.
pub const steps_max = 64;
pub const head_dim_max = 128;
pub const tile_max = 4096;

pub const Shape = struct {
    batch: u64,
    steps: u64,
    heads: u64,
    head_dim: u64,

    pub fn fits(shape: Shape) bool {
        return shape.steps >= 1 and shape.steps <= steps_max and shape.head_dim >= 1 and
            shape.head_dim <= head_dim_max and shape.steps * shape.head_dim <= tile_max;
    }

    fn channels(shape: Shape) u64 {
        return shape.heads * shape.head_dim;
    }
};

fn load_value(dtype: Dtype, base: [*]const u8, index: u64) f32 {
    const bits: u32 = switch (dtype) {
        .float32 => @as([*]align(1) const u32, @ptrCast(base))[index],
        .float16 => numerics.f16_to_f32(1, @splat(@as([*]align(1) const u16, @ptrCast(base))[index]))[0],
        .bfloat16 => numerics.bf16_to_f32(1, @splat(@as([*]align(1) const u16, @ptrCast(base))[index]))[0],
        else => unreachable, // Checked by the export.
    };
    return @bitCast(bits);
}

/// Q, K and V of one (batch, head) pair, float32, row t at t * head_dim.
const Tile = struct {
    q: [tile_max]f32,
    k: [tile_max]f32,
    v: [tile_max]f32,

    fn load(tile: *Tile, dtype: Dtype, qkv: [*]const u8, shape: Shape, b: u64, h: u64) void {
        const channels = shape.channels();
        for (0..shape.steps) |t| {
            const row = (b * shape.steps + t) * 3 * channels + h * shape.head_dim;
            for (0..shape.head_dim) |d| {
                const at = t * shape.head_dim + d;
                tile.q[at] = load_value(dtype, qkv, row + d);
                tile.k[at] = load_value(dtype, qkv, row + channels + d);
                tile.v[at] = load_value(dtype, qkv, row + 2 * channels + d);
            }
        }
    }
};

fn dot(a: []const f32, b: []const f32) f32 {
    var sum: f32 = 0;
    for (a, b) |x, y| sum += x * y;
    return sum;
}

const Forward = struct {
    qkv: [*]const u8,
    dtype: Dtype,
    shape: Shape,
    out: [*]f32,
    probs: [*]f32,
    next: std.atomic.Value(u64) = .init(0),

    fn run(self: *Forward, worker: u32) void {
        _ = worker;
        var tile: Tile = undefined;
        const s = self.shape;
        const pairs = s.batch * s.heads;
        const scale = 1.0 / @sqrt(@as(f32, @floatFromInt(s.head_dim)));
        while (true) {
            const pair = self.next.fetchAdd(1, .monotonic);
            if (pair >= pairs) break;
            const b = pair / s.heads;
            const h = pair % s.heads;
            tile.load(self.dtype, self.qkv, s, b, h);
            const dim = s.head_dim;
            for (0..s.steps) |i| {
                const p = self.probs[(pair * s.steps + i) * s.steps ..][0..s.steps];
                const qi = tile.q[i * dim ..][0..dim];
                var max: f32 = -std.math.inf(f32);
                for (0..i + 1) |j| {
                    p[j] = dot(qi, tile.k[j * dim ..][0..dim]) * scale;
                    max = @max(max, p[j]);
                }
                var total: f32 = 0;
                for (0..i + 1) |j| {
                    p[j] = @exp(p[j] - max);
                    total += p[j];
                }
                const inverse = 1.0 / total;
                for (0..i + 1) |j| p[j] *= inverse;
                @memset(p[i + 1 ..], 0);
                const out = self.out[(b * s.steps + i) * s.channels() + h * dim ..][0..dim];
                @memset(out, 0);
                for (0..i + 1) |j| {
                    for (out, tile.v[j * dim ..][0..dim]) |*o, v| o.* += p[j] * v;
                }
            }
        }
    }
};

const Backward = struct {
    qkv: [*]const u8,
    dtype: Dtype,
    shape: Shape,
    probs: [*]const f32,
    grad_out: [*]const f32,
    grad_qkv: [*]f32,
    next: std.atomic.Value(u64) = .init(0),

    fn run(self: *Backward, worker: u32) void {
        _ = worker;
        var tile: Tile = undefined;
        var d_scores: [steps_max]f32 = undefined;
        const s = self.shape;
        const pairs = s.batch * s.heads;
        const dim = s.head_dim;
        const channels = s.channels();
        const scale = 1.0 / @sqrt(@as(f32, @floatFromInt(dim)));
        while (true) {
            const pair = self.next.fetchAdd(1, .monotonic);
            if (pair >= pairs) break;
            const b = pair / s.heads;
            const h = pair % s.heads;
            tile.load(self.dtype, self.qkv, s, b, h);
            // This head's slices of dQ, dK, dV in the packed gradient start at zero.
            for (0..s.steps) |t| {
                const row = (b * s.steps + t) * 3 * channels + h * dim;
                @memset(self.grad_qkv[row..][0..dim], 0);
                @memset(self.grad_qkv[row + channels ..][0..dim], 0);
                @memset(self.grad_qkv[row + 2 * channels ..][0..dim], 0);
            }
            for (0..s.steps) |i| {
                const p = self.probs[(pair * s.steps + i) * s.steps ..][0..s.steps];
                const d_out = self.grad_out[(b * s.steps + i) * channels + h * dim ..][0..dim];
                // dP_ij = dO_i . v_j, then dS_ij = P_ij (dP_ij - sum_k dP_ik P_ik) * scale.
                var weighted: f32 = 0;
                for (0..i + 1) |j| {
                    d_scores[j] = dot(d_out, tile.v[j * dim ..][0..dim]);
                    weighted += d_scores[j] * p[j];
                }
                const dq = self.grad_qkv[(b * s.steps + i) * 3 * channels + h * dim ..][0..dim];
                for (0..i + 1) |j| {
                    const ds = p[j] * (d_scores[j] - weighted) * scale;
                    const row_j = (b * s.steps + j) * 3 * channels + h * dim;
                    const dk = self.grad_qkv[row_j + channels ..][0..dim];
                    const dv = self.grad_qkv[row_j + 2 * channels ..][0..dim];
                    const kj = tile.k[j * dim ..][0..dim];
                    const qi = tile.q[i * dim ..][0..dim];
                    for (dq, kj) |*g, k| g.* += ds * k;
                    for (dk, qi) |*g, q| g.* += ds * q;
                    for (dv, d_out) |*g, o| g.* += p[j] * o;
                }
            }
        }
    }
};

fn workers_for(shape: Shape) u32 {
    const pairs = shape.batch * shape.heads;
    // About 2 * T^2 * D multiply-adds per pair; below ~64K in all, one thread is faster.
    if (pairs * shape.steps * shape.steps * shape.head_dim < 1 << 16) return 1;
    return @intCast(@min(pool.thread_count(), pairs));
}

/// out [B, T, C] and probs [B * H, T, T] (kept for the backward pass), both float32.
pub fn forward(qkv: [*]const u8, dtype: Dtype, shape: Shape, out: [*]f32, probs: [*]f32) void {
    std.debug.assert(shape.fits());
    var task = Forward{ .qkv = qkv, .dtype = dtype, .shape = shape, .out = out, .probs = probs };
    pool.run_workers(workers_for(shape), &task, Forward.run);
}

/// grad_qkv [B, T, 3C] (float32) from the forward's probs and grad_out [B, T, C].
pub fn backward(qkv: [*]const u8, dtype: Dtype, shape: Shape, probs: [*]const f32, grad_out: [*]const f32, grad_qkv: [*]f32) void {
    std.debug.assert(shape.fits());
    var task = Backward{ .qkv = qkv, .dtype = dtype, .shape = shape, .probs = probs, .grad_out = grad_out, .grad_qkv = grad_qkv };
    pool.run_workers(workers_for(shape), &task, Backward.run);
}

test "the first position attends only to itself" {
    // B = 1, T = 2, H = 1, D = 1: qkv rows are (q, k, v).
    const qkv = [_]f32{ 1, 1, 5, 1, 1, 7 };
    var out: [2]f32 = undefined;
    var probs: [4]f32 = undefined;
    const shape = Shape{ .batch = 1, .steps = 2, .heads = 1, .head_dim = 1 };
    forward(@ptrCast(&qkv), .float32, shape, &out, &probs);
    try std.testing.expectEqual(@as(f32, 5), out[0]);
    try std.testing.expectApproxEqAbs(@as(f32, 6), out[1], 1e-6);
    try std.testing.expectEqual(@as(f32, 0), probs[1]);
}
