//! A fake libcuda for machines without an NVIDIA GPU (built as zig-out/lib/libcuda_fake.so, loaded
//! with MIXPREC_LIBCUDA): the driver entry points mixprec uses, with host memory as device memory,
//! copies as memcpy, and every kernel of mixprec.ptx emulated on the host with the CPU kernels.
//!
//! It tests the plumbing end to end — dlopen and symbol resolution, the TypeScript wrappers,
//! argument order and types, row tables, dtype codes, flags, the allocator, staging and sync
//! counting — and nothing about the PTX kernels themselves: a result that matches the CPU here
//! matches because the emulation *is* the CPU code. Only a real GPU verifies the kernels.
//!
//! cuModuleGetFunction does check that the entry exists in the module text it was given.

const std = @import("std");
const numerics = @import("numerics.zig");
const cast = @import("cpu/cast.zig");
const unscale = @import("cpu/unscale.zig");
const step_math = @import("cuda/step_math.zig");
const adamw = @import("cpu/adamw.zig");
const sum_squares = @import("cpu/sum_squares.zig");
const sgd = @import("cpu/sgd.zig");
const fake_rows = @import("cuda_fake_rows.zig");
const layout = @import("ops/layout.zig");
const amp_math = @import("cuda/amp_math.zig");
const fake_map = @import("cuda_fake_map.zig");

const CUresult = c_int;
const success: CUresult = 0;
const invalid_value: CUresult = 1;
const out_of_memory: CUresult = 2;
const not_found: CUresult = 500;
const invalid_handle: CUresult = 400;

const gpa = std.heap.c_allocator;
var allocations: std.AutoHashMapUnmanaged(u64, usize) = .empty;
var module_text: []const u8 = "";

const entries = [_][]const u8{
    "mp_cast_kernel",
    "mp_unscale_check_kernel",
    "mp_update_scale_kernel",
    "mp_sum_squares_kernel",
    "mp_global_norm_finish_kernel",
    "mp_scale_kernel",
    "mp_clip_by_norm_kernel",
    "mp_fused_adamw_kernel",
    "mp_sum_squares_f64_kernel",
    "mp_fused_sgd_kernel",
    "mp_matmul_epilogue_kernel",
    "mp_amp_scale_tensor_kernel",
    "mp_amp_sum_squares_kernel",
    "mp_amp_adam_prepare_kernel",
};

export fn cuInit(flags: c_uint) CUresult {
    return if (flags == 0) success else invalid_value;
}

export fn cuGetErrorName(result: CUresult, name: *?[*:0]const u8) CUresult {
    name.* = switch (result) {
        success => "CUDA_SUCCESS",
        invalid_value => "CUDA_ERROR_INVALID_VALUE",
        out_of_memory => "CUDA_ERROR_OUT_OF_MEMORY",
        not_found => "CUDA_ERROR_NOT_FOUND",
        invalid_handle => "CUDA_ERROR_INVALID_HANDLE",
        else => "CUDA_ERROR_UNKNOWN",
    };
    return success;
}

export fn cuGetErrorString(_: CUresult, text: *?[*:0]const u8) CUresult {
    text.* = "reported by the fake driver";
    return success;
}

export fn cuDeviceGetCount(count: *c_int) CUresult {
    count.* = 1;
    return success;
}

export fn cuDeviceGet(device: *c_int, ordinal: c_int) CUresult {
    if (ordinal != 0) return invalid_value;
    device.* = 0;
    return success;
}

export fn cuDeviceGetName(name: [*]u8, length: c_int, _: c_int) CUresult {
    const text = "mixprec fake CUDA device (host emulation)";
    const count = @min(text.len, @as(usize, @intCast(@max(length - 1, 0))));
    @memcpy(name[0..count], text[0..count]);
    name[count] = 0;
    return success;
}

export fn cuDeviceGetAttribute(value: *c_int, attribute: c_int, _: c_int) CUresult {
    value.* = switch (attribute) {
        16 => 4, // Multiprocessors: few, so tests cross several grid-stride iterations.
        75 => 8, // Compute capability 8.0.
        76 => 0,
        else => return invalid_value,
    };
    return success;
}

export fn cuDeviceTotalMem_v2(bytes: *usize, _: c_int) CUresult {
    bytes.* = 8 << 30;
    return success;
}

export fn cuDevicePrimaryCtxRetain(context: *?*anyopaque, _: c_int) CUresult {
    context.* = @ptrFromInt(0x1000);
    return success;
}

