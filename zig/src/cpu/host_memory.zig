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

/// A new block of `size_bytes` (at least one byte is reserved) and its cell, or null when out of memory.
pub fn alloc(size_bytes: u64) ?*Cell {
    const cell = allocator.create(Cell) catch return null;
    const memory = allocator.alignedAlloc(u8, .@"64", @max(size_bytes, 1)) catch {
        allocator.destroy(cell);
        return null;
    };
    cell.* = .{ .address = @intFromPtr(memory.ptr), .size_bytes = size_bytes };
    _ = live_count.fetchAdd(1, .monotonic);
    _ = live_bytes.fetchAdd(size_bytes, .monotonic);
    return cell;
}

fn free_block(cell: *Cell) void {
    const address = @atomicRmw(u64, &cell.address, .Xchg, 0, .acq_rel);
    if (address == 0) return;
    const memory: [*]align(64) u8 = @ptrFromInt(address);
    allocator.free(memory[0..@max(cell.size_bytes, 1)]);
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
