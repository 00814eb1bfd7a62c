//! CPU casts between every pair of dtypes: a SIMD loop and a scalar tail that run the same
//! numerics (zig/src/numerics.zig), so results do not depend on vector width or thread count.

const std = @import("std");
const builtin = @import("builtin");
const numerics = @import("../numerics.zig");
const pool = @import("pool.zig");
const dispatch = @import("dispatch.zig");

const Dtype = numerics.Dtype;
pub const lanes = 16;

pub fn Elem(comptime dtype: Dtype) type {
    return switch (dtype.size_bytes()) {
        4 => u32,
        2 => u16,
        1 => u8,
        else => unreachable,
    };
}

/// Loads `n` elements of `dtype` starting at `index` as zero-extended u32 lanes.
pub inline fn load(comptime n: comptime_int, comptime dtype: Dtype, base: [*]const u8, index: u64) numerics.V(n) {
    const T = Elem(dtype);
    const typed: [*]align(1) const T = @ptrCast(base);
    const array: [n]T = typed[index..][0..n].*;
    const vector: @Vector(n, T) = array;
    return @intCast(vector);
}

/// Stores `n` lanes (already in `dtype`'s bit width) at `index`.
pub inline fn store(comptime n: comptime_int, comptime dtype: Dtype, base: [*]u8, index: u64, bits: numerics.V(n)) void {
    const T = Elem(dtype);
    const typed: [*]align(1) T = @ptrCast(base);
    const vector: @Vector(n, T) = @truncate(bits);
    typed[index..][0..n].* = vector;
}

pub const Request = extern struct {
    source: [*]const u8,
    target: [*]u8,
    from: Dtype,
    to: Dtype,
    stochastic: bool,
    saturate: bool,
    seed: u32,
};

/// x86 F16C (and AVX-512F) convert float32 <-> float16 in hardware with round to nearest even,
/// which is the rule in numerics.zig for every non-NaN input; the NaN lanes are fixed up to the
/// canonical quiet NaN. The tests compare this path with the TypeScript reference bit for bit.
const hardware_f16 = builtin.cpu.arch == .x86_64 and
    std.Target.x86.featureSetHas(builtin.cpu.features, .f16c);

inline fn f32_to_f16_hardware(comptime n: comptime_int, bits: numerics.V(n)) numerics.V(n) {
    const values: @Vector(n, f32) = @bitCast(bits);
    const halves: @Vector(n, u16) = @bitCast(@as(@Vector(n, f16), @floatCast(values)));
    const is_nan = (bits & @as(numerics.V(n), @splat(0x7fff_ffff))) > @as(numerics.V(n), @splat(0x7f80_0000));
    const nan = ((bits >> @splat(16)) & @as(numerics.V(n), @splat(0x8000))) | @as(numerics.V(n), @splat(0x7e00));
    return @select(u32, is_nan, nan, @as(numerics.V(n), halves));
}

inline fn f16_to_f32_hardware(comptime n: comptime_int, bits: numerics.V(n)) numerics.V(n) {
    const halves: @Vector(n, f16) = @bitCast(@as(@Vector(n, u16), @truncate(bits)));
    return @bitCast(@as(@Vector(n, f32), @floatCast(halves)));
}

/// One block of `n` elements: the hardware path where it applies, else the shared numerics.
inline fn convert(
    comptime n: comptime_int,
    comptime from: Dtype,
    comptime to: Dtype,
    comptime stochastic: bool,
    comptime saturate: bool,
    bits: numerics.V(n),
    seed: u32,
    index: u64,
) numerics.V(n) {
    if (hardware_f16 and from == .float32 and to == .float16 and !stochastic) return f32_to_f16_hardware(n, bits);
    if (hardware_f16 and from == .float16 and to == .float32) return f16_to_f32_hardware(n, bits);
    const wide = numerics.to_f32(n, from, bits);
    const threshold = if (stochastic) numerics.threshold_at(n, seed, index) else null;
    return numerics.from_f32(n, to, wide, threshold, saturate);
}

fn cast_range_typed(
    comptime from: Dtype,
    comptime to: Dtype,
    comptime stochastic: bool,
    comptime saturate: bool,
    request: *const Request,
    begin: u64,
    end: u64,
) void {
    var index = begin;
    while (index + lanes <= end) : (index += lanes) {
        const bits = load(lanes, from, request.source, index);
        store(lanes, to, request.target, index, convert(lanes, from, to, stochastic, saturate, bits, request.seed, index));
    }
    while (index < end) : (index += 1) {
        const bits = load(1, from, request.source, index);
        store(1, to, request.target, index, convert(1, from, to, stochastic, saturate, bits, request.seed, index));
    }
}

fn cast_range(request: *const Request, begin: u64, end: u64) void {
    switch (request.from) {
        inline else => |from| switch (request.to) {
            inline else => |to| {
                // Only float16 and bfloat16 targets round stochastically; only fp8 targets saturate.
                const sr_capable = to == .float16 or to == .bfloat16;
                const sat_capable = to == .float8_e4m3fn or to == .float8_e5m2;
                if (sr_capable and request.stochastic) {
                    cast_range_typed(from, to, sr_capable, false, request, begin, end);
                } else if (sat_capable and request.saturate) {
                    cast_range_typed(from, to, false, sat_capable, request, begin, end);
                } else {
                    cast_range_typed(from, to, false, false, request, begin, end);
                }
            },
        },
    }
}

