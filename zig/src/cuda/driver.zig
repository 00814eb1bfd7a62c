//! The CUDA backend's host side: libcuda.so.1 opened at run time with dlopen (so the library loads
//! and the CPU path runs on machines without an NVIDIA driver), one primary context, one
//! non-blocking stream and the embedded PTX module per device, a caching device allocator, copies
//! through pinned staging buffers, and kernel launches.
//!
//! Nothing here synchronises with the device except what must: reading device memory back
//! (`copy_to_host`), emptying the allocator cache, waiting on a staging slot that the device has
//! not finished reading, and explicit `synchronize`/timer calls. Each such wait adds one to
//! `sync_count`, so a test can prove that a training step performs none.
//!
//! Calls come from one thread at a time (the JavaScript thread); the state is not locked.

const std = @import("std");
const builtin = @import("builtin");
const elementwise = @import("../ops/elementwise.zig");
const layout = @import("../ops/layout.zig");

// The CUDA driver API is a stable C ABI; these are its types as cuda.h declares them on 64-bit
// Linux. Handles are opaque pointers, device pointers 64-bit integers.
pub const CUresult = c_int;
pub const CUdevice = c_int;
pub const CUdeviceptr = u64;
pub const CUcontext = ?*anyopaque;
pub const CUstream = ?*anyopaque;
pub const CUevent = ?*anyopaque;
pub const CUmodule = ?*anyopaque;
pub const CUfunction = ?*anyopaque;

const CUDA_SUCCESS: CUresult = 0;
const CUDA_ERROR_OUT_OF_MEMORY: CUresult = 2;
const CUDA_ERROR_NOT_READY: CUresult = 600;

const CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT: c_int = 16;
const CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: c_int = 75;
const CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: c_int = 76;

const CU_STREAM_NON_BLOCKING: c_uint = 1;
const CU_EVENT_DISABLE_TIMING: c_uint = 2;

const CU_JIT_INFO_LOG_BUFFER: c_int = 3;
const CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES: c_int = 4;
const CU_JIT_ERROR_LOG_BUFFER: c_int = 5;
const CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES: c_int = 6;

/// The driver entry points we use, resolved by name (field name = exported symbol; the `_v2`
/// names are the ones cuda.h maps the plain names to).
pub const Api = struct {
    cuInit: *const fn (flags: c_uint) callconv(.c) CUresult,
    cuGetErrorName: *const fn (result: CUresult, name: *?[*:0]const u8) callconv(.c) CUresult,
    cuGetErrorString: *const fn (result: CUresult, text: *?[*:0]const u8) callconv(.c) CUresult,
    cuDeviceGetCount: *const fn (count: *c_int) callconv(.c) CUresult,
    cuDeviceGet: *const fn (device: *CUdevice, ordinal: c_int) callconv(.c) CUresult,
    cuDeviceGetName: *const fn (name: [*]u8, length: c_int, device: CUdevice) callconv(.c) CUresult,
    cuDeviceGetAttribute: *const fn (value: *c_int, attribute: c_int, device: CUdevice) callconv(.c) CUresult,
    cuDeviceTotalMem_v2: *const fn (bytes: *usize, device: CUdevice) callconv(.c) CUresult,
    cuDevicePrimaryCtxRetain: *const fn (context: *CUcontext, device: CUdevice) callconv(.c) CUresult,
    cuCtxSetCurrent: *const fn (context: CUcontext) callconv(.c) CUresult,
    cuStreamCreate: *const fn (stream: *CUstream, flags: c_uint) callconv(.c) CUresult,
    cuStreamSynchronize: *const fn (stream: CUstream) callconv(.c) CUresult,
    cuEventCreate: *const fn (event: *CUevent, flags: c_uint) callconv(.c) CUresult,
    cuEventRecord: *const fn (event: CUevent, stream: CUstream) callconv(.c) CUresult,
    cuEventQuery: *const fn (event: CUevent) callconv(.c) CUresult,
    cuEventSynchronize: *const fn (event: CUevent) callconv(.c) CUresult,
    cuEventElapsedTime: *const fn (milliseconds: *f32, start: CUevent, end: CUevent) callconv(.c) CUresult,
    cuModuleLoadDataEx: *const fn (module: *CUmodule, image: *const anyopaque, option_count: c_uint, options: [*]c_int, values: [*]?*anyopaque) callconv(.c) CUresult,
    cuModuleGetFunction: *const fn (function: *CUfunction, module: CUmodule, name: [*:0]const u8) callconv(.c) CUresult,
    cuLaunchKernel: *const fn (function: CUfunction, grid_x: c_uint, grid_y: c_uint, grid_z: c_uint, block_x: c_uint, block_y: c_uint, block_z: c_uint, shared_bytes: c_uint, stream: CUstream, params: ?[*]?*anyopaque, extra: ?[*]?*anyopaque) callconv(.c) CUresult,
    cuMemAlloc_v2: *const fn (address: *CUdeviceptr, size_bytes: usize) callconv(.c) CUresult,
    cuMemFree_v2: *const fn (address: CUdeviceptr) callconv(.c) CUresult,
    cuMemHostAlloc: *const fn (pointer: *?*anyopaque, size_bytes: usize, flags: c_uint) callconv(.c) CUresult,
    cuMemFreeHost: *const fn (pointer: ?*anyopaque) callconv(.c) CUresult,
    cuMemcpyHtoDAsync_v2: *const fn (target: CUdeviceptr, source: *const anyopaque, size_bytes: usize, stream: CUstream) callconv(.c) CUresult,
    cuMemcpyDtoHAsync_v2: *const fn (target: *anyopaque, source: CUdeviceptr, size_bytes: usize, stream: CUstream) callconv(.c) CUresult,
    cuMemcpyDtoDAsync_v2: *const fn (target: CUdeviceptr, source: CUdeviceptr, size_bytes: usize, stream: CUstream) callconv(.c) CUresult,
    cuMemsetD32Async: *const fn (target: CUdeviceptr, value: c_uint, count: usize, stream: CUstream) callconv(.c) CUresult,
};

