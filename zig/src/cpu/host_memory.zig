//! Tensor storage on the host: 64-byte aligned blocks whose ownership can pass to JavaScript.
//!
//! Every block has a cell {address, size} beside it. The TypeScript Tensor wraps the block in an
//! ArrayBuffer whose deallocator is `release` with the cell as context, so JavaScriptCore frees a
//! block when the last view of it is collected (a view kept alone keeps its memory alive, and the
//! garbage collector counts the memory). `dispose()` frees the block at once through `free_now`
//! when no view of it has left the Tensor; the cell then stays until the collector releases the
//! buffer. The address is swapped out atomically, so exactly one of the two paths frees a block.

const std = @import("std");

pub const Cell = extern struct {
    address: u64,
    size_bytes: u64,
};

comptime {
    std.debug.assert(@sizeOf(Cell) == 16);
}

var live_count = std.atomic.Value(u64).init(0);
var live_bytes = std.atomic.Value(u64).init(0);

const allocator = std.heap.c_allocator;

/// Blocks of at least this many bytes are kept for reuse when freed. Smaller ones come from malloc's
/// heap, which is already cheap; larger ones would come from fresh mmap'd pages each time, and
/// touching those costs a page fault per 4 KiB. A training step allocates the same shapes every
/// step, so reusing their blocks removes the faults.
pub const cache_min_bytes: u64 = 64 * 1024;

const SpinLock = struct {
    state: std.atomic.Mutex = .unlocked,
    fn lock(self: *SpinLock) void {
        while (!self.state.tryLock()) std.atomic.spinLoopHint();
    }
    fn unlock(self: *SpinLock) void {
        self.state.unlock();
    }
};
/// Cached blocks are rounded up to whole pages, so near sizes share a class.
const page_bytes: u64 = 4096;

/// Free blocks by rounded size, most recently freed last; at most `cache_limit()` bytes in all.
/// Blocks are freed by the JavaScript thread and by the collector's deallocator, so a lock guards
/// it (a spin lock: the critical sections are a few instructions and contention is rare).
var cache_mutex: SpinLock = .{};
var cache: std.AutoHashMapUnmanaged(u64, std.ArrayList(u64)) = .empty;
var cached_bytes: u64 = 0;
var cache_limit_bytes: ?u64 = null;

fn rounded(size_bytes: u64) u64 {
    if (size_bytes < cache_min_bytes) return @max(size_bytes, 1);
    return std.mem.alignForward(u64, size_bytes, page_bytes);
}

/// MIXPREC_HOST_CACHE_MB (default 1024; 0 turns the cache off), read once. Caller holds the mutex.
fn cache_limit() u64 {
    if (cache_limit_bytes) |limit| return limit;
    var limit: u64 = 1024 << 20;
    if (std.c.getenv("MIXPREC_HOST_CACHE_MB")) |text| {
        if (std.fmt.parseInt(u64, std.mem.span(text), 10)) |mb| {
            limit = mb << 20;
        } else |_| {}
    }
    cache_limit_bytes = limit;
    return limit;
}

fn take_cached(size: u64) ?u64 {
    if (size < cache_min_bytes) return null;
    cache_mutex.lock();
    defer cache_mutex.unlock();
    const list = cache.getPtr(size) orelse return null;
    const address = list.pop() orelse return null;
    cached_bytes -= size;
    return address;
}

/// Keeps a freed block for reuse; false when it must go back to malloc (small, or the cache full).
fn put_cached(address: u64, size: u64) bool {
    if (size < cache_min_bytes) return false;
    cache_mutex.lock();
    defer cache_mutex.unlock();
    if (cached_bytes + size > cache_limit()) return false;
    const entry = cache.getOrPut(allocator, size) catch return false;
    if (!entry.found_existing) entry.value_ptr.* = .empty;
    entry.value_ptr.append(allocator, address) catch return false;
    cached_bytes += size;
    return true;
}