/// cast_range as a C function: zig/src/wide.zig exports its x86-64-v4 compilations (in-cache casts
/// run up to half again as fast with zmm registers; the bits are the same on every path).
pub fn cast_range_c(request: *const Request, begin: u64, end: u64) callconv(.c) void {
    cast_range(request, begin, end);
}

const Call = struct {
    request: *const Request,
    range: *const @TypeOf(cast_range_c),

    fn run(call: *const Call, begin: u64, end: u64) void {
        call.range(call.request, begin, end);
    }
};

fn copy_range(request: *const Request, begin: u64, end: u64) void {
    const size = request.from.size_bytes();
    @memcpy(request.target[begin * size .. end * size], request.source[begin * size .. end * size]);
}

/// Casts `count` elements. Same-dtype casts copy the bits unchanged. Source and target must not
/// overlap (the TypeScript side checks; this asserts).
pub fn cast(request: Request, count: u64) void {
    if (count == 0) return;
    const source_end = @intFromPtr(request.source) + count * request.from.size_bytes();
    const target_end = @intFromPtr(request.target) + count * request.to.size_bytes();
    std.debug.assert(source_end <= @intFromPtr(request.target) or target_end <= @intFromPtr(request.source));
    if (request.from == request.to) {
        pool.parallel_for(count, &request, copy_range);
    } else {
        const call = Call{ .request = &request, .range = dispatch.pick(*const @TypeOf(cast_range_c), "cast_range", &cast_range_c) };
        pool.parallel_for(count, &call, Call.run);
    }
}

test "the hardware float16 path equals the shared numerics on a dense sample of float32" {
    if (!hardware_f16) return error.SkipZigTest;
    var bits: u64 = 0;
    while (bits <= 0xffff_ffff) : (bits += 4093) {
        const u: numerics.V(1) = @splat(@intCast(bits));
        try std.testing.expectEqual(numerics.f32_to_f16(1, u, null)[0], f32_to_f16_hardware(1, u)[0]);
    }
    for (0..65536) |h| {
        const u: numerics.V(1) = @splat(@intCast(h));
        try std.testing.expectEqual(numerics.f16_to_f32(1, u)[0], f16_to_f32_hardware(1, u)[0]);
    }
}

test "a cast gives the same bits on one thread and on several" {
    const count = pool.parallel_threshold + 1000 + 3;
    const source = try std.testing.allocator.alloc(u32, count);
    defer std.testing.allocator.free(source);
    const single = try std.testing.allocator.alloc(u16, count);
    defer std.testing.allocator.free(single);
    const multi = try std.testing.allocator.alloc(u16, count);
    defer std.testing.allocator.free(multi);
    var prng = std.Random.DefaultPrng.init(7);
    for (source) |*x| x.* = prng.random().int(u32);
    const request = Request{
        .source = @ptrCast(source.ptr),
        .target = @ptrCast(single.ptr),
        .from = .float32,
        .to = .bfloat16,
        .stochastic = true,
        .saturate = false,
        .seed = 1234,
    };
    pool.set_thread_count(1);
    cast(request, count);
    pool.set_thread_count(4);
    defer pool.set_thread_count(0);
    var request_multi = request;
    request_multi.target = @ptrCast(multi.ptr);
    cast(request_multi, count);
    try std.testing.expectEqualSlices(u16, single, multi);
}

test "casts give the same bits on every path this machine has" {
    const count = 3 * lanes * 64 + 5;
    const allocator = std.testing.allocator;
    const source = try allocator.alloc(u32, count);
    defer allocator.free(source);
    const want = try allocator.alloc(u32, count);
    defer allocator.free(want);
    const got = try allocator.alloc(u32, count);
    defer allocator.free(got);
    var prng = std.Random.DefaultPrng.init(11);
    for (source) |*x| x.* = prng.random().int(u32);
    const cases = [_]struct { Dtype, Dtype, bool, bool }{
        .{ .float32, .bfloat16, false, false },    .{ .float32, .bfloat16, true, false },
        .{ .float32, .float16, false, false },     .{ .float32, .float16, true, false },
        .{ .float16, .float32, false, false },     .{ .bfloat16, .float8_e4m3fn, false, true },
        .{ .float32, .float8_e5m2, false, false }, .{ .float8_e4m3fn, .float32, false, false },
    };
    defer dispatch.set_path_for_test(null);
    for (cases) |case| {
        for (dispatch.paths_available(), 0..) |path, index| {
            dispatch.set_path_for_test(path);
            const target = if (index == 0) want else got;
            @memset(target, 0);
            cast(.{
                .source = @ptrCast(source.ptr),
                .target = @ptrCast(target.ptr),
                .from = case[0],
                .to = case[1],
                .stochastic = case[2],
                .saturate = case[3],
                .seed = 99,
            }, count);
            if (index > 0) try std.testing.expectEqualSlices(u32, want, got);
        }
    }
}
