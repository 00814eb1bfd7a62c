//! A persistent pool of worker threads that every kernel splits its work across.
//!
//! Workers start on first use, spin briefly after a job (the next one usually follows at once) and
//! then sleep on a futex, so a parallel call costs a wake-up (a few microseconds) instead of
//! spawning threads (tens of microseconds each): small kernels, such as the many small matmuls of a
//! training step, can use every core, and an idle pool costs nothing. Workers run only kernel code
//! and never call into JavaScript. One call uses the pool at a time; a call that finds it busy
//! (another JavaScript thread, or a kernel calling a kernel) runs its work on its own thread, which
//! gives the same results because every kernel's output is independent of how its work is split.
//! Elsewhere than Linux every call runs serially.

const std = @import("std");
const builtin = @import("builtin");
const linux = std.os.linux;

pub const thread_count_max = 16;
/// Below this many elements one thread is faster than handing work to the workers. In a training
/// step the workers are usually still spinning from the last kernel (no futex wake-up), so the
/// cost is small: 2^16 -> 2^13 made the demo model's bfloat16 step 5-8% faster on 2 threads.
pub const parallel_threshold: u64 = 1 << 13;
/// Chunk boundaries are multiples of this, so vector loops see whole vectors except at the end.
const chunk_align: u64 = 64;
/// Busy-wait iterations before a thread sleeps on the futex: back-to-back kernels find workers awake.
/// About 0.4 ms on a Sapphire Rapids (13 ns a `pause`): the JavaScript between two kernels of a
/// training step often takes longer than 4,000 iterations (52 us), and a futex wake-up in a virtual
/// machine costs tens of microseconds (measured at 2 threads: 4,000 -> 30,000 made LLaMA-shaped and
/// demo steps 2-7% faster; 500 made them 10-18% slower).
const spin_count: u32 = 30000;

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

const Job = struct {
    run: *const fn (*anyopaque, u32) void,
    context: *anyopaque,
    workers: u32,
};

/// The current job, guarded by `generation` as a sequence lock: odd while the caller writes it,
/// even (and new) once it is published.
var job: Job = undefined;
var generation = std.atomic.Value(u32).init(0);
/// Per worker index (its share of the job): the (even) generation whose share is still open, generation + 1 once a worker
/// took it, 1 once the caller took it back (odd values never equal an open generation). So a share
/// runs exactly once, and a worker that wakes late never touches a finished job's context.
var shares: [thread_count_max]std.atomic.Value(u32) = @splat(.init(0));
/// Shares workers have finished in the current job.
var finished = std.atomic.Value(u32).init(0);
/// Held by the one call that uses the workers; other calls run serially on their own thread.
var busy = std.atomic.Value(bool).init(false);
/// Workers started so far (worker thread i takes worker index i + 1); changed only under `busy`.
var started: u32 = 0;

fn futex_wait(word: *const std.atomic.Value(u32), expected: u32) void {
    _ = linux.futex_4arg(&word.raw, .{ .cmd = .WAIT, .private = true }, expected, null);
}

fn futex_wake(word: *const std.atomic.Value(u32), count: u32) void {
    _ = linux.futex_3arg(&word.raw, .{ .cmd = .WAKE, .private = true }, count);
}

/// Waits until `word` no longer holds `value`: spins first, then sleeps.
fn wait_while(word: *const std.atomic.Value(u32), value: u32) void {
    var spins: u32 = 0;
    while (word.load(.acquire) == value) {
        if (spins < spin_count) {
            spins += 1;
            std.atomic.spinLoopHint();
        } else {
            futex_wait(word, value);
        }
    }
}

fn worker_main(thread_index: u32) void {
    const worker = thread_index + 1;
    var seen: u32 = 0;
    while (true) {
        wait_while(&generation, seen);
        const before = generation.load(.acquire);
        if (before & 1 != 0) continue; // The caller is writing the job: look again.
        const current = job;
        if (generation.load(.acquire) != before) continue; // Torn read: look again.
        seen = before;
        if (worker >= current.workers) continue;
        if (shares[worker].cmpxchgStrong(before, before +% 1, .acq_rel, .monotonic) != null) continue;
        current.run(current.context, worker);
        _ = finished.fetchAdd(1, .acq_rel);
        futex_wake(&finished, 1);
    }
}

