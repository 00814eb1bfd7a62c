//! Matrix multiply C = op(A) op(B) (+ C), batched, for float32, float16 and bfloat16 inputs with a
//! float32 C and float32 accumulation.
//!
//! The structure is Goto's (BLIS): C is cut into NC-column panels, K into KC-deep slabs and M into
//! MC-row blocks; a KC x NC panel of B and an MC x KC block of A are packed (converted to the
//! kernel's format on the way, so float16 and bfloat16 inputs cost one conversion per packed
//! element, not per multiply) and a register-blocked MR x NR micro-kernel of vector FMAs runs over
//! the packed panels. Where the CPU has AVX512-BF16, two bfloat16 inputs skip the widening: the
//! micro-kernel uses `vdpbf16ps` (pairs of bfloat16 products summed into float32 lanes). Work is
//! split over threads by batch, then by rows or by columns, whichever has the threads repack less
//! (a row split packs all of B in every thread, a column split all of A, and nothing where a
//! float32 A is read in place), each thread packing into its own static buffers, so no allocation
//! happens inside a call. mp_matmul_out's last K slab writes the op's output (bias added, rounded
//! into its dtype) straight from the micro-tiles, with the bits of a float32 C and the epilogue.
//!
//! This file is compiled four times on x86_64: into the library for its baseline CPU
//! (x86-64-v3: 8-lane ymm tiles), and as the wide objects for x86-64-v4 (16-lane zmm tiles),
//! x86-64-v4 + AVX512-BF16, and those plus AMX (zig/src/wide.zig exports their entry points under
//! names of their own). `matmul` and `peak_fma` ask zig/src/cpu/dispatch.zig which compilation to
//! run, once. Every path computes each float32 C element as the same sequence of FMAs (the same
//! depth order, the same K slabs), so float32 and float16 inputs give identical bits on every path;
//! bfloat16 x bfloat16 runs on the AMX tile unit on the AMX path (and with `vdpbf16ps` where
//! flag_bf16_dot asks on the AVX512-BF16 path) and differs there in the last bits.

const std = @import("std");
const builtin = @import("builtin");
const numerics = @import("../numerics.zig");
const storage = @import("../ops/storage.zig");
const pool = @import("pool.zig");
const dispatch = @import("dispatch.zig");

const Dtype = numerics.Dtype;

fn x86_has(comptime feature: std.Target.x86.Feature) bool {
    return builtin.cpu.arch == .x86_64 and std.Target.x86.featureSetHas(builtin.cpu.features, feature);
}

const has_avx512 = x86_has(.avx512f);
/// Whether bfloat16 x bfloat16 products use the AVX512-BF16 dot-product instruction.
pub const has_bf16_dot = has_avx512 and x86_has(.avx512bf16);
/// Whether bfloat16 x bfloat16 products run on the AMX tile unit (`tdpbf16ps`).
pub const has_amx = has_bf16_dot and x86_has(.amx_tile) and x86_has(.amx_bf16);
/// This compilation's name in the wide objects' symbols (and dispatch's paths).
pub const isa_name = if (has_amx) "amx" else if (has_bf16_dot) "avx512bf16" else if (has_avx512) "avx512" else "baseline";

/// float32 lanes per vector register.
const lanes = if (has_avx512) 16 else 8;
const Vf = @Vector(lanes, f32);
const Vu = @Vector(lanes, u32);
/// Micro-tile: MR rows by NR = 2 vectors of columns. MR * 2 accumulators stay in registers
/// (24 of 32 zmm with AVX-512, 12 of 16 ymm with AVX2).
const mr = if (has_avx512) 12 else 6;
const nr = 2 * lanes;
/// Cache blocks: a KC x NR micro-panel of B stays in L1, an MC x KC block of A in L2, a KC x NC
/// panel of B in L2/L3.
const kc_max = 256;
/// Depth of a K slab per path: bfloat16 pairs take half the words per depth step, so the
/// dot-product path packs twice as deep into the same buffers (fewer C tile reloads per FLOP).
fn slab_depth(comptime path: Path) u64 {
    return if (path == .f32) kc_max else 2 * kc_max;
}
/// Rows of C per micro-tile on a path: the AMX kernel computes 32 x 32 (four 16 x 16 tiles).
fn tile_rows(comptime path: Path) u64 {
    return if (path == .amx) amx_rows else mr;
}
/// Words per packed column (or row) of a slab `depth` deep: one float32 per depth step, or one
/// bfloat16 pair per two, padded on the AMX path to whole 32-deep tile loads.
fn slab_steps(comptime path: Path, depth: u64) u64 {
    return switch (path) {
        .f32 => depth,
        .bf16_dot => (depth + 1) / 2,
        .amx => ((depth + 1) / 2 + amx_pairs - 1) / amx_pairs * amx_pairs,
    };
}
const mc_max = mr * 8;
const nc_max = nr * 64;

comptime {
    std.debug.assert(kc_max % 2 == 0);
    std.debug.assert(mc_max % mr == 0);
    std.debug.assert(nc_max % nr == 0);
}

/// One matmul call as the kernels see it. Element (i, p) of op(A) is `a[i * k + p]`, or
/// `a[p * m + i]` when `trans_a`; element (p, j) of op(B) is `b[p * n + j]`, or `b[j * k + p]` when
/// `trans_b`. C is row-major m x n float32.
pub const Request = extern struct {
    a: [*]const u8,
    b: [*]const u8,
    c: [*]f32,
    batch: u64,
    m: u64,
    n: u64,
    k: u64,
    a_dtype: Dtype,
    b_dtype: Dtype,
    trans_a: bool,
    trans_b: bool,
    /// C += op(A) op(B) instead of C = op(A) op(B).
    accumulate: bool,
    /// Every batch multiplies the same B (batch stride 0).
    broadcast_b: bool,
    /// Use the AVX512-BF16 path when both inputs are bfloat16 and the CPU has it (flag_bf16_dot;
    /// off by default, where bfloat16 widens to float32).
    bf16_dot: bool,
    /// Where the result goes instead of C (mp_matmul_out): out = round(op(A) op(B) + bias) in
    /// `out_dtype`, written by the last K slab's micro-tiles straight from their accumulators, with
    /// the bits of a float32 C followed by the epilogue (ops/layout.zig). C then holds only the
    /// partial sums of a K deeper than one slab (fused_depth_max); it is never touched otherwise.
    /// Not with `accumulate`.
    out: ?[*]u8 = null,
    /// A row of n values in `out_dtype` added before the rounding, or null.
    bias: ?[*]const u8 = null,
    out_dtype: Dtype = .float32,
};

/// The deepest K that every path multiplies in one slab: mp_matmul_out needs no C below it.
pub const fused_depth_max: u64 = kc_max;

pub const flag_trans_a: u32 = 1;
pub const flag_trans_b: u32 = 2;
pub const flag_accumulate: u32 = 4;
/// Opt in to the AVX512-BF16 dot-product path for bfloat16 x bfloat16 (off by default: on the
/// Sapphire Rapids cores measured, vdpbf16ps issues at half the rate of FMA, so widening each
/// bfloat16 to float32 in the packing and running the float32 kernel is faster, 1.0-2.4x).
pub const flag_bf16_dot: u32 = 8;
pub const flag_broadcast_b: u32 = 16;
pub const flags_all: u32 = 31;

/// Packed panels for one worker: A as MC x KC floats, B as KC x NC floats (or bfloat16 pairs).
const PackA = [mc_max * kc_max]f32;
/// Twice a KC x NC panel, so rows mode can hold all of K x NC for K up to 2 KC without narrowing NC
/// (a narrower NC repacks A once more per panel).
const pack_b_size = 2 * kc_max * nc_max;
const PackB = [pack_b_size]f32;
var pack_a_buffers: [pool.thread_count_max]PackA align(64) = undefined;
var pack_b_buffers: [pool.thread_count_max]PackB align(64) = undefined;
/// The static buffers serve one call at a time (calls from several JavaScript workers wait).
var busy = std.atomic.Value(u32).init(0);

inline fn load_f32(comptime dtype: Dtype, base: [*]const u8, index: u64) f32 {
    switch (dtype) {
        .float32 => {
            const typed: [*]align(1) const f32 = @ptrCast(base);
            return typed[index];
        },
        .float16 => {
            // Hardware conversion (F16C's vcvtph2ps where the CPU has it): exact, like numerics'.
            const typed: [*]align(1) const f16 = @ptrCast(base);
            return typed[index];
        },
        .bfloat16 => {
            const typed: [*]align(1) const u16 = @ptrCast(base);
            const bits = numerics.to_f32(1, dtype, @splat(typed[index]));
            return @bitCast(bits[0]);
        },
        else => unreachable,
    }
}

