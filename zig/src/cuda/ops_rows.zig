//! Device kernels of the row-op families: layer and RMS norm, softmax / log-softmax /
//! cross-entropy, embedding, rotary position embedding and attention, forward and backward,
//! compiled to PTX with the rest of kernels.zig. They call the element functions of zig/src/ops/
//! (norm.normalize, softmax.exp, rope.rotate, attention.exp, mathf.log / sincos) and add in the
//! CPU's order, so a device result has the CPU's bits:
//! - a row reduction gives each row 16 threads (a half warp): thread `lane` sums the elements
//!   lane, lane + 16, ... of the row's vector body as the CPU's vector lane does, the 16 partials
//!   are added in lane order (the CPU's @reduce, see row_ops.zig), then the scalar tail in order;
//! - every other sum (weight and bias partials, their combine, the embedding scatter, attention's
//!   products and weighted sums) runs in one thread per output element in the CPU's element order;
//! - PTX's add.rn / mul.rn / div.rn / sqrt.rn round like the CPU's SSE/AVX instructions and Zig
//!   never contracts a * b + c into a fused multiply-add.
//! Launch every kernel with driver.block_threads (256) threads per block; the row kernels run 16
//! rows per block in a grid-stride loop whose trip count is the same for the whole block.

const ops = @import("row_ops");
const numerics = ops.numerics;
const norm = ops.norm;
const softmax = ops.softmax;
const rope = ops.rope;
const attention = ops.attention;
const mathf = ops.mathf;

const Dtype = numerics.Dtype;
const F = ops.storage.F;
const lanes = ops.lanes;
const inf = @import("std").math.inf(f32);

// ---- Thread geometry and memory access ----

inline fn thread_id() u32 {
    return @workItemId(0);
}

inline fn grid_size() u32 {
    return asm ("mov.u32 %[r], %nctaid.x;"
        : [r] "=r" (-> u32),
    );
}

inline fn first_item() u64 {
    return @as(u64, @workGroupId(0)) * @workGroupSize(0) + @workItemId(0);
}

inline fn item_stride() u64 {
    return @as(u64, @workGroupSize(0)) * grid_size();
}

inline fn sync_threads() void {
    asm volatile ("bar.sync 0;" ::: .{ .memory = true });
}

/// The op dtype of an FFI code (the export checked it), as a comptime switch target.
inline fn op_dtype(code: u32) Dtype {
    return @fromBackingInt(@intCast(code));
}

/// One element of `dtype` at `index` widened to float32 (storage.zig's rule, aligned access).
inline fn load(comptime dtype: Dtype, base: u64, index: u64) f32 {
    switch (dtype) {
        .float32 => return @as([*]const f32, @ptrFromInt(base))[index],
        .bfloat16, .float16 => {
            const bits: u32 = @as([*]const u16, @ptrFromInt(base))[index];
            return @bitCast(numerics.to_f32(1, dtype, @splat(bits))[0]);
        },
        else => @compileError("ops compute on float32, float16 and bfloat16 only"),
    }
}

/// One float32 value stored at `index`, rounded to nearest even into `dtype`.
inline fn store(comptime dtype: Dtype, base: u64, index: u64, value: f32) void {
    switch (dtype) {
        .float32 => @as([*]f32, @ptrFromInt(base))[index] = value,
        .bfloat16, .float16 => {
            const bits = numerics.from_f32(1, dtype, @splat(@bitCast(value)), null, false)[0];
            @as([*]u16, @ptrFromInt(base))[index] = @truncate(bits);
        },
        else => @compileError("ops compute on float32, float16 and bfloat16 only"),
    }
}

inline fn load_or(comptime dtype: Dtype, base: u64, index: u64, default: f32) f32 {
    return if (base != 0) load(dtype, base, index) else default;
}

inline fn floats(address: u64) [*]f32 {
    return @ptrFromInt(address);
}

// ---- Row reductions in the CPU's lane order ----

inline fn shuffle_from(value: f32, source_lane: u32) f32 {
    return @bitCast(asm volatile ("shfl.sync.idx.b32 %[r], %[x], %[l], 0x1f, 0xffffffff;"
        : [r] "=r" (-> u32),
        : [x] "r" (@as(u32, @bitCast(value))),
          [l] "r" (source_lane),
    ));
}

/// The 16 partials of the calling thread's half warp added in lane order, as the CPU's @reduce.
inline fn lanes_sum(partial: f32) f32 {
    const first = thread_id() & 16;
    var total: f32 = -0.0;
    inline for (0..lanes) |i| total += shuffle_from(partial, first + @as(u32, i));
    return total;
}

/// The largest of the half warp's 16 partials.
inline fn lanes_max(partial: f32) f32 {
    const first = thread_id() & 16;
    var total: f32 = shuffle_from(partial, first);
    inline for (1..lanes) |i| total = @max(total, shuffle_from(partial, first + @as(u32, i)));
    return total;
}

/// sum over j < width of term(context, j) in the CPU's order (norm.row_statistics, softmax's
/// row_sum_exp): vector lanes over the body, the lanes in order, then the tail in order. Every
/// thread of the half warp gets the same value.
inline fn row_sum(width: u64, lane: u32, context: anytype, comptime term: fn (@TypeOf(context), u64) f32) f32 {
    const body = width - width % lanes;
    var partial: f32 = 0;
    var j: u64 = lane;
    while (j < body) : (j += lanes) partial += term(context, j);
    var total: f32 = 0;
    total += lanes_sum(partial);
    var tail: f32 = 0;
    j = body;
    while (j < width) : (j += 1) tail += term(context, j);
    total += tail;
    return total;
}

