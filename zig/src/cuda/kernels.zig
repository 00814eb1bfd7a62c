//! Device kernels, compiled to PTX (nvptx64, sm_80) and embedded in the library. They call the same
//! numerics as the CPU (zig/src/numerics.zig), one element per thread in grid-stride loops, so a
//! cast or an unscale gives the CPU's bits.

const numerics = @import("row_ops").numerics;
const step_math = @import("step_math.zig");
const Dtype = numerics.Dtype;

pub const TensorRow = extern struct {
    address: u64,
    count: u64,
    dtype: u32,
    reserved: u32,
};

pub inline fn global_index() u64 {
    return @as(u64, @workGroupId(0)) * @workGroupSize(0) + @workItemId(0);
}

pub inline fn grid_stride() u64 {
    return @as(u64, @workGroupSize(0)) * grid_dim_x();
}

inline fn grid_dim_x() u32 {
    return asm ("mov.u32 %[r], %nctaid.x;"
        : [r] "=r" (-> u32),
    );
}

pub inline fn load_bits(dtype: Dtype, base: u64, index: u64) u32 {
    return switch (dtype) {
        .float32 => @as([*]const u32, @ptrFromInt(base))[index],
        .float16, .bfloat16 => @as([*]const u16, @ptrFromInt(base))[index],
        .float8_e4m3fn, .float8_e5m2 => @as([*]const u8, @ptrFromInt(base))[index],
    };
}

pub inline fn store_bits(dtype: Dtype, base: u64, index: u64, bits: u32) void {
    switch (dtype) {
        .float32 => @as([*]u32, @ptrFromInt(base))[index] = bits,
        .float16, .bfloat16 => @as([*]u16, @ptrFromInt(base))[index] = @truncate(bits),
        .float8_e4m3fn, .float8_e5m2 => @as([*]u8, @ptrFromInt(base))[index] = @truncate(bits),
    }
}

pub fn to_f32_runtime(dtype: Dtype, bits: u32) u32 {
    return switch (dtype) {
        inline else => |d| numerics.to_f32(1, d, @splat(bits))[0],
    };
}

pub fn from_f32_runtime(dtype: Dtype, bits: u32, threshold: ?u32, saturate: bool) u32 {
    const t: ?numerics.V(1) = if (threshold) |x| @splat(x) else null;
    return switch (dtype) {
        inline else => |d| numerics.from_f32(1, d, @splat(bits), t, saturate)[0],
    };
}

/// Casts `count` elements; the same arguments and flags as mp_cast.
export fn mp_cast_kernel(source: u64, target: u64, count: u64, from: u32, to: u32, flags: u32, seed: u32) callconv(.kernel) void {
    const from_dtype: Dtype = @fromBackingInt(@intCast(from));
    const to_dtype: Dtype = @fromBackingInt(@intCast(to));
    const stochastic = flags & numerics.flag_stochastic != 0;
    const saturate = flags & numerics.flag_saturate != 0;
    var index = global_index();
    while (index < count) : (index += grid_stride()) {
        const wide = to_f32_runtime(from_dtype, load_bits(from_dtype, source, index));
        const threshold: ?u32 = if (stochastic) numerics.threshold_at(1, seed, index)[0] else null;
        store_bits(to_dtype, target, index, from_f32_runtime(to_dtype, wide, threshold, saturate));
    }
}

/// Sets `*flag` to 1 when `found` is true in any thread of the block: one store per block.
pub inline fn block_any_store(found: bool, flag: *u32) void {
    const any = asm volatile (
        \\{
        \\.reg .pred p;
        \\setp.ne.u32 p, %[x], 0;
        \\bar.red.or.pred p, 0, p;
        \\selp.u32 %[r], 1, 0, p;
        \\}
        : [r] "=r" (-> u32),
        : [x] "r" (@as(u32, @intFromBool(found))),
    );
    if (any != 0 and @workItemId(0) == 0) @atomicStore(u32, flag, 1, .monotonic);
}

