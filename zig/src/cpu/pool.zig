//! Splits a range of elements across worker threads.
//!
//! Workers are spawned per call and joined before it returns, so no thread outlives a call and no
//! native thread ever calls back into JavaScript. Spawning costs tens of microseconds, so ranges
//! below `parallel_threshold` elements run on the calling thread alone.

const std = @import("std");

pub const thread_count_max = 16;
/// Below this many elements a single thread is faster than spawning workers.
pub const parallel_threshold: u64 = 1 << 20;
/// Chunk boundaries are multiples of this, so vector loops see whole vectors except at the end.
const chunk_align: u64 = 64;

var thread_count_setting = std.atomic.Value(u32).init(0);

/// The number of threads a call may use: the setting if non-zero, else the CPU count (capped).
pub fn thread_count() u32 {
    const setting = thread_count_setting.load(.monotonic);
    if (setting != 0) return setting;
    const cpus = std.Thread.getCpuCount() catch 1;
    return @intCast(@min(cpus, thread_count_max));
}

/// Sets the thread count (0 restores the default: one per CPU, at most `thread_count_max`).
pub fn set_thread_count(count: u32) void {
    std.debug.assert(count <= thread_count_max);
    thread_count_setting.store(count, .monotonic);
}

/// Calls `body(context, begin, end)` over disjoint sub-ranges covering [0, count).
pub fn parallel_for(count: u64, context: anytype, comptime body: fn (@TypeOf(context), u64, u64) void) void {
    const threads = thread_count();
    if (count < parallel_threshold or threads <= 1) {
        body(context, 0, count);
        return;
    }
    const per_thread = std.mem.alignForward(u64, (count + threads - 1) / threads, chunk_align);
    var workers: [thread_count_max]?std.Thread = @splat(null);
    var begin: u64 = per_thread;
    var index: usize = 1;
    while (index < threads and begin < count) : (index += 1) {
        const end = @min(begin + per_thread, count);
        workers[index] = std.Thread.spawn(.{ .stack_size = 256 * 1024 }, body, .{ context, begin, end }) catch null;
        // A worker that could not start is done here instead.
        if (workers[index] == null) body(context, begin, end);
        begin = end;
    }
    body(context, 0, @min(per_thread, count));
    for (workers[1..index]) |worker| if (worker) |w| w.join();
}

test "parallel_for covers every element exactly once" {
    const Context = struct {
        marks: []std.atomic.Value(u8),
        fn body(self: *const @This(), begin: u64, end: u64) void {
            for (begin..end) |i| _ = self.marks[i].fetchAdd(1, .monotonic);
        }
    };
    const count = parallel_threshold * 3 + 17;
    const marks = try std.testing.allocator.alloc(std.atomic.Value(u8), count);
    defer std.testing.allocator.free(marks);
    @memset(marks, std.atomic.Value(u8).init(0));
    set_thread_count(3);
    defer set_thread_count(0);
    const context = Context{ .marks = marks };
    parallel_for(count, &context, Context.body);
    for (marks) |mark| try std.testing.expectEqual(@as(u8, 1), mark.load(.monotonic));
}

/// Like `parallel_for`, but also passes each sub-range's slot in [0, slot_count_max): sub-range k
/// starts at k * per-thread size, so a reduction can keep one partial per slot and combine them in
/// slot order, which makes its result independent of thread timing.
pub const slot_count_max = thread_count_max;

pub fn parallel_for_slots(count: u64, context: anytype, comptime body: fn (@TypeOf(context), u32, u64, u64) void) void {
    const threads = thread_count();
    if (count < parallel_threshold or threads <= 1) {
        body(context, 0, 0, count);
        return;
    }
    const per_thread = std.mem.alignForward(u64, (count + threads - 1) / threads, chunk_align);
    var workers: [thread_count_max]?std.Thread = @splat(null);
    var begin: u64 = per_thread;
    var index: u32 = 1;
    while (index < threads and begin < count) : (index += 1) {
        const end = @min(begin + per_thread, count);
        workers[index] = std.Thread.spawn(.{ .stack_size = 256 * 1024 }, body, .{ context, index, begin, end }) catch null;
        if (workers[index] == null) body(context, index, begin, end);
        begin = end;
    }
    body(context, 0, 0, @min(per_thread, count));
    for (workers[1..index]) |worker| if (worker) |w| w.join();
}

/// Calls `body(context, worker)` for worker in [0, workers) on that many threads (the caller runs
/// worker 0) and returns when all are done. For kernels that split their own work (matmul tiles),
/// so there is no element-count threshold here: the caller decides when threads pay off.
pub fn run_workers(workers: u32, context: anytype, comptime body: fn (@TypeOf(context), u32) void) void {
    std.debug.assert(workers >= 1 and workers <= thread_count_max);
    var threads: [thread_count_max]?std.Thread = @splat(null);
    var index: u32 = 1;
    while (index < workers) : (index += 1) {
        threads[index] = std.Thread.spawn(.{ .stack_size = 256 * 1024 }, body, .{ context, index }) catch null;
        // A worker that could not start is done here instead.
        if (threads[index] == null) body(context, index);
    }
    body(context, 0);
    for (threads[1..workers]) |thread| if (thread) |t| t.join();
}

test "run_workers runs every worker index once" {
    const Context = struct {
        marks: [thread_count_max]std.atomic.Value(u8) = @splat(.init(0)),
        fn body(self: *@This(), worker: u32) void {
            _ = self.marks[worker].fetchAdd(1, .monotonic);
        }
    };
    var context = Context{};
    run_workers(5, &context, Context.body);
    for (context.marks, 0..) |mark, i| try std.testing.expectEqual(@as(u8, @intFromBool(i < 5)), mark.load(.monotonic));
}