/// The row slots of this block's half warps: `row` is clamped to the last row for a slot past
/// the end (computed and not stored), so every thread runs the same iterations (the shuffles
/// need the whole warp).
const RowSlots = struct {
    rows: u64,
    first: u64,
    lane: u32,
    group: u32,

    inline fn start(rows: u64) RowSlots {
        return .{ .rows = rows, .first = @as(u64, @workGroupId(0)) * (@workGroupSize(0) / lanes), .lane = thread_id() % lanes, .group = thread_id() / lanes };
    }

    inline fn more(slots: *const RowSlots) bool {
        return slots.first < slots.rows;
    }

    inline fn next(slots: *RowSlots) void {
        slots.first += @as(u64, grid_size()) * (@workGroupSize(0) / lanes);
    }

    inline fn valid(slots: *const RowSlots) bool {
        return slots.first + slots.group < slots.rows;
    }

    inline fn row(slots: *const RowSlots) u64 {
        return @min(slots.first + slots.group, slots.rows - 1);
    }
};

// ---- Layer norm and RMS norm (zig/src/ops/norm.zig) ----

fn Norm(comptime dtype: Dtype) type {
    return struct {
        const Row = struct { x: u64, base: u64, mean: f32 };

        fn value(row: Row, j: u64) f32 {
            return load(dtype, row.x, row.base + j);
        }

        fn centered_square(row: Row, j: u64) f32 {
            const centered = load(dtype, row.x, row.base + j) - row.mean;
            return centered * centered;
        }

        fn forward(kind: norm.Kind, x: u64, weight: u64, bias: u64, out: u64, mean: u64, rstd: u64, rows: u64, width: u64, eps: f32) void {
            const count: f32 = @floatFromInt(width);
            var slots = RowSlots.start(rows);
            while (slots.more()) : (slots.next()) {
                const base = slots.row() * width;
                var row = Row{ .x = x, .base = base, .mean = 0 };
                if (kind == .layer) row.mean = row_sum(width, slots.lane, row, value) / count;
                const squares = row_sum(width, slots.lane, row, centered_square);
                const r = 1.0 / @sqrt(squares / count + eps);
                if (!slots.valid()) continue;
                if (slots.lane == 0) {
                    if (mean != 0) floats(mean)[slots.row()] = row.mean;
                    if (rstd != 0) floats(rstd)[slots.row()] = r;
                }
                var j: u64 = slots.lane;
                while (j < width) : (j += lanes) {
                    const w: F(1) = @splat(load_or(dtype, weight, j, 1));
                    const b: F(1) = @splat(load_or(dtype, bias, j, 0));
                    const y = norm.normalize(1, @splat(load(dtype, x, base + j)), row.mean, r, w, b);
                    store(dtype, out, base + j, y[0]);
                }
            }
        }

        const Gradient = struct { x: u64, g: u64, weight: u64, base: u64, mean: f32, rstd: f32 };

        inline fn xhat(row: Gradient, j: u64) f32 {
            return norm.normalize(1, @splat(load(dtype, row.x, row.base + j)), row.mean, row.rstd, @splat(1), @splat(0))[0];
        }

        inline fn dn(row: Gradient, j: u64) f32 {
            return load(dtype, row.g, row.base + j) * load_or(dtype, row.weight, j, 1);
        }

        fn dn_term(row: Gradient, j: u64) f32 {
            return dn(row, j);
        }

        fn dn_xhat_term(row: Gradient, j: u64) f32 {
            return dn(row, j) * xhat(row, j);
        }

        fn backward_rows(kind: norm.Kind, x: u64, weight: u64, mean: u64, rstd: u64, grad_out: u64, grad_x: u64, rows: u64, width: u64) void {
            const count: f32 = @floatFromInt(width);
            var slots = RowSlots.start(rows);
            while (slots.more()) : (slots.next()) {
                const r = slots.row();
                const row = Gradient{
                    .x = x,
                    .g = grad_out,
                    .weight = weight,
                    .base = r * width,
                    .mean = if (kind == .layer) floats(mean)[r] else 0,
                    .rstd = floats(rstd)[r],
                };
                const sum_dn = row_sum(width, slots.lane, row, dn_term);
                const sum_dn_xhat = row_sum(width, slots.lane, row, dn_xhat_term);
                const mean_dn: f32 = if (kind == .layer) sum_dn / count else 0;
                const mean_dn_xhat = sum_dn_xhat / count;
                if (!slots.valid()) continue;
                var j: u64 = slots.lane;
                while (j < width) : (j += lanes) {
                    const dx = row.rstd * (dn(row, j) - mean_dn - xhat(row, j) * mean_dn_xhat);
                    store(dtype, grad_x, row.base + j, dx);
                }
            }
        }

        /// One thread per (row block, column): the block's g * xhat and g sums in row order.
        fn backward_partials(kind: norm.Kind, x: u64, mean: u64, rstd: u64, grad_out: u64, workspace: u64, rows: u64, width: u64) void {
            const size = norm.block_rows(rows);
            const total = norm.block_count(rows) * width;
            var item = first_item();
            while (item < total) : (item += item_stride()) {
                const block = item / width;
                const j = item % width;
                var partial_weight: f32 = 0;
                var partial_bias: f32 = 0;
                const end = @min(rows, (block + 1) * size);
                var r = block * size;
                while (r < end) : (r += 1) {
                    const row = Gradient{ .x = x, .g = grad_out, .weight = 0, .base = r * width, .mean = if (kind == .layer) floats(mean)[r] else 0, .rstd = floats(rstd)[r] };
                    const g = load(dtype, grad_out, row.base + j);
                    partial_weight = partial_weight + g * xhat(row, j);
                    partial_bias = partial_bias + g;
                }
                floats(workspace)[block * 2 * width + j] = partial_weight;
                floats(workspace)[block * 2 * width + width + j] = partial_bias;
            }
        }

        fn combine(workspace: u64, target: u64, offset: u64, rows: u64, width: u64) void {
            const blocks = norm.block_count(rows);
            var j = first_item();
            while (j < width) : (j += item_stride()) {
                var total: f32 = 0;
                var block: u64 = 0;
                while (block < blocks) : (block += 1) total += floats(workspace)[block * 2 * width + offset + j];
                store(dtype, target, j, total);
            }
        }
    };
}

