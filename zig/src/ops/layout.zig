//! Layout ops: strided copies (transpose, slice, concat and their gradients move bits unchanged,
//! whatever the dtype) and the matmul epilogue (a float32 product rounded once into the op's
//! dtype, with the bias added in the same pass).
//!
//! A strided copy walks the target's index space in row-major order over at most `dims_max`
//! dimensions; the innermost run is a memcpy when both sides are contiguous along it. Work splits
//! over outer rows, and every element is written once, so any thread count gives the same bytes.

const std = @import("std");
const pool = @import("../cpu/pool.zig");
const storage = @import("storage.zig");

const Dtype = storage.Dtype;

pub const dims_max = 8;

/// A copy of `shape` elements of `element_bytes` each; strides are in elements.
pub const StridedCopy = struct {
    source: [*]const u8,
    target: [*]u8,
    element_bytes: u64,
    ndim: u32,
    shape: [dims_max]u64,
    source_strides: [dims_max]u64,
    target_strides: [dims_max]u64,
};

/// A strided copy as a device kernel takes it by value (zig/src/cuda/ops_map.zig): the simplified
/// StridedCopy's dimensions and strides, without host pointers, and its element count.
pub const DeviceCopy = extern struct {
    element_bytes: u64,
    ndim: u64,
    count: u64,
    shape: [dims_max]u64,
    source_strides: [dims_max]u64,
    target_strides: [dims_max]u64,
};

/// Merges adjacent dimensions that are contiguous on both sides and drops size-1 dimensions, so
/// a transpose of [B, T, H, D] to [B, H, T, D] walks rows of D elements, not single elements.
pub fn simplify(copy: *StridedCopy) void {
    std.debug.assert(copy.ndim <= dims_max);
    var out: u32 = 0;
    for (0..copy.ndim) |d| {
        if (copy.shape[d] == 1) continue;
        if (out > 0) {
            const p = out - 1;
            const merges = copy.source_strides[p] == copy.source_strides[d] * copy.shape[d] and
                copy.target_strides[p] == copy.target_strides[d] * copy.shape[d];
            if (merges) {
                copy.shape[p] *= copy.shape[d];
                copy.source_strides[p] = copy.source_strides[d];
                copy.target_strides[p] = copy.target_strides[d];
                continue;
            }
        }
        copy.shape[out] = copy.shape[d];
        copy.source_strides[out] = copy.source_strides[d];
        copy.target_strides[out] = copy.target_strides[d];
        out += 1;
    }
    if (out == 0) {
        copy.shape[0] = 1;
        copy.source_strides[0] = 1;
        copy.target_strides[0] = 1;
        out = 1;
    }
    copy.ndim = out;
}

fn element_count(copy: *const StridedCopy) u64 {
    var count: u64 = 1;
    for (copy.shape[0..copy.ndim]) |dim| count *= dim;
    return count;
}

/// Copies rows [begin, end) of the outer index space (every dimension but the last).
fn copy_rows(copy: *const StridedCopy, begin: u64, end: u64) void {
    const last = copy.ndim - 1;
    const inner = copy.shape[last];
    const size = copy.element_bytes;
    const contiguous = copy.source_strides[last] == 1 and copy.target_strides[last] == 1;
    var row = begin;
    while (row < end) : (row += 1) {
        // Offsets of this row from its multi-index (the outer dimensions, last one fastest).
        var rest = row;
        var source_offset: u64 = 0;
        var target_offset: u64 = 0;
        var d: u32 = last;
        while (d > 0) {
            d -= 1;
            const index = rest % copy.shape[d];
            rest /= copy.shape[d];
            source_offset += index * copy.source_strides[d];
            target_offset += index * copy.target_strides[d];
        }
        if (contiguous) {
            @memcpy(
                copy.target[target_offset * size ..][0 .. inner * size],
                copy.source[source_offset * size ..][0 .. inner * size],
            );
            continue;
        }
        for (0..inner) |i| {
            const s = (source_offset + i * copy.source_strides[last]) * size;
            const t = (target_offset + i * copy.target_strides[last]) * size;
            @memcpy(copy.target[t..][0..size], copy.source[s..][0..size]);
        }
    }
}

fn copy_range(copy: *const StridedCopy, begin: u64, end: u64) void {
    copy_rows(copy, begin, end);
}

/// Runs a strided copy (after `simplify`).
pub fn strided_copy(copy: *const StridedCopy) void {
    std.debug.assert(copy.ndim >= 1 and copy.ndim <= dims_max);
    const inner = copy.shape[copy.ndim - 1];
    const total = element_count(copy);
    if (total == 0) return;
    const rows = total / inner;
    if (total < pool.parallel_threshold) {
        copy_rows(copy, 0, rows);
        return;
    }
    pool.parallel_for(rows, copy, copy_range);
}

