/**
 * Where the native library is, in this order:
 *
 * 1. `MIXPREC_LIB`, a path set by the user;
 * 2. the platform package installed beside mixprec: `@mixprec/linux-x64-gnu` and its siblings are
 *    optionalDependencies of the published package (opentui's pattern), each holding
 *    libmixprec built for its platform's baseline CPU with run-time dispatch (scripts/pack.ts);
 * 3. this checkout's own build, zig/zig-out/lib (`make build`).
 *
 * The platform packages are named by literal `require`s so that `bun build --compile` follows them:
 * each package imports its library `with { type: "file" }`, which embeds the file in the
 * executable, and bun:ffi's `dlopen` extracts an embedded library to a temporary file.
 *
 * @module
 */

import { suffix } from "bun:ffi";
import { existsSync } from "node:fs";
import { MixprecError } from "./errors.ts";

/** A platform package: its npm name, the Zig target that builds its library, and npm's filters. */
export interface PlatformPackage {
  readonly name: string;
  /** `zig build -Dtarget=...`: glibc 2.28 on Linux (Debian 10, RHEL 8 and later). */
  readonly zigTarget: string;
  readonly os: string;
  readonly cpu: string;
  readonly libc?: "glibc";
  /** The library's file name inside the package. */
  readonly file: string;
}

/** Every platform a prebuilt library is published for. */
export const PLATFORM_PACKAGES: readonly PlatformPackage[] = [
  {
    name: "@mixprec/linux-x64-gnu",
    zigTarget: "x86_64-linux-gnu.2.28",
    os: "linux",
    cpu: "x64",
    libc: "glibc",
    file: "libmixprec.so",
  },
  {
    name: "@mixprec/linux-arm64-gnu",
    zigTarget: "aarch64-linux-gnu.2.28",
    os: "linux",
    cpu: "arm64",
    libc: "glibc",
    file: "libmixprec.so",
  },
  { name: "@mixprec/darwin-arm64", zigTarget: "aarch64-macos", os: "darwin", cpu: "arm64", file: "libmixprec.dylib" },
  { name: "@mixprec/darwin-x64", zigTarget: "x86_64-macos", os: "darwin", cpu: "x64", file: "libmixprec.dylib" },
];

/** The C library on Linux ("gnu" or "musl"); "" elsewhere. */
function linuxLibc(): string {
  if (process.platform !== "linux") return "";
  const report = process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined;
  return report?.header?.glibcVersionRuntime ? "gnu" : "musl";
}

/** The platform package this machine needs, e.g. "@mixprec/linux-x64-gnu" (it may not exist). */
export function platformPackageName(): string {
  const libc = linuxLibc();
  return `@mixprec/${process.platform}-${process.arch}${libc === "" ? "" : `-${libc}`}`;
}

/** The library path the platform package exports, or the reason it could not be loaded. */
function fromPlatformPackage(name: string): { path: string } | { reason: string } {
  try {
    // One literal require per package (see the module comment); a missing package throws.
    let exported: { default?: unknown };
    switch (name) {
      case "@mixprec/linux-x64-gnu":
        exported = require("@mixprec/linux-x64-gnu");
        break;
      case "@mixprec/linux-arm64-gnu":
        exported = require("@mixprec/linux-arm64-gnu");
        break;
      case "@mixprec/darwin-arm64":
        exported = require("@mixprec/darwin-arm64");
        break;
      case "@mixprec/darwin-x64":
        exported = require("@mixprec/darwin-x64");
        break;
      default:
        return { reason: `no prebuilt library is published for ${process.platform}-${process.arch}` };
    }
    if (typeof exported.default !== "string") return { reason: `${name} does not export a library path` };
    return { path: exported.default };
  } catch (cause) {
    return { reason: `${name} is not installed (${cause instanceof Error ? cause.message.split("\n")[0] : cause})` };
  }
}

/** The default library path: zig/zig-out/lib/libmixprec.<suffix> in this checkout. */
export function localBuildPath(): string {
  return new URL(`../zig/zig-out/lib/libmixprec.${suffix}`, import.meta.url).pathname;
}

/** Where the library was found, and how: the loader's error messages name the fix by source. */
export interface LibraryLocation {
  readonly path: string;
  readonly source: "MIXPREC_LIB" | "platform package" | "local build";
}

/**
 * The library to open: `MIXPREC_LIB`, else the platform package, else the local build.
 *
 * @returns The path and where it came from.
 * @throws MixprecError("library_missing") naming the platform package to install (and the other two fixes) when none exists.
 */
export function locateLibrary(): LibraryLocation {
  const override = process.env.MIXPREC_LIB;
  if (override) return { path: override, source: "MIXPREC_LIB" };
  const name = platformPackageName();
  const found = fromPlatformPackage(name);
  if ("path" in found) return { path: found.path, source: "platform package" };
  const local = localBuildPath();
  if (existsSync(local)) return { path: local, source: "local build" };
  const published = PLATFORM_PACKAGES.some((p) => p.name === name);
  throw new MixprecError(
    "library_missing",
    published
      ? `No native library for ${process.platform}-${process.arch}: ${found.reason}, and there is no local build at ${local}. Install the platform package (\`bun add ${name}\` at mixprec's version, or reinstall mixprec without --omit=optional / --no-optional), or run \`make build\` in a mixprec checkout, or set MIXPREC_LIB to a libmixprec.${suffix}`
      : `No native library for ${process.platform}-${process.arch}: ${found.reason} (there is no package ${name}), and there is no local build at ${local}. Build it from a mixprec checkout with \`make build\` and set MIXPREC_LIB to zig/zig-out/lib/libmixprec.${suffix}`,
  );
}