inline fn load_bf16(base: [*]const u8, index: u64) u16 {
    const typed: [*]align(1) const u16 = @ptrCast(base);
    return typed[index];
}

/// Where the task's sub-matrices start for one batch element.
const Operands = struct {
    a: [*]const u8,
    b: [*]const u8,
    c: [*]f32,
    out: ?[*]u8,
};

fn operands(request: *const Request, batch_index: u64) Operands {
    const a_stride = request.m * request.k * request.a_dtype.size_bytes();
    const b_stride = if (request.broadcast_b) 0 else request.k * request.n * request.b_dtype.size_bytes();
    return .{
        .a = request.a + batch_index * a_stride,
        .b = request.b + batch_index * b_stride,
        .c = request.c + batch_index * request.m * request.n,
        .out = if (request.out) |out| out + batch_index * request.m * request.n * request.out_dtype.size_bytes() else null,
    };
}

/// `n` consecutive elements of `dtype` from `index` on, widened to float32.
inline fn load_vector(comptime n: comptime_int, comptime dtype: Dtype, base: [*]const u8, index: u64) @Vector(n, f32) {
    switch (dtype) {
        .float32 => {
            const typed: [*]align(1) const f32 = @ptrCast(base);
            return typed[index..][0..n].*;
        },
        .float16 => {
            const typed: [*]align(1) const f16 = @ptrCast(base);
            const halves: @Vector(n, f16) = typed[index..][0..n].*;
            return @floatCast(halves);
        },
        .bfloat16 => {
            const typed: [*]align(1) const u16 = @ptrCast(base);
            const halves: @Vector(n, u16) = typed[index..][0..n].*;
            return @bitCast(numerics.to_f32(n, dtype, @as(@Vector(n, u32), halves)));
        },
        else => unreachable,
    }
}

/// `n` consecutive bfloat16 values from `index` on, zero-extended to u32 lanes.
inline fn load_halves(comptime n: comptime_int, base: [*]const u8, index: u64) @Vector(n, u32) {
    const typed: [*]align(1) const u16 = @ptrCast(base);
    const halves: @Vector(n, u16) = typed[index..][0..n].*;
    return halves;
}

/// Two consecutive bfloat16 values from `index` on as one word (the first in the low half).
inline fn load_pair(base: [*]const u8, index: u64) u32 {
    const typed: *align(1) const u32 = @ptrCast(base + index * 2);
    return typed.*;
}

/// Packs rows [row0, row0 + rows) and depth [p0, p0 + depth) of op(A) as MR-row strips, each
/// depth-major (MR values per depth step), zero-padded to whole strips. The request's fields are
/// read into locals first: the compiler cannot keep them in registers across stores to `target`.
fn pack_a_f32(comptime dtype: Dtype, request: *const Request, a: [*]const u8, row0: u64, rows: u64, p0: u64, depth: u64, target: []f32) void {
    const m = request.m;
    const k = request.k;
    const trans = request.trans_a;
    var strip: u64 = 0;
    while (strip < rows) : (strip += mr) {
        const strip_rows = @min(mr, rows - strip);
        const out = target[strip * depth ..][0 .. depth * mr];
        if (strip_rows < mr) @memset(out, 0);
        if (trans and strip_rows == mr) {
            // A is stored k x m: each depth step's MR values are contiguous.
            for (0..depth) |p| out[p * mr ..][0..mr].* = load_vector(mr, dtype, a, (p0 + p) * m + row0 + strip);
        } else if (trans) {
            for (0..depth) |p| {
                const base = (p0 + p) * m + row0 + strip;
                for (0..strip_rows) |i| out[p * mr + i] = load_f32(dtype, a, base + i);
            }
        } else {
            // Rows are contiguous in depth: convert 16 at a time, then spread them over the strip.
            for (0..strip_rows) |i| {
                const base = (row0 + strip + i) * k + p0;
                var p: u64 = 0;
                while (p + 16 <= depth) : (p += 16) {
                    const chunk: [16]f32 = load_vector(16, dtype, a, base + p);
                    inline for (0..16) |l| out[(p + l) * mr + i] = chunk[l];
                }
                while (p < depth) : (p += 1) out[p * mr + i] = load_f32(dtype, a, base + p);
            }
        }
    }
}

/// Packs depth [p0, p0 + depth) and columns [col0, col0 + cols) of op(B) as NR-column strips, each
/// depth-major (NR values per depth step), zero-padded to whole strips.
fn pack_b_f32(comptime dtype: Dtype, request: *const Request, b: [*]const u8, p0: u64, depth: u64, col0: u64, cols: u64, target: []f32) void {
    const n = request.n;
    const k = request.k;
    const trans = request.trans_b;
    var strip: u64 = 0;
    while (strip < cols) : (strip += nr) {
        const strip_cols = @min(nr, cols - strip);
        const out = target[strip * depth ..][0 .. depth * nr];
        if (strip_cols < nr) @memset(out, 0);
        if (trans) {
            // B is stored n x k: walk each column's contiguous depth run.
            for (0..strip_cols) |j| {
                const base = (col0 + strip + j) * k + p0;
                for (0..depth) |p| out[p * nr + j] = load_f32(dtype, b, base + p);
            }
        } else if (strip_cols == nr) {
            for (0..depth) |p| out[p * nr ..][0..nr].* = load_vector(nr, dtype, b, (p0 + p) * n + col0 + strip);
        } else {
            for (0..depth) |p| {
                const base = (p0 + p) * n + col0 + strip;
                for (0..strip_cols) |j| out[p * nr + j] = load_f32(dtype, b, base + j);
            }
        }
    }
}

/// bfloat16 pairs for the dot-product kernel: A strips hold, per depth pair, MR u32 words of
/// (a[i][2q], a[i][2q+1]); B strips hold, per depth pair, NR words of (b[2q][j], b[2q+1][j]).
/// An odd depth is padded with a zero.
fn pack_a_pairs(request: *const Request, a: [*]const u8, row0: u64, rows: u64, p0: u64, depth: u64, target: []u32) void {
    const m = request.m;
    const k = request.k;
    const trans = request.trans_a;
    const pairs = (depth + 1) / 2;
    const whole = depth / 2;
    var strip: u64 = 0;
    while (strip < rows) : (strip += mr) {
        const strip_rows = @min(mr, rows - strip);
        const out = target[strip * pairs ..][0 .. pairs * mr];
        if (strip_rows < mr or whole < pairs) @memset(out, 0);
        if (trans) {
            // A is stored k x m: rows 2q and 2q + 1 of the stored matrix interleave.
            for (0..pairs) |q| {
                const lo_index = (p0 + 2 * q) * m + row0 + strip;
                const has_hi = q < whole;
                if (strip_rows == mr) {
                    const lo = load_halves(mr, a, lo_index);
                    const hi = if (has_hi) load_halves(mr, a, lo_index + m) else @as(@Vector(mr, u32), @splat(0));
                    out[q * mr ..][0..mr].* = lo | (hi << @splat(16));
                } else {
                    for (0..strip_rows) |i| {
                        const lo: u32 = load_bf16(a, lo_index + i);
                        const hi: u32 = if (has_hi) load_bf16(a, lo_index + m + i) else 0;
                        out[q * mr + i] = lo | (hi << 16);
                    }
                }
            }
        } else {
            for (0..strip_rows) |i| {
                const base = (row0 + strip + i) * k + p0;
                for (0..whole) |q| out[q * mr + i] = load_pair(a, base + 2 * q);
                if (whole < pairs) out[whole * mr + i] = load_bf16(a, base + 2 * whole);
            }
        }
    }
}

/// `steps` is the pair count each strip holds (at least (depth + 1) / 2; the rest is zero).
fn pack_b_pairs(request: *const Request, b: [*]const u8, p0: u64, depth: u64, col0: u64, cols: u64, steps: u64, target: []u32) void {
    const n = request.n;
    const k = request.k;
    const trans = request.trans_b;
    const pairs = (depth + 1) / 2;
    const whole = depth / 2;
    var strip: u64 = 0;
    while (strip < cols) : (strip += nr) {
        const strip_cols = @min(nr, cols - strip);
        const out = target[strip * steps ..][0 .. steps * nr];
        if (strip_cols < nr or whole < steps) @memset(out, 0);
        if (trans) {
            // B is stored n x k: depth pairs of one column are adjacent.
            for (0..strip_cols) |j| {
                const base = (col0 + strip + j) * k + p0;
                for (0..whole) |q| out[q * nr + j] = load_pair(b, base + 2 * q);
                if (whole < pairs) out[whole * nr + j] = load_bf16(b, base + 2 * whole);
            }
        } else {
            for (0..pairs) |q| {
                const lo_index = (p0 + 2 * q) * n + col0 + strip;
                const has_hi = q < whole;
                if (strip_cols == nr) {
                    const lo = load_halves(nr, b, lo_index);
                    const hi = if (has_hi) load_halves(nr, b, lo_index + n) else @as(@Vector(nr, u32), @splat(0));
                    out[q * nr ..][0..nr].* = lo | (hi << @splat(16));
                } else {
                    for (0..strip_cols) |j| {
                        const lo: u32 = load_bf16(b, lo_index + j);
                        const hi: u32 = if (has_hi) load_bf16(b, lo_index + n + j) else 0;
                        out[q * nr + j] = lo | (hi << 16);
                    }
                }
            }
        }
    }
}