/// Layer norm (kind 0) or RMS norm (kind 1) forward over rows of `width`, mp_norm_forward's rule.
export fn mp_norm_forward_kernel(kind: u32, dtype: u32, x: u64, weight: u64, bias: u64, out: u64, mean: u64, rstd: u64, rows: u64, width: u64, eps: f32) callconv(.kernel) void {
    switch (op_dtype(dtype)) {
        inline .float32, .float16, .bfloat16 => |d| Norm(d).forward(@fromBackingInt(kind), x, weight, bias, out, mean, rstd, rows, width, eps),
        else => {},
    }
}

/// The norms' grad_x, one half warp per row.
export fn mp_norm_backward_rows_kernel(kind: u32, dtype: u32, x: u64, weight: u64, mean: u64, rstd: u64, grad_out: u64, grad_x: u64, rows: u64, width: u64) callconv(.kernel) void {
    switch (op_dtype(dtype)) {
        inline .float32, .float16, .bfloat16 => |d| Norm(d).backward_rows(@fromBackingInt(kind), x, weight, mean, rstd, grad_out, grad_x, rows, width),
        else => {},
    }
}

/// The weight and bias partial rows of every row block (norm.block_rows) into the float32
/// workspace laid out as the CPU's: block b's weight row at b * 2 * width, its bias row after it.
export fn mp_norm_backward_partials_kernel(kind: u32, dtype: u32, x: u64, mean: u64, rstd: u64, grad_out: u64, workspace: u64, rows: u64, width: u64) callconv(.kernel) void {
    switch (op_dtype(dtype)) {
        inline .float32, .float16, .bfloat16 => |d| Norm(d).backward_partials(@fromBackingInt(kind), x, mean, rstd, grad_out, workspace, rows, width),
        else => {},
    }
}

/// target[j] = the blocks' partials at `offset` (0: weight, width: bias) added in block order.
export fn mp_norm_combine_kernel(dtype: u32, workspace: u64, target: u64, offset: u64, rows: u64, width: u64) callconv(.kernel) void {
    switch (op_dtype(dtype)) {
        inline .float32, .float16, .bfloat16 => |d| Norm(d).combine(workspace, target, offset, rows, width),
        else => {},
    }
}

// ---- Softmax, log-softmax and cross-entropy (zig/src/ops/softmax.zig) ----

