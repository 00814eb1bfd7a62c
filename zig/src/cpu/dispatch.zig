//! Which instruction set the kernels use, decided at run time.
//!
//! The library is built for a baseline CPU (x86-64-v3: AVX2, FMA, F16C, BMI2 on x86_64), so it runs
//! on any machine of that class. The kernels that gain from wider registers (the matmul
//! micro-kernels and AVX512-BF16's `vdpbf16ps`) are compiled again for x86-64-v4, with and without
//! AVX512-BF16, as separate objects with their own symbol names (zig/src/wide.zig), and chosen
//! here on the first call: from cpuid, and only where the OS saves the AVX-512 registers on a
//! context switch (XCR0 bits 5 to 7, read with xgetbv). A fourth compilation adds AMX (the tile
//! registers and `tdpbf16ps`, Sapphire Rapids and later) for bfloat16 matmuls; Linux hands tile
//! state only to a process that asks (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`), so
//! detection asks once and uses AMX only where the OS agreed. `MIXPREC_CPU=baseline` (or `avx512`,
//! `avx512bf16`) caps the choice, so tests and benchmarks can compare the paths on one machine.

const std = @import("std");
const builtin = @import("builtin");

/// The kernel paths, narrowest first. The values are the `mp_cpu_info` path field.
pub const Path = enum(u8) {
    /// Built for the library's target CPU (x86-64-v3 by default; the architecture's baseline elsewhere).
    baseline = 1,
    /// x86-64-v4: AVX-512 F, BW, CD, DQ and VL.
    avx512 = 2,
    /// x86-64-v4 plus AVX512-BF16.
    avx512bf16 = 3,
    /// x86-64-v4 plus AVX512-BF16 and AMX-BF16 (bfloat16 matmuls on the tile unit).
    amx = 4,
};

/// Whether wide objects are linked into this library (build.zig adds them for every x86_64 target).
pub const wide_linked = builtin.cpu.arch == .x86_64;

/// What the running CPU and OS allow. Each feature is reported only together with its
/// prerequisites (AVX2 needs AVX and the OS saving ymm state; every AVX-512 feature needs AVX512F
/// and the OS saving opmask and zmm state), so a true field is always safe to use.
pub const Features = struct {
    /// The OS saves xmm and ymm state (XCR0 bits 1 and 2).
    os_avx: bool = false,
    /// The OS also saves opmask and zmm state (XCR0 bits 5, 6 and 7).
    os_avx512: bool = false,
    avx: bool = false,
    avx2: bool = false,
    fma: bool = false,
    f16c: bool = false,
    bmi2: bool = false,
    avx512f: bool = false,
    avx512bw: bool = false,
    avx512cd: bool = false,
    avx512dq: bool = false,
    avx512vl: bool = false,
    avx512bf16: bool = false,
    /// AMX-TILE and AMX-BF16, with the OS saving tile state (XCR0 bits 17 and 18) and having granted
    /// this process its use (Linux's ARCH_REQ_XCOMP_PERM).
    amx_bf16: bool = false,

    /// The x86-64-v3 level the baseline objects are built for.
    pub fn x86_64_v3(features: Features) bool {
        return features.avx2 and features.fma and features.f16c and features.bmi2;
    }

    /// The x86-64-v4 level the wide objects are built for.
    pub fn x86_64_v4(features: Features) bool {
        return features.x86_64_v3() and features.avx512f and features.avx512bw and
            features.avx512cd and features.avx512dq and features.avx512vl;
    }
};

const Leaf = struct { eax: u32, ebx: u32, ecx: u32, edx: u32 };

fn cpuid(leaf: u32, subleaf: u32) Leaf {
    var eax: u32 = undefined;
    var ebx: u32 = undefined;
    var ecx: u32 = undefined;
    var edx: u32 = undefined;
    asm volatile ("cpuid"
        : [_] "={eax}" (eax),
          [_] "={ebx}" (ebx),
          [_] "={ecx}" (ecx),
          [_] "={edx}" (edx),
        : [_] "{eax}" (leaf),
          [_] "{ecx}" (subleaf),
    );
    return .{ .eax = eax, .ebx = ebx, .ecx = ecx, .edx = edx };
}

/// XCR0, the register state the OS saves. Only valid where cpuid reports OSXSAVE.
fn xgetbv0() u64 {
    var eax: u32 = undefined;
    var edx: u32 = undefined;
    asm volatile ("xgetbv"
        : [_] "={eax}" (eax),
          [_] "={edx}" (edx),
        : [_] "{ecx}" (@as(u32, 0)),
    );
    return @as(u64, edx) << 32 | eax;
}

fn bit(word: u32, comptime index: u5) bool {
    return word & (@as(u32, 1) << index) != 0;
}