const Tile = [mr][2]Vf;

/// The float32 micro-kernel: an MR x NR tile of C over `depth` steps of packed A and B.
inline fn kernel_f32(depth: u64, a: [*]const f32, b: [*]const f32) Tile {
    var acc: Tile = @splat(.{ @splat(0), @splat(0) });
    var p: u64 = 0;
    // Four depth steps per loop trip: the same FMAs in the same order, less loop overhead.
    while (p + 4 <= depth) : (p += 4) {
        inline for (0..4) |u| f32_step(&acc, a + (p + u) * mr, b + (p + u) * nr);
    }
    while (p < depth) : (p += 1) f32_step(&acc, a + p * mr, b + p * nr);
    return acc;
}

/// One depth step of the float32 micro-kernel: acc[i] += a[i] * (b[0..nr]) for the MR rows.
inline fn f32_step(acc: *Tile, a: [*]const f32, b: [*]const f32) void {
    const b0: Vf = b[0..lanes].*;
    const b1: Vf = b[lanes..][0..lanes].*;
    inline for (0..mr) |i| {
        const av: Vf = @splat(a[i]);
        acc[i][0] = @mulAdd(Vf, av, b0, acc[i][0]);
        acc[i][1] = @mulAdd(Vf, av, b1, acc[i][1]);
    }
}

/// float32 A read in place, for a whole MR-row strip: row i, depth p of the strip is
/// `a[i * stride + p]`. The same FMAs in the same order as kernel_f32 over the packed strip, so
/// the same bits; packing A cost 12-17% of the time at LLaMA-sized shapes.
inline fn kernel_f32_direct(depth: u64, a: [*]align(1) const f32, stride: u64, b: [*]const f32) Tile {
    var acc: Tile = @splat(.{ @splat(0), @splat(0) });
    var rows: [mr][*]align(1) const f32 = undefined;
    inline for (0..mr) |i| rows[i] = a + i * stride;
    var p: u64 = 0;
    // Unrolled on AVX2 only: with AVX-512's twelve row pointers beside 24 accumulators, the
    // unrolled loop spills (a third slower there).
    const unroll = if (has_avx512) 1 else 4;
    while (p + unroll <= depth) : (p += unroll) {
        inline for (0..unroll) |u| direct_step(&acc, &rows, p + u, b + (p + u) * nr);
    }
    while (p < depth) : (p += 1) direct_step(&acc, &rows, p, b + p * nr);
    return acc;
}

/// One depth step of kernel_f32_direct: acc[i] += rows[i][p] * (b[0..nr]).
inline fn direct_step(acc: *Tile, rows: *const [mr][*]align(1) const f32, p: u64, b: [*]const f32) void {
    const b0: Vf = b[0..lanes].*;
    const b1: Vf = b[lanes..][0..lanes].*;
    inline for (0..mr) |i| {
        const av: Vf = @splat(rows[i][p]);
        acc[i][0] = @mulAdd(Vf, av, b0, acc[i][0]);
        acc[i][1] = @mulAdd(Vf, av, b1, acc[i][1]);
    }
}

/// Where a float32 A is read in place (rather than packed): its block's first row at its slab's
/// first depth, and the stride between rows.
const DirectA = struct {
    a: [*]align(1) const f32,
    stride: u64,
};

/// Whether the micro-tiles read A in place: float32 stored m x k. (Transposed, each depth step of
/// a strip is a row of the stored matrix, m floats from the last: measured 1.2-1.35x slower than
/// packing at m >= 768, so a transposed A is packed.)
fn reads_a_in_place(path: Path, a_dtype: Dtype, request: *const Request) bool {
    return path == .f32 and a_dtype == .float32 and !request.trans_a;
}

fn direct_a(comptime path: Path, comptime a_dtype: Dtype, request: *const Request, a: [*]const u8, row0: u64, p0: u64) ?DirectA {
    if (!reads_a_in_place(path, a_dtype, request)) return null;
    const typed: [*]align(1) const f32 = @ptrCast(a);
    return .{ .a = typed + row0 * request.k + p0, .stride = request.k };
}

/// Packs what the micro-tiles read packed: all of the block, or, where A is read in place, only
/// its last strip when that is partial (into its place in the packed layout).
fn pack_a_block(comptime path: Path, comptime a_dtype: Dtype, request: *const Request, a: [*]const u8, row0: u64, rows: u64, p0: u64, depth: u64, pack_a: []f32) void {
    switch (path) {
        .f32 => if (reads_a_in_place(path, a_dtype, request)) {
            const full = rows / mr * mr;
            if (full < rows) pack_a_f32(a_dtype, request, a, row0 + full, rows - full, p0, depth, pack_a[full * depth ..]);
        } else {
            pack_a_f32(a_dtype, request, a, row0, rows, p0, depth, pack_a);
        },
        .bf16_dot => pack_a_pairs(request, a, row0, rows, p0, depth, @as([*]u32, @ptrCast(pack_a.ptr))[0..pack_a.len]),
        .amx => pack_a_amx(request, a, row0, rows, p0, depth, slab_steps(path, depth), @as([*]u32, @ptrCast(pack_a.ptr))[0..pack_a.len]),
    }
}

/// acc + sum over the two bfloat16 halves of each 32-bit lane of a * b (AVX512-BF16).
inline fn dot_bf16(acc: Vf, a: Vu, b: Vu) Vf {
    if (!has_bf16_dot) unreachable;
    return asm ("vdpbf16ps %[b], %[a], %[out]"
        : [out] "=v" (-> Vf),
        : [a] "v" (a),
          [b] "v" (b),
          [acc] "0" (acc),
    );
}

/// The bfloat16 dot-product micro-kernel over `pairs` depth pairs.
inline fn kernel_bf16(pairs: u64, a: [*]const u32, b: [*]const u32) Tile {
    var acc: Tile = @splat(.{ @splat(0), @splat(0) });
    var q: u64 = 0;
    while (q < pairs) : (q += 1) {
        const b0: Vu = b[q * nr ..][0..lanes].*;
        const b1: Vu = b[q * nr + lanes ..][0..lanes].*;
        inline for (0..mr) |i| {
            const av: Vu = @splat(a[q * mr + i]);
            acc[i][0] = dot_bf16(acc[i][0], av, b0);
            acc[i][1] = dot_bf16(acc[i][1], av, b1);
        }
    }
    return acc;
}

/// Writes (or adds) the valid `rows` x `cols` corner of a tile into C at `c` (row stride `ldc`).
inline fn store_tile(acc: *const Tile, c: [*]f32, ldc: u64, rows: u64, cols: u64, add: bool) void {
    if (cols == nr) {
        for (0..rows) |i| {
            const row = c + i * ldc;
            inline for (0..2) |half| {
                const dst: *align(4) [lanes]f32 = @ptrCast(row + half * lanes);
                const current: Vf = if (add) dst.* else @splat(0);
                dst.* = current + acc[i][half];
            }
        }
        return;
    }
    for (0..rows) |i| {
        const values: [nr]f32 = @bitCast(acc[i]);
        for (0..cols) |j| {
            if (add) c[i * ldc + j] += values[j] else c[i * ldc + j] = values[j];
        }
    }
}

/// Where a block's last slab writes the request's `out` (mp_matmul_out): its first row and column
/// in the batch element's m x n result.
const Final = struct {
    out: [*]u8,
    dtype: Dtype,
    bias: ?[*]const u8,
    n: u64,
    row0: u64,
    col0: u64,
};

/// What a micro-tile's accumulators still need before the rounding: nothing (the AMX tiles hold
/// C already), 0 + (as store_tile writes a fresh C: -0 becomes +0), or C + (a deeper slab's sum).
const Before = enum { nothing, zero, c };

