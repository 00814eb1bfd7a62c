//! Fused multi-tensor AdamW (PyTorch's torch.optim.AdamW algorithm) with float32 master weights:
//! one pass over memory per step. Per element it reads the low-precision gradient, applies the
//! inverse loss scale and the clip factor, updates m and v (float32 or bfloat16 state), the float32
//! master (or the parameter itself when there is no master) and writes the parameter in its own
//! dtype, nearest-even or stochastic (zig/src/numerics.zig). The float32 operations and their order
//! are exactly those of the composed TypeScript chain (src/optim/), so both give the same bits:
//!
//!   g = g * inv_scale; g = g * clip
//!   m = fma(1 - b1, g - m, m);  v = fma((1 - b2) * g, g, b2 * v);  (amsgrad: v_max = max(v_max, v))
//!     (torch 2.13's CPU rounding of lerp and addcmul, bit for bit: step_math.adam_moments)
//!   r = (c * m) / (sqrt(v) + eps_hat), c = sqrt(1 - b2^t) / (1 - b1^t), eps_hat = eps * sqrt(1 - b2^t)
//!     (PyTorch's (m / (1 - b1^t)) / (sqrt(v) / sqrt(1 - b2^t) + eps) with the bias corrections
//!     folded into two scalars computed in float64: exactly equal in real arithmetic, eps still
//!     after bias correction, one division and one square root per element instead of 3 + 1)
//!   p = p * (1 - lr * wd) + (-lr) * r   (computed as p + ((p * (1 - lr * wd) + (-lr) * r) - p), as
//!                                         the chain's update is added back)
//!
//! Bytes per element with a float32 master and state: grad 2 + master 4+4 + m 4+4 + v 4+4 + param 2.

const std = @import("std");
const numerics = @import("../numerics.zig");
const rows_loop = @import("rows.zig");
const dispatch = @import("dispatch.zig");
const cast = @import("cast.zig");

const Dtype = numerics.Dtype;
const n = cast.lanes;

// The row table and step constants are defined once, in the file the device kernels can import
// too (zig/src/cuda/step_math.zig), so the CPU and GPU steps read the same layout.
const step_math = @import("../cuda/step_math.zig");
pub const AdamRow = step_math.AdamRow;
pub const AdamHyper = step_math.AdamHyper;
pub const flag_amsgrad = step_math.adam_flag_amsgrad;
pub const flag_stochastic = step_math.adam_flag_stochastic;

fn is_float(dtype: u32) bool {
    const d = Dtype.from_int(dtype) orelse return false;
    return d == .float32 or d == .float16 or d == .bfloat16;
}

/// Returns false when a row has an unsupported dtype or a missing address.
pub fn validate(rows: []const AdamRow) bool {
    for (rows) |row| {
        if (!is_float(row.grad_dtype) or !is_float(row.param_dtype)) return false;
        if (row.state_dtype != @backingInt(Dtype.float32) and row.state_dtype != @backingInt(Dtype.bfloat16)) return false;
        if (row.count == 0) continue;
        if (row.grad == 0 or row.param == 0 or row.m == 0 or row.v == 0) return false;
    }
    return true;
}

inline fn load_f32(comptime w: comptime_int, comptime dtype: Dtype, address: u64, index: u64) @Vector(w, f32) {
    const base: [*]const u8 = @ptrFromInt(address);
    return @bitCast(numerics.to_f32(w, dtype, cast.load(w, dtype, base, index)));
}

/// Stores float32 lanes in `dtype` (nearest even) and returns the stored values widened again.
inline fn store_state(comptime w: comptime_int, comptime dtype: Dtype, address: u64, index: u64, values: @Vector(w, f32)) @Vector(w, f32) {
    const base: [*]u8 = @ptrFromInt(address);
    const bits = numerics.from_f32(w, dtype, @bitCast(values), null, false);
    cast.store(w, dtype, base, index, bits);
    return @bitCast(numerics.to_f32(w, dtype, bits));
}

inline fn step_lanes(
    comptime w: comptime_int,
    comptime grad_dtype: Dtype,
    comptime param_dtype: Dtype,
    comptime state_dtype: Dtype,
    row: *const AdamRow,
    h: *const AdamHyper,
    index: u64,
) void {
    const F = @Vector(w, f32);
    var g = load_f32(w, grad_dtype, row.grad, index);
    if (h.inv_scale != 1.0) g = g * @as(F, @splat(h.inv_scale));
    if (h.clip != 1.0) g = g * @as(F, @splat(h.clip));
    var m = load_f32(w, state_dtype, row.m, index);
    var v = load_f32(w, state_dtype, row.v, index);
    const moments = step_math.adam_moments(F, m, v, g, h.one_minus_beta1, h.beta2, h.one_minus_beta2);
    m = moments[0];
    v = moments[1];
    m = store_state(w, state_dtype, row.m, index, m);
    v = store_state(w, state_dtype, row.v, index, v);
    if (h.flags & flag_amsgrad != 0) {
        v = @max(load_f32(w, state_dtype, row.v_max, index), v);
        v = store_state(w, state_dtype, row.v_max, index, v);
    }
    const r = (@as(F, @splat(h.step_scale)) * m) / (@sqrt(v) + @as(F, @splat(h.eps_hat)));
    const u = @as(F, @splat(h.neg_lr)) * r;
    const has_master = row.master != 0;
    var p = if (has_master) load_f32(w, .float32, row.master, index) else load_f32(w, param_dtype, row.param, index);
    // The composed chain returns `(p * decay + u) - p` and applyUpdates adds it to p; doing the
    // same here keeps fused and composed bit-identical even when the step is not within a factor
    // 2 of p (where that subtraction rounds). With decay 1 the chain passes u through.
    if (h.decay != 1.0) {
        const decayed = p * @as(F, @splat(h.decay)) + u;
        p = p + (decayed - p);
    } else {
        p = p + u;
    }
    if (has_master) cast.store(w, .float32, @ptrFromInt(row.master), index, @bitCast(p));
    const threshold = if (h.flags & flag_stochastic != 0) numerics.threshold_at(w, row.seed, index) else null;
    cast.store(w, param_dtype, @ptrFromInt(row.param), index, numerics.from_f32(w, param_dtype, @bitCast(p), threshold, false));
}