pub const Error = error{ CudaUnavailable, CudaError, OutOfMemory, InvalidArgument };

/// The kernels of mixprec.ptx, with the PTX parameter types the launch must pass. ffi.zig's tests
/// parse the embedded PTX and check every entry and its parameter list against this table.
pub const Kernel = enum(u32) {
    cast,
    unscale_check,
    update_scale,
    sum_squares,
    global_norm_finish,
    scale,
    clip_by_norm,
    fused_adamw,
    sum_squares_f64,
    fused_sgd,
    // The row-op families (zig/src/cuda/ops_rows.zig).
    norm_forward,
    norm_backward_rows,
    norm_backward_partials,
    norm_combine,
    softmax_forward,
    cross_entropy_mean,
    softmax_backward,
    cross_entropy_backward,
    embedding_forward,
    embedding_backward,
    rope,
    attention_forward,
    attention_backward_keys,
    attention_backward_queries,
    matmul_epilogue,
    amp_scale_tensor,
    amp_sum_squares,
    amp_adam_prepare,
    // The elementwise and layout families (zig/src/cuda/ops_map.zig).
    activation_forward,
    activation_backward,
    swiglu_forward,
    swiglu_backward,
    map,
    strided_copy,

    pub fn entry(kernel: Kernel) [:0]const u8 {
        return switch (kernel) {
            .cast => "mp_cast_kernel",
            .unscale_check => "mp_unscale_check_kernel",
            .update_scale => "mp_update_scale_kernel",
            .sum_squares => "mp_sum_squares_kernel",
            .global_norm_finish => "mp_global_norm_finish_kernel",
            .scale => "mp_scale_kernel",
            .clip_by_norm => "mp_clip_by_norm_kernel",
            .fused_adamw => "mp_fused_adamw_kernel",
            .sum_squares_f64 => "mp_sum_squares_f64_kernel",
            .fused_sgd => "mp_fused_sgd_kernel",
            .norm_forward => "mp_norm_forward_kernel",
            .norm_backward_rows => "mp_norm_backward_rows_kernel",
            .norm_backward_partials => "mp_norm_backward_partials_kernel",
            .norm_combine => "mp_norm_combine_kernel",
            .softmax_forward => "mp_softmax_forward_kernel",
            .cross_entropy_mean => "mp_cross_entropy_mean_kernel",
            .softmax_backward => "mp_softmax_backward_kernel",
            .cross_entropy_backward => "mp_cross_entropy_backward_kernel",
            .embedding_forward => "mp_embedding_forward_kernel",
            .embedding_backward => "mp_embedding_backward_kernel",
            .rope => "mp_rope_kernel",
            .attention_forward => "mp_attention_forward_kernel",
            .attention_backward_keys => "mp_attention_backward_keys_kernel",
            .attention_backward_queries => "mp_attention_backward_queries_kernel",
            .matmul_epilogue => "mp_matmul_epilogue_kernel",
            .amp_scale_tensor => "mp_amp_scale_tensor_kernel",
            .amp_sum_squares => "mp_amp_sum_squares_kernel",
            .amp_adam_prepare => "mp_amp_adam_prepare_kernel",
            .activation_forward => "mp_activation_forward_kernel",
            .activation_backward => "mp_activation_backward_kernel",
            .swiglu_forward => "mp_swiglu_forward_kernel",
            .swiglu_backward => "mp_swiglu_backward_kernel",
            .map => "mp_map_kernel",
            .strided_copy => "mp_strided_copy_kernel",
        };
    }

    /// The PTX parameter types, in order.
    pub fn params(kernel: Kernel) []const type {
        return switch (kernel) {
            .cast => &.{ u64, u64, u64, u32, u32, u32, u32 },
            .unscale_check => &.{ u64, u64, u64, f32, u64, u64 },
            .update_scale => &.{ u64, u64, f64, f64, i32 },
            .sum_squares => &.{ u64, u64, u64, u64 },
            .global_norm_finish => &.{ u64, u32, u64 },
            .scale => &.{ u64, u64, u64, f32, u64 },
            .clip_by_norm => &.{ u64, u64, u64, f32, u64 },
            .fused_adamw => &.{ u64, u64, u64, u64, u64 },
            .sum_squares_f64 => &.{ u64, u64, u64, f32, u64, u64 },
            .fused_sgd => &.{ u64, u64, u64, u64, u64 },
            .norm_forward => &.{ u32, u32, u64, u64, u64, u64, u64, u64, u64, u64, f32 },
            .norm_backward_rows => &.{ u32, u32, u64, u64, u64, u64, u64, u64, u64, u64 },
            .norm_backward_partials => &.{ u32, u32, u64, u64, u64, u64, u64, u64, u64 },
            .norm_combine => &.{ u32, u64, u64, u64, u64, u64 },
            .softmax_forward => &.{ u32, u32, u64, u64, u64, u64, u64, i32, u64 },
            .cross_entropy_mean => &.{ u64, u64, i32, u64, u64 },
            .softmax_backward => &.{ u32, u32, u64, u64, u64, u64, u64 },
            .cross_entropy_backward => &.{ u32, u64, u64, u64, u64, u64, u64, i32, u64, u64 },
            .embedding_forward => &.{ u32, u64, u64, u64, u64, u64 },
            .embedding_backward => &.{ u32, u64, u64, u64, u64, u64 },
            .rope => &.{ u32, u32, u64, u64, u64, u64, u64 },
            .attention_forward => &.{ u32, u64, f32, u64, u64, u64, u64, u32, u64, u64 },
            .attention_backward_keys => &.{ u32, u64, f32, u64, u64, u64, u64, u32, u64, u64, u64, u64, u64 },
            .attention_backward_queries => &.{ u32, u64, f32, u64, u64, u64, u64, u32, u64, u64, u64, u64 },
            .matmul_epilogue => &.{ u64, u64, u64, u64, u64, u32 },
            .amp_scale_tensor => &.{ u64, u64, u64, u32, u64 },
            .amp_sum_squares => &.{ u64, u64, u64, u64, u64, u64 },
            .amp_adam_prepare => &.{ u64, u64, u64, u64, u64, u64, u64, u32, f32, u64, u64, u32, u32 },
            .activation_forward => &.{ u64, u64, u64, u32, u32 },
            .activation_backward => &.{ u64, u64, u64, u64, u32, u32 },
            .swiglu_forward => &.{ u64, u64, u64, u64, u32 },
            .swiglu_backward => &.{ u64, u64, u64, u64, u64, u64, u32 },
            .map => &.{ u64, u64, u64, u64, elementwise.Layout, f32, f32, u32, u32, u32, u32 },
            .strided_copy => &.{ u64, u64, layout.DeviceCopy },
        };
    }
};
pub const kernel_count = std.meta.fieldNames(Kernel).len;

