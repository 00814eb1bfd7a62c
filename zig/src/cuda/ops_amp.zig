//! Kernels of a training step under a device-resident loss scale (GradScaler on cuda tensors):
//! scaling a loss (and its gradient) by the device scale, the optimizers' sum of squares after
//! unscaling by it, and the one-thread preparation of a fused AdamW step (zig/src/cuda/
//! amp_math.zig). With them, a GradScaler + fusedAdamW step never reads the scale, the found-inf
//! flag, the clipping norm or the step count back to the host.

const numerics = @import("row_ops").numerics;
const kernels = @import("kernels.zig");
const amp_math = @import("amp_math.zig");
const step_math = @import("step_math.zig");
const Dtype = numerics.Dtype;

/// target[i] = round(source[i] * factor) in `dtype`, with factor the device float32 at
/// `factor_address` (the loss scale): multiply_rows' element rule on one tensor (may be in place).
export fn mp_amp_scale_tensor_kernel(source: u64, target: u64, count: u64, dtype: u32, factor_address: u64) callconv(.kernel) void {
    const data_dtype: Dtype = @fromBackingInt(@intCast(dtype));
    const factor = @as(*const f32, @ptrFromInt(factor_address)).*;
    var index = kernels.global_index();
    while (index < count) : (index += kernels.grid_stride()) {
        const wide: f32 = @bitCast(kernels.to_f32_runtime(data_dtype, kernels.load_bits(data_dtype, source, index)));
        kernels.store_bits(data_dtype, target, index, kernels.from_f32_runtime(data_dtype, @bitCast(wide * factor), null, false));
    }
}

/// mp_sum_squares_f64_kernel with the inverse scale float32(1 / float64(scale)) read from the
/// device float32 at `scale` (1 when `scale` is 0): per-block float64 partial sums of
/// float64(float32(x * inv))^2 into `partials`, and the u32 at `found_inf` set when any x is inf
/// or NaN (never cleared).
export fn mp_amp_sum_squares_kernel(table: u64, row_count: u64, total_count: u64, scale: u64, partials: u64, found_inf: u64) callconv(.kernel) void {
    const rows: [*]const kernels.TensorRow = @ptrFromInt(table);
    const inv: f32 = if (scale != 0) step_math.inverse_scale(@as(*const f32, @ptrFromInt(scale)).*) else 1.0;
    var sum: f64 = 0;
    var found = false;
    var row: u64 = 0;
    var row_start: u64 = 0;
    var index = kernels.global_index();
    while (index < total_count) : (index += kernels.grid_stride()) {
        while (row < row_count and index >= row_start + rows[row].count) {
            row_start += rows[row].count;
            row += 1;
        }
        const dtype: Dtype = @fromBackingInt(@intCast(rows[row].dtype));
        const wide = kernels.to_f32_runtime(dtype, kernels.load_bits(dtype, rows[row].address, index - row_start));
        found = found or (wide & 0x7f80_0000) == 0x7f80_0000;
        var value: f32 = @bitCast(wide);
        if (inv != 1.0) value = value * inv;
        const wide_value: f64 = value;
        sum += wide_value * wide_value;
    }
    const block_total = kernels.block_sum_f64(sum);
    if (@workItemId(0) == 0) @as([*]f64, @ptrFromInt(partials))[@workGroupId(0)] = block_total;
    kernels.block_any_store(found, @ptrFromInt(found_inf));
}

fn squirrel5(position: u32, seed: u32) u32 {
    return numerics.squirrel5(1, @splat(position), @splat(seed))[0];
}

/// amp_math.prepare on the device: launch <<<1, 32>>>; thread 0 works.
export fn mp_amp_adam_prepare_kernel(
    hyper_table: u64,
    hyper_count: u64,
    current: u64,
    counter: u64,
    scale: u64,
    found_inf: u64,
    partials: u64,
    partial_count: u32,
    max_norm: f32,
    rows: u64,
    row_count: u64,
    seed: u32,
    stochastic: u32,
) callconv(.kernel) void {
    if (@workGroupId(0) != 0 or @workItemId(0) != 0) return;
    amp_math.prepare(&.{
        .hyper_table = hyper_table,
        .hyper_count = hyper_count,
        .current = current,
        .counter = counter,
        .scale = scale,
        .found_inf = found_inf,
        .partials = partials,
        .partial_count = partial_count,
        .max_norm = max_norm,
        .rows = rows,
        .row_count = row_count,
        .seed = seed,
        .stochastic = stochastic != 0,
    }, squirrel5);
}
