//! Scalar rules of a mixed-precision step that the device kernels run (zig/src/cuda/kernels.zig)
//! and the host tests check (zig/src/ffi.zig's test block). One file, two compilations, so the
//! device and the host reference cannot drift apart. Rules: shared/REFERENCE.md, "Loss scaling".

const std = @import("std");

/// The loss-scale state that lives on the device between steps (PyTorch: a float32 scale tensor
/// and an int32 growth tracker).
pub const ScaleState = extern struct {
    scale: f32,
    tracker: i32,
};

/// float32(1 / float64(scale)), as PyTorch's `scaler.double().reciprocal().float()`.
pub fn inverse_scale(scale: f32) f32 {
    return @floatCast(1.0 / @as(f64, scale));
}

fn is_finite(value: f32) bool {
    return @as(u32, @bitCast(value)) & 0x7f80_0000 != 0x7f80_0000;
}

/// PyTorch's `_amp_update_scale_`: back off on an overflow, grow on the `growth_interval`-th
/// consecutive clean step unless growing would give inf (the tracker still resets). The factors
/// are float64, as PyTorch's kernels take them: the float32 scale times the float64 factor is
/// rounded once to float32 (a factor such as 1.7 rounded to float32 first would move 1 ulp).
pub fn update_scale(state: ScaleState, found_inf: bool, growth_factor: f64, backoff_factor: f64, growth_interval: i32) ScaleState {
    std.debug.assert(growth_interval > 0);
    if (found_inf) return .{ .scale = scale_times(state.scale, backoff_factor), .tracker = 0 };
    const successful = state.tracker +% 1;
    if (successful != growth_interval) return .{ .scale = state.scale, .tracker = successful };
    const grown = scale_times(state.scale, growth_factor);
    return .{ .scale = if (is_finite(grown)) grown else state.scale, .tracker = 0 };
}

fn scale_times(scale: f32, factor: f64) f32 {
    return @floatCast(@as(f64, scale) * factor);
}

test "update_scale multiplies by the float64 factor and rounds once, as PyTorch" {
    // 1.7 rounded to float32 first gives 1.70000005; the float64 product rounds differently here.
    const state = update_scale(.{ .scale = 3, .tracker = 0 }, false, 1.7, 0.3, 1);
    try std.testing.expectEqual(@as(f32, @floatCast(@as(f64, 3) * 1.7)), state.scale);
    const backed = update_scale(.{ .scale = 65536, .tracker = 0 }, true, 1.7, 0.3, 7);
    try std.testing.expectEqual(@as(f32, @floatCast(@as(f64, 65536) * 0.3)), backed.scale);
}

test "update_scale grows on the interval-th clean step and resets the tracker" {
    var state = ScaleState{ .scale = 65536, .tracker = 0 };
    for (0..3) |_| state = update_scale(state, false, 2, 0.5, 4);
    try std.testing.expectEqual(ScaleState{ .scale = 65536, .tracker = 3 }, state);
    state = update_scale(state, false, 2, 0.5, 4);
    try std.testing.expectEqual(ScaleState{ .scale = 131072, .tracker = 0 }, state);
}

test "update_scale backs off and resets on an overflow" {
    const state = update_scale(.{ .scale = 1024, .tracker = 7 }, true, 2, 0.5, 2000);
    try std.testing.expectEqual(ScaleState{ .scale = 512, .tracker = 0 }, state);
}

test "update_scale refuses growth to inf but still resets the tracker" {
    const big = std.math.floatMax(f32);
    const state = update_scale(.{ .scale = big, .tracker = 1 }, false, 2, 0.5, 2);
    try std.testing.expectEqual(ScaleState{ .scale = big, .tracker = 0 }, state);
}

test "update_scale reaches 0 after enough overflows, as PyTorch (no floor)" {
    var state = ScaleState{ .scale = 65536, .tracker = 0 };
    for (0..200) |_| state = update_scale(state, true, 2, 0.5, 2000);
    try std.testing.expectEqual(@as(f32, 0), state.scale);
}

test "inverse_scale rounds once from float64" {
    try std.testing.expectEqual(@as(f32, 1.0 / 65536.0), inverse_scale(65536));
    try std.testing.expectEqual(@as(f32, @floatCast(1.0 / @as(f64, 3.0))), inverse_scale(3));
    try std.testing.expect(std.math.isInf(inverse_scale(0)));
}

/// PyTorch's clip_grad_norm_ coefficient, float32 throughout: max_norm / (norm + 1e-6). The caller
/// multiplies by it when it is below 1 (PyTorch clamps it to 1 and always multiplies, which gives
/// the same values).
pub fn clip_coefficient(max_norm: f32, norm: f32) f32 {
    return max_norm / (norm + @as(f32, 1e-6));
}