fn Softmax(comptime dtype: Dtype) type {
    return struct {
        const Row = struct { x: u64, g: u64, base: u64, shift: f32 };

        inline fn exp(x: f32) f32 {
            return softmax.exp(1, @splat(x))[0];
        }

        fn shifted_exp(row: Row, j: u64) f32 {
            return exp(load(dtype, row.x, row.base + j) - row.shift);
        }

        fn product(row: Row, j: u64) f32 {
            return load(dtype, row.g, row.base + j) * load(dtype, row.x, row.base + j);
        }

        fn gradient(row: Row, j: u64) f32 {
            return load(dtype, row.g, row.base + j);
        }

        /// softmax.zig's row_max: lane maxima, their maximum, then the tail.
        fn row_max(x: u64, base: u64, width: u64, lane: u32) f32 {
            const body = width - width % lanes;
            var partial: f32 = -inf;
            var j: u64 = lane;
            while (j < body) : (j += lanes) partial = @max(partial, load(dtype, x, base + j));
            var max: f32 = -inf;
            max = @max(max, lanes_max(partial));
            var tail: f32 = -inf;
            j = body;
            while (j < width) : (j += 1) tail = @max(tail, load(dtype, x, base + j));
            return @max(max, tail);
        }

        fn forward(op: softmax.Op, x: u64, out: u64, rows: u64, width: u64, labels: u64, ignore_index: i32, lse: u64) void {
            var slots = RowSlots.start(rows);
            while (slots.more()) : (slots.next()) {
                const base = slots.row() * width;
                const max = row_max(x, base, width, slots.lane);
                const total = row_sum(width, slots.lane, Row{ .x = x, .g = 0, .base = base, .shift = max }, shifted_exp);
                if (!slots.valid()) continue;
                switch (op) {
                    .softmax => {
                        const inverse = 1.0 / total;
                        var j: u64 = slots.lane;
                        while (j < width) : (j += lanes) store(dtype, out, base + j, exp(load(dtype, x, base + j) - max) * inverse);
                    },
                    .log_softmax => {
                        const row_lse = max + mathf.log(total);
                        var j: u64 = slots.lane;
                        while (j < width) : (j += lanes) store(dtype, out, base + j, load(dtype, x, base + j) - row_lse);
                    },
                    .cross_entropy => {
                        if (slots.lane != 0) continue;
                        const row = slots.row();
                        const row_lse = max + mathf.log(total);
                        if (lse != 0) floats(lse)[row] = row_lse;
                        const label = @as([*]const i32, @ptrFromInt(labels))[row];
                        floats(out)[row] = if (label == ignore_index) 0 else row_lse - load(dtype, x, base + @as(u64, @intCast(label)));
                    },
                }
            }
        }

        fn backward(op: softmax.Op, saved: u64, grad_out: u64, grad_x: u64, rows: u64, width: u64) void {
            var slots = RowSlots.start(rows);
            while (slots.more()) : (slots.next()) {
                const row = Row{ .x = saved, .g = grad_out, .base = slots.row() * width, .shift = 0 };
                const total = if (op == .softmax) row_sum(width, slots.lane, row, product) else row_sum(width, slots.lane, row, gradient);
                if (!slots.valid()) continue;
                var j: u64 = slots.lane;
                while (j < width) : (j += lanes) {
                    const g = load(dtype, grad_out, row.base + j);
                    const y = load(dtype, saved, row.base + j);
                    const dx = if (op == .softmax) y * (g - total) else g - exp(y) * total;
                    store(dtype, grad_x, row.base + j, dx);
                }
            }
        }

        fn cross_entropy_backward(logits: u64, grad_mean: u64, grad_x: u64, rows: u64, width: u64, labels: u64, ignore_index: i32, lse: u64, kept: u64) void {
            const factor = floats(grad_mean)[0] / @as(f32, @floatFromInt(kept));
            var item = first_item();
            while (item < rows * width) : (item += item_stride()) {
                const row = item / width;
                const j = item % width;
                const label = @as([*]const i32, @ptrFromInt(labels))[row];
                var dx: f32 = 0;
                if (label != ignore_index) {
                    const p = exp(load(dtype, logits, item) - floats(lse)[row]);
                    const onehot: f32 = if (j == @as(u64, @intCast(label))) 1 else 0;
                    dx = (p - onehot) * factor;
                }
                store(dtype, grad_x, item, dx);
            }
        }
    };
}

/// Softmax (op 0), log-softmax (op 1) or cross-entropy's per-row losses and lse (op 2), one half
/// warp per row.
export fn mp_softmax_forward_kernel(op: u32, dtype: u32, x: u64, out: u64, rows: u64, width: u64, labels: u64, ignore_index: i32, lse: u64) callconv(.kernel) void {
    switch (op_dtype(dtype)) {
        inline .float32, .float16, .bfloat16 => |d| Softmax(d).forward(@fromBackingInt(op), x, out, rows, width, labels, ignore_index, lse),
        else => {},
    }
}

/// Cross-entropy's mean over kept rows (softmax.mean_over_kept, float64 in row order): one thread.
export fn mp_cross_entropy_mean_kernel(losses: u64, labels: u64, ignore_index: i32, rows: u64, mean: u64) callconv(.kernel) void {
    if (first_item() != 0) return;
    floats(mean)[0] = softmax.mean_over_kept(@ptrFromInt(losses), @ptrFromInt(labels), rows, ignore_index);
}

/// Softmax (op 0) or log-softmax (op 1) backward from the forward's output, one half warp per row.
export fn mp_softmax_backward_kernel(op: u32, dtype: u32, saved: u64, grad_out: u64, grad_x: u64, rows: u64, width: u64) callconv(.kernel) void {
    switch (op_dtype(dtype)) {
        inline .float32, .float16, .bfloat16 => |d| Softmax(d).backward(@fromBackingInt(op), saved, grad_out, grad_x, rows, width),
        else => {},
    }
}

/// Cross-entropy backward, one thread per logit: (exp(x - lse) - onehot) * grad_mean / kept.
export fn mp_cross_entropy_backward_kernel(dtype: u32, logits: u64, grad_mean: u64, grad_x: u64, rows: u64, width: u64, labels: u64, ignore_index: i32, lse: u64, kept: u64) callconv(.kernel) void {
    switch (op_dtype(dtype)) {
        inline .float32, .float16, .bfloat16 => |d| Softmax(d).cross_entropy_backward(logits, grad_mean, grad_x, rows, width, labels, ignore_index, lse, kept),
        else => {},
    }
}

// ---- Embedding (zig/src/ops/embedding.zig) ----