/// out = round(before + values (+ bias)) for the valid `rows` x `cols` corner of a micro-tile at
/// row `r0`, column `j0` of the Final block; `values` has row stride `stride`, C (read for
/// Before.c) row stride `ldc`. The same float32 additions and one rounding as store_tile followed
/// by the epilogue, so the same bits.
fn store_out(final: *const Final, values: [*]const f32, stride: u64, before: Before, c: [*]const f32, ldc: u64, r0: u64, j0: u64, rows: u64, cols: u64) void {
    // The dtype, what comes before and whether there is a bias are fixed per call: choosing the
    // loop once keeps the per-vector work to the loads, adds, rounding and store.
    switch (final.dtype) {
        inline .float32, .float16, .bfloat16 => |dtype| switch (before) {
            inline else => |b| if (final.bias) |bias|
                store_rows(dtype, b, true, final, bias, values, stride, c, ldc, r0, j0, rows, cols)
            else
                store_rows(dtype, b, false, final, undefined, values, stride, c, ldc, r0, j0, rows, cols),
        },
        else => unreachable,
    }
}

inline fn store_rows(comptime dtype: Dtype, comptime before: Before, comptime has_bias: bool, final: *const Final, bias: [*]const u8, values: [*]const f32, stride: u64, c: [*]const f32, ldc: u64, r0: u64, j0: u64, rows: u64, cols: u64) void {
    for (0..rows) |i| {
        const index = (final.row0 + r0 + i) * final.n + final.col0 + j0;
        var j: u64 = 0;
        while (j + lanes <= cols) : (j += lanes) out_lanes(lanes, dtype, before, has_bias, final, bias, values[i * stride + j ..], c[i * ldc + j ..], j0 + j, index + j);
        while (j < cols) : (j += 1) out_lanes(1, dtype, before, has_bias, final, bias, values[i * stride + j ..], c[i * ldc + j ..], j0 + j, index + j);
    }
}

inline fn out_lanes(comptime n: comptime_int, comptime dtype: Dtype, comptime before: Before, comptime has_bias: bool, final: *const Final, bias: [*]const u8, values: [*]const f32, c: [*]const f32, column: u64, index: u64) void {
    const V = @Vector(n, f32);
    const acc: V = values[0..n].*;
    var value = switch (before) {
        .nothing => acc,
        .zero => @as(V, @splat(0)) + acc,
        .c => @as(V, c[0..n].*) + acc,
    };
    if (has_bias) value += storage.load(n, dtype, bias, final.col0 + column);
    storage.store(n, dtype, final.out, index, value);
}

// AMX (the avx512bf16 + AMX compilation only). Eight tile registers of 16 rows x 64 bytes: tmm0..3
// hold a 32 x 32 float32 block of C as four 16 x 16 tiles, tmm4/tmm5 two 16-row x 32-deep
// bfloat16 tiles of A, tmm6/tmm7 two 16-pair x 16-column tiles of B (pairs of depth, as the
// dot-product packing lays them out). Each `tdpbf16ps` adds a 16 x 16 x 32 product: 16 times the
// multiply-adds of an AVX-512 FMA. A is packed per 32-row strip as 32-deep chunks, each 32 rows x
// 16 words (row-major, so a tile load reads 64 contiguous bytes per row); B as the NR = 32-column
// pair strips of pack_b_pairs, padded to whole chunks.

/// Rows of C per AMX micro-tile, and bfloat16 pairs of depth per tile load.
const amx_rows = 32;
const amx_pairs = 16;
/// Words in one 32-deep chunk of an A strip or a B strip.
const amx_chunk_words = amx_rows * amx_pairs;

comptime {
    if (has_amx) std.debug.assert(nr == 32 and mc_max % amx_rows == 0);
}

/// The `ldtilecfg` operand: palette 1, every tile 16 rows of 64 bytes.
const TileConfig = extern struct {
    palette: u8 = 1,
    start_row: u8 = 0,
    reserved: [14]u8 = @splat(0),
    bytes_per_row: [16]u16 = @splat(0),
    rows: [16]u8 = @splat(0),
};

const amx_config: TileConfig align(64) = blk: {
    var config = TileConfig{};
    for (0..8) |t| {
        config.bytes_per_row[t] = 64;
        config.rows[t] = 16;
    }
    break :blk config;
};

inline fn amx_begin() void {
    if (!has_amx) unreachable;
    asm volatile ("ldtilecfg (%[config])"
        :
        : [config] "r" (&amx_config),
        : .{ .memory = true });
}

inline fn amx_end() void {
    if (!has_amx) unreachable;
    asm volatile ("tilerelease" ::: .{ .memory = true });
}

/// Packs rows [row0, row0 + rows) and depth [p0, p0 + depth) of op(A) as 32-row strips of `steps`
/// pairs (a multiple of 16): word (q / 16) * 512 + i * 16 + q % 16 of a strip is the pair
/// (a[i][2q], a[i][2q+1]). Rows past the end and depth past `depth` are zero.
fn pack_a_amx(request: *const Request, a: [*]const u8, row0: u64, rows: u64, p0: u64, depth: u64, steps: u64, target: []u32) void {
    const m = request.m;
    const k = request.k;
    const trans = request.trans_a;
    const pairs = (depth + 1) / 2;
    const whole = depth / 2;
    var strip: u64 = 0;
    while (strip < rows) : (strip += amx_rows) {
        const strip_rows = @min(amx_rows, rows - strip);
        const out = target[strip * steps ..][0 .. steps * amx_rows];
        if (strip_rows < amx_rows or whole < steps) @memset(out, 0);
        if (trans) {
            // A is stored k x m: stored rows 2q and 2q + 1 interleave into one word per row of A.
            for (0..pairs) |q| {
                const lo_index = (p0 + 2 * q) * m + row0 + strip;
                const has_hi = q < whole;
                const chunk = out[q / amx_pairs * amx_chunk_words + q % amx_pairs ..];
                if (strip_rows == amx_rows) {
                    const lo = load_halves(amx_rows, a, lo_index);
                    const hi = if (has_hi) load_halves(amx_rows, a, lo_index + m) else @as(@Vector(amx_rows, u32), @splat(0));
                    const words: [amx_rows]u32 = lo | (hi << @splat(16));
                    inline for (0..amx_rows) |i| chunk[i * amx_pairs] = words[i];
                } else {
                    for (0..strip_rows) |i| {
                        const lo: u32 = load_bf16(a, lo_index + i);
                        const hi: u32 = if (has_hi) load_bf16(a, lo_index + m + i) else 0;
                        chunk[i * amx_pairs] = lo | (hi << 16);
                    }
                }
            }
        } else {
            // Rows are contiguous in depth: 32 bfloat16 (16 words) per chunk row.
            for (0..strip_rows) |i| {
                const base = (row0 + strip + i) * k + p0;
                var q: u64 = 0;
                while (q + amx_pairs <= whole) : (q += amx_pairs) {
                    const typed: *align(1) const [amx_pairs]u32 = @ptrCast(a + (base + 2 * q) * 2);
                    out[q / amx_pairs * amx_chunk_words + i * amx_pairs ..][0..amx_pairs].* = typed.*;
                }
                while (q < whole) : (q += 1) out[q / amx_pairs * amx_chunk_words + i * amx_pairs + q % amx_pairs] = load_pair(a, base + 2 * q);
                if (whole < pairs) out[whole / amx_pairs * amx_chunk_words + i * amx_pairs + whole % amx_pairs] = load_bf16(a, base + 2 * whole);
            }
        }
    }
}

/// C[0..32][0..32] (row stride `ldc` floats) += the product of a packed A strip and B strip,
/// `chunks` 32-deep chunks, on the tile unit (C = the product when `add` is false). C is read into
/// the tiles first, so each element is C plus one chain of `tdpbf16ps` steps in depth order,
/// whatever the tile's place or the thread.
inline fn kernel_amx(chunks: u64, a: [*]const u32, b: [*]const u32, c: [*]f32, ldc: u64, add: bool) void {
    const stride = ldc * 4;
    const c1 = c + 16;
    const c2 = c + 16 * ldc;
    const c3 = c2 + 16;
    if (add) {
        asm volatile (
            \\tileloadd (%[c0], %[stride], 1), %%tmm0
            \\tileloadd (%[c1], %[stride], 1), %%tmm1
            \\tileloadd (%[c2], %[stride], 1), %%tmm2
            \\tileloadd (%[c3], %[stride], 1), %%tmm3
            :
            : [c0] "r" (c),
              [c1] "r" (c1),
              [c2] "r" (c2),
              [c3] "r" (c3),
              [stride] "r" (stride),
            : .{ .memory = true });
    } else {
        asm volatile (
            \\tilezero %%tmm0
            \\tilezero %%tmm1
            \\tilezero %%tmm2
            \\tilezero %%tmm3
            ::: .{ .memory = true });
    }
    var chunk: u64 = 0;
    while (chunk < chunks) : (chunk += 1) {
        const a0 = a + chunk * amx_chunk_words;
        const b0 = b + chunk * amx_chunk_words;
        asm volatile (
            \\tileloadd (%[a0], %[s64], 1), %%tmm4
            \\tileloadd (%[b0], %[s128], 1), %%tmm6
            \\tdpbf16ps %%tmm6, %%tmm4, %%tmm0
            \\tileloadd (%[b1], %[s128], 1), %%tmm7
            \\tdpbf16ps %%tmm7, %%tmm4, %%tmm1
            \\tileloadd (%[a1], %[s64], 1), %%tmm5
            \\tdpbf16ps %%tmm6, %%tmm5, %%tmm2
            \\tdpbf16ps %%tmm7, %%tmm5, %%tmm3
            :
            : [a0] "r" (a0),
              [a1] "r" (a0 + amx_chunk_words / 2),
              [b0] "r" (b0),
              [b1] "r" (b0 + 16),
              [s64] "r" (@as(u64, 64)),
              [s128] "r" (@as(u64, 128)),
            : .{ .memory = true });
    }
    asm volatile (
        \\tilestored %%tmm0, (%[c0], %[stride], 1)
        \\tilestored %%tmm1, (%[c1], %[stride], 1)
        \\tilestored %%tmm2, (%[c2], %[stride], 1)
        \\tilestored %%tmm3, (%[c3], %[stride], 1)
        :
        : [c0] "r" (c),
          [c1] "r" (c1),
          [c2] "r" (c2),
          [c3] "r" (c3),
          [stride] "r" (stride),
        : .{ .memory = true });
}