/// Multi-tensor unscale and check: the table of rows lives in device memory, so any number of
/// tensors fits one launch. Rows are concatenated into one index space walked grid-stride.
/// `scale`, when not 0, is the address of the device-resident float32 loss scale: the kernel then
/// unscales by float32(1 / float64(scale)) and ignores `inv_scale`, so a step needs no host read.
/// `found_inf` (u32) is only ever set to 1, never cleared: zero it before the step.
export fn mp_unscale_check_kernel(table: u64, row_count: u64, total_count: u64, inv_scale: f32, scale: u64, found_inf: u64) callconv(.kernel) void {
    const rows: [*]const TensorRow = @ptrFromInt(table);
    const inv: f32 = if (scale != 0) step_math.inverse_scale(@as(*const f32, @ptrFromInt(scale)).*) else inv_scale;
    var found = false;
    var row: u64 = 0;
    var row_start: u64 = 0;
    var index = global_index();
    // Every thread of the block runs the same number of iterations, so the barrier below is uniform.
    const iterations = (total_count + grid_stride() - 1) / grid_stride();
    var iteration: u64 = 0;
    while (iteration < iterations) : (iteration += 1) {
        if (index < total_count) {
            while (row < row_count and index >= row_start + rows[row].count) {
                row_start += rows[row].count;
                row += 1;
            }
            const dtype: Dtype = @fromBackingInt(@intCast(rows[row].dtype));
            const local = index - row_start;
            const wide = to_f32_runtime(dtype, load_bits(dtype, rows[row].address, local));
            found = found or (wide & 0x7f80_0000) == 0x7f80_0000;
            if (inv != 1.0) {
                const scaled: u32 = @bitCast(@as(f32, @bitCast(wide)) * inv);
                store_bits(dtype, rows[row].address, local, from_f32_runtime(dtype, scaled, null, false));
            }
        }
        index += grid_stride();
    }
    block_any_store(found, @ptrFromInt(found_inf));
}

/// PyTorch's `_amp_update_scale_` on the device-resident (scale, tracker) pair, reading the
/// device-resident found_inf flag (u32) the unscale kernel set. One thread; launch <<<1, 1>>>.
/// Keeping all three on the device is what makes a step free of host synchronisation.
export fn mp_update_scale_kernel(state: u64, found_inf: u64, growth_factor: f64, backoff_factor: f64, growth_interval: i32) callconv(.kernel) void {
    if (@workGroupId(0) != 0 or @workItemId(0) != 0) return;
    const scale_state: *step_math.ScaleState = @ptrFromInt(state);
    const found = @as(*const u32, @ptrFromInt(found_inf)).* != 0;
    scale_state.* = step_math.update_scale(scale_state.*, found, growth_factor, backoff_factor, growth_interval);
}

/// Per-warp partial sums of a block reduction; block_sum supports blocks of up to 1024 threads.
var warp_sums: [32]f32 addrspace(.shared) = undefined;

inline fn shuffle_down_bits(bits: u32, offset: u32) u32 {
    return asm volatile ("shfl.sync.down.b32 %[r], %[x], %[o], 0x1f, 0xffffffff;"
        : [r] "=r" (-> u32),
        : [x] "r" (bits),
          [o] "r" (offset),
    );
}

inline fn shuffle_down(value: f32, offset: u32) f32 {
    return @bitCast(shuffle_down_bits(@bitCast(value), offset));
}

inline fn shuffle_down_f64(value: f64, offset: u32) f64 {
    const bits: u64 = @bitCast(value);
    const low = shuffle_down_bits(@truncate(bits), offset);
    const high = shuffle_down_bits(@truncate(bits >> 32), offset);
    return @bitCast(@as(u64, high) << 32 | low);
}

inline fn barrier() void {
    asm volatile ("bar.sync 0;" ::: .{ .memory = true });
}

/// The sum of `value` over the block, in a fixed order (so a launch configuration always gives the
/// same bits); valid in thread 0. Every thread of the block must call it. The block size is a
/// multiple of 32.
inline fn block_sum(value: f32) f32 {
    var sum = value;
    inline for ([_]u32{ 16, 8, 4, 2, 1 }) |offset| sum += shuffle_down(sum, offset);
    const thread = @workItemId(0);
    if (thread & 31 == 0) warp_sums[thread >> 5] = sum;
    barrier();
    var total: f32 = 0;
    if (thread == 0) {
        var warp: u32 = 0;
        while (warp < @workGroupSize(0) >> 5) : (warp += 1) total += warp_sums[warp];
    }
    barrier();
    return total;
}