/// Threads per block of every launch; block_sum in kernels.zig needs a multiple of 32.
pub const block_threads: u32 = 256;
/// Grid-stride kernels get at most this many blocks per multiprocessor.
const blocks_per_sm: u32 = 16;
/// The global norm's first pass writes at most this many partial sums.
pub const norm_partials_max: u32 = 1024;

/// Pinned staging: two slots, so one can fill on the host while the other is copied.
pub const staging_slot_bytes: usize = 4 << 20;
const staging_slot_count = 2;

const devices_max = 16;

var api: Api = undefined;
var state: enum { unloaded, ready, unavailable } = .unloaded;
var device_count_cached: u32 = 0;
var devices: [devices_max]?*Device = @splat(null);
var sync_count: u64 = 0;

var last_error_buffer: [1024]u8 = undefined;
var last_error_length: usize = 0;

/// The message of the last failure (empty when none), e.g. the reason CUDA is unavailable or the
/// CUresult name of a failed driver call.
pub fn last_error() []const u8 {
    return last_error_buffer[0..last_error_length];
}

pub fn set_error(comptime format: []const u8, args: anytype) void {
    const text = std.fmt.bufPrint(&last_error_buffer, format, args) catch &last_error_buffer;
    last_error_length = text.len;
}

/// How many host-device synchronisations the library has performed since it was loaded.
pub fn synchronisations() u64 {
    return sync_count;
}

fn error_name(result: CUresult) []const u8 {
    var name: ?[*:0]const u8 = null;
    if (api.cuGetErrorName(result, &name) != CUDA_SUCCESS) return "CUDA_ERROR_UNKNOWN";
    return std.mem.span(name orelse return "CUDA_ERROR_UNKNOWN");
}

fn error_text(result: CUresult) []const u8 {
    var text: ?[*:0]const u8 = null;
    if (api.cuGetErrorString(result, &text) != CUDA_SUCCESS) return "no description";
    return std.mem.span(text orelse return "no description");
}

/// Turns a CUresult into an error, recording "<call> failed: <CUDA_ERROR_NAME> (<description>)".
fn check(result: CUresult, what: []const u8) Error!void {
    if (result == CUDA_SUCCESS) return;
    set_error("{s} failed: {s} ({s})", .{ what, error_name(result), error_text(result) });
    return if (result == CUDA_ERROR_OUT_OF_MEMORY) error.OutOfMemory else error.CudaError;
}

const missing_driver = "libcuda.so.1 not found: this machine has no NVIDIA driver; use device \"cpu\"";

/// Opens libcuda (MIXPREC_LIBCUDA overrides the name), resolves every entry point and runs cuInit.
/// The outcome is remembered: a machine without a driver answers CudaUnavailable at once after.
pub fn init() Error!void {
    switch (state) {
        .ready => return,
        .unavailable => return error.CudaUnavailable,
        .unloaded => {},
    }
    state = .unavailable;
    const name: [*:0]const u8 = std.c.getenv("MIXPREC_LIBCUDA") orelse "libcuda.so.1";
    const handle = std.c.dlopen(name, .{ .NOW = true }) orelse {
        const detail: []const u8 = if (std.c.dlerror()) |text| std.mem.span(text) else "no detail";
        set_error("{s} (dlopen: {s})", .{ missing_driver, detail });
        return error.CudaUnavailable;
    };
    inline for (comptime std.meta.fieldNames(Api)) |field_name| {
        const symbol = std.c.dlsym(handle, field_name) orelse {
            set_error("{s} lacks {s}: the NVIDIA driver is too old for mixprec; update it or use device \"cpu\"", .{ std.mem.span(name), field_name });
            return error.CudaUnavailable;
        };
        @field(api, field_name) = @ptrCast(@alignCast(symbol));
    }
    const result = api.cuInit(0);
    if (result != CUDA_SUCCESS) {
        set_error("cuInit failed: {s} ({s}); the NVIDIA driver is installed but no device answers: use device \"cpu\"", .{ error_name(result), error_text(result) });
        return error.CudaUnavailable;
    }
    var count: c_int = 0;
    check(api.cuDeviceGetCount(&count), "cuDeviceGetCount") catch return error.CudaUnavailable;
    device_count_cached = @intCast(@min(@max(count, 0), devices_max));
    state = .ready;
}

/// The number of CUDA devices (0 when CUDA is unavailable; never fails).
pub fn device_count() u32 {
    init() catch return 0;
    return device_count_cached;
}

pub const DeviceInfo = extern struct {
    compute_major: u32,
    compute_minor: u32,
    total_memory_bytes: u64,
    multiprocessor_count: u32,
    reserved: u32,
};

