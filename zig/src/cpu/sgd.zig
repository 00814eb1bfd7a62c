//! Fused multi-tensor SGD (PyTorch's torch.optim.SGD: weight decay, momentum, dampening, nesterov)
//! with optional float32 master weights, in one pass. The float32 operations, in the order of the
//! composed TypeScript chain (src/optim/sgd.ts), per element:
//!
//!   g = g * inv_scale; g = g * clip; d = g + wd * p
//!   buf = first ? d : buf * momentum + (1 - dampening) * d;  d = nesterov ? d + momentum * buf : buf
//!   p = p + (-lr) * d

const std = @import("std");
const numerics = @import("../numerics.zig");
const rows_loop = @import("rows.zig");
const cast = @import("cast.zig");

const Dtype = numerics.Dtype;
const n = cast.lanes;

// Defined once, beside the device kernels (see zig/src/cpu/adamw.zig).
const step_math = @import("../cuda/step_math.zig");
pub const SgdRow = step_math.SgdRow;
pub const SgdHyper = step_math.SgdHyper;
pub const flag_nesterov = step_math.sgd_flag_nesterov;
pub const flag_stochastic = step_math.sgd_flag_stochastic;
pub const flag_first_step = step_math.sgd_flag_first_step;
pub const flag_momentum = step_math.sgd_flag_momentum;

fn is_float(dtype: u32) bool {
    const d = Dtype.from_int(dtype) orelse return false;
    return d == .float32 or d == .float16 or d == .bfloat16;
}

pub fn validate(rows: []const SgdRow, hyper: *const SgdHyper) bool {
    for (rows) |row| {
        if (!is_float(row.grad_dtype) or !is_float(row.param_dtype)) return false;
        if (row.state_dtype != @backingInt(Dtype.float32) and row.state_dtype != @backingInt(Dtype.bfloat16)) return false;
        if (row.count == 0) continue;
        if (row.grad == 0 or row.param == 0) return false;
        if (hyper.flags & flag_momentum != 0 and row.momentum_buffer == 0) return false;
    }
    return true;
}

inline fn load_f32(comptime w: comptime_int, comptime dtype: Dtype, address: u64, index: u64) @Vector(w, f32) {
    const base: [*]const u8 = @ptrFromInt(address);
    return @bitCast(numerics.to_f32(w, dtype, cast.load(w, dtype, base, index)));
}

inline fn step_lanes(
    comptime w: comptime_int,
    comptime grad_dtype: Dtype,
    comptime param_dtype: Dtype,
    comptime state_dtype: Dtype,
    row: *const SgdRow,
    h: *const SgdHyper,
    index: u64,
) void {
    const F = @Vector(w, f32);
    var g = load_f32(w, grad_dtype, row.grad, index);
    if (h.inv_scale != 1.0) g = g * @as(F, @splat(h.inv_scale));
    if (h.clip != 1.0) g = g * @as(F, @splat(h.clip));
    const has_master = row.master != 0;
    var p = if (has_master) load_f32(w, .float32, row.master, index) else load_f32(w, param_dtype, row.param, index);
    var d = g;
    if (h.weight_decay != 0) d = g + @as(F, @splat(h.weight_decay)) * p;
    if (h.flags & flag_momentum != 0) {
        var buffer = d;
        if (h.flags & flag_first_step == 0) {
            const old = load_f32(w, state_dtype, row.momentum_buffer, index);
            buffer = old * @as(F, @splat(h.momentum)) + @as(F, @splat(h.one_minus_dampening)) * d;
        }
        const bits = numerics.from_f32(w, state_dtype, @bitCast(buffer), null, false);
        cast.store(w, state_dtype, @ptrFromInt(row.momentum_buffer), index, bits);
        buffer = @bitCast(numerics.to_f32(w, state_dtype, bits));
        d = if (h.flags & flag_nesterov != 0) d + @as(F, @splat(h.momentum)) * buffer else buffer;
    }
    p = p + @as(F, @splat(h.neg_lr)) * d;
    if (has_master) cast.store(w, .float32, @ptrFromInt(row.master), index, @bitCast(p));
    const threshold = if (h.flags & flag_stochastic != 0) numerics.threshold_at(w, row.seed, index) else null;
    cast.store(w, param_dtype, @ptrFromInt(row.param), index, numerics.from_f32(w, param_dtype, @bitCast(p), threshold, false));
}

pub const Steps = rows_loop.MultiTensorStep(SgdRow, SgdHyper, step_lanes, "sgd");

/// One SGD step over every row, split across the thread pool.
pub fn step(rows: []const SgdRow, hyper: *const SgdHyper) void {
    std.debug.assert(validate(rows, hyper));
    Steps.run(rows, hyper);
}

test "SGD with momentum keeps PyTorch's first-step buffer and nesterov look-ahead" {
    var grad: [3]f32 = .{ 1, -2, 0.5 };
    var param: [3]f32 = .{ 0, 0, 0 };
    var buffer: [3]f32 = @splat(0);
    const rows = [_]SgdRow{.{
        .grad = @intFromPtr(&grad),
        .param = @intFromPtr(&param),
        .master = 0,
        .momentum_buffer = @intFromPtr(&buffer),
        .count = 3,
        .grad_dtype = 0,
        .param_dtype = 0,
        .state_dtype = 0,
        .seed = 0,
    }};
    var hyper = SgdHyper{
        .inv_scale = 1,
        .clip = 1,
        .weight_decay = 0,
        .momentum = 0.5,
        .one_minus_dampening = 1,
        .neg_lr = -1,
        .flags = flag_momentum | flag_first_step | flag_nesterov,
        .reserved = 0,
    };
    step(&rows, &hyper);
    // First step: buf = g; d = g + 0.5 * g.
    try std.testing.expectEqual(@as(f32, -1.5), param[0]);
    try std.testing.expectEqual(@as(f32, 1), buffer[0]);
    hyper.flags = flag_momentum | flag_nesterov;
    step(&rows, &hyper);
    // buf = 0.5 * 1 + 1 = 1.5; d = 1 + 0.5 * 1.5 = 1.75.
    try std.testing.expectEqual(@as(f32, -3.25), param[0]);
}