export fn cuCtxSetCurrent(_: ?*anyopaque) CUresult {
    return success;
}

export fn cuStreamCreate(stream: *?*anyopaque, _: c_uint) CUresult {
    stream.* = @ptrFromInt(0x2000);
    return success;
}

export fn cuStreamSynchronize(_: ?*anyopaque) CUresult {
    return success;
}

export fn cuEventCreate(event: *?*anyopaque, _: c_uint) CUresult {
    event.* = @ptrFromInt(0x3000);
    return success;
}

export fn cuEventRecord(_: ?*anyopaque, _: ?*anyopaque) CUresult {
    return success;
}

export fn cuEventQuery(_: ?*anyopaque) CUresult {
    return success;
}

export fn cuEventSynchronize(_: ?*anyopaque) CUresult {
    return success;
}

export fn cuEventElapsedTime(milliseconds: *f32, _: ?*anyopaque, _: ?*anyopaque) CUresult {
    milliseconds.* = 1;
    return success;
}

export fn cuModuleLoadDataEx(module: *?*anyopaque, image: [*:0]const u8, _: c_uint, _: [*]c_int, _: [*]?*anyopaque) CUresult {
    const text = std.mem.span(image);
    if (std.mem.indexOf(u8, text, ".version") == null) return invalid_value;
    module_text = text;
    module.* = @ptrFromInt(0x4000);
    return success;
}

export fn cuModuleGetFunction(function: *?*anyopaque, _: ?*anyopaque, name: [*:0]const u8) CUresult {
    const wanted = std.mem.span(name);
    var header_buffer: [128]u8 = undefined;
    const header = std.fmt.bufPrint(&header_buffer, ".entry {s}(", .{wanted}) catch return invalid_value;
    if (std.mem.indexOf(u8, module_text, header) == null) return not_found;
    if (fake_rows.function(wanted)) |handle| {
        function.* = @ptrFromInt(handle);
        return success;
    }
    if (fake_map.function(wanted)) |handle| {
        function.* = @ptrFromInt(handle);
        return success;
    }
    for (entries, 0..) |entry, index| {
        if (std.mem.eql(u8, entry, wanted)) {
            function.* = @ptrFromInt(0x100 + index);
            return success;
        }
    }
    return not_found;
}

fn param(comptime T: type, params: [*]?*anyopaque, index: usize) T {
    return @as(*const T, @ptrCast(@alignCast(params[index].?))).*;
}

export fn cuLaunchKernel(function: ?*anyopaque, grid: c_uint, grid_y: c_uint, grid_z: c_uint, block: c_uint, block_y: c_uint, block_z: c_uint, _: c_uint, _: ?*anyopaque, kernel_params: ?[*]?*anyopaque, _: ?[*]?*anyopaque) CUresult {
    if (grid == 0 or grid_y != 1 or grid_z != 1 or block == 0 or block > 1024 or block % 32 != 0 or block_y != 1 or block_z != 1) return invalid_value;
    const params = kernel_params orelse return invalid_value;
    if (fake_rows.launch(@intFromPtr(function), params)) return success;
    if (fake_map.launch(@intFromPtr(function), params)) return success;
    const index = @intFromPtr(function) -% 0x100;
    if (index >= entries.len) return invalid_handle;
    switch (index) {
        0 => launch_cast(params),
        1 => launch_unscale(params),
        2 => launch_update_scale(params),
        3 => launch_sum_squares(params, grid, block),
        4 => launch_norm_finish(params, block),
        5 => launch_scale(params),
        6 => launch_clip(params),
        7 => launch_adamw(params),
        8 => launch_sum_squares_f64(params, grid),
        9 => launch_sgd(params),
        10 => launch_matmul_epilogue(params),
        11 => launch_amp_scale_tensor(params),
        12 => launch_amp_sum_squares(params, grid),
        13 => launch_amp_adam_prepare(params),
        else => unreachable,
    }
    return success;
}

fn launch_cast(params: [*]?*anyopaque) void {
    const flags = param(u32, params, 5);
    cast.cast(.{
        .source = @ptrFromInt(param(u64, params, 0)),
        .target = @ptrFromInt(param(u64, params, 1)),
        .from = numerics.Dtype.from_int(param(u32, params, 3)).?,
        .to = numerics.Dtype.from_int(param(u32, params, 4)).?,
        .stochastic = flags & numerics.flag_stochastic != 0,
        .saturate = flags & numerics.flag_saturate != 0,
        .seed = param(u32, params, 6),
    }, param(u64, params, 2));
}