/// Reads the running CPU's features (all false on other architectures).
pub fn detect() Features {
    if (builtin.cpu.arch != .x86_64) return .{};
    const zero = Leaf{ .eax = 0, .ebx = 0, .ecx = 0, .edx = 0 };
    const leaf_max = cpuid(0, 0).eax;
    const leaf1 = cpuid(1, 0);
    const leaf7 = if (leaf_max >= 7) cpuid(7, 0) else zero;
    const leaf7_1 = if (leaf_max >= 7 and leaf7.eax >= 1) cpuid(7, 1) else zero;
    const osxsave = bit(leaf1.ecx, 27);
    const xcr0: u64 = if (osxsave) xgetbv0() else 0;
    var f = Features{};
    f.os_avx = osxsave and xcr0 & 0x6 == 0x6;
    f.os_avx512 = f.os_avx and xcr0 & 0xe0 == 0xe0;
    f.avx = f.os_avx and bit(leaf1.ecx, 28);
    f.fma = f.avx and bit(leaf1.ecx, 12);
    f.f16c = f.avx and bit(leaf1.ecx, 29);
    f.avx2 = f.avx and bit(leaf7.ebx, 5);
    f.bmi2 = bit(leaf7.ebx, 8);
    f.avx512f = f.os_avx512 and f.avx2 and bit(leaf7.ebx, 16);
    f.avx512dq = f.avx512f and bit(leaf7.ebx, 17);
    f.avx512cd = f.avx512f and bit(leaf7.ebx, 28);
    f.avx512bw = f.avx512f and bit(leaf7.ebx, 30);
    f.avx512vl = f.avx512f and bit(leaf7.ebx, 31);
    f.avx512bf16 = f.avx512bw and f.avx512vl and bit(leaf7_1.eax, 5);
    const os_amx = osxsave and xcr0 & 0x60000 == 0x60000;
    f.amx_bf16 = f.avx512bf16 and os_amx and bit(leaf7.edx, 22) and bit(leaf7.edx, 24) and amx_permitted();
    return f;
}

/// 0 until asked; then 1 where the OS granted tile data to this process, 2 where it refused.
var amx_permission = std.atomic.Value(u8).init(0);

/// Asks Linux once for the AMX tile data state (`arch_prctl(ARCH_REQ_XCOMP_PERM,
/// XFEATURE_XTILEDATA)`, Linux 5.16 and later). The grant covers every thread of the process; a
/// refusal (an older kernel, or a signal stack too small for the larger state) leaves AMX unused.
fn amx_permitted() bool {
    if (builtin.os.tag != .linux or builtin.cpu.arch != .x86_64) return false;
    const known = amx_permission.load(.monotonic);
    if (known != 0) return known == 1;
    const arch_req_xcomp_perm = 0x1023;
    const xfeature_xtiledata = 18;
    const result = std.os.linux.syscall2(.arch_prctl, arch_req_xcomp_perm, xfeature_xtiledata);
    const granted = std.os.linux.errno(result) == .SUCCESS;
    amx_permission.store(if (granted) 1 else 2, .monotonic);
    return granted;
}

/// The widest path the features allow.
pub fn widest(features: Features) Path {
    if (!wide_linked or !features.x86_64_v4()) return .baseline;
    if (features.amx_bf16) return .amx;
    return if (features.avx512bf16) .avx512bf16 else .avx512;
}

/// The cap `MIXPREC_CPU` sets: "baseline", "avx512", "avx512bf16" or "amx"; unset, empty or "auto" is no
/// cap. src/_ffi.ts rejects other values before the library is used.
pub fn parse_cap(value: ?[]const u8) ?Path {
    const text = value orelse return null;
    if (text.len == 0 or std.mem.eql(u8, text, "auto")) return null;
    return std.meta.stringToEnum(Path, text);
}

/// The path for these features under this cap: the widest allowed, never above the cap.
pub fn choose(features: Features, cap: ?Path) Path {
    const best = widest(features);
    const limit = cap orelse return best;
    return if (@backingInt(limit) < @backingInt(best)) limit else best;
}

fn env_cap() ?Path {
    if (!builtin.link_libc) return null;
    const value = std.c.getenv("MIXPREC_CPU") orelse return null;
    return parse_cap(std.mem.span(value));
}

/// 0 until the first call decides; then the chosen path's value.
var path_chosen = std.atomic.Value(u8).init(0);

/// The path every dispatching kernel uses, decided on the first call and kept. Two threads that
/// both decide first compute the same answer, so the race is harmless.
pub fn path() Path {
    const cached = path_chosen.load(.monotonic);
    if (cached != 0) return @fromBackingInt(@intCast(cached));
    const decided = choose(detect(), env_cap());
    path_chosen.store(@backingInt(decided), .monotonic);
    return decided;
}