/// The AMX micro-tile at C (`rows` x `cols` of it valid): whole tiles work on C in place; edge
/// tiles go through a 32 x 32 buffer holding C's valid corner (zero elsewhere), so every element
/// gets the same arithmetic as in a whole tile.
fn tile_amx(chunks: u64, a: [*]const u32, b: [*]const u32, c: [*]f32, ldc: u64, rows: u64, cols: u64, add: bool) void {
    if (rows == amx_rows and cols == nr) return kernel_amx(chunks, a, b, c, ldc, add);
    var buffer: [amx_rows][nr]f32 align(64) = @splat(@splat(0));
    if (add) for (0..rows) |i| @memcpy(buffer[i][0..cols], c[i * ldc ..][0..cols]);
    kernel_amx(chunks, a, b, &buffer[0], nr, true);
    for (0..rows) |i| @memcpy(c[i * ldc ..][0..cols], buffer[i][0..cols]);
}

/// The micro-tiles of one packed MC x KC block of A times one packed KC x NC panel of B, into the
/// `mc` x `nc` block of C at `c` (row stride `ldc`); `steps` words per packed row or column.
/// With `final`, the tiles go to the request's `out` instead of C (the call's last slab).
inline fn micro_tiles(comptime path: Path, steps: u64, direct: ?DirectA, pack_a: []f32, pack_b: []f32, c: [*]f32, ldc: u64, mc: u64, nc: u64, add: bool, final: ?*const Final) void {
    const a_words: [*]const u32 = @ptrCast(pack_a.ptr);
    const b_words: [*]const u32 = @ptrCast(pack_b.ptr);
    const rows = tile_rows(path);
    var jr: u64 = 0;
    while (jr < nc) : (jr += nr) {
        var ir: u64 = 0;
        while (ir < mc) : (ir += rows) {
            const tile_c = c + ir * ldc + jr;
            const valid_rows = @min(rows, mc - ir);
            const valid_cols = @min(nr, nc - jr);
            switch (path) {
                .f32 => {
                    const b = pack_b[jr * steps ..].ptr;
                    const tile = if (direct != null and valid_rows == mr)
                        kernel_f32_direct(steps, direct.?.a + ir * direct.?.stride, direct.?.stride, b)
                    else
                        kernel_f32(steps, pack_a[ir * steps ..].ptr, b);
                    finish_tile(&tile, final, tile_c, ldc, ir, jr, valid_rows, valid_cols, add);
                },
                .bf16_dot => {
                    const tile = kernel_bf16(steps, a_words + ir * steps, b_words + jr * steps);
                    finish_tile(&tile, final, tile_c, ldc, ir, jr, valid_rows, valid_cols, add);
                },
                .amx => if (final) |f| {
                    // Through a buffer holding C's valid corner (zeros elsewhere) where C is added,
                    // as tile_amx's edge tiles; else the tiles start from tilezero's zeros (the
                    // same +0 a zeroed buffer would load) and the buffer is only written.
                    var buffer: [amx_rows][nr]f32 align(64) = undefined;
                    if (add) {
                        if (valid_rows < amx_rows or valid_cols < nr) buffer = @splat(@splat(0));
                        for (0..valid_rows) |i| @memcpy(buffer[i][0..valid_cols], tile_c[i * ldc ..][0..valid_cols]);
                    }
                    kernel_amx(steps / amx_pairs, a_words + ir * steps, b_words + jr * steps, &buffer[0], nr, add);
                    store_out(f, &buffer[0], nr, .nothing, tile_c, ldc, ir, jr, valid_rows, valid_cols);
                } else tile_amx(steps / amx_pairs, a_words + ir * steps, b_words + jr * steps, tile_c, ldc, valid_rows, valid_cols, add),
            }
        }
    }
}

/// A register tile into C (store_tile) or, on the last slab of an mp_matmul_out call, into out.
inline fn finish_tile(tile: *const Tile, final: ?*const Final, c: [*]f32, ldc: u64, ir: u64, jr: u64, rows: u64, cols: u64, add: bool) void {
    const f = final orelse return store_tile(tile, c, ldc, rows, cols, add);
    if (cols < nr) {
        const values: [mr][nr]f32 = @bitCast(tile.*);
        return store_out(f, &values[0], nr, if (add) .c else .zero, c, ldc, ir, jr, rows, cols);
    }
    // Whole rows straight from the registers (out_lanes' arithmetic, one vector at a time).
    switch (f.dtype) {
        inline .float32, .float16, .bfloat16 => |dtype| {
            var bias: [2]Vf = @splat(@splat(0));
            if (f.bias) |b| inline for (0..2) |half| {
                bias[half] = storage.load(lanes, dtype, b, f.col0 + jr + half * lanes);
            };
            for (0..rows) |i| {
                const index = (f.row0 + ir + i) * f.n + f.col0 + jr;
                inline for (0..2) |half| {
                    const current: Vf = if (add) c[i * ldc + half * lanes ..][0..lanes].* else @splat(0);
                    var value = current + tile[i][half];
                    if (f.bias != null) value += bias[half];
                    storage.store(lanes, dtype, f.out, index + half * lanes, value);
                }
            }
        },
        else => unreachable,
    }
}

/// The Final of the block at row `row0`, column `col0` of a batch element, where the request has
/// an `out` and this is the call's last slab.
fn final_of(request: *const Request, ops: *const Operands, last_slab: bool, row0: u64, col0: u64) ?Final {
    const out = ops.out orelse return null;
    if (!last_slab) return null;
    return .{ .out = out, .dtype = request.out_dtype, .bias = request.bias, .n = request.n, .row0 = row0, .col0 = col0 };
}

/// One task: rows [row0, row1) and columns [col0, col1) of one batch element's C.
fn gemm_block(
    comptime path: Path,
    comptime a_dtype: Dtype,
    comptime b_dtype: Dtype,
    request: *const Request,
    batch_index: u64,
    row0: u64,
    row1: u64,
    col0: u64,
    col1: u64,
    worker: u32,
) void {
    const ops = operands(request, batch_index);
    const pack_a: []f32 = &pack_a_buffers[worker];
    const pack_b: []f32 = &pack_b_buffers[worker];
    const pack_b_words: []u32 = @as([*]u32, @ptrCast(pack_b.ptr))[0..pack_b.len];
    const k = request.k;
    const n = request.n;
    var jc = col0;
    while (jc < col1) : (jc += nc_max) {
        const nc = @min(nc_max, col1 - jc);
        var pc: u64 = 0;
        // k == 0 still has to clear C (or leave it, when accumulating).
        if (k == 0 and !request.accumulate) {
            if (final_of(request, &ops, true, 0, jc)) |f| {
                const zeros: [nr]f32 = @splat(0);
                for (row0..row1) |i| {
                    var j: u64 = 0;
                    while (j < nc) : (j += nr) store_out(&f, &zeros, 0, .zero, &zeros, 0, i, j, 1, @min(nr, nc - j));
                }
            } else {
                for (row0..row1) |i| @memset(ops.c[i * n + jc ..][0..nc], 0);
            }
        }
        while (pc < k) : (pc += slab_depth(path)) {
            const kc = @min(slab_depth(path), k - pc);
            const add = pc > 0 or request.accumulate;
            const steps = slab_steps(path, kc);
            switch (path) {
                .f32 => pack_b_f32(b_dtype, request, ops.b, pc, kc, jc, nc, pack_b),
                .bf16_dot, .amx => pack_b_pairs(request, ops.b, pc, kc, jc, nc, steps, pack_b_words),
            }
            var ic = row0;
            while (ic < row1) : (ic += mc_max) {
                const mc = @min(mc_max, row1 - ic);
                pack_a_block(path, a_dtype, request, ops.a, ic, mc, pc, kc, pack_a);
                const direct = direct_a(path, a_dtype, request, ops.a, ic, pc);
                const final = final_of(request, &ops, pc + kc >= k, ic, jc);
                micro_tiles(path, steps, direct, pack_a, pack_b, ops.c + ic * n + jc, n, mc, nc, add, if (final) |*f| f else null);
            }
        }
    }
}