/// Calls `body(context, worker)` for worker in [0, workers) and returns when all are done. The
/// calling thread runs worker 0 and then every share no worker has taken yet, so it never waits for
/// a worker the OS has not scheduled (a busy machine delays nothing). For kernels that split their
/// own work (matmul tiles): there is no size threshold here, the caller decides when threads pay.
pub fn run_workers(workers: u32, context: anytype, comptime body: fn (@TypeOf(context), u32) void) void {
    std.debug.assert(workers >= 1 and workers <= thread_count_max);
    const Context = @TypeOf(context);
    comptime std.debug.assert(@typeInfo(Context) == .pointer);
    const erased = struct {
        fn run(pointer: *anyopaque, worker: u32) void {
            body(@as(Context, @ptrCast(@alignCast(pointer))), worker);
        }
    }.run;
    if (workers == 1 or builtin.os.tag != .linux or busy.cmpxchgStrong(false, true, .acquire, .monotonic) != null) {
        for (0..workers) |worker| body(context, @intCast(worker));
        return;
    }
    defer busy.store(false, .release);
    // Start workers up to index workers - 1; a share no worker takes is run here.
    while (started < workers - 1) {
        const thread = std.Thread.spawn(.{ .stack_size = 1 << 20 }, worker_main, .{started}) catch break;
        thread.detach();
        started += 1;
    }
    const odd = generation.load(.monotonic) +% 1;
    generation.store(odd, .release);
    job = .{ .run = erased, .context = @ptrCast(@constCast(context)), .workers = workers };
    const even = odd +% 1;
    finished.store(0, .monotonic);
    for (1..workers) |worker| shares[worker].store(even, .monotonic);
    generation.store(even, .release);
    futex_wake(&generation, started);
    body(context, 0);
    var taken: u32 = 0;
    for (1..workers) |worker| {
        if (shares[worker].cmpxchgStrong(even, 1, .acq_rel, .monotonic) == null) {
            body(context, @intCast(worker));
        } else {
            taken += 1;
        }
    }
    var done = finished.load(.acquire);
    while (done != taken) : (done = finished.load(.acquire)) wait_while(&finished, done);
}

/// Calls `body(context, begin, end)` over disjoint sub-ranges covering [0, count).
pub fn parallel_for(count: u64, context: anytype, comptime body: fn (@TypeOf(context), u64, u64) void) void {
    const Slots = struct {
        inner: @TypeOf(context),
        fn call(self: *const @This(), slot: u32, begin: u64, end: u64) void {
            _ = slot;
            body(self.inner, begin, end);
        }
    };
    const slots = Slots{ .inner = context };
    parallel_for_slots(count, &slots, Slots.call);
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
    const slots: u32 = @intCast((count + per_thread - 1) / per_thread);
    const Split = struct {
        inner: @TypeOf(context),
        count: u64,
        per_thread: u64,
        fn call(self: *const @This(), slot: u32) void {
            const begin = slot * self.per_thread;
            body(self.inner, slot, begin, @min(begin + self.per_thread, self.count));
        }
    };
    const split = Split{ .inner = context, .count = count, .per_thread = per_thread };
    run_workers(slots, &split, Split.call);
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

test "run_workers runs every worker index once, call after call" {
    const Context = struct {
        marks: [thread_count_max]std.atomic.Value(u32) = @splat(.init(0)),
        fn body(self: *@This(), worker: u32) void {
            _ = self.marks[worker].fetchAdd(1, .monotonic);
        }
    };
    var context = Context{};
    // Alternate worker counts so workers that sat out a job must pick up the next one.
    const rounds = 2000;
    for (0..rounds) |round| run_workers(if (round % 2 == 0) 5 else 3, &context, Context.body);
    for (context.marks, 0..) |mark, i| {
        const expected: u32 = if (i < 3) rounds else if (i < 5) rounds / 2 else 0;
        try std.testing.expectEqual(expected, mark.load(.monotonic));
    }
}

test "a kernel that calls a kernel runs the inner one on its own thread" {
    const Inner = struct {
        hits: std.atomic.Value(u32) = .init(0),
        fn body(self: *@This(), worker: u32) void {
            _ = worker;
            _ = self.hits.fetchAdd(1, .monotonic);
        }
    };
    const Outer = struct {
        inner: *Inner,
        fn body(self: *const @This(), worker: u32) void {
            _ = worker;
            run_workers(4, self.inner, Inner.body);
        }
    };
    var inner = Inner{};
    const outer = Outer{ .inner = &inner };
    run_workers(2, &outer, Outer.body);
    try std.testing.expectEqual(@as(u32, 8), inner.hits.load(.monotonic));
}

test "run_workers gives every worker index exactly once, job after job, for every worker count" {
    const Context = struct {
        marks: [thread_count_max]std.atomic.Value(u32) = @splat(.init(0)),
        fn body(self: *@This(), worker: u32) void {
            _ = self.marks[worker].fetchAdd(1, .monotonic);
        }
    };
    var context = Context{};
    for (0..200) |round| {
        const workers: u32 = @intCast(1 + round % 4);
        for (&context.marks) |*mark| mark.store(0, .monotonic);
        run_workers(workers, &context, Context.body);
        for (context.marks, 0..) |mark, i| {
            try std.testing.expectEqual(@as(u32, @intFromBool(i < workers)), mark.load(.monotonic));
        }
    }
}