/// Tests run the kernels on each path the machine has: sets the path (which must not be wider than
/// the CPU allows), or with null decides again from the CPU and the environment.
pub fn set_path_for_test(forced: ?Path) void {
    if (forced) |p| {
        std.debug.assert(@backingInt(p) <= @backingInt(widest(detect())));
        path_chosen.store(@backingInt(p), .monotonic);
    } else {
        path_chosen.store(0, .monotonic);
    }
}

/// The name under which zig/src/wide.zig exports `function` for the path named `isa`.
pub fn symbol(comptime isa: []const u8, comptime function: []const u8) []const u8 {
    return "mixprec_" ++ isa ++ "_" ++ function;
}

/// The chosen path's compilation of a function zig/src/wide.zig exports as `function`: `here`
/// (this object's own) on the baseline path and where no wide objects are linked.
pub fn pick(comptime F: type, comptime function: []const u8, here: F) F {
    if (!wide_linked) return here;
    return switch (path()) {
        .baseline => here,
        inline .avx512, .avx512bf16, .amx => |p| @extern(F, .{ .name = symbol(@tagName(p), function), .visibility = .hidden }),
    };
}

/// Every path this machine can run, narrowest first (for tests).
pub fn paths_available() []const Path {
    const all = [_]Path{ .baseline, .avx512, .avx512bf16, .amx };
    return all[0..@backingInt(widest(detect()))];
}

test "a detected feature implies its prerequisites" {
    const f = detect();
    if (f.avx) try std.testing.expect(f.os_avx);
    if (f.avx2 or f.fma or f.f16c) try std.testing.expect(f.avx);
    if (f.os_avx512) try std.testing.expect(f.os_avx);
    for ([_]bool{ f.avx512bw, f.avx512cd, f.avx512dq, f.avx512vl }) |extension| {
        if (extension) try std.testing.expect(f.avx512f);
    }
    if (f.avx512f) {
        try std.testing.expect(f.os_avx512);
        try std.testing.expect(f.avx2);
    }
    if (f.avx512bf16) {
        try std.testing.expect(f.avx512bw);
        try std.testing.expect(f.avx512vl);
    }
    if (f.amx_bf16) try std.testing.expect(f.avx512bf16);
    if (f.x86_64_v4()) try std.testing.expect(f.x86_64_v3());
}

test "detection agrees with the Zig standard library's (which also reads XCR0)" {
    if (builtin.cpu.arch != .x86_64) return error.SkipZigTest;
    const ours = detect();
    const native = try std.zig.system.resolveTargetQuery(std.testing.io, .{});
    const has = std.Target.x86.featureSetHas;
    const features = native.cpu.features;
    try std.testing.expectEqual(has(features, .avx), ours.avx);
    try std.testing.expectEqual(has(features, .avx2), ours.avx2);
    try std.testing.expectEqual(has(features, .fma), ours.fma);
    try std.testing.expectEqual(has(features, .f16c), ours.f16c);
    try std.testing.expectEqual(has(features, .bmi2), ours.bmi2);
    try std.testing.expectEqual(has(features, .avx512f), ours.avx512f);
    try std.testing.expectEqual(has(features, .avx512bw), ours.avx512bw);
    try std.testing.expectEqual(has(features, .avx512vl), ours.avx512vl);
    try std.testing.expectEqual(has(features, .avx512bf16), ours.avx512bf16);
}

test "the dispatcher picks the widest path the CPU and OS allow, capped by MIXPREC_CPU" {
    const f = detect();
    const expected: Path = if (!wide_linked or !f.x86_64_v4()) .baseline else if (f.amx_bf16) .amx else if (f.avx512bf16) .avx512bf16 else .avx512;
    try std.testing.expectEqual(expected, choose(f, null));
    try std.testing.expectEqual(Path.baseline, choose(f, .baseline));
    try std.testing.expect(@backingInt(choose(f, .avx512)) <= @backingInt(Path.avx512));
    // A CPU without the OS's AVX-512 state gets the baseline whatever cpuid says.
    var no_state = f;
    no_state.os_avx512 = false;
    no_state.avx512f = false;
    try std.testing.expectEqual(Path.baseline, choose(no_state, null));
    var no_amx = f;
    no_amx.amx_bf16 = false;
    try std.testing.expect(choose(no_amx, null) != .amx);
    try std.testing.expectEqual(@as(?Path, .baseline), parse_cap("baseline"));
    try std.testing.expectEqual(@as(?Path, .amx), parse_cap("amx"));
    try std.testing.expectEqual(@as(?Path, null), parse_cap("auto"));
    try std.testing.expectEqual(@as(?Path, null), parse_cap(null));
    try std.testing.expectEqual(@as(?Path, null), parse_cap("sse9"));
    // The cached choice is the uncapped one unless the environment sets a cap.
    set_path_for_test(null);
    defer set_path_for_test(null);
    try std.testing.expectEqual(choose(f, env_cap()), path());
    set_path_for_test(.baseline);
    try std.testing.expectEqual(Path.baseline, path());
}
