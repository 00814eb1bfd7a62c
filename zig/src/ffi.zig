//! Every function the library exports (C ABI). Each returns an i32 status from `Status`; results
//! come back through out-pointers. Arguments are checked here and the TypeScript side checks the
//! same things first (src/_ffi.ts), so a bad argument is an error, never undefined behaviour.

const std = @import("std");
const builtin = @import("builtin");
const numerics = @import("numerics.zig");
const pool = @import("cpu/pool.zig");
const cast = @import("cpu/cast.zig");
const unscale = @import("cpu/unscale.zig");
const sum_squares = @import("cpu/sum_squares.zig");
const adamw = @import("cpu/adamw.zig");
const sgd = @import("cpu/sgd.zig");

/// Bumped whenever an export's signature or meaning changes; src/_ffi.ts refuses a mismatch.
pub const abi_version: u32 = 1;

/// Status codes, mirrored by `Status` in src/_ffi.ts.
pub const Status = enum(i32) {
    ok = 0,
    invalid_dtype = 1,
    null_pointer = 2,
    out_of_memory = 3,
    invalid_argument = 4,
    overlap = 5,
    cuda_unavailable = 6,
    cuda_error = 7,
};

const ptx_source = @embedFile("mixprec_ptx");

fn status(code: Status) i32 {
    return @backingInt(code);
}

export fn mp_abi_version() u32 {
    return abi_version;
}

/// CPU features the kernels were built for: bit 0 AVX2, bit 1 AVX512F, bit 2 AVX512-BF16,
/// bit 3 F16C; bits 8..15 the thread count a call uses.
export fn mp_cpu_info(out_flags: ?*u32) i32 {
    const out = out_flags orelse return status(.null_pointer);
    var flags: u32 = 0;
    if (builtin.cpu.arch == .x86_64) {
        const has = std.Target.x86.featureSetHas;
        const features = builtin.cpu.features;
        if (has(features, .avx2)) flags |= 1;
        if (has(features, .avx512f)) flags |= 2;
        if (has(features, .avx512bf16)) flags |= 4;
        if (has(features, .f16c)) flags |= 8;
    }
    flags |= pool.thread_count() << 8;
    out.* = flags;
    return status(.ok);
}

/// Sets the number of CPU threads kernels use (0: one per CPU).
export fn mp_set_threads(count: u32) i32 {
    if (count > pool.thread_count_max) return status(.invalid_argument);
    pool.set_thread_count(count);
    return status(.ok);
}

/// Allocates `size_bytes` bytes aligned to 64 bytes; `out_address` receives the address.
export fn mp_alloc(size_bytes: u64, out_address: ?*u64) i32 {
    const out = out_address orelse return status(.null_pointer);
    const memory = std.heap.c_allocator.alignedAlloc(u8, .@"64", @max(size_bytes, 1)) catch
        return status(.out_of_memory);
    out.* = @intFromPtr(memory.ptr);
    return status(.ok);
}

/// Frees memory from mp_alloc; `size_bytes` must be the size it was allocated with.
export fn mp_free(address: u64, size_bytes: u64) i32 {
    if (address == 0) return status(.null_pointer);
    const memory: [*]align(64) u8 = @ptrFromInt(address);
    std.heap.c_allocator.free(memory[0..@max(size_bytes, 1)]);
    return status(.ok);
}

/// The embedded PTX module (NUL-terminated text) for the CUDA backend.
export fn mp_ptx(out_address: ?*u64, out_length: ?*u64) i32 {
    const address = out_address orelse return status(.null_pointer);
    const length = out_length orelse return status(.null_pointer);
    address.* = @intFromPtr(ptx_source.ptr);
    length.* = ptx_source.len;
    return status(.ok);
}

/// Casts `count` elements from dtype `from` at `source` to dtype `to` at `target`.
/// flags: bit 0 stochastic rounding (float16 / bfloat16 targets), bit 1 saturate (fp8 targets).
export fn mp_cast(source: ?*const anyopaque, target: ?*anyopaque, count: u64, from: u32, to: u32, flags: u32, seed: u32) i32 {
    const from_dtype = numerics.Dtype.from_int(from) orelse return status(.invalid_dtype);
    const to_dtype = numerics.Dtype.from_int(to) orelse return status(.invalid_dtype);
    if (flags & ~(numerics.flag_stochastic | numerics.flag_saturate) != 0) return status(.invalid_argument);
    if (count == 0) return status(.ok);
    const source_bytes: [*]const u8 = @ptrCast(source orelse return status(.null_pointer));
    const target_bytes: [*]u8 = @ptrCast(target orelse return status(.null_pointer));
    const source_end = @intFromPtr(source_bytes) + count * from_dtype.size_bytes();
    const target_end = @intFromPtr(target_bytes) + count * to_dtype.size_bytes();
    if (source_end > @intFromPtr(target_bytes) and target_end > @intFromPtr(source_bytes)) return status(.overlap);
    cast.cast(.{
        .source = source_bytes,
        .target = target_bytes,
        .from = from_dtype,
        .to = to_dtype,
        .stochastic = flags & numerics.flag_stochastic != 0,
        .saturate = flags & numerics.flag_saturate != 0,
        .seed = seed,
    }, count);
    return status(.ok);
}

