//! The elementwise and layout families of zig/src/ops/ as one module for the PTX build
//! (zig/src/cuda/ops_map.zig imports it as "map_ops", and kernels.zig reaches numerics.zig through
//! it): a module may only import files under its root's folder, and the ops reach numerics.zig
//! one folder up, so numerics.zig cannot be a module of its own beside this one. Only what a
//! kernel calls is compiled for nvptx64: the CPU scheduling (thread pool) of these files is never
//! referenced there.

pub const numerics = @import("numerics.zig");
pub const storage = @import("ops/storage.zig");
pub const elementwise = @import("ops/elementwise.zig");
pub const layout = @import("ops/layout.zig");
pub const map_device = @import("ops/map_device.zig");
pub const pool_parallel_threshold = @import("cpu/pool.zig").parallel_threshold;
