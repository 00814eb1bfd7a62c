//! Builds libmixprec (ReleaseFast by default) with the PTX module for NVIDIA GPUs embedded,
//! installs mixprec.ptx beside it for ptxas checks, and runs the Zig tests.
//!
//! The library is built for a baseline CPU, not the build machine's: x86-64-v3 (AVX2, FMA, F16C,
//! BMI2) on x86_64 and the architecture's baseline elsewhere, so a library built on one machine
//! runs on any other of its class. On x86_64 the matmul kernels are compiled twice more, for
//! x86-64-v4 and x86-64-v4 + AVX512-BF16 (zig/src/wide.zig), and linked in as objects whose
//! symbols the library picks at run time by cpuid (zig/src/cpu/dispatch.zig). `-Dcpu=...` (e.g.
//! `-Dcpu=native`, `-Dcpu=x86_64_v4`) overrides the baseline for experiments.

const std = @import("std");

pub fn build(b: *std.Build) void {
    const target = b.resolveTargetQuery(baseline_cpu(b, b.standardTargetOptionsQueryOnly(.{})));
    const optimize = b.option(std.lang.Optimize, "optimize", "Optimization mode (default fast)") orelse .fast;

    // PTX from the same numerics. Debug PTX is rejected by ptxas, so this is always ReleaseFast.
    const ptx_target = b.resolveTargetQuery(.{
        .cpu_arch = .nvptx64,
        .os_tag = .cuda,
        .cpu_model = .{ .explicit = &std.Target.nvptx.cpu.sm_80 },
    });
    const ptx_module = b.createModule(.{
        .root_source_file = b.path("src/cuda/kernels.zig"),
        .target = ptx_target,
        .optimize = .fast,
    });
    // numerics.zig and the op families of zig/src/ops/ (which import it by path, so it cannot be
    // a module of its own as well): kernels.zig and ops_rows.zig reach both through it.
    ptx_module.addImport("row_ops", b.createModule(.{
        .root_source_file = b.path("src/row_ops.zig"),
        .target = ptx_target,
        .optimize = .fast,
    }));
    const ptx = b.addObject(.{ .name = "mixprec", .root_module = ptx_module });
    const ptx_file = ptx.getEmittedAsm();
    b.getInstallStep().dependOn(&b.addInstallFileWithDir(ptx_file, .prefix, "ptx/mixprec.ptx").step);

    const root = b.createModule(.{
        .root_source_file = b.path("src/ffi.zig"),
        .target = target,
        .optimize = optimize,
        .link_libc = true,
    });
    root.addAnonymousImport("mixprec_ptx", .{ .root_source_file = ptx_file });
    // The wide objects (none elsewhere than x86_64): every module that links CPU kernels needs them.
    const wide_objects: []const *std.Build.Step.Compile = if (target.result.cpu.arch == .x86_64) &.{
        wide_object(b, target, optimize, "avx512", .empty),
        wide_object(b, target, optimize, "avx512bf16", std.Target.x86.featureSet(&.{.avx512bf16})),
        wide_object(b, target, optimize, "amx", std.Target.x86.featureSet(&.{ .avx512bf16, .amx_tile, .amx_bf16 })),
    } else &.{};
    for (wide_objects) |object| root.addObject(object);
    const lib = b.addLibrary(.{ .name = "mixprec", .linkage = .dynamic, .root_module = root });
    b.installArtifact(lib);

    // A fake libcuda (host memory, kernels emulated with the CPU code) so the CUDA backend's
    // plumbing is tested end to end on machines without a GPU: MIXPREC_LIBCUDA=<this file>.
    const fake_module = b.createModule(.{
        .root_source_file = b.path("src/cuda_fake.zig"),
        .target = target,
        .optimize = optimize,
        .link_libc = true,
    });
    for (wide_objects) |object| fake_module.addObject(object);
    const fake_cuda = b.addLibrary(.{ .name = "cuda_fake", .linkage = .dynamic, .root_module = fake_module });
    b.installArtifact(fake_cuda);

    // A fake libcublas (cublasGemmStridedBatchedEx computed by the CPU matmul on the fake driver's
    // host memory): MIXPREC_LIBCUBLAS=<this file> beside MIXPREC_LIBCUDA.
    const fake_cublas_module = b.createModule(.{
        .root_source_file = b.path("src/cublas_fake.zig"),
        .target = target,
        .optimize = optimize,
        .link_libc = true,
    });
    for (wide_objects) |object| fake_cublas_module.addObject(object);
    const fake_cublas = b.addLibrary(.{ .name = "cublas_fake", .linkage = .dynamic, .root_module = fake_cublas_module });
    b.installArtifact(fake_cublas);

    const tests = b.addTest(.{ .root_module = root });
    const test_step = b.step("test", "Run the Zig unit tests");
    test_step.dependOn(&b.addRunArtifact(tests).step);
}

/// The query with its CPU filled in where -Dcpu did not name one: x86-64-v3 for x86_64 (also when
/// -Dtarget names x86_64, as packaging does), the architecture's baseline elsewhere; never the
/// build machine's own CPU unless asked for with -Dcpu=native.
fn baseline_cpu(b: *std.Build, query: std.Target.Query) std.Target.Query {
    if (query.cpu_model != .determined_by_arch_os) return query;
    var result = query;
    const arch = query.cpu_arch orelse b.graph.host.result.cpu.arch;
    result.cpu_model = if (arch == .x86_64) .{ .explicit = &std.Target.x86.cpu.x86_64_v3 } else .baseline;
    return result;
}

/// The matmul kernels compiled for x86-64-v4 plus `features_add`, as an object for `target`'s OS.
fn wide_object(
    b: *std.Build,
    target: std.Build.ResolvedTarget,
    optimize: std.lang.Optimize,
    name: []const u8,
    features_add: std.Target.Cpu.Feature.Set,
) *std.Build.Step.Compile {
    const wide_target = b.resolveTargetQuery(.{
        .cpu_arch = .x86_64,
        .os_tag = target.result.os.tag,
        .abi = target.result.abi,
        .cpu_model = .{ .explicit = &std.Target.x86.cpu.x86_64_v4 },
        .cpu_features_add = features_add,
    });
    return b.addObject(.{
        .name = b.fmt("mixprec_{s}", .{name}),
        .root_module = b.createModule(.{
            .root_source_file = b.path("src/wide.zig"),
            .target = wide_target,
            .optimize = optimize,
            .pic = true,
        }),
    });
}