inline fn copy_element(comptime T: type, table: u64, ids: u64, out: u64, dim: u64, count: u64) void {
    var item = first_item();
    while (item < count * dim) : (item += item_stride()) {
        const id: u64 = @intCast(@as([*]const i32, @ptrFromInt(ids))[item / dim]);
        @as([*]T, @ptrFromInt(out))[item] = @as([*]const T, @ptrFromInt(table))[id * dim + item % dim];
    }
}

/// out[i] = table[ids[i]], rows of `dim` elements of `element_bytes` (1, 2 or 4) bytes.
export fn mp_embedding_forward_kernel(element_bytes: u32, table: u64, ids: u64, out: u64, dim: u64, count: u64) callconv(.kernel) void {
    switch (element_bytes) {
        1 => copy_element(u8, table, ids, out, dim, count),
        2 => copy_element(u16, table, ids, out, dim, count),
        else => copy_element(u32, table, ids, out, dim, count),
    }
}

fn scatter(comptime dtype: Dtype, workspace: u64, grad_out: u64, grad_table: u64, vocabulary: u64, dim: u64) void {
    const ends: [*]const u32 = @ptrFromInt(workspace);
    const order = ends + vocabulary;
    var item = first_item();
    while (item < vocabulary * dim) : (item += item_stride()) {
        const row = item / dim;
        const j = item % dim;
        const start: u64 = if (row == 0) 0 else ends[row - 1];
        var acc: f32 = 0;
        var k = start;
        while (k < ends[row]) : (k += 1) acc += load(dtype, grad_out, @as(u64, order[k]) * dim + j);
        store(dtype, grad_table, item, acc);
    }
}

/// Embedding backward from the host's stable counting sort (embedding.sort_positions) in the u32
/// workspace: one thread per table element sums its id's token rows in token order.
export fn mp_embedding_backward_kernel(dtype: u32, workspace: u64, grad_out: u64, grad_table: u64, vocabulary: u64, dim: u64) callconv(.kernel) void {
    switch (op_dtype(dtype)) {
        inline .float32, .float16, .bfloat16 => |d| scatter(d, workspace, grad_out, grad_table, vocabulary, dim),
        else => {},
    }
}

// ---- Rotary position embedding (zig/src/ops/rope.zig) ----

fn rotate_pairs(comptime dtype: Dtype, comptime inverse: bool, source: u64, target: u64, inv_freq: u64, positions: u64, problem: *const rope.Problem) void {
    const p = problem;
    const half = p.head_dim / 2;
    var item = first_item();
    while (item < p.batch * p.steps * p.heads * half) : (item += item_stride()) {
        const i = item % half;
        const h = (item / half) % p.heads;
        const r = item / half / p.heads;
        const t = r % p.steps;
        const at: f32 = if (p.flags & rope.flag_positions != 0) blk: {
            const index = if (p.flags & rope.flag_positions_per_batch != 0) r else t;
            break :blk @floatFromInt(@as([*]const i32, @ptrFromInt(positions))[index]);
        } else @floatFromInt(p.offset + @as(i64, @intCast(t)));
        const sin_cos = mathf.sincos(at * floats(inv_freq)[i]);
        const base = r * p.heads * p.head_dim + h * p.head_dim;
        const x1: F(1) = @splat(load(dtype, source, base + i));
        const x2: F(1) = @splat(load(dtype, source, base + half + i));
        const out = rope.rotate(1, x1, x2, @splat(sin_cos[1]), @splat(sin_cos[0]), inverse);
        store(dtype, target, base + i, out[0][0]);
        store(dtype, target, base + half + i, out[1][0]);
    }
}

/// Rope forward (inverse 0) or backward (inverse 1): one thread per rotated pair. `problem` is
/// the device address of a rope.Problem; inv_freq and positions are device copies.
export fn mp_rope_kernel(dtype: u32, inverse: u32, problem: u64, source: u64, target: u64, inv_freq: u64, positions: u64) callconv(.kernel) void {
    const p: *const rope.Problem = @ptrFromInt(problem);
    switch (op_dtype(dtype)) {
        inline .float32, .float16, .bfloat16 => |d| if (inverse != 0)
            rotate_pairs(d, true, source, target, inv_freq, positions, p)
        else
            rotate_pairs(d, false, source, target, inv_freq, positions, p),
        else => {},
    }
}

// ---- Attention (zig/src/ops/attention.zig) ----
//
// One block per work item of the CPU (a query tile of attention.block_q rows, or a key tile of
// attention.block_kv keys), the CPU's tile boundaries and its order in every sum:
// - a score is q . k summed over d in order, then * scale (- lse in the backward pass);
// - the online softmax runs per row over the key tiles in order (one thread per row);
// - an output element (acc, dq, dk, dv) is one thread's running sum over the tile's keys (or
//   rows) in order, skipping the zero probabilities as the CPU's lists do;
// - products and weighted sums take one fused multiply-add per step, as the CPU's @mulAdd (PTX
//   fma.rn.f32 and x86 vfmadd round once, the same way);
// - delta = dO . O in the CPU's 16-lane order (attention.zig's dot).
// q, k, v and dO are read from global memory (through L1) each time they are needed; only the
// scores and per-row statistics live in shared memory (4.3 KiB), so any head_dim up to
// attention.head_dim_max fits.