/// First pass of the global norm: every block writes the float32 sum of squares of its share of
/// the concatenated rows (any dtype, widened exactly) to `partials[block]`.
export fn mp_sum_squares_kernel(table: u64, row_count: u64, total_count: u64, partials: u64) callconv(.kernel) void {
    const rows: [*]const TensorRow = @ptrFromInt(table);
    var sum: f32 = 0;
    var row: u64 = 0;
    var row_start: u64 = 0;
    var index = global_index();
    while (index < total_count) : (index += grid_stride()) {
        while (row < row_count and index >= row_start + rows[row].count) {
            row_start += rows[row].count;
            row += 1;
        }
        const dtype: Dtype = @fromBackingInt(@intCast(rows[row].dtype));
        const value: f32 = @bitCast(to_f32_runtime(dtype, load_bits(dtype, rows[row].address, index - row_start)));
        sum += value * value;
    }
    const block_total = block_sum(sum);
    if (@workItemId(0) == 0) @as([*]f32, @ptrFromInt(partials))[@workGroupId(0)] = block_total;
}

/// Second pass of the global norm, one block: sums `partial_count` partials in a fixed order and
/// writes sqrt(sum) (float32, correctly rounded) to `norm`. inf or NaN anywhere gives inf or NaN.
export fn mp_global_norm_finish_kernel(partials: u64, partial_count: u32, norm: u64) callconv(.kernel) void {
    if (@workGroupId(0) != 0) return;
    const values: [*]const f32 = @ptrFromInt(partials);
    var sum: f32 = 0;
    var index: u32 = @workItemId(0);
    while (index < partial_count) : (index += @workGroupSize(0)) sum += values[index];
    const total = block_sum(sum);
    if (@workItemId(0) == 0) @as(*f32, @ptrFromInt(norm)).* = @sqrt(total);
}

/// Walks the concatenated rows grid-stride and multiplies every element by `factor` in float32,
/// storing it back in its row's dtype (nearest even). Shared by the two multiply kernels below.
inline fn multiply_rows(rows: [*]const TensorRow, row_count: u64, total_count: u64, factor: f32) void {
    var row: u64 = 0;
    var row_start: u64 = 0;
    var index = global_index();
    while (index < total_count) : (index += grid_stride()) {
        while (row < row_count and index >= row_start + rows[row].count) {
            row_start += rows[row].count;
            row += 1;
        }
        const dtype: Dtype = @fromBackingInt(@intCast(rows[row].dtype));
        const local = index - row_start;
        const wide: f32 = @bitCast(to_f32_runtime(dtype, load_bits(dtype, rows[row].address, local)));
        store_bits(dtype, rows[row].address, local, from_f32_runtime(dtype, @bitCast(wide * factor), null, false));
    }
}

/// Multiplies every element of the rows by a float32 factor: `factor`, or the device float32 at
/// `factor_address` when that is not 0 (loss scaling by a device-resident scale, no host read).
export fn mp_scale_kernel(table: u64, row_count: u64, total_count: u64, factor: f32, factor_address: u64) callconv(.kernel) void {
    const by: f32 = if (factor_address != 0) @as(*const f32, @ptrFromInt(factor_address)).* else factor;
    multiply_rows(@ptrFromInt(table), row_count, total_count, by);
}

/// PyTorch's clip_grad_norm_ after the norm: coefficient = max_norm / (norm + 1e-6) in float32,
/// read from the device norm; the rows are multiplied by it only when it is below 1.
export fn mp_clip_by_norm_kernel(table: u64, row_count: u64, total_count: u64, max_norm: f32, norm: u64) callconv(.kernel) void {
    const coefficient = step_math.clip_coefficient(max_norm, @as(*const f32, @ptrFromInt(norm)).*);
    if (!(coefficient < 1.0)) return;
    multiply_rows(@ptrFromInt(table), row_count, total_count, coefficient);
}

/// One parameter of a fused AdamW step: the layout of zig/src/cpu/adamw.zig `AdamRow` (72 bytes;
/// zig/src/ffi.zig's tests compare every field offset with step_math.AdamRow, which mirrors this).
const AdamRow = step_math.AdamRow;
/// The float32 constants of the step: zig/src/cpu/adamw.zig `AdamHyper` (48 bytes).
const AdamHyper = step_math.AdamHyper;

inline fn load_value(dtype: Dtype, address: u64, index: u64) f32 {
    return @bitCast(to_f32_runtime(dtype, load_bits(dtype, address, index)));
}

/// Stores `value` in `dtype` (nearest even) and returns the stored value widened again.
inline fn store_value(dtype: Dtype, address: u64, index: u64, value: f32) f32 {
    const bits = from_f32_runtime(dtype, @bitCast(value), null, false);
    store_bits(dtype, address, index, bits);
    return @bitCast(to_f32_runtime(dtype, bits));
}