fn launch_unscale(params: [*]?*anyopaque) void {
    const rows: [*]const unscale.TensorRow = @ptrFromInt(param(u64, params, 0));
    const row_count = param(u64, params, 1);
    const scale = param(u64, params, 4);
    const inv = if (scale != 0) step_math.inverse_scale(@as(*const f32, @ptrFromInt(scale)).*) else param(f32, params, 3);
    if (unscale.unscale_check(rows[0..row_count], inv)) @as(*u32, @ptrFromInt(param(u64, params, 5))).* = 1;
}

fn launch_update_scale(params: [*]?*anyopaque) void {
    const state: *step_math.ScaleState = @ptrFromInt(param(u64, params, 0));
    const found = @as(*const u32, @ptrFromInt(param(u64, params, 1))).* != 0;
    state.* = step_math.update_scale(state.*, found, param(f64, params, 2), param(f64, params, 3), param(i32, params, 4));
}

/// The kernel's exact summation order: every thread sums its grid-stride elements in order, then
/// block_sum adds them with the warp shuffle tree and the warps' sums in order.
fn launch_sum_squares(params: [*]?*anyopaque, grid: c_uint, block: c_uint) void {
    const rows: [*]const unscale.TensorRow = @ptrFromInt(param(u64, params, 0));
    const row_count = param(u64, params, 1);
    const total_count = param(u64, params, 2);
    const partials: [*]f32 = @ptrFromInt(param(u64, params, 3));
    var sums: [1024]f32 = undefined;
    const stride = @as(u64, grid) * block;
    for (0..grid) |block_index| {
        for (0..block) |thread| {
            var sum: f32 = 0;
            var row: u64 = 0;
            var row_start: u64 = 0;
            var index: u64 = block_index * block + thread;
            while (index < total_count) : (index += stride) {
                while (row < row_count and index >= row_start + rows[row].count) {
                    row_start += rows[row].count;
                    row += 1;
                }
                const dtype = numerics.Dtype.from_int(rows[row].dtype).?;
                const value: f32 = @bitCast(wide(dtype, rows[row].address, index - row_start));
                sum += value * value;
            }
            sums[thread] = sum;
        }
        partials[block_index] = block_sum(sums[0..block]);
    }
}

/// kernels.zig's block_sum: shfl.down by 16, 8, 4, 2, 1 within each warp (lane 0's result), then
/// the warp sums in order.
fn block_sum(sums: []const f32) f32 {
    var total: f32 = 0;
    var warp: usize = 0;
    while (warp * 32 < sums.len) : (warp += 1) {
        var lanes: [32]f32 = sums[warp * 32 ..][0..32].*;
        for ([_]usize{ 16, 8, 4, 2, 1 }) |offset| {
            const old = lanes;
            for (0..32) |lane| lanes[lane] = old[lane] + (if (lane + offset < 32) old[lane + offset] else old[lane]);
        }
        total += lanes[0];
    }
    return total;
}

fn multiply_rows(params: [*]?*anyopaque, factor: f32) void {
    const rows: [*]const unscale.TensorRow = @ptrFromInt(param(u64, params, 0));
    for (rows[0..param(u64, params, 1)]) |row| {
        const dtype = numerics.Dtype.from_int(row.dtype).?;
        for (0..row.count) |index| {
            const value: f32 = @bitCast(wide(dtype, row.address, index));
            const bits: u32 = switch (dtype) {
                inline else => |d| numerics.from_f32(1, d, @splat(@bitCast(value * factor)), null, false)[0],
            };
            switch (dtype) {
                .float32 => @as([*]u32, @ptrFromInt(row.address))[index] = bits,
                .float16, .bfloat16 => @as([*]u16, @ptrFromInt(row.address))[index] = @truncate(bits),
                .float8_e4m3fn, .float8_e5m2 => @as([*]u8, @ptrFromInt(row.address))[index] = @truncate(bits),
            }
        }
    }
}

fn launch_scale(params: [*]?*anyopaque) void {
    const address = param(u64, params, 4);
    multiply_rows(params, if (address != 0) @as(*const f32, @ptrFromInt(address)).* else param(f32, params, 3));
}

fn launch_clip(params: [*]?*anyopaque) void {
    const coefficient = step_math.clip_coefficient(param(f32, params, 3), @as(*const f32, @ptrFromInt(param(u64, params, 4))).*);
    if (coefficient < 1.0) multiply_rows(params, coefficient);
}