const block_q = attention.block_q;
const block_kv = attention.block_kv;
const head_dim_max = attention.head_dim_max;
/// Output elements a thread keeps in registers: a query row's head_dim spread over 16 threads,
/// a key row's over 8.
const row_threads = 256 / block_q;
const key_threads = 256 / block_kv;
const row_slots = head_dim_max / row_threads;
const key_slots = head_dim_max / key_threads;

comptime {
    if (block_q * row_threads != 256 or block_kv * key_threads != 256) @compileError("attention tiles assume 256 threads");
    if (block_q * block_kv != 2 * 256) @compileError("attention scores assume two (row, key) pairs per thread");
}

var shared_tile_scores: [block_q][block_kv]f32 addrspace(.shared) = undefined;
var shared_tile_d_scores: [block_q][block_kv]f32 addrspace(.shared) = undefined;
var shared_row_m: [block_q]f32 addrspace(.shared) = undefined;
var shared_row_l: [block_q]f32 addrspace(.shared) = undefined;
var shared_row_alpha: [block_q]f32 addrspace(.shared) = undefined;
var shared_row_lse: [block_q]f32 addrspace(.shared) = undefined;
var shared_row_delta: [block_q]f32 addrspace(.shared) = undefined;

inline fn attention_exp(x: f32) f32 {
    return attention.exp(1, @splat(x))[0];
}

/// Whether the padding mask keeps key `index` (b * S + s); every key without a mask.
inline fn keeps(mask: u64, mask_dtype: u32, index: u64) bool {
    if (mask == 0) return true;
    return switch (op_dtype(mask_dtype)) {
        inline .float32, .float16, .bfloat16 => |d| load(d, mask, index) != 0,
        else => true,
    };
}

