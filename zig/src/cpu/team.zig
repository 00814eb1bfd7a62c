//! A persistent team of worker threads for kernels that are called often on work too small to pay
//! for spawning threads each time (matmul: a 256^3 product takes about 100 microseconds on two
//! cores, spawning a thread tens of microseconds). Helpers start on first use and then wait for
//! jobs: they spin briefly after a job (the next one usually follows at once) and then sleep on a
//! futex, so an idle team costs nothing. The caller never waits for a helper that has not started:
//! it runs every share no helper has claimed by the time its own is done, so a helper that the OS
//! has not scheduled (a busy machine) delays nothing. One job runs at a time; callers serialize
//! (matmul holds its own lock around a call). Helpers never call back into JavaScript. Elsewhere
//! than Linux the team falls back to pool.run_workers (threads spawned per call).

const std = @import("std");
const builtin = @import("builtin");
const pool = @import("pool.zig");

const linux = std.os.linux;
const use_futex = builtin.os.tag == .linux;

/// Spin iterations before a waiting thread sleeps on the futex (a few microseconds).
const spin_count_max: u32 = 4000;

const Job = struct {
    context: *anyopaque,
    call: *const fn (*anyopaque, u32) void,
    workers: u32,
};

/// The current job, guarded by `generation` as a sequence lock: odd while the caller writes it,
/// even (and new) once it is published.
var job: Job = undefined;
var generation = std.atomic.Value(u32).init(0);
/// Per worker index: the (even) generation whose share is still open, generation + 1 once a helper
/// took it, 1 once the caller took it back (odd values never equal an open generation). A share runs exactly once, and a helper that wakes late
/// (the caller already finished the job and took its share) never touches the job's context.
var slots: [pool.thread_count_max]std.atomic.Value(u32) = @splat(.init(0));
/// Shares helpers have finished in the current job.
var finished = std.atomic.Value(u32).init(0);
/// Helper threads started so far (helper i may take worker index i + 1).
var helper_count: u32 = 0;

fn futex_wait(word: *std.atomic.Value(u32), expected: u32) void {
    _ = linux.futex_4arg(&word.raw, .{ .cmd = .WAIT, .private = true }, expected, null);
}

fn futex_wake(word: *std.atomic.Value(u32), count: u32) void {
    _ = linux.futex_3arg(&word.raw, .{ .cmd = .WAKE, .private = true }, count);
}

/// Waits until `word` no longer holds `value`: spin first, then sleep.
fn wait_while(word: *std.atomic.Value(u32), value: u32) void {
    var spins: u32 = 0;
    while (word.load(.acquire) == value) {
        if (spins < spin_count_max) {
            std.atomic.spinLoopHint();
            spins += 1;
        } else {
            futex_wait(word, value);
        }
    }
}

fn helper_main(index: u32) void {
    const worker = index + 1;
    var seen: u32 = 0;
    while (true) {
        wait_while(&generation, seen);
        const before = generation.load(.acquire);
        if (before & 1 != 0) continue; // The caller is writing the job: look again.
        const current = job;
        if (generation.load(.acquire) != before) continue; // Torn read: look again.
        seen = before;
        if (worker >= current.workers) continue;
        if (slots[worker].cmpxchgStrong(before, before +% 1, .acq_rel, .monotonic) != null) continue;
        current.call(current.context, worker);
        _ = finished.fetchAdd(1, .acq_rel);
        futex_wake(&finished, 1);
    }
}

/// Calls `body(context, worker)` for worker in [0, workers) on the team (the caller runs worker 0,
/// and any share no helper has taken by the time it is done) and returns when all are done.
/// Not reentrant: one job at a time.
pub fn run(workers: u32, context: anytype, comptime body: fn (@TypeOf(context), u32) void) void {
    std.debug.assert(workers >= 1 and workers <= pool.thread_count_max);
    if (workers == 1) {
        body(context, 0);
        return;
    }
    if (!use_futex) {
        pool.run_workers(workers, context, body);
        return;
    }
    const Context = @TypeOf(context);
    const Erased = struct {
        fn call(pointer: *anyopaque, worker: u32) void {
            body(@as(Context, @ptrCast(@alignCast(pointer))), worker);
        }
    };
    // Start helpers up to workers - 1; a share no helper takes is run by the caller.
    while (helper_count < workers - 1) {
        const thread = std.Thread.spawn(.{ .stack_size = 256 * 1024 }, helper_main, .{helper_count}) catch break;
        thread.detach();
        helper_count += 1;
    }
    const odd = generation.load(.monotonic) +% 1;
    generation.store(odd, .release);
    job = .{ .context = @ptrCast(@constCast(context)), .call = Erased.call, .workers = workers };
    const even = odd +% 1;
    finished.store(0, .monotonic);
    for (1..workers) |w| slots[w].store(even, .monotonic);
    generation.store(even, .release);
    futex_wake(&generation, helper_count);
    body(context, 0);
    var taken: u32 = 0;
    for (1..workers) |w| {
        if (slots[w].cmpxchgStrong(even, 1, .acq_rel, .monotonic) == null) {
            body(context, @intCast(w));
        } else {
            taken += 1;
        }
    }
    var done = finished.load(.acquire);
    while (done != taken) : (done = finished.load(.acquire)) wait_while(&finished, done);
}

test "run gives every worker index exactly once, job after job" {
    const Context = struct {
        marks: [pool.thread_count_max]std.atomic.Value(u32) = @splat(.init(0)),
        fn body(self: *@This(), worker: u32) void {
            _ = self.marks[worker].fetchAdd(1, .monotonic);
        }
    };
    var context = Context{};
    for (0..200) |round| {
        const workers: u32 = @intCast(1 + round % 4);
        for (&context.marks) |*mark| mark.store(0, .monotonic);
        run(workers, &context, Context.body);
        for (context.marks, 0..) |mark, i| {
            try std.testing.expectEqual(@as(u32, @intFromBool(i < workers)), mark.load(.monotonic));
        }
    }
}