pub const Steps = rows_loop.MultiTensorStep(AdamRow, AdamHyper, step_lanes, "adamw");

/// One AdamW step over every row, split across the thread pool.
pub fn step(rows: []const AdamRow, hyper: *const AdamHyper) void {
    std.debug.assert(validate(rows));
    Steps.run(rows, hyper);
}

test "one AdamW step from zero state moves every parameter by lr against the gradient's sign" {
    var grad = [_]u16{ 0x3f80, 0xbf80, 0x4000 } ++ @as([17]u16, @splat(0x3f80)); // bf16 1, -1, 2, ...
    var param: [20]u16 = @splat(0x3f80);
    var master: [20]f32 = @splat(1.0);
    var m: [20]f32 = @splat(0);
    var v: [20]f32 = @splat(0);
    const rows = [_]AdamRow{.{
        .grad = @intFromPtr(&grad),
        .param = @intFromPtr(&param),
        .master = @intFromPtr(&master),
        .m = @intFromPtr(&m),
        .v = @intFromPtr(&v),
        .v_max = 0,
        .count = 20,
        .grad_dtype = 2,
        .param_dtype = 2,
        .state_dtype = 0,
        .seed = 0,
    }};
    const hyper = AdamHyper{
        .inv_scale = 1,
        .clip = 1,
        .one_minus_beta1 = 0.1,
        .beta2 = 0.999,
        .one_minus_beta2 = 0.001,
        .step_scale = @sqrt(@as(f32, 0.001)) / 0.1,
        .eps_hat = 1e-8 * @sqrt(@as(f32, 0.001)),
        .neg_lr = -0.25,
        .decay = 1,
        .flags = 0,
        .reserved = .{ 0, 0 },
    };
    step(&rows, &hyper);
    try std.testing.expectApproxEqAbs(@as(f32, 0.75), master[0], 1e-6);
    try std.testing.expectApproxEqAbs(@as(f32, 1.25), master[1], 1e-6);
    try std.testing.expectApproxEqAbs(@as(f32, 0.75), master[19], 1e-6);
    try std.testing.expectEqual(@as(u16, 0x3f40), param[0]); // bf16 0.75
    try std.testing.expectEqual(@as(u16, 0x3fa0), param[1]); // bf16 1.25
}

test "AdamW steps give the same bits on every path this machine has" {
    const count = 2 * cast.lanes * 40 + 9;
    const Buffers = struct { grad: [count]u16, param: [count]u16, master: [count]f32, m: [count]f32, v: [count]f32 };
    const allocator = std.testing.allocator;
    const first = try allocator.create(Buffers);
    defer allocator.destroy(first);
    const other = try allocator.create(Buffers);
    defer allocator.destroy(other);
    var prng = std.Random.DefaultPrng.init(3);
    for (0..count) |i| {
        first.grad[i] = @truncate(prng.random().int(u16) & 0xbfff); // finite bfloat16
        first.master[i] = prng.random().float(f32) - 0.5;
        first.param[i] = @truncate(@as(u32, @bitCast(first.master[i])) >> 16);
        first.m[i] = 0;
        first.v[i] = 0;
    }
    const hyper = AdamHyper{
        .inv_scale = 0.5,
        .clip = 1,
        .one_minus_beta1 = 0.1,
        .beta2 = 0.999,
        .one_minus_beta2 = 0.001,
        .step_scale = @sqrt(@as(f32, 0.001)) / 0.1,
        .eps_hat = 1e-8 * @sqrt(@as(f32, 0.001)),
        .neg_lr = -0.01,
        .decay = 0.999,
        .flags = flag_stochastic,
        .reserved = .{ 0, 0 },
    };
    const start = first.*;
    defer dispatch.set_path_for_test(null);
    for (dispatch.paths_available(), 0..) |path, index| {
        dispatch.set_path_for_test(path);
        const b = if (index == 0) first else other;
        b.* = start;
        const rows = [_]AdamRow{.{
            .grad = @intFromPtr(&b.grad),
            .param = @intFromPtr(&b.param),
            .master = @intFromPtr(&b.master),
            .m = @intFromPtr(&b.m),
            .v = @intFromPtr(&b.v),
            .v_max = 0,
            .count = count,
            .grad_dtype = 2,
            .param_dtype = 2,
            .state_dtype = 0,
            .seed = 17,
        }};
        for (0..3) |_| step(&rows, &hyper);
        if (index > 0) try std.testing.expectEqualSlices(u8, std.mem.asBytes(first), std.mem.asBytes(other));
    }
}