/// How a call's work is shared among workers.
const Mode = enum(u32) {
    /// Workers take whole batch elements from a shared counter (each packs privately).
    batches,
    /// Workers take MC-row blocks of C from a shared counter per column panel; each packs the
    /// whole K x NC panel of B privately first, so a row block is finished by one worker (no two
    /// workers ever add into the same C element) and a slow or preempted worker holds up nobody.
    rows,
    /// Fixed pieces of C along rows or columns (small M, or huge K), taken from a counter; each piece
    /// packs its own panels.
    static,
};

/// Column panels per call in rows mode (one counter each).
const stage_count_max = 64;

pub const Task = extern struct {
    request: *const Request,
    mode: Mode,
    workers: u32,
    /// Static mode: each batch element's C is cut into `parts` fixed pieces along rows (or columns),
    /// which workers take from a counter.
    parts: u64 = 1,
    by_columns: bool = false,
    /// Rows mode: panel width, row-block height and panels per batch element.
    nc: u64 = 0,
    mc: u64 = 0,
    stages: u64 = 0,
    counters: [stage_count_max]std.atomic.Value(u64) = @splat(.init(0)),
};

const Path = enum { f32, bf16_dot, amx };

fn run_static(comptime path: Path, comptime a_dtype: Dtype, comptime b_dtype: Dtype, task: *Task, worker: u32) void {
    const request = task.request;
    const total = request.batch * task.parts;
    const dim = if (task.by_columns) request.n else request.m;
    const unit: u64 = if (task.by_columns) nr else tile_rows(path);
    while (true) {
        // Pieces are taken from a shared counter, so a worker the OS holds up delays only its piece.
        const t = task.counters[0].fetchAdd(1, .monotonic);
        if (t >= total) break;
        const batch_index = t / task.parts;
        const part = t % task.parts;
        // Piece boundaries fall on whole micro-tiles so threads do not share a tile.
        const units = (dim + unit - 1) / unit;
        const lo = @min(dim, units * part / task.parts * unit);
        const hi = @min(dim, units * (part + 1) / task.parts * unit);
        if (lo >= hi) continue;
        const row0, const row1, const col0, const col1 = if (task.by_columns)
            .{ 0, request.m, lo, hi }
        else
            .{ lo, hi, 0, request.n };
        gemm_block(path, a_dtype, b_dtype, request, batch_index, row0, row1, col0, col1, worker);
    }
}

fn run_batches(comptime path: Path, comptime a_dtype: Dtype, comptime b_dtype: Dtype, task: *Task, worker: u32) void {
    const request = task.request;
    while (true) {
        const batch_index = task.counters[0].fetchAdd(1, .monotonic);
        if (batch_index >= request.batch) break;
        gemm_block(path, a_dtype, b_dtype, request, batch_index, 0, request.m, 0, request.n, worker);
    }
}

fn run_rows(comptime path: Path, comptime a_dtype: Dtype, comptime b_dtype: Dtype, task: *Task, worker: u32) void {
    const request = task.request;
    const pack_a: []f32 = &pack_a_buffers[worker];
    const pack_b: []f32 = &pack_b_buffers[worker];
    const pack_b_words: []u32 = @as([*]u32, @ptrCast(pack_b.ptr))[0..pack_b.len];
    const m = request.m;
    const n = request.n;
    const k = request.k;
    // Words per depth step of a slab are 1 on both paths (a float, or a pair of bfloat16), and a
    // slab holds kc_max steps either way.
    const slab_steps_max: u64 = kc_max;
    for (0..request.batch) |batch_index| {
        const ops = operands(request, batch_index);
        var stage = batch_index * task.stages;
        var jc: u64 = 0;
        while (jc < n) : ({
            jc += task.nc;
            stage += 1;
        }) {
            const nc = @min(task.nc, n - jc);
            const nc_padded = (nc + nr - 1) / nr * nr;
            const slab_size = slab_steps_max * nc_padded;
            // The whole K x NC panel of B, one KC slab after another.
            var pc: u64 = 0;
            var slab: u64 = 0;
            while (pc < k) : ({
                pc += slab_depth(path);
                slab += 1;
            }) {
                const kc = @min(slab_depth(path), k - pc);
                switch (path) {
                    .f32 => pack_b_f32(b_dtype, request, ops.b, pc, kc, jc, nc, pack_b[slab * slab_size ..]),
                    .bf16_dot, .amx => pack_b_pairs(request, ops.b, pc, kc, jc, nc, slab_steps(path, kc), pack_b_words[slab * slab_size ..]),
                }
            }
            while (true) {
                const block = task.counters[stage].fetchAdd(1, .monotonic);
                const ic = block * task.mc;
                if (ic >= m) break;
                const mc = @min(task.mc, m - ic);
                pc = 0;
                slab = 0;
                while (pc < k) : ({
                    pc += slab_depth(path);
                    slab += 1;
                }) {
                    const kc = @min(slab_depth(path), k - pc);
                    const add = pc > 0 or request.accumulate;
                    const steps = slab_steps(path, kc);
                    pack_a_block(path, a_dtype, request, ops.a, ic, mc, pc, kc, pack_a);
                    const direct = direct_a(path, a_dtype, request, ops.a, ic, pc);
                    const final = final_of(request, &ops, pc + kc >= k, ic, jc);
                    micro_tiles(path, steps, direct, pack_a, pack_b[slab * slab_size ..], ops.c + ic * n + jc, n, mc, nc, add, if (final) |*f| f else null);
                }
            }
        }
    }
}

/// The kernels a request runs on this compilation: bfloat16 x bfloat16 on the tile unit where
/// this is the AMX compilation, with `vdpbf16ps` where the request asks (flag_bf16_dot) and the
/// CPU has it, and otherwise widened to float32.
fn path_of(request: *const Request) Path {
    const both_bf16 = request.a_dtype == .bfloat16 and request.b_dtype == .bfloat16;
    if (has_amx and both_bf16) return .amx;
    if (has_bf16_dot and both_bf16 and request.bf16_dot) return .bf16_dot;
    return .f32;
}

fn run_task(comptime a_dtype: Dtype, comptime b_dtype: Dtype, task: *Task, worker: u32) void {
    const chosen = path_of(task.request);
    inline for (.{ Path.f32, Path.bf16_dot, Path.amx }) |path| {
        const possible = switch (path) {
            .f32 => true,
            .bf16_dot => has_bf16_dot and a_dtype == .bfloat16 and b_dtype == .bfloat16,
            .amx => has_amx and a_dtype == .bfloat16 and b_dtype == .bfloat16,
        };
        if (possible and path == chosen) {
            if (path == .amx) amx_begin();
            defer if (path == .amx) amx_end();
            switch (task.mode) {
                .static => run_static(path, a_dtype, b_dtype, task, worker),
                .batches => run_batches(path, a_dtype, b_dtype, task, worker),
                .rows => run_rows(path, a_dtype, b_dtype, task, worker),
            }
        }
    }
}

pub fn run_worker(task: *Task, worker: u32) void {
    switch (task.request.a_dtype) {
        inline .float32, .float16, .bfloat16 => |a_dtype| switch (task.request.b_dtype) {
            inline .float32, .float16, .bfloat16 => |b_dtype| run_task(a_dtype, b_dtype, task, worker),
            else => unreachable,
        },
        else => unreachable,
    }
}

/// Below this many multiply-adds (about 10 microseconds of one core) a call runs on one thread:
/// handing a share to a worker of the pool costs a few microseconds (less while it spins).
pub const parallel_macs_min: u64 = 1 << 19;

/// Whether a dtype is a valid matmul input.
pub fn input_dtype(dtype: Dtype) bool {
    return dtype == .float32 or dtype == .float16 or dtype == .bfloat16;
}