fn launch_adamw(params: [*]?*anyopaque) void {
    const found_inf = param(u64, params, 4);
    if (found_inf != 0 and @as(*const u32, @ptrFromInt(found_inf)).* != 0) return;
    const rows: [*]const adamw.AdamRow = @ptrFromInt(param(u64, params, 0));
    adamw.step(rows[0..param(u64, params, 1)], @ptrFromInt(param(u64, params, 3)));
}

/// The sum lands in block 0's partial (the device spreads it over blocks; the total is the same
/// up to float64 rounding).
fn launch_sum_squares_f64(params: [*]?*anyopaque, grid: c_uint) void {
    const rows: [*]const unscale.TensorRow = @ptrFromInt(param(u64, params, 0));
    const result = sum_squares.sum_squares(rows[0..param(u64, params, 1)], param(f32, params, 3));
    const partials: [*]f64 = @ptrFromInt(param(u64, params, 4));
    @memset(partials[0..grid], 0);
    partials[0] = result.sum;
    if (result.found_inf) @as(*u32, @ptrFromInt(param(u64, params, 5))).* = 1;
}

fn launch_sgd(params: [*]?*anyopaque) void {
    const found_inf = param(u64, params, 4);
    if (found_inf != 0 and @as(*const u32, @ptrFromInt(found_inf)).* != 0) return;
    const rows: [*]const sgd.SgdRow = @ptrFromInt(param(u64, params, 0));
    sgd.step(rows[0..param(u64, params, 1)], @ptrFromInt(param(u64, params, 3)));
}

/// The CPU's epilogue (zig/src/ops/layout.zig) on the product cuBLAS (or its fake) wrote.
fn launch_matmul_epilogue(params: [*]?*anyopaque) void {
    const bias = param(u64, params, 1);
    layout.epilogue(numerics.Dtype.from_int(param(u32, params, 5)).?, &.{
        .product = @ptrFromInt(param(u64, params, 0)),
        .bias = if (bias == 0) null else @ptrFromInt(bias),
        .out = @ptrFromInt(param(u64, params, 2)),
        .rows = param(u64, params, 3),
        .cols = param(u64, params, 4),
    });
}

fn launch_amp_scale_tensor(params: [*]?*anyopaque) void {
    const dtype = numerics.Dtype.from_int(param(u32, params, 3)).?;
    const source = param(u64, params, 0);
    const target = param(u64, params, 1);
    const factor = @as(*const f32, @ptrFromInt(param(u64, params, 4))).*;
    for (0..param(u64, params, 2)) |index| {
        const value: f32 = @bitCast(wide(dtype, source, index));
        const bits: u32 = switch (dtype) {
            inline else => |d| numerics.from_f32(1, d, @splat(@bitCast(value * factor)), null, false)[0],
        };
        switch (dtype) {
            .float32 => @as([*]u32, @ptrFromInt(target))[index] = bits,
            .float16, .bfloat16 => @as([*]u16, @ptrFromInt(target))[index] = @truncate(bits),
            .float8_e4m3fn, .float8_e5m2 => @as([*]u8, @ptrFromInt(target))[index] = @truncate(bits),
        }
    }
}

/// The CPU's sum of squares (zig/src/cpu/sum_squares.zig) by the device scale's inverse, in block
/// 0's partial (the device spreads it over blocks; the total is the same up to float64 rounding).
fn launch_amp_sum_squares(params: [*]?*anyopaque, grid: c_uint) void {
    const rows: [*]const unscale.TensorRow = @ptrFromInt(param(u64, params, 0));
    const scale = param(u64, params, 3);
    const inv: f32 = if (scale != 0) step_math.inverse_scale(@as(*const f32, @ptrFromInt(scale)).*) else 1.0;
    const result = sum_squares.sum_squares(rows[0..param(u64, params, 1)], inv);
    const partials: [*]f64 = @ptrFromInt(param(u64, params, 4));
    @memset(partials[0..grid], 0);
    partials[0] = result.sum;
    if (result.found_inf) @as(*u32, @ptrFromInt(param(u64, params, 5))).* = 1;
}

fn squirrel5(position: u32, seed: u32) u32 {
    return numerics.squirrel5(1, @splat(position), @splat(seed))[0];
}

