//! The bookkeeping of a fused AdamW step under a device-resident loss scale, written once for the
//! device kernel (zig/src/cuda/ops_amp.zig) and the fake driver's emulation (zig/src/cuda_fake.zig):
//! it turns the optimizer's device step count, the loss scale, the found-inf flag and the clipping
//! sum of squares into the constants the fused step reads, without the host learning any of them.
//!
//! The host cannot know whether a step was applied (found-inf stays on the device), so the step
//! count lives on the device too, and the host uploads the float32 constants of every step number
//! t it may reach (`hyper_table[t - 1]`, computed in float64 and rounded once, as the CPU path's):
//! this step reads entry `count + 1`, and the count advances only when the step is applied.
//! Defined here because the PTX build can import only this folder (the seed hash comes in as a
//! function).

const step_math = @import("step_math.zig");

pub const AdamHyper = step_math.AdamHyper;
pub const AdamRow = step_math.AdamRow;

/// Where everything lives (device addresses; 0 = absent).
pub const Prepare = struct {
    /// AdamHyper[hyper_count], entry t - 1 for step number t (inv_scale 1, clip 1).
    hyper_table: u64,
    hyper_count: u64,
    /// The AdamHyper the step kernel reads, written here.
    current: u64,
    /// u32 applied steps.
    counter: u64,
    /// float32 loss scale, or 0 for an inverse scale of 1.
    scale: u64,
    /// u32 found-inf flag, or 0.
    found_inf: u64,
    /// float64 partial sums of squares of the unscaled gradients (clipping), or 0.
    partials: u64,
    partial_count: u32,
    max_norm: f32,
    /// AdamRow table whose seeds are rewritten for this step when `stochastic`.
    rows: u64,
    row_count: u64,
    seed: u32,
    stochastic: bool,
};

/// PyTorch's clip_grad_norm_ coefficient from a float64 sum of squares, as src/optim/
/// clip_by_global_norm.ts `clipCoefficient`: norm = float32(sqrt(sum)); the factor applies only
/// when below 1 (or NaN).
pub fn clip_from_sum(sum: f64, max_norm: f32) f32 {
    const norm: f32 = @floatCast(@sqrt(sum));
    const coefficient = step_math.clip_coefficient(max_norm, norm);
    return if (coefficient < 1.0 or coefficient != coefficient) coefficient else 1.0;
}

/// One step's preparation (one thread): the constants of step count + 1 with the inverse scale and
/// clip factor filled in, the rows' stochastic-rounding seeds (src/optim/_ops.ts `rowSeed`), and
/// the count advanced when the step will be applied (found-inf clear).
pub inline fn prepare(p: *const Prepare, comptime squirrel5: fn (u32, u32) u32) void {
    const counter: *u32 = @ptrFromInt(p.counter);
    const count = counter.*;
    const table: [*]const AdamHyper = @ptrFromInt(p.hyper_table);
    // The host keeps the table at least one entry past every step number reachable so far.
    const index: u64 = @min(@as(u64, count), p.hyper_count - 1);
    var h = table[index];
    if (p.scale != 0) h.inv_scale = step_math.inverse_scale(@as(*const f32, @ptrFromInt(p.scale)).*);
    if (p.partials != 0) {
        const partials: [*]const f64 = @ptrFromInt(p.partials);
        var sum: f64 = 0;
        for (0..p.partial_count) |block| sum += partials[block];
        h.clip = clip_from_sum(sum, p.max_norm);
    }
    @as(*AdamHyper, @ptrFromInt(p.current)).* = h;
    if (p.stochastic) {
        const rows: [*]AdamRow = @ptrFromInt(p.rows);
        const step_seed = squirrel5(count, p.seed);
        for (0..p.row_count) |row| rows[row].seed = squirrel5(@truncate(row), step_seed);
    }
    const found = p.found_inf != 0 and @as(*const u32, @ptrFromInt(p.found_inf)).* != 0;
    if (!found) counter.* = count + 1;
}