/// Name and capabilities of device `ordinal`, without creating a context.
pub fn device_info(ordinal: u32, name: []u8, out: *DeviceInfo) Error!void {
    std.debug.assert(name.len >= 2);
    try init();
    if (ordinal >= device_count_cached) {
        set_error("there is no device cuda:{d}: this machine has {d} CUDA device(s)", .{ ordinal, device_count_cached });
        return error.InvalidArgument;
    }
    var handle: CUdevice = 0;
    try check(api.cuDeviceGet(&handle, @intCast(ordinal)), "cuDeviceGet");
    @memset(name, 0);
    try check(api.cuDeviceGetName(name.ptr, @intCast(name.len - 1), handle), "cuDeviceGetName");
    out.* = .{
        .compute_major = try attribute(handle, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR),
        .compute_minor = try attribute(handle, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR),
        .total_memory_bytes = 0,
        .multiprocessor_count = try attribute(handle, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT),
        .reserved = 0,
    };
    var total: usize = 0;
    try check(api.cuDeviceTotalMem_v2(&total, handle), "cuDeviceTotalMem");
    out.total_memory_bytes = total;
}

fn attribute(handle: CUdevice, which: c_int) Error!u32 {
    var value: c_int = 0;
    try check(api.cuDeviceGetAttribute(&value, which, handle), "cuDeviceGetAttribute");
    return @intCast(@max(value, 0));
}

/// A caching allocator: freed blocks go to a free list per size class and are reused without
/// asking the driver (cuMemFree synchronises the device; reuse is safe because every use of a
/// device's memory is ordered on its one stream). `empty` returns the cached blocks.
pub const Cache = struct {
    free_blocks: std.AutoHashMapUnmanaged(u64, std.ArrayList(CUdeviceptr)) = .empty,
    live_blocks: std.AutoHashMapUnmanaged(CUdeviceptr, u64) = .empty,
    live_bytes: u64 = 0,
    cached_bytes: u64 = 0,

    const gpa = std.heap.c_allocator;

    /// Sizes up to 1 MiB round up to a power of two (at least 512 bytes), larger ones to a
    /// multiple of 2 MiB: at most 2x waste for small blocks, 2 MiB for large ones.
    pub fn size_class(size_bytes: u64) u64 {
        if (size_bytes <= 512) return 512;
        if (size_bytes <= 1 << 20) return std.math.ceilPowerOfTwoAssert(u64, size_bytes);
        return std.mem.alignForward(u64, size_bytes, 2 << 20);
    }

    pub fn alloc(cache: *Cache, size_bytes: u64) Error!CUdeviceptr {
        const class = size_class(size_bytes);
        cache.live_blocks.ensureUnusedCapacity(gpa, 1) catch return error.OutOfMemory;
        const address = if (cache.free_blocks.getPtr(class)) |list| list.pop() else null;
        const block = address orelse try fresh(cache, class);
        if (address != null) cache.cached_bytes -= class;
        cache.live_blocks.putAssumeCapacityNoClobber(block, class);
        cache.live_bytes += class;
        return block;
    }

    fn fresh(cache: *Cache, class: u64) Error!CUdeviceptr {
        var block: CUdeviceptr = 0;
        const result = api.cuMemAlloc_v2(&block, class);
        if (result == CUDA_ERROR_OUT_OF_MEMORY and cache.cached_bytes > 0) {
            // The cache may hold enough for the driver; give it back and try once more.
            try cache.empty();
            try check(api.cuMemAlloc_v2(&block, class), "cuMemAlloc");
        } else {
            try check(result, "cuMemAlloc");
        }
        std.debug.assert(block != 0);
        return block;
    }

    pub fn free(cache: *Cache, address: CUdeviceptr) Error!void {
        const entry = cache.live_blocks.fetchRemove(address) orelse {
            set_error("0x{x} is not a live block of this device's allocator", .{address});
            return error.InvalidArgument;
        };
        const class = entry.value;
        const list = cache.free_blocks.getOrPut(gpa, class) catch return error.OutOfMemory;
        if (!list.found_existing) list.value_ptr.* = .empty;
        list.value_ptr.append(gpa, address) catch return error.OutOfMemory;
        cache.live_bytes -= class;
        cache.cached_bytes += class;
    }

    /// Frees every cached block (not the live ones) with cuMemFree. The caller has synchronised.
    pub fn empty(cache: *Cache) Error!void {
        var lists = cache.free_blocks.valueIterator();
        while (lists.next()) |list| {
            while (list.pop()) |block| try check(api.cuMemFree_v2(block), "cuMemFree");
        }
        cache.cached_bytes = 0;
    }
};

/// Per-device state, created on first use.
pub const Device = struct {
    handle: CUdevice,
    context: CUcontext,
    stream: CUstream,
    module: CUmodule,
    functions: [kernel_count]CUfunction,
    multiprocessor_count: u32,
    cache: Cache = .{},
    staging: ?[*]u8 = null,
    staging_events: [staging_slot_count]CUevent = @splat(null),
    staging_pending: [staging_slot_count]bool = @splat(false),
    staging_next: u32 = 0,
    scratch: CUdeviceptr = 0,
    scratch_bytes: u64 = 0,
    timer: [2]CUevent = @splat(null),
};

/// The device `ordinal` with its context current on this thread; loads the module on first use.
pub fn device(ordinal: u32, ptx: [:0]const u8) Error!*Device {
    try init();
    if (ordinal >= device_count_cached) {
        set_error("there is no device cuda:{d}: this machine has {d} CUDA device(s)", .{ ordinal, device_count_cached });
        return error.InvalidArgument;
    }
    if (devices[ordinal]) |existing| {
        try check(api.cuCtxSetCurrent(existing.context), "cuCtxSetCurrent");
        return existing;
    }
    const created = std.heap.c_allocator.create(Device) catch return error.OutOfMemory;
    errdefer std.heap.c_allocator.destroy(created);
    created.* = .{ .handle = 0, .context = null, .stream = null, .module = null, .functions = @splat(null), .multiprocessor_count = 0 };
    try check(api.cuDeviceGet(&created.handle, @intCast(ordinal)), "cuDeviceGet");
    try check(api.cuDevicePrimaryCtxRetain(&created.context, created.handle), "cuDevicePrimaryCtxRetain");
    try check(api.cuCtxSetCurrent(created.context), "cuCtxSetCurrent");
    try check(api.cuStreamCreate(&created.stream, CU_STREAM_NON_BLOCKING), "cuStreamCreate");
    created.multiprocessor_count = @max(try attribute(created.handle, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT), 1);
    try load_module(created, ptx);
    for (&created.timer) |*event| try check(api.cuEventCreate(event, 0), "cuEventCreate");
    devices[ordinal] = created;
    return created;
}

