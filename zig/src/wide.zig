//! Root of the wide objects that build.zig compiles for x86-64-v4 and for x86-64-v4 + AVX512-BF16
//! and links into libmixprec beside the baseline code: the matmul kernels (cpu/matmul.zig, whose tile
//! sizes and `vdpbf16ps` path follow the target's features) under symbol names of their own,
//! hidden from the library's users. zig/src/cpu/dispatch.zig decides at run time whether the CPU
//! may run them; nothing here runs unless it said so.
//!
//! Only the kernels live here: the thread pool, the dispatch decision and every other kernel
//! (casts, unscale, optimizer steps: memory-bound, no faster with zmm registers) stay baseline.

const std = @import("std");
const matmul = @import("cpu/matmul.zig");

comptime {
    // A wide object built for the baseline would export a path dispatch can never pick safely.
    std.debug.assert(!std.mem.eql(u8, matmul.isa_name, "baseline"));
    const options = struct {
        fn of(comptime function: []const u8) std.lang.ExportOptions {
            return .{ .name = matmul.symbol_name(matmul.isa_name, function), .visibility = .hidden };
        }
    };
    @export(&matmul.plan_c, options.of("plan"));
    @export(&matmul.run_worker_c, options.of("run_worker"));
    @export(&matmul.peak_chains_c, options.of("peak_chains"));
}
