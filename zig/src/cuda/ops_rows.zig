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

        fn combine(workspace: u64, target: u64, offset: u64, blocks: u64, width: u64) void {
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
export fn mp_norm_combine_kernel(dtype: u32, workspace: u64, target: u64, offset: u64, blocks: u64, width: u64) callconv(.kernel) void {
    switch (op_dtype(dtype)) {
        inline .float32, .float16, .bfloat16 => |d| Norm(d).combine(workspace, target, offset, blocks, width),
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