fn load_module(target: *Device, ptx: [:0]const u8) Error!void {
    var error_log: [8192]u8 = @splat(0);
    var info_log: [8192]u8 = @splat(0);
    var options = [_]c_int{
        CU_JIT_ERROR_LOG_BUFFER, CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES,
        CU_JIT_INFO_LOG_BUFFER,  CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES,
    };
    var values = [_]?*anyopaque{
        &error_log, @ptrFromInt(error_log.len - 1),
        &info_log,  @ptrFromInt(info_log.len - 1),
    };
    const result = api.cuModuleLoadDataEx(&target.module, ptx.ptr, options.len, &options, &values);
    if (result != CUDA_SUCCESS) {
        const error_text_log = std.mem.sliceTo(&error_log, 0);
        const info_text_log = std.mem.sliceTo(&info_log, 0);
        set_error("cuModuleLoadDataEx(mixprec.ptx) failed: {s} ({s}); JIT error log: {s}; JIT info log: {s}", .{
            error_name(result), error_text(result), error_text_log, info_text_log,
        });
        return if (result == CUDA_ERROR_OUT_OF_MEMORY) error.OutOfMemory else error.CudaError;
    }
    for (&target.functions, 0..) |*function, index| {
        const kernel: Kernel = @fromBackingInt(@intCast(index));
        try check(api.cuModuleGetFunction(function, target.module, kernel.entry().ptr), "cuModuleGetFunction");
    }
}

/// Waits for the host-visible completion of everything queued on the device's stream.
pub fn synchronize(target: *Device) Error!void {
    sync_count += 1;
    try check(api.cuStreamSynchronize(target.stream), "cuStreamSynchronize");
}

/// Blocks of a grid-stride launch over `count` elements.
pub fn grid_blocks(target: *const Device, count: u64) u32 {
    const wanted = (count + block_threads - 1) / block_threads;
    const most = @as(u64, target.multiprocessor_count) * blocks_per_sm;
    return @intCast(@max(@min(wanted, most), 1));
}

/// Launches `kernel` on the device's stream; `args` is a tuple whose field types are exactly
/// `kernel.params()` (checked at compile time).
pub fn launch(target: *Device, comptime kernel: Kernel, grid: u32, block: u32, args: anytype) Error!void {
    const types = comptime kernel.params();
    const arg_types = @typeInfo(@TypeOf(args)).@"struct".field_types;
    comptime {
        if (arg_types.len != types.len) @compileError("wrong argument count for " ++ kernel.entry());
        for (arg_types, types) |arg_type, expected| {
            if (arg_type != expected) @compileError("wrong argument type for " ++ kernel.entry());
        }
    }
    std.debug.assert(grid > 0);
    std.debug.assert(block > 0 and block % 32 == 0 and block <= 1024);
    // Every scalar argument gets an 8-byte slot; the driver reads as many bytes as the PTX type
    // has. A struct (a `.param` byte array) is passed by the address of the caller's value.
    var slots: [arg_types.len]u64 = @splat(0);
    var pointers: [arg_types.len]?*anyopaque = undefined;
    inline for (0..arg_types.len) |index| {
        if (@sizeOf(arg_types[index]) > 8) {
            pointers[index] = @ptrCast(@constCast(&args[index]));
        } else {
            @as(*arg_types[index], @ptrCast(&slots[index])).* = args[index];
            pointers[index] = &slots[index];
        }
    }
    const function = target.functions[@backingInt(kernel)];
    try check(api.cuLaunchKernel(function, grid, 1, 1, block, 1, 1, 0, target.stream, &pointers, null), "cuLaunchKernel(" ++ comptime kernel.entry() ++ ")");
}

/// A device buffer of at least `size_bytes` for temporary results, reused from launch to launch
/// (safe: every use is ordered on the one stream).
pub fn scratch(target: *Device, size_bytes: u64) Error!CUdeviceptr {
    if (target.scratch_bytes >= size_bytes) return target.scratch;
    if (target.scratch != 0) try target.cache.free(target.scratch);
    target.scratch = 0;
    target.scratch_bytes = 0;
    target.scratch = try target.cache.alloc(size_bytes);
    target.scratch_bytes = Cache.size_class(size_bytes);
    return target.scratch;
}

fn staging_slot(target: *Device) Error!u32 {
    if (target.staging == null) {
        var pointer: ?*anyopaque = null;
        try check(api.cuMemHostAlloc(&pointer, staging_slot_bytes * staging_slot_count, 0), "cuMemHostAlloc");
        for (&target.staging_events) |*event| try check(api.cuEventCreate(event, CU_EVENT_DISABLE_TIMING), "cuEventCreate");
        target.staging = @ptrCast(pointer);
    }
    const slot = target.staging_next;
    target.staging_next = (slot + 1) % staging_slot_count;
    if (target.staging_pending[slot]) {
        // The device may still be reading this slot. Waiting counts as a synchronisation only when
        // the copy has not finished yet.
        const result = api.cuEventQuery(target.staging_events[slot]);
        if (result == CUDA_ERROR_NOT_READY) {
            sync_count += 1;
            try check(api.cuEventSynchronize(target.staging_events[slot]), "cuEventSynchronize");
        } else {
            try check(result, "cuEventQuery");
        }
        target.staging_pending[slot] = false;
    }
    return slot;
}

