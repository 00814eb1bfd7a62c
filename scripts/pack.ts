/**
 * Packs mixprec for npm: the platform packages (@mixprec/linux-x64-gnu and siblings, each holding
 * libmixprec built for its platform's baseline CPU with run-time dispatch) and the main package,
 * whose published package.json lists them as optionalDependencies at its own version, so a package
 * manager installs the one that fits the machine. The repository's package.json does not list them:
 * they exist only once published, and `npm ci` in a fresh clone must not look for them.
 *
 *   bun scripts/pack.ts [--out DIR] [--targets host|all|NAME,...] [--local]
 *
 *   --out DIR      where the tarballs go (default out/pack); DIR/stage holds the unpacked packages
 *   --targets      host (default): this machine's package; all: every package of
 *                  src/_library_path.ts's PLATFORM_PACKAGES (Zig cross-compiles); or names
 *   --local        use this checkout's build (zig/zig-out/lib, `make build`) for the host package
 *                  instead of building it again for the package's glibc baseline
 *
 * Prints one JSON line per tarball: { name, version, file, bytes }.
 *
 * @module
 */

import { copyFileSync, cpSync, existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { localBuildPath, PLATFORM_PACKAGES, type PlatformPackage, platformPackageName } from "../src/_library_path.ts";

const root = new URL("..", import.meta.url).pathname;
const ZIG = join(root, ".tools/zig-0.17.1/ziglang/zig");

interface Args {
  readonly out: string;
  readonly targets: readonly PlatformPackage[];
  readonly local: boolean;
}

function parseArgs(argv: readonly string[]): Args {
  let out = join(root, "out/pack");
  let targets = "host";
  let local = false;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === "--out" || arg === "--targets") {
      const value = argv[++i];
      if (value === undefined) throw new RangeError(`${arg} needs a value`);
      if (arg === "--out") out = value;
      else targets = value;
    } else if (arg === "--local") local = true;
    else throw new RangeError(`Unknown argument ${JSON.stringify(arg)}: use --out DIR, --targets host|all|NAME,... or --local`);
  }
  const host = platformPackageName();
  const names = targets === "all" ? PLATFORM_PACKAGES.map((p) => p.name) : targets === "host" ? [host] : targets.split(",");
  const chosen = names.map((name) => {
    const found = PLATFORM_PACKAGES.find((p) => p.name === name);
    if (found === undefined) {
      throw new RangeError(
        `No platform package ${JSON.stringify(name)}: choose from ${PLATFORM_PACKAGES.map((p) => p.name).join(", ")}`,
      );
    }
    return found;
  });
  if (local && chosen.some((p) => p.name !== host)) {
    throw new RangeError(`--local packs this checkout's build, which is only for ${host}: pass --targets host`);
  }
  return { out: out.startsWith("/") ? out : join(process.cwd(), out), targets: chosen, local };
}

function run(command: readonly string[], cwd: string): string {
  const result = Bun.spawnSync([...command], { cwd, stdout: "pipe", stderr: "pipe" });
  if (result.exitCode !== 0) {
    throw new Error(`${command.join(" ")} failed (exit ${result.exitCode}) in ${cwd}:\n${result.stderr.toString()}`);
  }
  return result.stdout.toString();
}

/** npm pack of a staged folder into `out`; returns the tarball's path. */
function npmPack(folder: string, out: string): string {
  const report = JSON.parse(run(["npm", "pack", "--json", "--pack-destination", out], folder)) as { filename: string }[];
  return join(out, report[0]!.filename);
}

/** The library for one platform: this checkout's build, or a fresh build for its Zig target. */
function buildLibrary(target: PlatformPackage, out: string, local: boolean): string {
  if (local) {
    const path = localBuildPath();
    if (!existsSync(path)) throw new Error(`There is no local build at ${path}: run \`make build\` first`);
    return path;
  }
  const prefix = join(out, "build", target.name.replace("/", "+"));
  run([ZIG, "build", `-Dtarget=${target.zigTarget}`, "--prefix", prefix], join(root, "zig"));
  return join(prefix, "lib", target.file);
}

function stagePlatformPackage(target: PlatformPackage, version: string, library: string, stage: string): string {
  const folder = join(stage, target.name.replace("/", "+"));
  rmSync(folder, { recursive: true, force: true });
  mkdirSync(folder, { recursive: true });
  copyFileSync(library, join(folder, target.file));
  // The library is imported as a file: Bun resolves it to its path, and `bun build --compile` embeds it.
  writeFileSync(
    join(folder, "index.js"),
    `// The path of libmixprec for ${target.os}-${target.cpu}; \`bun build --compile\` embeds the file.\nimport path from "./${target.file}" with { type: "file" };\nexport default path;\n`,
  );
  writeFileSync(join(folder, "index.d.ts"), "declare const path: string;\nexport default path;\n");
  const manifest = {
    name: target.name,
    version,
    description: `The native library of mixprec for ${target.os}-${target.cpu}${target.libc ? ` (${target.libc})` : ""}, built for ${target.zigTarget}`,
    license: "MIT",
    type: "module",
    main: "index.js",
    types: "index.d.ts",
    exports: { ".": { types: "./index.d.ts", default: "./index.js" } },
    files: ["index.js", "index.d.ts", target.file],
    os: [target.os],
    cpu: [target.cpu],
    ...(target.libc ? { libc: [target.libc] } : {}),
  };
  writeFileSync(join(folder, "package.json"), `${JSON.stringify(manifest, null, 2)}\n`);
  return folder;
}

function stageMainPackage(manifest: Record<string, unknown>, stage: string): string {
  const folder = join(stage, "mixprec");
  rmSync(folder, { recursive: true, force: true });
  mkdirSync(folder, { recursive: true });
  const files = manifest.files;
  if (!Array.isArray(files)) throw new TypeError("package.json has no `files` field: list what the package ships");
  for (const entry of files as string[]) cpSync(join(root, entry), join(folder, entry), { recursive: true });
  const version = manifest.version as string;
  const published: Record<string, unknown> = { ...manifest };
  delete published.scripts; // They run the Makefile, which is not shipped.
  published.optionalDependencies = Object.fromEntries(PLATFORM_PACKAGES.map((p) => [p.name, version]));
  writeFileSync(join(folder, "package.json"), `${JSON.stringify(published, null, 2)}\n`);
  return folder;
}

function main(): void {
  const args = parseArgs(process.argv.slice(2));
  const manifest = JSON.parse(readFileSync(join(root, "package.json"), "utf8")) as Record<string, unknown>;
  const version = manifest.version as string;
  const stage = join(args.out, "stage");
  mkdirSync(stage, { recursive: true });
  const folders = args.targets.map((target) =>
    stagePlatformPackage(target, version, buildLibrary(target, args.out, args.local), stage),
  );
  folders.push(stageMainPackage(manifest, stage));
  for (const folder of folders) {
    const name = (JSON.parse(readFileSync(join(folder, "package.json"), "utf8")) as { name: string }).name;
    const file = npmPack(folder, args.out);
    console.log(JSON.stringify({ name, version, file, bytes: statSync(file).size }));
  }
}

main();
