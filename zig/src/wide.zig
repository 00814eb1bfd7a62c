//! Root of the wide objects that build.zig compiles for x86-64-v4, x86-64-v4 + AVX512-BF16 and
//! x86-64-v4 + AVX512-BF16 + AMX and links into libmixprec beside the baseline code: the matmul
//! kernels (cpu/matmul.zig, whose tile sizes, `vdpbf16ps` and AMX paths follow the target's
//! features) under symbol names of their own,
//! hidden from the library's users. zig/src/cpu/dispatch.zig decides at run time whether the CPU
//! may run them; nothing here runs unless it said so.
//!
//! Besides the matmul, the element loops of casts, unscale and the fused AdamW / SGD steps live
//! here: they are memory-bound on large tensors, but on cache-resident ones (most tensors of a
//! small model) zmm registers make them 1.2 to 1.7 times as fast, bit for bit the same. So do the
//! activation and SwiGLU loops (ops/elementwise.zig's unary_range_c), compute-bound polynomials
//! that run about 1.5 times as fast (the same values; a NaN may come out with the other sign),
//! and the broadcast map engine's workers (map_body_c: binary ops, sums, means; bfloat16's
//! conversions make it compute-bound on cache-resident tensors), bit for bit the same, as are the
//! attention forward and one-pass backward items (a query tile's rows in one zmm register, eight
//! keys' products in flight).
//! Only loops live here: the thread pool and the dispatch decision stay in the baseline code, so
//! there is one of each.

const std = @import("std");
const matmul = @import("cpu/matmul.zig");
const cast = @import("cpu/cast.zig");
const unscale = @import("cpu/unscale.zig");
const adamw = @import("cpu/adamw.zig");
const sgd = @import("cpu/sgd.zig");
const dispatch = @import("cpu/dispatch.zig");
const elementwise = @import("ops/elementwise.zig");
const norm = @import("ops/norm.zig");
const attention = @import("ops/attention.zig");

comptime {
    // A wide object built for the baseline would export a path dispatch can never pick safely.
    std.debug.assert(!std.mem.eql(u8, matmul.isa_name, "baseline"));
    const options = struct {
        fn of(comptime function: []const u8) std.lang.ExportOptions {
            return .{ .name = dispatch.symbol(matmul.isa_name, function), .visibility = .hidden };
        }
    };
    @export(&matmul.plan_c, options.of("matmul_plan"));
    @export(&matmul.run_worker_c, options.of("matmul_run_worker"));
    @export(&matmul.peak_chains_c, options.of("matmul_peak_chains"));
    @export(&cast.cast_range_c, options.of("cast_range"));
    @export(&unscale.unscale_range_c, options.of("unscale_range"));
    @export(&adamw.Steps.range_c, options.of(adamw.Steps.symbol));
    @export(&sgd.Steps.range_c, options.of(sgd.Steps.symbol));
    @export(&elementwise.unary_range_c, options.of("unary_range"));
    @export(&elementwise.map_body_c, options.of("map_body"));
    @export(&norm.norm_range_c, options.of("norm_range"));
    @export(&attention.forward_item_c, options.of("attention_forward_item"));
    @export(&attention.backward_fused_item_c, options.of("attention_backward_item"));
}