fn launch_amp_adam_prepare(params: [*]?*anyopaque) void {
    amp_math.prepare(&.{
        .hyper_table = param(u64, params, 0),
        .hyper_count = param(u64, params, 1),
        .current = param(u64, params, 2),
        .counter = param(u64, params, 3),
        .scale = param(u64, params, 4),
        .found_inf = param(u64, params, 5),
        .partials = param(u64, params, 6),
        .partial_count = param(u32, params, 7),
        .max_norm = param(f32, params, 8),
        .rows = param(u64, params, 9),
        .row_count = param(u64, params, 10),
        .seed = param(u32, params, 11),
        .stochastic = param(u32, params, 12) != 0,
    }, squirrel5);
}

fn wide(dtype: numerics.Dtype, address: u64, index: u64) u32 {
    const bits: u32 = switch (dtype) {
        .float32 => @as([*]const u32, @ptrFromInt(address))[index],
        .float16, .bfloat16 => @as([*]const u16, @ptrFromInt(address))[index],
        .float8_e4m3fn, .float8_e5m2 => @as([*]const u8, @ptrFromInt(address))[index],
    };
    return switch (dtype) {
        inline else => |d| numerics.to_f32(1, d, @splat(bits))[0],
    };
}

fn launch_norm_finish(params: [*]?*anyopaque, block: c_uint) void {
    const partials: [*]const f32 = @ptrFromInt(param(u64, params, 0));
    const count = param(u32, params, 1);
    var sums: [1024]f32 = undefined;
    for (0..block) |thread| {
        var sum: f32 = 0;
        var index = thread;
        while (index < count) : (index += block) sum += partials[index];
        sums[thread] = sum;
    }
    @as(*f32, @ptrFromInt(param(u64, params, 2))).* = @sqrt(block_sum(sums[0..block]));
}

export fn cuMemAlloc_v2(address: *u64, size_bytes: usize) CUresult {
    if (size_bytes == 0) return invalid_value;
    allocations.ensureUnusedCapacity(gpa, 1) catch return out_of_memory;
    const memory = std.c.malloc(size_bytes) orelse return out_of_memory;
    // Poison fresh memory, so a missing initialisation shows up.
    @memset(@as([*]u8, @ptrCast(memory))[0..size_bytes], 0xa5);
    address.* = @intFromPtr(memory);
    allocations.putAssumeCapacity(address.*, size_bytes);
    return success;
}

export fn cuMemFree_v2(address: u64) CUresult {
    if (!allocations.remove(address)) return invalid_value;
    std.c.free(@ptrFromInt(address));
    return success;
}

export fn cuMemHostAlloc(pointer: *?*anyopaque, size_bytes: usize, _: c_uint) CUresult {
    pointer.* = std.c.malloc(size_bytes) orelse return out_of_memory;
    return success;
}

export fn cuMemFreeHost(pointer: ?*anyopaque) CUresult {
    std.c.free(pointer);
    return success;
}

/// Checks that [address, address + size) lies inside one live allocation, as the driver would
/// fault otherwise.
fn inside(address: u64, size_bytes: usize) bool {
    var iterator = allocations.iterator();
    while (iterator.next()) |entry| {
        const start = entry.key_ptr.*;
        if (address >= start and address + size_bytes <= start + entry.value_ptr.*) return true;
    }
    return false;
}

export fn cuMemcpyHtoDAsync_v2(target: u64, source: [*]const u8, size_bytes: usize, _: ?*anyopaque) CUresult {
    if (!inside(target, size_bytes)) return invalid_value;
    @memcpy(@as([*]u8, @ptrFromInt(target))[0..size_bytes], source[0..size_bytes]);
    return success;
}

export fn cuMemcpyDtoHAsync_v2(target: [*]u8, source: u64, size_bytes: usize, _: ?*anyopaque) CUresult {
    if (!inside(source, size_bytes)) return invalid_value;
    @memcpy(target[0..size_bytes], @as([*]const u8, @ptrFromInt(source))[0..size_bytes]);
    return success;
}

export fn cuMemcpyDtoDAsync_v2(target: u64, source: u64, size_bytes: usize, _: ?*anyopaque) CUresult {
    if (!inside(target, size_bytes) or !inside(source, size_bytes)) return invalid_value;
    @memmove(@as([*]u8, @ptrFromInt(target))[0..size_bytes], @as([*]const u8, @ptrFromInt(source))[0..size_bytes]);
    return success;
}

export fn cuMemsetD32Async(target: u64, value: c_uint, count: usize, _: ?*anyopaque) CUresult {
    if (target % 4 != 0 or !inside(target, count * 4)) return invalid_value;
    @memset(@as([*]u32, @ptrFromInt(target))[0..count], value);
    return success;
}
