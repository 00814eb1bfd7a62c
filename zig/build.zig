//! Builds libmixprec (host CPU, ReleaseFast by default) with the PTX module for NVIDIA GPUs
//! embedded, installs mixprec.ptx beside it for ptxas checks, and runs the Zig tests.

const std = @import("std");

pub fn build(b: *std.Build) void {
    const target = b.standardTargetOptions(.{});
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
    ptx_module.addImport("numerics", b.createModule(.{
        .root_source_file = b.path("src/numerics.zig"),
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
    const lib = b.addLibrary(.{ .name = "mixprec", .linkage = .dynamic, .root_module = root });
    b.installArtifact(lib);

    // A fake libcuda (host memory, kernels emulated with the CPU code) so the CUDA backend's
    // plumbing is tested end to end on machines without a GPU: MIXPREC_LIBCUDA=<this file>.
    const fake_cuda = b.addLibrary(.{ .name = "cuda_fake", .linkage = .dynamic, .root_module = b.createModule(.{
        .root_source_file = b.path("src/cuda_fake.zig"),
        .target = target,
        .optimize = optimize,
        .link_libc = true,
    }) });
    b.installArtifact(fake_cuda);

    const tests = b.addTest(.{ .root_module = root });
    const test_step = b.step("test", "Run the Zig unit tests");
    test_step.dependOn(&b.addRunArtifact(tests).step);
}