test "clip_coefficient is max_norm over norm plus 1e-6, in float32" {
    try std.testing.expectEqual(@as(f32, 1.0) / (@as(f32, 4.0) + @as(f32, 1e-6)), clip_coefficient(1, 4));
    try std.testing.expect(clip_coefficient(1, 0.5) > 1);
    try std.testing.expect(std.math.isNan(clip_coefficient(1, std.math.nan(f32))));
}

/// One parameter tensor of a fused AdamW step, for the CPU kernel (zig/src/cpu/adamw.zig) and the
/// device kernel alike. Addresses of 0 mean "absent": `master` when the parameter holds its own
/// value, `v_max` unless amsgrad. Defined here because the PTX build can import only this folder.
pub const AdamRow = extern struct {
    grad: u64,
    param: u64,
    master: u64,
    m: u64,
    v: u64,
    v_max: u64,
    count: u64,
    grad_dtype: u32,
    param_dtype: u32,
    state_dtype: u32,
    /// Seed of this row's stochastic rounding of the parameter write.
    seed: u32,
};

/// A fused AdamW step's constants, all float32, computed once by the caller (src/optim/_native.ts).
pub const AdamHyper = extern struct {
    inv_scale: f32,
    clip: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    /// sqrt(1 - b2^t) / (1 - b1^t), rounded once from float64.
    step_scale: f32,
    /// eps * sqrt(1 - b2^t), rounded once from float64.
    eps_hat: f32,
    neg_lr: f32,
    decay: f32,
    flags: u32,
    reserved: [2]u32,
};

/// AdamW's moments exactly as torch 2.13 rounds them on the CPU (fused, foreach and for-loop
/// paths alike, measured bit for bit): m is `lerp(m, g, 1 - b1)` with ATen's vectorised lerp,
/// `fma(w, g - m, m)` for a weight w = 1 - b1 below 0.5 and `fma(w - 1, g - m, g)` otherwise; v is
/// `addcmul(b2 * v, g, g, value = 1 - b2)` contracted to `fma((1 - b2) * g, g, b2 * v)`. Works on
/// scalars and vectors of f32, so the CPU and GPU kernels share it.
pub inline fn adam_moments(comptime T: type, m: T, v: T, g: T, one_minus_beta1: f32, beta2: f32, one_minus_beta2: f32) [2]T {
    const diff = g - m;
    const m_next = if (one_minus_beta1 < 0.5)
        @mulAdd(T, splat(T, one_minus_beta1), diff, m)
    else
        @mulAdd(T, splat(T, one_minus_beta1 - 1.0), diff, g);
    const v_next = @mulAdd(T, splat(T, one_minus_beta2) * g, g, splat(T, beta2) * v);
    return .{ m_next, v_next };
}

inline fn splat(comptime T: type, x: f32) T {
    return if (@typeInfo(T) == .vector) @splat(x) else x;
}

test "adam_moments rounds once where torch fuses (lerp and addcmul as fma)" {
    // m + w (g - m) with one rounding: 0.1f * 3 rounds differently when multiplied and added apart.
    const r = adam_moments(f32, 1.0, 2.0, 4.0, 0.1, 0.999, 0.001);
    try std.testing.expectEqual(@mulAdd(f32, 0.1, 3.0, 1.0), r[0]);
    try std.testing.expectEqual(@mulAdd(f32, @as(f32, 0.001) * 4.0, 4.0, @as(f32, 0.999) * 2.0), r[1]);
    const big = adam_moments(f32, 1.0, 0.0, 4.0, 0.7, 0.5, 0.5);
    try std.testing.expectEqual(@mulAdd(f32, @as(f32, 0.7) - 1.0, 3.0, 4.0), big[0]);
}

pub const adam_flag_amsgrad: u32 = 1;
pub const adam_flag_stochastic: u32 = 2;

comptime {
    std.debug.assert(@sizeOf(AdamRow) == 72);
    std.debug.assert(@sizeOf(AdamHyper) == 48);
}

/// One parameter tensor of a fused SGD step (CPU and device); `master` and `momentum_buffer` may be
/// 0 (absent).
pub const SgdRow = extern struct {
    grad: u64,
    param: u64,
    master: u64,
    momentum_buffer: u64,
    count: u64,
    grad_dtype: u32,
    param_dtype: u32,
    state_dtype: u32,
    seed: u32,
};

/// A fused SGD step's constants (CPU and device).
pub const SgdHyper = extern struct {
    inv_scale: f32,
    clip: f32,
    weight_decay: f32,
    momentum: f32,
    one_minus_dampening: f32,
    neg_lr: f32,
    flags: u32,
    reserved: u32,
};

pub const sgd_flag_nesterov: u32 = 1;
pub const sgd_flag_stochastic: u32 = 2;
/// The momentum buffer starts as the first step's d (PyTorch clones the gradient).
pub const sgd_flag_first_step: u32 = 4;
pub const sgd_flag_momentum: u32 = 8;

comptime {
    std.debug.assert(@sizeOf(SgdRow) == 56);
    std.debug.assert(@sizeOf(SgdHyper) == 32);
}