/// One element of zig/src/cpu/adamw.zig `step_lanes`, with the same float32 operations in the same
/// order (PTX's mul.rn / add.rn / div.rn / sqrt.rn are never contracted), so the device writes the
/// CPU's bits.
inline fn adam_element(row: *const AdamRow, h: *const AdamHyper, index: u64) void {
    const grad_dtype: Dtype = @fromBackingInt(@intCast(row.grad_dtype));
    const param_dtype: Dtype = @fromBackingInt(@intCast(row.param_dtype));
    const state_dtype: Dtype = @fromBackingInt(@intCast(row.state_dtype));
    var g = load_value(grad_dtype, row.grad, index);
    if (h.inv_scale != 1.0) g = g * h.inv_scale;
    if (h.clip != 1.0) g = g * h.clip;
    var m = load_value(state_dtype, row.m, index);
    var v = load_value(state_dtype, row.v, index);
    const moments = step_math.adam_moments(f32, m, v, g, h.one_minus_beta1, h.beta2, h.one_minus_beta2);
    m = moments[0];
    v = moments[1];
    m = store_value(state_dtype, row.m, index, m);
    v = store_value(state_dtype, row.v, index, v);
    if (h.flags & step_math.adam_flag_amsgrad != 0) {
        v = @max(load_value(state_dtype, row.v_max, index), v);
        v = store_value(state_dtype, row.v_max, index, v);
    }
    const r = (h.step_scale * m) / (@sqrt(v) + h.eps_hat);
    const u = h.neg_lr * r;
    const has_master = row.master != 0;
    var p = if (has_master) load_value(.float32, row.master, index) else load_value(param_dtype, row.param, index);
    if (h.decay != 1.0) {
        const decayed = p * h.decay + u;
        p = p + (decayed - p);
    } else {
        p = p + u;
    }
    if (has_master) store_bits(.float32, row.master, index, @bitCast(p));
    const threshold: ?u32 = if (h.flags & step_math.adam_flag_stochastic != 0) numerics.threshold_at(1, row.seed, index)[0] else null;
    store_bits(param_dtype, row.param, index, from_f32_runtime(param_dtype, @bitCast(p), threshold, false));
}

/// Fused multi-tensor AdamW over a device table of AdamRows with the device AdamHyper at `hyper`.
/// When `found_inf` is not 0 and the device u32 there is set, nothing is read or written: the step
/// is skipped on the device, and the host never learns (or waits to learn) that it was.
export fn mp_fused_adamw_kernel(table: u64, row_count: u64, total_count: u64, hyper: u64, found_inf: u64) callconv(.kernel) void {
    if (found_inf != 0 and @as(*const u32, @ptrFromInt(found_inf)).* != 0) return;
    const rows: [*]const AdamRow = @ptrFromInt(table);
    const h: *const AdamHyper = @ptrFromInt(hyper);
    var row: u64 = 0;
    var row_start: u64 = 0;
    var index = global_index();
    while (index < total_count) : (index += grid_stride()) {
        while (row < row_count and index >= row_start + rows[row].count) {
            row_start += rows[row].count;
            row += 1;
        }
        adam_element(&rows[row], h, index - row_start);
    }
}

/// Per-warp partial sums of block_sum_f64.
var warp_sums_f64: [32]f64 addrspace(.shared) = undefined;

/// block_sum in float64: the same fixed order; valid in thread 0; every thread must call it.
pub inline fn block_sum_f64(value: f64) f64 {
    var sum = value;
    inline for ([_]u32{ 16, 8, 4, 2, 1 }) |offset| sum += shuffle_down_f64(sum, offset);
    const thread = @workItemId(0);
    if (thread & 31 == 0) warp_sums_f64[thread >> 5] = sum;
    barrier();
    var total: f64 = 0;
    if (thread == 0) {
        var warp: u32 = 0;
        while (warp < @workGroupSize(0) >> 5) : (warp += 1) total += warp_sums_f64[warp];
    }
    barrier();
    return total;
}