/// Chooses how `workers` threads share a request.
pub fn plan(request: *const Request, workers: u32) Task {
    if (workers == 1) return .{ .request = request, .mode = .static, .workers = 1 };
    if (request.batch >= workers) return .{ .request = request, .mode = .batches, .workers = workers };
    // Rows mode packs all of K x NC of B per worker: NC shrinks as K grows (to fit the buffer). A
    // slab holds kc_max words per column on both paths, covering 2 kc_max of depth for bfloat16 pairs.
    const path = path_of(request);
    const depth_per_slab: u64 = if (path == .f32) kc_max else 2 * kc_max;
    const slabs = (request.k + depth_per_slab - 1) / depth_per_slab;
    const nc = if (slabs == 0) nc_max else @min(nc_max, pack_b_size / kc_max / slabs / nr * nr);
    const target_blocks = 4 * @as(u64, workers);
    const unit_m: u64 = if (path == .amx) amx_rows else mr;
    const mc = @min(mc_max, @max(unit_m, (request.m + target_blocks - 1) / target_blocks + unit_m - 1) / unit_m * unit_m);
    const stages = if (nc == 0) 0 else (request.n + nc - 1) / nc;
    const row_blocks = (request.m + mc - 1) / mc;
    const rows_ok = nc >= nr and request.k > 0 and request.batch * stages <= stage_count_max and
        request.m >= 2 * mc_max and row_blocks >= 2;
    // Rows mode has every worker pack all of B; a split by columns has every worker pack all of A
    // instead, and nothing where A is read in place. Take the split that repacks less.
    const columns_cheaper = request.n >= 2 * nr * @as(u64, workers) and
        (reads_a_in_place(path, request.a_dtype, request) or request.n > request.m);
    if (rows_ok and !columns_cheaper) {
        return .{ .request = request, .mode = .rows, .workers = workers, .nc = nc, .mc = mc, .stages = stages };
    }
    // Small M (or a K too deep for rows mode): a fixed split along the longer side of C, one
    // piece per worker. Every piece packs the whole of the other operand, so more pieces cost more
    // packing than they win in balance (measured at LLaMA-sized weight gradients: 4 pieces per
    // worker were up to 1.25x slower in float32, and 1.3x with AMX, where products are cheap).
    var parts: u64 = (@as(u64, workers) + request.batch - 1) / request.batch;
    const by_columns = columns_cheaper or request.n > request.m;
    const dim = if (by_columns) request.n else request.m;
    const unit: u64 = if (by_columns) nr else unit_m;
    parts = @max(1, @min(parts, (dim + unit - 1) / unit));
    const used: u32 = @intCast(@min(workers, request.batch * parts));
    return .{ .request = request, .mode = .static, .workers = used, .parts = parts, .by_columns = by_columns };
}

/// The entry points of one compilation of this file, as C functions (so the wide objects'
/// can stand in for these).
pub const Entry = struct {
    plan: *const fn (request: *const Request, workers: u32, task: *Task) callconv(.c) void,
    run_worker: *const fn (task: *Task, worker: u32) callconv(.c) void,
    peak_chains: *const fn (iterations: u64, seed: f32) callconv(.c) f32,
    /// float32 lanes per vector register.
    lanes: u32,
};

pub fn plan_c(request: *const Request, workers: u32, task: *Task) callconv(.c) void {
    task.* = plan(request, workers);
}

pub fn run_worker_c(task: *Task, worker: u32) callconv(.c) void {
    run_worker(task, worker);
}

pub fn peak_chains_c(iterations: u64, seed: f32) callconv(.c) f32 {
    return peak_chains(iterations, seed);
}

/// The compilation dispatch chose (this one where no wide objects are linked).
fn entry() Entry {
    return .{
        .plan = dispatch.pick(@FieldType(Entry, "plan"), "matmul_plan", plan_c),
        .run_worker = dispatch.pick(@FieldType(Entry, "run_worker"), "matmul_run_worker", run_worker_c),
        .peak_chains = dispatch.pick(@FieldType(Entry, "peak_chains"), "matmul_peak_chains", peak_chains_c),
        .lanes = if (dispatch.wide_linked and dispatch.path() != .baseline) 16 else lanes,
    };
}

const Call = struct {
    task: *Task,
    run_worker: @FieldType(Entry, "run_worker"),

    fn run(call: *const Call, worker: u32) void {
        call.run_worker(call.task, worker);
    }
};

/// Runs the request on up to `pool.thread_count()` threads, with the kernels of the path dispatch
/// chose for this CPU.
pub fn matmul(request: *const Request) void {
    std.debug.assert(input_dtype(request.a_dtype));
    std.debug.assert(input_dtype(request.b_dtype));
    if (request.batch == 0 or request.m == 0 or request.n == 0) return;
    const macs = request.batch * request.m * request.n * request.k;
    const workers: u32 = if (macs < parallel_macs_min) 1 else @min(pool.thread_count(), @as(u32, @intCast(@min(request.batch * request.m * request.n, pool.thread_count_max))));
    const kernels = entry();
    var task: Task = undefined;
    kernels.plan(request, workers, &task);
    std.debug.assert(task.workers >= 1 and task.workers <= workers);
    const call = Call{ .task = &task, .run_worker = kernels.run_worker };
    while (busy.cmpxchgWeak(0, 1, .acquire, .monotonic) != null) std.atomic.spinLoopHint();
    defer busy.store(0, .release);
    pool.run_workers(task.workers, &call, Call.run);
}

/// Runs `chains` independent FMA chains of vectors for `iterations` steps on the calling thread and
/// returns a value that depends on every lane (so nothing is optimized away). Each step is
/// 12 * lanes FMAs.
pub fn peak_chains(iterations: u64, seed: f32) f32 {
    const chains = 12;
    var acc: [chains]Vf = undefined;
    inline for (0..chains) |i| acc[i] = @splat(seed + @as(f32, @floatFromInt(i)));
    const x: Vf = @splat(0.999999);
    const y: Vf = @splat(1e-6);
    var step: u64 = 0;
    while (step < iterations) : (step += 1) {
        inline for (0..chains) |i| acc[i] = @mulAdd(Vf, acc[i], x, y);
    }
    var total: Vf = @splat(0);
    inline for (0..chains) |i| total += acc[i];
    return @reduce(.Add, total);
}

const PeakContext = struct {
    iterations: u64,
    peak_chains: @FieldType(Entry, "peak_chains"),
    results: [pool.thread_count_max]f32 = @splat(0),
};

fn peak_worker(context: *PeakContext, worker: u32) void {
    context.results[worker] = context.peak_chains(context.iterations, @floatFromInt(worker));
}

/// FLOPs one peak step does on one thread on the dispatched path (12 chains of `lanes` FMAs,
/// 2 FLOPs each).
pub fn peak_flops_per_iteration() u64 {
    return 12 * @as(u64, entry().lanes) * 2;
}

/// Runs the FMA chains of the dispatched path on `threads` threads; returns the sum of their results.
pub fn peak_fma(iterations: u64, threads: u32) f32 {
    std.debug.assert(threads >= 1 and threads <= pool.thread_count_max);
    var context = PeakContext{ .iterations = iterations, .peak_chains = entry().peak_chains };
    pool.run_workers(threads, &context, peak_worker);
    var total: f32 = 0;
    for (context.results[0..threads]) |r| total += r;
    return total;
}

// Tests: compare against a float64 reference on shapes that exercise every edge (partial tiles,
// several K slabs, odd depth for bfloat16 pairs, transposes, batches, accumulation).

fn reference(request: *const Request, out: []f64) void {
    for (0..request.batch) |bi| {
        const ops = operands(request, bi);
        for (0..request.m) |i| for (0..request.n) |j| {
            var sum: f64 = 0;
            for (0..request.k) |p| {
                const ai = if (request.trans_a) p * request.m + i else i * request.k + p;
                const bj = if (request.trans_b) j * request.k + p else p * request.n + j;
                const av: f64 = switch (request.a_dtype) {
                    inline .float32, .float16, .bfloat16 => |d| load_f32(d, ops.a, ai),
                    else => unreachable,
                };
                const bv: f64 = switch (request.b_dtype) {
                    inline .float32, .float16, .bfloat16 => |d| load_f32(d, ops.b, bj),
                    else => unreachable,
                };
                sum += av * bv;
            }
            out[(bi * request.m + i) * request.n + j] = sum;
        };
    }
}

fn fill_inputs(comptime dtype: Dtype, bytes: []u8, seed: u64) void {
    var prng = std.Random.DefaultPrng.init(seed);
    const random = prng.random();
    const count = bytes.len / dtype.size_bytes();
    for (0..count) |i| {
        const value = random.float(f32) * 2 - 1;
        switch (dtype) {
            .float32 => @as([*]align(1) f32, @ptrCast(bytes.ptr))[i] = value,
            .float16, .bfloat16 => {
                const bits = numerics.from_f32(1, dtype, @splat(@bitCast(value)), null, false);
                @as([*]align(1) u16, @ptrCast(bytes.ptr))[i] = @truncate(bits[0]);
            },
            else => unreachable,
        }
    }
}

