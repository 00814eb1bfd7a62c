import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PLATFORM_PACKAGES, platformPackageName } from "../src/_library_path.ts";

// The package as a user gets it: scripts/pack.ts packs the tarballs (the host's platform package
// from this checkout's build), scratch projects install them with the registry unreachable, and an
// example creates tensors and takes a fused AdamW step there, in a `bun build --compile`
// executable, and (without the platform package) fails with an error that names the fix.

const root = new URL("..", import.meta.url).pathname;
const bun = process.execPath;
const npm = Bun.which("npm");
const host = platformPackageName();
const published = PLATFORM_PACKAGES.some((p) => p.name === host);
// Nothing may reach a registry: an unreachable one, and no retries.
const offline = {
  ...process.env,
  npm_config_registry: "http://127.0.0.1:9/",
  npm_config_fetch_retries: "0",
  npm_config_audit: "false",
  npm_config_fund: "false",
  BUN_CONFIG_REGISTRY: "http://127.0.0.1:9/",
  MIXPREC_LIB: "",
};

const EXAMPLE = `import { fusedAdamW, randn, tensor, zeros } from "mixprec";
using w = randn([4, 8], { seed: 1, dtype: "bfloat16" });
using b = zeros([8], { dtype: "bfloat16" });
using gw = tensor(new Float32Array(32).fill(0.5), { shape: [4, 8] });
using gb = tensor(new Float32Array(8).fill(-1));
const params = { w, b };
const before = [...w.toArray()];
const optimizer = fusedAdamW({ lr: 0.1 });
const result = optimizer.step(params, { w: gw, b: gb });
console.log(JSON.stringify({ applied: result.applied, before, w: [...w.toArray()], b: [...b.toArray()] }));
optimizer.dispose();
`;

interface Run {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

async function run(
  command: readonly string[],
  cwd: string,
  env: Record<string, string | undefined> = offline,
): Promise<Run> {
  const child = Bun.spawn([...command], { cwd, env, stdout: "pipe", stderr: "pipe" });
  const [code, stdout, stderr] = await Promise.all([
    child.exited,
    new Response(child.stdout).text(),
    new Response(child.stderr).text(),
  ]);
  return { code, stdout, stderr };
}

function ok(result: Run, what: string): string {
  if (result.code !== 0) throw new Error(`${what} failed (exit ${result.code}):\n${result.stderr}\n${result.stdout}`);
  return result.stdout;
}

let scratch = "";
let mainTarball = "";
let platformTarball = "";
/** The example's output run from this checkout: what every installed copy must print. */
let expected = "";

function project(name: string, dependencies: Record<string, string>): string {
  const dir = join(scratch, name);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, "package.json"), JSON.stringify({ name, private: true, type: "module", dependencies }));
  writeFileSync(join(dir, "example.ts"), EXAMPLE);
  return dir;
}

describe.skipIf(!published)(`the packed package (${host})`, () => {
  beforeAll(async () => {
    scratch = mkdtempSync(join(tmpdir(), "mixprec-package-"));
    const out = join(scratch, "pack");
    const lines = ok(await run([bun, "scripts/pack.ts", "--local", "--out", out], root, process.env), "scripts/pack.ts")
      .trim()
      .split("\n")
      .map((line) => JSON.parse(line) as { name: string; file: string });
    mainTarball = lines.find((line) => line.name === "mixprec")!.file;
    platformTarball = lines.find((line) => line.name === host)!.file;
    const reference = join(root, `.package-example-${process.pid}.ts`);
    writeFileSync(reference, EXAMPLE);
    try {
      expected = ok(await run([bun, reference], root, process.env), "the example in this checkout");
    } finally {
      rmSync(reference);
    }
  }, 120_000);

  afterAll(() => {
    if (scratch !== "") rmSync(scratch, { recursive: true, force: true });
  });

  test("the main tarball ships the sources and README only, and lists the platform packages", async () => {
    const listing = ok(await run(["tar", "tzf", mainTarball], scratch), "tar")
      .trim()
      .split("\n");
    expect(listing).toContain("package/src/mod.ts");
    expect(listing).toContain("package/src/_library_path.ts");
    expect(listing).toContain("package/README.md");
    expect(listing.filter((path) => /^package\/(test|bench|zig|scripts)\//.test(path))).toEqual([]);
    const manifest = JSON.parse(
      ok(await run(["tar", "xzf", mainTarball, "-O", "package/package.json"], scratch), "tar"),
    );
    expect(manifest.dependencies ?? {}).toEqual({});
    expect(Object.keys(manifest.optionalDependencies).sort()).toEqual(PLATFORM_PACKAGES.map((p) => p.name).sort());
    for (const version of Object.values(manifest.optionalDependencies)) expect(version).toBe(manifest.version);
  });

  test("bun install --offline, a fused AdamW step, and bun build --compile run away from node_modules", async () => {
    const dir = project("bun-project", { mixprec: `file:${mainTarball}`, [host]: `file:${platformTarball}` });
    ok(await run([bun, "install", "--offline"], dir), "bun install --offline");
    const output = ok(await run([bun, "example.ts"], dir), "the example");
    expect(output).toBe(expected);
    const result = JSON.parse(output);
    expect(result.applied).toBe(true);
    // AdamW's first step moves every element by about lr against the gradient's sign.
    expect(result.b.every((v: number) => Math.abs(v - 0.1) < 1e-3)).toBe(true);
    expect(
      result.w.every((v: number, i: number) => Math.abs(v - result.before[i] * (1 - 0.1 * 0.01) + 0.1) < 0.02),
    ).toBe(true);

    ok(await run([bun, "build", "--compile", "example.ts", "--outfile", "example-bin"], dir), "bun build --compile");
    const away = join(scratch, "compiled");
    mkdirSync(away, { recursive: true });
    copyFileSync(join(dir, "example-bin"), join(away, "example-bin"));
    rmSync(join(dir, "node_modules"), { recursive: true });
    const compiled = await run([join(away, "example-bin")], away);
    expect(compiled.stderr).toBe("");
    expect(compiled.stdout).toBe(expected);
  }, 120_000);

  test.skipIf(npm === null)(
    "npm install with the registry unreachable runs the same example",
    async () => {
      const dir = project("npm-project", { mixprec: `file:${mainTarball}`, [host]: `file:${platformTarball}` });
      ok(await run([npm!, "install", "--no-audit", "--no-fund"], dir), "npm install");
      expect(ok(await run([bun, "example.ts"], dir), "the example")).toBe(expected);
    },
    120_000,
  );

  test("without the platform package the error names it and the fixes", async () => {
    const dir = project("no-platform", { mixprec: `file:${mainTarball}` });
    ok(await run([bun, "install", "--offline"], dir), "bun install --offline");
    const result = await run([bun, "example.ts"], dir);
    expect(result.code).not.toBe(0);
    expect(result.stderr).toContain("library_missing");
    expect(result.stderr).toContain(`bun add ${host}`);
    expect(result.stderr).toContain("MIXPREC_LIB");
    expect(result.stderr).toContain("make build");
  }, 120_000);
});

// Elsewhere (a platform without a published package) the test says why it does not run.
if (!published) test.skip(`the packed package: no platform package is published for ${host}`, () => {});