fn Attention(comptime dtype: Dtype) type {
    return struct {
        const Operands = struct {
            p: attention.Problem,
            scale: f32,
            q: u64,
            k: u64,
            v: u64,
            mask: u64,
            mask_dtype: u32,
            out: u64,
            lse: u64,
            d_out: u64 = 0,
        };

        /// sum over d of a[d] * b[d], in order, one fused multiply-add per step (attention.zig's
        /// products).
        inline fn row_dot(a: u64, a_index: u64, b: u64, b_index: u64, dim: u64) f32 {
            var total: f32 = 0;
            var d: u64 = 0;
            while (d < dim) : (d += 1) total = @mulAdd(f32, load(dtype, a, a_index + d), load(dtype, b, b_index + d), total);
            return total;
        }

        /// attention.zig's dot of a dO row and an O row: 16 lane partials over whole vectors,
        /// added in lane order, then the tail.
        fn lanes_dot(o: *const Operands, index: u64) f32 {
            const dim = o.p.head_dim;
            var partial: [lanes]f32 = @splat(0);
            var i: u64 = 0;
            while (i + lanes <= dim) : (i += lanes) {
                inline for (0..lanes) |k| partial[k] += load(dtype, o.d_out, index + i + k) * load(dtype, o.out, index + i + k);
            }
            var total: f32 = -0.0;
            inline for (0..lanes) |k| total += partial[k];
            while (i < dim) : (i += 1) total += load(dtype, o.d_out, index + i) * load(dtype, o.out, index + i);
            return total;
        }

        /// Score of query row `row` against key `key` times scale minus `shift`, or -inf where the
        /// row may not see the key (attention.zig's finish_scores()).
        inline fn score(o: *const Operands, b: u64, h: u64, row: u64, key: u64, shift: f32) f32 {
            const p = &o.p;
            if (!(key < p.keys_end(row) and keeps(o.mask, o.mask_dtype, b * p.steps_kv + key))) return -inf;
            const s = row_dot(o.q, p.q_index(b, row, h), o.k, p.k_index(b, key, h / p.group()), p.head_dim) * o.scale;
            return s - shift;
        }

        fn forward_item(o: *const Operands, item: u64) void {
            const p = &o.p;
            const dim = p.head_dim;
            const tiles = attention.q_tiles(p);
            const tile = item % tiles;
            const h = (item / tiles) % p.heads_q;
            const b = item / tiles / p.heads_q;
            const h_kv = h / p.group();
            const q0 = tile * block_q;
            const rows = @min(block_q, p.steps_q - q0);
            const t = thread_id();
            const my_row = t / row_threads;
            const my_lane = t % row_threads;
            var acc: [row_slots]f32 = @splat(0);
            if (t < block_q) {
                shared_row_m[t] = -inf;
                shared_row_l[t] = 0;
            }
            // Other threads read these (at the latest when storing a row that sees no key).
            sync_threads();
            const kv_end = p.keys_end(q0 + rows - 1);
            var k0: u64 = 0;
            while (k0 < kv_end) : (k0 += block_kv) {
                const cols = @min(block_kv, kv_end - k0);
                inline for (0..2) |half| {
                    const pair = t + half * 256;
                    const r = pair / block_kv;
                    const c = pair % block_kv;
                    if (r < rows and c < cols) shared_tile_scores[r][c] = score(o, b, h, q0 + r, k0 + c, 0);
                }
                sync_threads();
                if (t < rows) {
                    var tile_max: f32 = -inf;
                    for (0..cols) |c| tile_max = @max(tile_max, shared_tile_scores[t][c]);
                    if (tile_max == -inf) {
                        shared_row_alpha[t] = -inf; // Nothing visible here: the row skips this tile.
                    } else {
                        const m_new = @max(shared_row_m[t], tile_max);
                        const alpha = attention_exp(shared_row_m[t] - m_new);
                        var total: f32 = 0;
                        for (0..cols) |c| {
                            const e = attention_exp(shared_tile_scores[t][c] - m_new);
                            shared_tile_scores[t][c] = e;
                            total += e;
                        }
                        shared_row_l[t] = shared_row_l[t] * alpha + total;
                        shared_row_m[t] = m_new;
                        shared_row_alpha[t] = alpha;
                    }
                }
                sync_threads();
                if (my_row < rows and shared_row_alpha[my_row] != -inf) {
                    const alpha = shared_row_alpha[my_row];
                    inline for (0..row_slots) |i| {
                        const j = my_lane + i * row_threads;
                        if (j < dim) {
                            var total = acc[i] * alpha;
                            for (0..cols) |c| {
                                const weight = shared_tile_scores[my_row][c];
                                if (weight != 0) total = @mulAdd(f32, weight, load(dtype, o.v, p.v_index(b, k0 + c, h_kv) + j), total);
                            }
                            acc[i] = total;
                        }
                    }
                }
                sync_threads();
            }
            if (my_row < rows) {
                const l = shared_row_l[my_row];
                const seen = l > 0;
                const factor: f32 = if (seen) 1 / l else 0;
                const index = p.o_index(b, q0 + my_row, h);
                inline for (0..row_slots) |i| {
                    const j = my_lane + i * row_threads;
                    if (j < dim) store(dtype, o.out, index + j, acc[i] * factor);
                }
                if (my_lane == 0) floats(o.lse)[p.lse_index(b, h, q0 + my_row)] = if (seen) shared_row_m[my_row] + mathf.log(l) else -inf;
            }
            sync_threads();
        }

        /// Loads delta and lse of the rows [q0, q0 + rows) of head h into shared memory.
        fn load_row_statistics(o: *const Operands, b: u64, h: u64, q0: u64, rows: u64) void {
            const t = thread_id();
            if (t < rows) {
                shared_row_delta[t] = lanes_dot(o, o.p.o_index(b, q0 + t, h));
                shared_row_lse[t] = floats(o.lse)[o.p.lse_index(b, h, q0 + t)];
            }
        }

        /// probs and d_scores of the (row, key) pairs of a tile (attention.zig's row_gradients).
        fn pair_gradients(o: *const Operands, b: u64, h: u64, q0: u64, rows: u64, k0: u64, cols: u64) void {
            const p = &o.p;
            const t = thread_id();
            inline for (0..2) |half| {
                const pair = t + half * 256;
                const r = pair / block_kv;
                const c = pair % block_kv;
                if (r < rows and c < cols) {
                    var prob: f32 = 0;
                    var d_score: f32 = 0;
                    const lse = shared_row_lse[r];
                    if (lse != -inf) {
                        prob = attention_exp(score(o, b, h, q0 + r, k0 + c, lse));
                        const dp = row_dot(o.d_out, p.o_index(b, q0 + r, h), o.v, p.v_index(b, k0 + c, h / p.group()), p.head_dim);
                        d_score = if (prob == 0) 0 else prob * (dp - shared_row_delta[r]) * o.scale;
                    }
                    shared_tile_scores[r][c] = prob;
                    shared_tile_d_scores[r][c] = d_score;
                }
            }
        }

        fn keys_item(o: *const Operands, item: u64, dk: u64, dv: u64) void {
            const p = &o.p;
            const dim = p.head_dim;
            const tiles = attention.kv_tiles(p);
            const tile = item % tiles;
            const h_kv = (item / tiles) % p.heads_kv;
            const b = item / tiles / p.heads_kv;
            const k0 = tile * block_kv;
            const cols = @min(block_kv, p.steps_kv - k0);
            const t = thread_id();
            const my_col = t / key_threads;
            const my_lane = t % key_threads;
            var acc_k: [key_slots]f32 = @splat(0);
            var acc_v: [key_slots]f32 = @splat(0);
            const first_row = p.rows_begin(k0);
            for (0..p.group()) |member| {
                const h = h_kv * p.group() + member;
                var q0 = first_row / block_q * block_q;
                while (q0 < p.steps_q) : (q0 += block_q) {
                    const rows = @min(block_q, p.steps_q - q0);
                    load_row_statistics(o, b, h, q0, rows);
                    sync_threads();
                    pair_gradients(o, b, h, q0, rows, k0, cols);
                    sync_threads();
                    if (my_col < cols) {
                        inline for (0..key_slots) |i| {
                            const j = my_lane + i * key_threads;
                            if (j < dim) {
                                var total_v = acc_v[i];
                                var total_k = acc_k[i];
                                for (0..rows) |r| {
                                    const prob = shared_tile_scores[r][my_col];
                                    if (prob == 0) continue;
                                    total_v = @mulAdd(f32, prob, load(dtype, o.d_out, p.o_index(b, q0 + r, h) + j), total_v);
                                    total_k = @mulAdd(f32, shared_tile_d_scores[r][my_col], load(dtype, o.q, p.q_index(b, q0 + r, h) + j), total_k);
                                }
                                acc_v[i] = total_v;
                                acc_k[i] = total_k;
                            }
                        }
                    }
                    sync_threads();
                }
            }
            if (my_col < cols) {
                inline for (0..key_slots) |i| {
                    const j = my_lane + i * key_threads;
                    if (j < dim) {
                        store(dtype, dk, p.k_index(b, k0 + my_col, h_kv) + j, acc_k[i]);
                        store(dtype, dv, p.v_index(b, k0 + my_col, h_kv) + j, acc_v[i]);
                    }
                }
            }
        }

        fn queries_item(o: *const Operands, item: u64, dq: u64) void {
            const p = &o.p;
            const dim = p.head_dim;
            const tiles = attention.q_tiles(p);
            const tile = item % tiles;
            const h = (item / tiles) % p.heads_q;
            const b = item / tiles / p.heads_q;
            const h_kv = h / p.group();
            const q0 = tile * block_q;
            const rows = @min(block_q, p.steps_q - q0);
            const t = thread_id();
            const my_row = t / row_threads;
            const my_lane = t % row_threads;
            var acc: [row_slots]f32 = @splat(0);
            load_row_statistics(o, b, h, q0, rows);
            sync_threads();
            const kv_end = p.keys_end(q0 + rows - 1);
            var k0: u64 = 0;
            while (k0 < kv_end) : (k0 += block_kv) {
                const cols = @min(block_kv, kv_end - k0);
                pair_gradients(o, b, h, q0, rows, k0, cols);
                sync_threads();
                if (my_row < rows and shared_row_lse[my_row] != -inf) {
                    inline for (0..row_slots) |i| {
                        const j = my_lane + i * row_threads;
                        if (j < dim) {
                            var total = acc[i];
                            for (0..cols) |c| {
                                if (shared_tile_scores[my_row][c] == 0) continue;
                                total = @mulAdd(f32, shared_tile_d_scores[my_row][c], load(dtype, o.k, p.k_index(b, k0 + c, h_kv) + j), total);
                            }
                            acc[i] = total;
                        }
                    }
                }
                sync_threads();
            }
            if (my_row < rows) {
                const index = p.q_index(b, q0 + my_row, h);
                inline for (0..row_slots) |i| {
                    const j = my_lane + i * row_threads;
                    if (j < dim) store(dtype, dq, index + j, acc[i]);
                }
            }
            sync_threads();
        }
    };
}