fn check_case(comptime a_dtype: Dtype, comptime b_dtype: Dtype, batch: u64, m: u64, n: u64, k: u64, flags: u32, threads: u32) !void {
    const allocator = std.testing.allocator;
    const a = try allocator.alloc(u8, batch * m * k * a_dtype.size_bytes());
    defer allocator.free(a);
    const b_batches: u64 = if (flags & flag_broadcast_b != 0) 1 else batch;
    const b = try allocator.alloc(u8, b_batches * k * n * b_dtype.size_bytes());
    defer allocator.free(b);
    const c = try allocator.alloc(f32, batch * m * n);
    defer allocator.free(c);
    const expected = try allocator.alloc(f64, batch * m * n);
    defer allocator.free(expected);
    fill_inputs(a_dtype, a, m * 31 + k);
    fill_inputs(b_dtype, b, n * 17 + k);
    for (c, 0..) |*x, i| x.* = @floatFromInt(i % 7);
    const request = Request{
        .a = a.ptr,
        .b = b.ptr,
        .c = c.ptr,
        .batch = batch,
        .m = m,
        .n = n,
        .k = k,
        .a_dtype = a_dtype,
        .b_dtype = b_dtype,
        .trans_a = flags & flag_trans_a != 0,
        .trans_b = flags & flag_trans_b != 0,
        .accumulate = flags & flag_accumulate != 0,
        .broadcast_b = flags & flag_broadcast_b != 0,
        .bf16_dot = flags & flag_bf16_dot != 0,
    };
    reference(&request, expected);
    pool.set_thread_count(threads);
    defer pool.set_thread_count(0);
    matmul(&request);
    // Inputs are exact in float32, so only the float32 sums round: |error| <= k * eps * sum|a||b|
    // and sum|a||b| <= k here (|a|, |b| <= 1).
    const kf: f64 = @floatFromInt(@max(k, 1));
    const bound = kf * kf * std.math.floatEps(f32) + 1e-6;
    for (c, expected, 0..) |got, want, i| {
        const base: f64 = if (request.accumulate) @floatFromInt(i % 7) else 0;
        try std.testing.expectApproxEqAbs(want + base, @as(f64, got), bound);
    }
}

test "matmul matches a float64 reference across tile edges, transposes and batches, on every path" {
    const shapes = [_][4]u64{
        .{ 1, 1, 1, 1 },    .{ 1, 13, 37, 5 }, .{ 2, 25, 33, 300 }, .{ 1, 97, 65, 257 },
        .{ 3, 7, 70, 513 }, .{ 1, 0, 4, 4 },   .{ 1, 4, 4, 0 },     .{ 1, 200, 20, 9 },
    };
    defer dispatch.set_path_for_test(null);
    for (dispatch.paths_available()) |path| {
        dispatch.set_path_for_test(path);
        for (shapes) |s| {
            for (0..8) |f| {
                const flags: u32 = @intCast(f);
                try check_case(.float32, .float32, s[0], s[1], s[2], s[3], flags, 2);
                try check_case(.bfloat16, .bfloat16, s[0], s[1], s[2], s[3], flags | flag_bf16_dot, 2);
                try check_case(.bfloat16, .bfloat16, s[0], s[1], s[2], s[3], flags, 1);
                try check_case(.float16, .float32, s[0], s[1], s[2], s[3], flags | flag_broadcast_b, 3);
            }
        }
    }
}

/// Twice the widest path's MC (12-row tiles, 8 per block) plus a partial block: rows mode on
/// every path.
const rows_mode_m = 2 * 12 * 8 + 5;

test "rows mode, batches mode and the static split agree with the reference, on every path" {
    comptime std.debug.assert(rows_mode_m >= 2 * mc_max + 5);
    comptime std.debug.assert(2 * mc_max * 300 * 300 >= parallel_macs_min);
    comptime std.debug.assert(20 * 3000 * 300 >= parallel_macs_min);
    // m >= 2 * mc_max and batch 1 takes rows mode; batch >= threads takes batches mode; a small m
    // with a wide n takes the static column split.
    // Sizes are above parallel_macs_min so the threads really split the work.
    defer dispatch.set_path_for_test(null);
    for (dispatch.paths_available()) |path| {
        dispatch.set_path_for_test(path);
        try check_case(.float32, .float32, 1, rows_mode_m, 300, 600, 0, 2);
        try check_case(.bfloat16, .bfloat16, 1, rows_mode_m, 301, 601, flag_trans_a | flag_trans_b, 3);
        try check_case(.float32, .float32, 1, rows_mode_m, 333, 300, flag_accumulate, 2);
        try check_case(.bfloat16, .float16, 40, 60, 70, 130, flag_trans_b, 2);
        try check_case(.float32, .float32, 1, 20, 3000, 300, 0, 2);
    }
}

/// Runs one case on every path this machine has (the AMX path too when `with_amx`) and requires
/// the bits of the baseline path; or, with `paths` null and `thread_counts` given, on the chosen
/// path with each thread count, requiring the bits of the first.
fn check_same_bits(comptime a_dtype: Dtype, comptime b_dtype: Dtype, batch: u64, m: u64, n: u64, k: u64, flags: u32) !void {
    return check_bits(a_dtype, b_dtype, batch, m, n, k, flags, false, null);
}

fn check_bits(comptime a_dtype: Dtype, comptime b_dtype: Dtype, batch: u64, m: u64, n: u64, k: u64, flags: u32, with_amx: bool, thread_counts: ?[]const u32) !void {
    const allocator = std.testing.allocator;
    const a = try allocator.alloc(u8, batch * m * k * a_dtype.size_bytes());
    defer allocator.free(a);
    const b = try allocator.alloc(u8, batch * k * n * b_dtype.size_bytes());
    defer allocator.free(b);
    const want = try allocator.alloc(f32, batch * m * n);
    defer allocator.free(want);
    const got = try allocator.alloc(f32, batch * m * n);
    defer allocator.free(got);
    fill_inputs(a_dtype, a, m * 7 + k);
    fill_inputs(b_dtype, b, n * 5 + k);
    defer dispatch.set_path_for_test(null);
    defer pool.set_thread_count(0);
    const runs = if (thread_counts) |counts| counts.len else dispatch.paths_available().len;
    for (0..runs) |index| {
        if (thread_counts) |counts| {
            pool.set_thread_count(counts[index]);
        } else {
            const path = dispatch.paths_available()[index];
            if (path == .amx and !with_amx) continue;
            dispatch.set_path_for_test(path);
        }
        const c = if (index == 0) want else got;
        for (c, 0..) |*x, i| x.* = @floatFromInt(i % 5);
        matmul(&.{
            .a = a.ptr,
            .b = b.ptr,
            .c = c.ptr,
            .batch = batch,
            .m = m,
            .n = n,
            .k = k,
            .a_dtype = a_dtype,
            .b_dtype = b_dtype,
            .trans_a = flags & flag_trans_a != 0,
            .trans_b = flags & flag_trans_b != 0,
            .accumulate = flags & flag_accumulate != 0,
            .broadcast_b = false,
            .bf16_dot = flags & flag_bf16_dot != 0,
        });
        if (index > 0) try std.testing.expectEqualSlices(u32, @ptrCast(want), @ptrCast(got));
    }
}

test "float32 and float16 inputs (and bfloat16 without dot products or AMX) give the same bits on every path" {
    // Each C element is the same chain of FMAs over the same K slabs whatever the tile shape.
    try check_same_bits(.float32, .float32, 1, rows_mode_m, 301, 700, 0);
    try check_same_bits(.float32, .float32, 3, 37, 45, 513, flag_trans_a | flag_accumulate);
    try check_same_bits(.float16, .float32, 1, 29, 1000, 260, flag_trans_b);
    try check_same_bits(.bfloat16, .bfloat16, 2, 50, 70, 600, 0);
}

test "bfloat16 x bfloat16 gives the same bits on 1, 2 and 3 threads on the chosen path (AMX where present)" {
    // The AMX kernel reads C into the tiles and adds the slab's products in depth order, in whole
    // tiles and edge tiles alike, so the work split does not change an element's arithmetic.
    const threads = [_]u32{ 1, 2, 3 };
    try check_bits(.bfloat16, .bfloat16, 1, rows_mode_m, 301, 1100, 0, true, &threads);
    try check_bits(.bfloat16, .bfloat16, 1, rows_mode_m, 333, 700, flag_trans_a | flag_accumulate, true, &threads);
    try check_bits(.bfloat16, .bfloat16, 3, 45, 70, 513, flag_trans_b, true, &threads);
    try check_bits(.bfloat16, .bfloat16, 1, 20, 3000, 300, flag_trans_a | flag_trans_b, true, &threads);
    try check_bits(.float32, .float32, 1, rows_mode_m, 301, 700, flag_accumulate, true, &threads);
}

test "peak_fma runs on several threads" {
    const total = peak_fma(1000, 2);
    try std.testing.expect(std.math.isFinite(total));
}