/// Unscales every tensor of the table in place by `inv_scale` and sets `out_found_inf` to 1 when
/// any element was inf or NaN, else 0. One call for the whole list of gradients.
export fn mp_unscale_check(table: ?[*]const unscale.TensorRow, row_count: u64, inv_scale: f32, out_found_inf: ?*u32) i32 {
    const out = out_found_inf orelse return status(.null_pointer);
    if (row_count == 0) {
        out.* = 0;
        return status(.ok);
    }
    const rows = (table orelse return status(.null_pointer))[0..row_count];
    if (!unscale.validate(rows)) return status(.invalid_dtype);
    out.* = @intFromBool(unscale.unscale_check(rows, inv_scale));
    return status(.ok);
}

// ---- Optimizers (src/optim/): global norm and fused AdamW / SGD steps ----

/// Sum over every element of (float32(x) * inv_scale)^2, accumulated in float64, and whether any
/// element was inf or NaN: the norm for clipping and the found-inf check in one read of the grads.
export fn mp_sum_squares(table: ?[*]const unscale.TensorRow, row_count: u64, inv_scale: f32, out_sum: ?*f64, out_found_inf: ?*u32) i32 {
    const sum_out = out_sum orelse return status(.null_pointer);
    const found_out = out_found_inf orelse return status(.null_pointer);
    if (row_count == 0) {
        sum_out.* = 0;
        found_out.* = 0;
        return status(.ok);
    }
    const rows = (table orelse return status(.null_pointer))[0..row_count];
    if (!unscale.validate(rows)) return status(.invalid_dtype);
    const result = sum_squares.sum_squares(rows, inv_scale);
    sum_out.* = result.sum;
    found_out.* = @intFromBool(result.found_inf);
    return status(.ok);
}

/// One fused AdamW step over a table of rows (zig/src/cpu/adamw.zig). When `found_inf` is given and
/// non-zero nothing is read or written and `out_applied` is 0; otherwise the step runs and it is 1.
export fn mp_fused_adamw(table: ?[*]const adamw.AdamRow, row_count: u64, hyper: ?*const adamw.AdamHyper, found_inf: ?*const u32, out_applied: ?*u32) i32 {
    const applied = out_applied orelse return status(.null_pointer);
    const h = hyper orelse return status(.null_pointer);
    if (h.flags & ~(adamw.flag_amsgrad | adamw.flag_stochastic) != 0) return status(.invalid_argument);
    if (found_inf) |flag| if (flag.* != 0) {
        applied.* = 0;
        return status(.ok);
    };
    applied.* = 1;
    if (row_count == 0) return status(.ok);
    const rows = (table orelse return status(.null_pointer))[0..row_count];
    if (!adamw.validate(rows)) return status(.invalid_argument);
    for (rows) |row| if (row.count != 0 and h.flags & adamw.flag_amsgrad != 0 and row.v_max == 0) return status(.null_pointer);
    adamw.step(rows, h);
    return status(.ok);
}

/// One fused SGD step over a table of rows (zig/src/cpu/sgd.zig); `found_inf` as for mp_fused_adamw.
export fn mp_fused_sgd(table: ?[*]const sgd.SgdRow, row_count: u64, hyper: ?*const sgd.SgdHyper, found_inf: ?*const u32, out_applied: ?*u32) i32 {
    const applied = out_applied orelse return status(.null_pointer);
    const h = hyper orelse return status(.null_pointer);
    const known = sgd.flag_nesterov | sgd.flag_stochastic | sgd.flag_first_step | sgd.flag_momentum;
    if (h.flags & ~known != 0) return status(.invalid_argument);
    if (found_inf) |flag| if (flag.* != 0) {
        applied.* = 0;
        return status(.ok);
    };
    applied.* = 1;
    if (row_count == 0) return status(.ok);
    const rows = (table orelse return status(.null_pointer))[0..row_count];
    if (!sgd.validate(rows, h)) return status(.invalid_argument);
    sgd.step(rows, h);
    return status(.ok);
}

test {
    _ = sum_squares;
    _ = adamw;
    _ = sgd;
}

test {
    _ = numerics;
    _ = pool;
    _ = cast;
    _ = unscale;
}