/// Attention forward: one block per (batch, query head, query tile), grid-stride over the CPU's
/// work items. `problem` is the device address of an attention.Problem; lse is float32 [B, Hq, T].
export fn mp_attention_forward_kernel(dtype: u32, problem: u64, scale: f32, q: u64, k: u64, v: u64, mask: u64, mask_dtype: u32, out: u64, lse: u64) callconv(.kernel) void {
    const p = @as(*const attention.Problem, @ptrFromInt(problem)).*;
    const count = p.batch * p.heads_q * attention.q_tiles(&p);
    switch (op_dtype(dtype)) {
        inline .float32, .float16, .bfloat16 => |d| {
            const o = Attention(d).Operands{ .p = p, .scale = scale, .q = q, .k = k, .v = v, .mask = mask, .mask_dtype = mask_dtype, .out = out, .lse = lse };
            var item: u64 = @workGroupId(0);
            while (item < count) : (item += grid_size()) Attention(d).forward_item(&o, item);
        },
        else => {},
    }
}

/// Attention backward, first pass: dk and dv, one block per (batch, kv head, key tile).
export fn mp_attention_backward_keys_kernel(dtype: u32, problem: u64, scale: f32, q: u64, k: u64, v: u64, mask: u64, mask_dtype: u32, out: u64, lse: u64, d_out: u64, dk: u64, dv: u64) callconv(.kernel) void {
    const p = @as(*const attention.Problem, @ptrFromInt(problem)).*;
    const count = p.batch * p.heads_kv * attention.kv_tiles(&p);
    switch (op_dtype(dtype)) {
        inline .float32, .float16, .bfloat16 => |d| {
            const o = Attention(d).Operands{ .p = p, .scale = scale, .q = q, .k = k, .v = v, .mask = mask, .mask_dtype = mask_dtype, .out = out, .lse = lse, .d_out = d_out };
            var item: u64 = @workGroupId(0);
            while (item < count) : (item += grid_size()) Attention(d).keys_item(&o, item, dk, dv);
        },
        else => {},
    }
}

/// Attention backward, second pass: dq, one block per (batch, query head, query tile).
export fn mp_attention_backward_queries_kernel(dtype: u32, problem: u64, scale: f32, q: u64, k: u64, v: u64, mask: u64, mask_dtype: u32, out: u64, lse: u64, d_out: u64, dq: u64) callconv(.kernel) void {
    const p = @as(*const attention.Problem, @ptrFromInt(problem)).*;
    const count = p.batch * p.heads_q * attention.q_tiles(&p);
    switch (op_dtype(dtype)) {
        inline .float32, .float16, .bfloat16 => |d| {
            const o = Attention(d).Operands{ .p = p, .scale = scale, .q = q, .k = k, .v = v, .mask = mask, .mask_dtype = mask_dtype, .out = out, .lse = lse, .d_out = d_out };
            var item: u64 = @workGroupId(0);
            while (item < count) : (item += grid_size()) Attention(d).queries_item(&o, item, dq);
        },
        else => {},
    }
}