/// Copies host bytes to the device through pinned staging and returns before the device has
/// them: the caller may reuse `source` at once, and later work on the stream sees the bytes.
pub fn copy_to_device(target: *Device, address: CUdeviceptr, source: []const u8) Error!void {
    var offset: usize = 0;
    while (offset < source.len) {
        const chunk = @min(staging_slot_bytes, source.len - offset);
        const slot = try staging_slot(target);
        const buffer = target.staging.? + slot * staging_slot_bytes;
        @memcpy(buffer[0..chunk], source[offset..][0..chunk]);
        try check(api.cuMemcpyHtoDAsync_v2(address + offset, buffer, chunk, target.stream), "cuMemcpyHtoDAsync");
        try check(api.cuEventRecord(target.staging_events[slot], target.stream), "cuEventRecord");
        target.staging_pending[slot] = true;
        offset += chunk;
    }
}

/// Copies device bytes to the host after everything queued before it; synchronises (one per
/// staging chunk).
pub fn copy_to_host(target: *Device, destination: []u8, address: CUdeviceptr) Error!void {
    var offset: usize = 0;
    while (offset < destination.len) {
        const chunk = @min(staging_slot_bytes, destination.len - offset);
        const slot = try staging_slot(target);
        const buffer = target.staging.? + slot * staging_slot_bytes;
        try check(api.cuMemcpyDtoHAsync_v2(buffer, address + offset, chunk, target.stream), "cuMemcpyDtoHAsync");
        try synchronize(target);
        @memcpy(destination[offset..][0..chunk], buffer[0..chunk]);
        offset += chunk;
    }
}

/// Copies device bytes to device bytes on the stream (no synchronisation).
pub fn copy_on_device(target: *Device, destination: CUdeviceptr, source: CUdeviceptr, size_bytes: u64) Error!void {
    if (size_bytes == 0) return;
    try check(api.cuMemcpyDtoDAsync_v2(destination, source, size_bytes, target.stream), "cuMemcpyDtoDAsync");
}

/// Fills `count` 32-bit words with `value` on the stream (no synchronisation).
pub fn fill32(target: *Device, address: CUdeviceptr, value: u32, count: u64) Error!void {
    if (count == 0) return;
    try check(api.cuMemsetD32Async(address, value, count, target.stream), "cuMemsetD32Async");
}

/// Gives every cached block back to the driver (synchronises first, as cuMemFree would).
pub fn empty_cache(target: *Device) Error!void {
    try synchronize(target);
    try target.cache.empty();
}

/// Records the timer's start event on the stream.
pub fn timer_start(target: *Device) Error!void {
    try check(api.cuEventRecord(target.timer[0], target.stream), "cuEventRecord");
}

/// Records the timer's stop event, waits for it (a synchronisation) and returns the milliseconds
/// the device spent between the two.
pub fn timer_stop(target: *Device) Error!f32 {
    try check(api.cuEventRecord(target.timer[1], target.stream), "cuEventRecord");
    sync_count += 1;
    try check(api.cuEventSynchronize(target.timer[1]), "cuEventSynchronize");
    var milliseconds: f32 = 0;
    try check(api.cuEventElapsedTime(&milliseconds, target.timer[0], target.timer[1]), "cuEventElapsedTime");
    return milliseconds;
}