/// The optimizers' pre-check (zig/src/cpu/sum_squares.zig on the device): every block writes the
/// float64 sum of float64(float32(x * inv_scale))^2 over its share of the rows to `partials[block]`
/// (float64), and the u32 at `found_inf` is set to 1 when any x is inf or NaN (never cleared).
export fn mp_sum_squares_f64_kernel(table: u64, row_count: u64, total_count: u64, inv_scale: f32, partials: u64, found_inf: u64) callconv(.kernel) void {
    const rows: [*]const TensorRow = @ptrFromInt(table);
    var sum: f64 = 0;
    var found = false;
    var row: u64 = 0;
    var row_start: u64 = 0;
    var index = global_index();
    while (index < total_count) : (index += grid_stride()) {
        while (row < row_count and index >= row_start + rows[row].count) {
            row_start += rows[row].count;
            row += 1;
        }
        const dtype: Dtype = @fromBackingInt(@intCast(rows[row].dtype));
        const wide = to_f32_runtime(dtype, load_bits(dtype, rows[row].address, index - row_start));
        found = found or (wide & 0x7f80_0000) == 0x7f80_0000;
        var value: f32 = @bitCast(wide);
        if (inv_scale != 1.0) value = value * inv_scale;
        const wide_value: f64 = value;
        sum += wide_value * wide_value;
    }
    const block_total = block_sum_f64(sum);
    if (@workItemId(0) == 0) @as([*]f64, @ptrFromInt(partials))[@workGroupId(0)] = block_total;
    block_any_store(found, @ptrFromInt(found_inf));
}

const SgdRow = step_math.SgdRow;
const SgdHyper = step_math.SgdHyper;

/// One element of zig/src/cpu/sgd.zig `step_lanes`: the same float32 operations in the same order.
inline fn sgd_element(row: *const SgdRow, h: *const SgdHyper, index: u64) void {
    const grad_dtype: Dtype = @fromBackingInt(@intCast(row.grad_dtype));
    const param_dtype: Dtype = @fromBackingInt(@intCast(row.param_dtype));
    const state_dtype: Dtype = @fromBackingInt(@intCast(row.state_dtype));
    var g = load_value(grad_dtype, row.grad, index);
    if (h.inv_scale != 1.0) g = g * h.inv_scale;
    if (h.clip != 1.0) g = g * h.clip;
    const has_master = row.master != 0;
    var p = if (has_master) load_value(.float32, row.master, index) else load_value(param_dtype, row.param, index);
    var d = g;
    if (h.weight_decay != 0) d = g + h.weight_decay * p;
    if (h.flags & step_math.sgd_flag_momentum != 0) {
        var buffer = d;
        if (h.flags & step_math.sgd_flag_first_step == 0) {
            const old = load_value(state_dtype, row.momentum_buffer, index);
            buffer = old * h.momentum + h.one_minus_dampening * d;
        }
        buffer = store_value(state_dtype, row.momentum_buffer, index, buffer);
        d = if (h.flags & step_math.sgd_flag_nesterov != 0) d + h.momentum * buffer else buffer;
    }
    p = p + h.neg_lr * d;
    if (has_master) store_bits(.float32, row.master, index, @bitCast(p));
    const threshold: ?u32 = if (h.flags & step_math.sgd_flag_stochastic != 0) numerics.threshold_at(1, row.seed, index)[0] else null;
    store_bits(param_dtype, row.param, index, from_f32_runtime(param_dtype, @bitCast(p), threshold, false));
}

/// Fused multi-tensor SGD over a device table of SgdRows with the device SgdHyper at `hyper`;
/// skipped on the device when the u32 at `found_inf` (if not 0) is set.
export fn mp_fused_sgd_kernel(table: u64, row_count: u64, total_count: u64, hyper: u64, found_inf: u64) callconv(.kernel) void {
    if (found_inf != 0 and @as(*const u32, @ptrFromInt(found_inf)).* != 0) return;
    const rows: [*]const SgdRow = @ptrFromInt(table);
    const h: *const SgdHyper = @ptrFromInt(hyper);
    var row: u64 = 0;
    var row_start: u64 = 0;
    var index = global_index();
    while (index < total_count) : (index += grid_stride()) {
        while (row < row_count and index >= row_start + rows[row].count) {
            row_start += rows[row].count;
            row += 1;
        }
        sgd_element(&rows[row], h, index - row_start);
    }
}

// Op kernels live in files of their own (one per op family), exported from here.
comptime {
    _ = @import("ops_matmul.zig");
    _ = @import("ops_amp.zig");
    _ = @import("ops_rows.zig");
    _ = @import("ops_map.zig");
}