/// out[r, j] = round(c[r, j] + bias[j]) into `dtype`; `bias` (in `dtype`) may be null.
pub const Epilogue = struct {
    product: [*]const f32,
    bias: ?[*]const u8,
    out: [*]u8,
    rows: u64,
    cols: u64,
};

fn epilogue_rows(comptime dtype: Dtype, e: *const Epilogue, begin: u64, end: u64) void {
    const n = storage.lanes;
    const product: [*]const u8 = @ptrCast(e.product);
    for (begin..end) |row| {
        const base = row * e.cols;
        var j: u64 = 0;
        while (j + n <= e.cols) : (j += n) {
            var value = storage.load(n, .float32, product, base + j);
            if (e.bias) |bias| value += storage.load(n, dtype, bias, j);
            storage.store(n, dtype, e.out, base + j, value);
        }
        while (j < e.cols) : (j += 1) {
            var value = storage.load(1, .float32, product, base + j);
            if (e.bias) |bias| value += storage.load(1, dtype, bias, j);
            storage.store(1, dtype, e.out, base + j, value);
        }
    }
}

fn Runner(comptime dtype: Dtype) type {
    return struct {
        fn run(e: *const Epilogue, begin: u64, end: u64) void {
            epilogue_rows(dtype, e, begin, end);
        }
    };
}

pub fn epilogue(dtype: Dtype, e: *const Epilogue) void {
    std.debug.assert(storage.is_op_dtype(dtype));
    switch (dtype) {
        inline .float32, .float16, .bfloat16 => |d| {
            if (e.rows * e.cols < pool.parallel_threshold) {
                epilogue_rows(d, e, 0, e.rows);
            } else {
                pool.parallel_for(e.rows, e, Runner(d).run);
            }
        },
        else => unreachable,
    }
}

test "a transpose through strided_copy moves every element to its permuted place" {
    var source: [2 * 3 * 4]u16 = undefined;
    for (&source, 0..) |*v, i| v.* = @intCast(i);
    var target: [2 * 3 * 4]u16 = undefined;
    // source [2, 3, 4] -> target [4, 2, 3] (perm 2, 0, 1): walk the target's shape.
    var copy = StridedCopy{
        .source = @ptrCast(&source),
        .target = @ptrCast(&target),
        .element_bytes = 2,
        .ndim = 3,
        .shape = .{ 4, 2, 3, 0, 0, 0, 0, 0 },
        .source_strides = .{ 1, 12, 4, 0, 0, 0, 0, 0 },
        .target_strides = .{ 6, 3, 1, 0, 0, 0, 0, 0 },
    };
    simplify(&copy);
    strided_copy(&copy);
    for (0..4) |k| for (0..2) |i| for (0..3) |j| {
        try std.testing.expectEqual(source[i * 12 + j * 4 + k], target[k * 6 + i * 3 + j]);
    };
}

test "simplify merges contiguous dimensions and drops ones" {
    var copy = StridedCopy{
        .source = undefined,
        .target = undefined,
        .element_bytes = 4,
        .ndim = 4,
        .shape = .{ 2, 1, 3, 5, 0, 0, 0, 0 },
        .source_strides = .{ 15, 15, 5, 1, 0, 0, 0, 0 },
        .target_strides = .{ 15, 15, 5, 1, 0, 0, 0, 0 },
    };
    simplify(&copy);
    try std.testing.expectEqual(@as(u32, 1), copy.ndim);
    try std.testing.expectEqual(@as(u64, 30), copy.shape[0]);
}

test "the epilogue adds the bias and rounds once, in vector and tail lanes alike" {
    const rows = 3;
    const cols = 21;
    var product: [rows * cols]f32 = undefined;
    for (&product, 0..) |*v, i| v.* = @as(f32, @floatFromInt(i)) * 0.37 - 5.1;
    var bias: [cols]u16 = undefined;
    for (&bias, 0..) |*b, j| storage.store_one(.bfloat16, @ptrCast(b), 0, @as(f32, @floatFromInt(j)) * 0.11);
    var out: [rows * cols]u16 = undefined;
    epilogue(.bfloat16, &.{ .product = &product, .bias = @ptrCast(&bias), .out = @ptrCast(&out), .rows = rows, .cols = cols });
    for (0..rows) |r| for (0..cols) |j| {
        var expected: u16 = undefined;
        const sum = product[r * cols + j] + storage.load_one(.bfloat16, @ptrCast(&bias), j);
        storage.store_one(.bfloat16, @ptrCast(&expected), 0, sum);
        try std.testing.expectEqual(expected, out[r * cols + j]);
    };
}