// Tests run against a fake driver: device memory is host memory, copies are memcpy, and launches
// are recorded. They check the allocator, the staging, the synchronisation count and the argument
// marshalling; only a real GPU can check the kernels themselves (test/cuda_test.ts does).
const fake = struct {
    var allocations: u32 = 0;
    var frees: u32 = 0;
    var stream_syncs: u32 = 0;
    var event_syncs: u32 = 0;
    var event_query_result: CUresult = CUDA_SUCCESS;
    var fail_alloc_once: bool = false;
    var launched: CUfunction = null;
    var launched_grid: c_uint = 0;
    var launched_params: [8]u64 = @splat(0);

    fn cuInit(_: c_uint) callconv(.c) CUresult {
        return CUDA_SUCCESS;
    }
    fn cuGetErrorName(result: CUresult, name: *?[*:0]const u8) callconv(.c) CUresult {
        name.* = if (result == CUDA_ERROR_OUT_OF_MEMORY) "CUDA_ERROR_OUT_OF_MEMORY" else "CUDA_ERROR_INVALID_VALUE";
        return CUDA_SUCCESS;
    }
    fn cuGetErrorString(_: CUresult, text: *?[*:0]const u8) callconv(.c) CUresult {
        text.* = "fake driver";
        return CUDA_SUCCESS;
    }
    fn cuDeviceGetCount(count: *c_int) callconv(.c) CUresult {
        count.* = 1;
        return CUDA_SUCCESS;
    }
    fn cuDeviceGet(handle: *CUdevice, ordinal: c_int) callconv(.c) CUresult {
        handle.* = ordinal;
        return CUDA_SUCCESS;
    }
    fn cuDeviceGetName(name: [*]u8, length: c_int, _: CUdevice) callconv(.c) CUresult {
        const text = "Fake GPU";
        @memcpy(name[0..@min(text.len, @as(usize, @intCast(length)))], text[0..@min(text.len, @as(usize, @intCast(length)))]);
        return CUDA_SUCCESS;
    }
    fn cuDeviceGetAttribute(value: *c_int, which: c_int, _: CUdevice) callconv(.c) CUresult {
        value.* = switch (which) {
            CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR => 9,
            CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR => 0,
            CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT => 132,
            else => return 1,
        };
        return CUDA_SUCCESS;
    }
    fn cuDeviceTotalMem_v2(bytes: *usize, _: CUdevice) callconv(.c) CUresult {
        bytes.* = 80 << 30;
        return CUDA_SUCCESS;
    }
    fn cuDevicePrimaryCtxRetain(context: *CUcontext, _: CUdevice) callconv(.c) CUresult {
        context.* = @ptrFromInt(0x1000);
        return CUDA_SUCCESS;
    }
    fn cuCtxSetCurrent(_: CUcontext) callconv(.c) CUresult {
        return CUDA_SUCCESS;
    }
    fn cuStreamCreate(stream: *CUstream, _: c_uint) callconv(.c) CUresult {
        stream.* = @ptrFromInt(0x2000);
        return CUDA_SUCCESS;
    }
    fn cuStreamSynchronize(_: CUstream) callconv(.c) CUresult {
        stream_syncs += 1;
        return CUDA_SUCCESS;
    }
    fn cuEventCreate(event: *CUevent, _: c_uint) callconv(.c) CUresult {
        event.* = @ptrFromInt(0x3000);
        return CUDA_SUCCESS;
    }
    fn cuEventRecord(_: CUevent, _: CUstream) callconv(.c) CUresult {
        return CUDA_SUCCESS;
    }
    fn cuEventQuery(_: CUevent) callconv(.c) CUresult {
        return event_query_result;
    }
    fn cuEventSynchronize(_: CUevent) callconv(.c) CUresult {
        event_syncs += 1;
        return CUDA_SUCCESS;
    }
    fn cuEventElapsedTime(milliseconds: *f32, _: CUevent, _: CUevent) callconv(.c) CUresult {
        milliseconds.* = 1.5;
        return CUDA_SUCCESS;
    }
    fn cuModuleLoadDataEx(_: *CUmodule, _: *const anyopaque, _: c_uint, _: [*]c_int, values: [*]?*anyopaque) callconv(.c) CUresult {
        const log: [*]u8 = @ptrCast(values[0].?);
        @memcpy(log[0..14], "ptxas: bad ptx");
        log[14] = 0;
        return 218; // CUDA_ERROR_INVALID_PTX
    }
    fn cuModuleGetFunction(function: *CUfunction, _: CUmodule, _: [*:0]const u8) callconv(.c) CUresult {
        function.* = @ptrFromInt(0x4000);
        return CUDA_SUCCESS;
    }
    fn cuLaunchKernel(function: CUfunction, grid: c_uint, _: c_uint, _: c_uint, _: c_uint, _: c_uint, _: c_uint, _: c_uint, _: CUstream, params: ?[*]?*anyopaque, _: ?[*]?*anyopaque) callconv(.c) CUresult {
        launched = function;
        launched_grid = grid;
        // Read every parameter as its first 4 or 8 bytes, as the driver would by the PTX types.
        for (0..5) |index| launched_params[index] = @as(*align(1) const u64, @ptrCast(params.?[index].?)).*;
        return CUDA_SUCCESS;
    }
    fn cuMemAlloc_v2(address: *CUdeviceptr, size_bytes: usize) callconv(.c) CUresult {
        if (fail_alloc_once) {
            fail_alloc_once = false;
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
        allocations += 1;
        address.* = @intFromPtr(std.c.malloc(size_bytes) orelse return CUDA_ERROR_OUT_OF_MEMORY);
        return CUDA_SUCCESS;
    }
    fn cuMemFree_v2(address: CUdeviceptr) callconv(.c) CUresult {
        frees += 1;
        std.c.free(@ptrFromInt(address));
        return CUDA_SUCCESS;
    }
    fn cuMemHostAlloc(pointer: *?*anyopaque, size_bytes: usize, _: c_uint) callconv(.c) CUresult {
        pointer.* = std.c.malloc(size_bytes);
        return CUDA_SUCCESS;
    }
    fn cuMemFreeHost(pointer: ?*anyopaque) callconv(.c) CUresult {
        std.c.free(pointer);
        return CUDA_SUCCESS;
    }
    fn cuMemcpyHtoDAsync_v2(target: CUdeviceptr, source: *const anyopaque, size_bytes: usize, _: CUstream) callconv(.c) CUresult {
        @memcpy(@as([*]u8, @ptrFromInt(target))[0..size_bytes], @as([*]const u8, @ptrCast(source))[0..size_bytes]);
        return CUDA_SUCCESS;
    }
    fn cuMemcpyDtoHAsync_v2(target: *anyopaque, source: CUdeviceptr, size_bytes: usize, _: CUstream) callconv(.c) CUresult {
        @memcpy(@as([*]u8, @ptrCast(target))[0..size_bytes], @as([*]const u8, @ptrFromInt(source))[0..size_bytes]);
        return CUDA_SUCCESS;
    }
    fn cuMemcpyDtoDAsync_v2(target: CUdeviceptr, source: CUdeviceptr, size_bytes: usize, _: CUstream) callconv(.c) CUresult {
        @memcpy(@as([*]u8, @ptrFromInt(target))[0..size_bytes], @as([*]const u8, @ptrFromInt(source))[0..size_bytes]);
        return CUDA_SUCCESS;
    }
    fn cuMemsetD32Async(target: CUdeviceptr, value: c_uint, count: usize, _: CUstream) callconv(.c) CUresult {
        @memset(@as([*]u32, @ptrFromInt(target))[0..count], value);
        return CUDA_SUCCESS;
    }

    fn install() *Device {
        inline for (comptime std.meta.fieldNames(Api)) |field_name| @field(api, field_name) = &@field(fake, field_name);
        state = .ready;
        device_count_cached = 1;
        const created = std.testing.allocator.create(Device) catch unreachable;
        created.* = .{ .handle = 0, .context = null, .stream = null, .module = null, .functions = @splat(null), .multiprocessor_count = 132 };
        for (&created.functions, 0..) |*function, index| function.* = @ptrFromInt(0x100 + index);
        return created;
    }

    fn uninstall(target: *Device) void {
        target.cache.empty() catch unreachable;
        var live = target.cache.live_blocks.keyIterator();
        while (live.next()) |block| std.c.free(@ptrFromInt(block.*));
        target.cache.live_blocks.deinit(Cache.gpa);
        var lists = target.cache.free_blocks.valueIterator();
        while (lists.next()) |list| list.deinit(Cache.gpa);
        target.cache.free_blocks.deinit(Cache.gpa);
        if (target.staging) |pointer| std.c.free(pointer);
        std.testing.allocator.destroy(target);
        state = .unloaded;
    }
};

test "size classes round small blocks to powers of two and large ones to 2 MiB" {
    try std.testing.expectEqual(@as(u64, 512), Cache.size_class(0));
    try std.testing.expectEqual(@as(u64, 512), Cache.size_class(512));
    try std.testing.expectEqual(@as(u64, 1024), Cache.size_class(513));
    try std.testing.expectEqual(@as(u64, 1 << 20), Cache.size_class(1 << 20));
    try std.testing.expectEqual(@as(u64, 2 << 20), Cache.size_class((1 << 20) + 1));
    try std.testing.expectEqual(@as(u64, 4 << 20), Cache.size_class((2 << 20) + 1));
}

test "the cache reuses a freed block of the same class without asking the driver" {
    const target = fake.install();
    defer fake.uninstall(target);
    const before = fake.allocations;
    const a = try target.cache.alloc(1000);
    try target.cache.free(a);
    const b = try target.cache.alloc(700); // Same 1 KiB class.
    try std.testing.expectEqual(a, b);
    try std.testing.expectEqual(before + 1, fake.allocations);
    const c = try target.cache.alloc(5000); // Another class: a fresh block.
    try std.testing.expect(c != b);
    try std.testing.expectEqual(@as(u64, 1024 + 8192), target.cache.live_bytes);
    try target.cache.free(b);
    try target.cache.free(c);
    try std.testing.expectEqual(@as(u64, 0), target.cache.live_bytes);
    try std.testing.expectEqual(@as(u64, 1024 + 8192), target.cache.cached_bytes);
    const frees_before = fake.frees;
    try empty_cache(target);
    try std.testing.expectEqual(frees_before + 2, fake.frees);
    try std.testing.expectEqual(@as(u64, 0), target.cache.cached_bytes);
}

test "freeing an address the allocator does not own is an error naming it" {
    const target = fake.install();
    defer fake.uninstall(target);
    try std.testing.expectError(error.InvalidArgument, target.cache.free(0xdead));
    try std.testing.expect(std.mem.indexOf(u8, last_error(), "0xdead") != null);
}

test "an out-of-memory driver answer empties the cache and retries once" {
    const target = fake.install();
    defer fake.uninstall(target);
    const a = try target.cache.alloc(4096);
    try target.cache.free(a);
    fake.fail_alloc_once = true;
    const frees_before = fake.frees;
    const b = try target.cache.alloc(1 << 20);
    try std.testing.expect(b != 0);
    try std.testing.expectEqual(frees_before + 1, fake.frees);
}

test "copies through staging round-trip any length, and only reading back synchronises" {
    const target = fake.install();
    defer fake.uninstall(target);
    const length = staging_slot_bytes * 2 + 12345; // Three chunks: both slots, then the first again.
    const source = try std.testing.allocator.alloc(u8, length);
    defer std.testing.allocator.free(source);
    for (source, 0..) |*byte, index| byte.* = @truncate(index *% 31 +% 7);
    const block = try target.cache.alloc(length);
    const syncs_before = synchronisations();
    fake.event_query_result = CUDA_SUCCESS;
    try copy_to_device(target, block, source);
    try std.testing.expectEqual(syncs_before, synchronisations());
    // A slot the device has not finished reading is waited for, and that counts.
    fake.event_query_result = CUDA_ERROR_NOT_READY;
    try copy_to_device(target, block, source[0..100]);
    try std.testing.expectEqual(syncs_before + 1, synchronisations());
    fake.event_query_result = CUDA_SUCCESS;
    try copy_to_device(target, block, source);
    const back = try std.testing.allocator.alloc(u8, length);
    defer std.testing.allocator.free(back);
    const read_syncs = synchronisations();
    try copy_to_host(target, back, block);
    try std.testing.expectEqualSlices(u8, source, back);
    try std.testing.expectEqual(read_syncs + 3, synchronisations());
}

test "launch passes every argument by address in the PTX parameter order" {
    const target = fake.install();
    defer fake.uninstall(target);
    try launch(target, .update_scale, 1, 32, .{ @as(u64, 0xabc), @as(u64, 0xdef), @as(f64, 2.0), @as(f64, 0.5), @as(i32, 2000) });
    try std.testing.expectEqual(target.functions[@backingInt(Kernel.update_scale)], fake.launched);
    try std.testing.expectEqual(@as(u64, 0xabc), fake.launched_params[0]);
    try std.testing.expectEqual(@as(u64, 0xdef), fake.launched_params[1]);
    try std.testing.expectEqual(@as(u64, @bitCast(@as(f64, 2.0))), fake.launched_params[2]);
    try std.testing.expectEqual(@as(u32, 2000), @as(u32, @truncate(fake.launched_params[4])));
}

test "grid size covers the elements and stays within 16 blocks per multiprocessor" {
    const target = fake.install();
    defer fake.uninstall(target);
    try std.testing.expectEqual(@as(u32, 1), grid_blocks(target, 0));
    try std.testing.expectEqual(@as(u32, 1), grid_blocks(target, 256));
    try std.testing.expectEqual(@as(u32, 2), grid_blocks(target, 257));
    try std.testing.expectEqual(@as(u32, 132 * 16), grid_blocks(target, 1 << 30));
}

test "a failed module load reports the CUresult name and the JIT error log" {
    const target = fake.install();
    defer fake.uninstall(target);
    try std.testing.expectError(error.CudaError, load_module(target, "not ptx"));
    try std.testing.expect(std.mem.indexOf(u8, last_error(), "CUDA_ERROR_INVALID_VALUE") != null);
    try std.testing.expect(std.mem.indexOf(u8, last_error(), "ptxas: bad ptx") != null);
}