/// Frees every cached block (the host twin of torch.cuda.empty_cache); returns the bytes released.
pub fn empty_cache() u64 {
    cache_mutex.lock();
    defer cache_mutex.unlock();
    const released = cached_bytes;
    var it = cache.iterator();
    while (it.next()) |entry| {
        for (entry.value_ptr.items) |address| {
            const memory: [*]align(64) u8 = @ptrFromInt(address);
            allocator.free(memory[0..entry.key_ptr.*]);
        }
        entry.value_ptr.deinit(allocator);
    }
    cache.clearAndFree(allocator);
    cached_bytes = 0;
    return released;
}

/// Bytes the cache holds for reuse.
pub fn cached() u64 {
    cache_mutex.lock();
    defer cache_mutex.unlock();
    return cached_bytes;
}

/// A new block of `size_bytes` (at least one byte is reserved) and its cell, or null when out of memory.
pub fn alloc(size_bytes: u64) ?*Cell {
    const cell = allocator.create(Cell) catch return null;
    const size = rounded(size_bytes);
    const address = take_cached(size) orelse blk: {
        const memory = allocator.alignedAlloc(u8, .@"64", size) catch {
            allocator.destroy(cell);
            return null;
        };
        break :blk @intFromPtr(memory.ptr);
    };
    cell.* = .{ .address = address, .size_bytes = size_bytes };
    _ = live_count.fetchAdd(1, .monotonic);
    _ = live_bytes.fetchAdd(size_bytes, .monotonic);
    return cell;
}

fn free_block(cell: *Cell) void {
    const address = @atomicRmw(u64, &cell.address, .Xchg, 0, .acq_rel);
    if (address == 0) return;
    const size = rounded(cell.size_bytes);
    if (!put_cached(address, size)) {
        const memory: [*]align(64) u8 = @ptrFromInt(address);
        allocator.free(memory[0..size]);
    }
    _ = live_count.fetchSub(1, .monotonic);
    _ = live_bytes.fetchSub(cell.size_bytes, .monotonic);
}

/// Frees the block now (idempotent); the cell stays for `release`.
pub fn free_now(cell: *Cell) void {
    free_block(cell);
}

/// JSTypedArrayBytesDeallocator: called when the ArrayBuffer that owns the cell is collected.
pub fn release(bytes: ?*anyopaque, context: ?*anyopaque) callconv(.c) void {
    _ = bytes;
    const cell: *Cell = @ptrCast(@alignCast(context orelse return));
    free_block(cell);
    allocator.destroy(cell);
}

/// Blocks and bytes not yet freed.
pub fn stats() [2]u64 {
    return .{ live_count.load(.monotonic), live_bytes.load(.monotonic) };
}

test "a block is freed exactly once whichever path comes first" {
    const before = stats();
    const cell = alloc(100) orelse return error.OutOfMemory;
    try std.testing.expectEqual(before[0] + 1, stats()[0]);
    free_now(cell);
    free_now(cell);
    try std.testing.expectEqual(before, stats());
    release(null, cell);
    const other = alloc(0) orelse return error.OutOfMemory;
    release(null, other);
    try std.testing.expectEqual(before, stats());
}

test "a freed large block is reused for the next block of its page-rounded size, and empty_cache frees it" {
    _ = empty_cache();
    const first = alloc(cache_min_bytes + 10) orelse return error.OutOfMemory;
    const address = first.address;
    free_now(first);
    release(null, first);
    try std.testing.expectEqual(rounded(cache_min_bytes + 10), cached());
    const second = alloc(cache_min_bytes + 100) orelse return error.OutOfMemory;
    try std.testing.expectEqual(address, second.address);
    try std.testing.expectEqual(@as(u64, 0), cached());
    free_now(second);
    release(null, second);
    const small = alloc(100) orelse return error.OutOfMemory;
    free_now(small);
    release(null, small);
    try std.testing.expect(empty_cache() >= rounded(cache_min_bytes + 10));
    try std.testing.expectEqual(@as(u64, 0), cached());
}
