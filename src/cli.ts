#!/usr/bin/env bun
/**
 * The mixprec command line.
 *
 *   mixprec convert IN OUT --to bfloat16 (IN and OUT: safetensors files, or model directories) [--include GLOB|/REGEX/] [--allow-overflow] [--json]
 *
 * Exit status: 0 done, 1 refused or failed (the reason on stderr), 2 usage error.
 *
 * @module
 */

import { convertCheckpoint, formatConversionReport } from "./io/convert.ts";

const USAGE = `Usage:
  mixprec convert IN OUT --to DTYPE [--include PATTERN] [--allow-overflow] [--json]

IN and OUT are safetensors files, or Hugging Face model directories (model.safetensors or shards with
model.safetensors.index.json: every shard is converted, config.json's dtype rewritten, other files
copied). Converts the floating tensors to DTYPE (float32, float16, bfloat16,
float8_e4m3fn, float8_e5m2, or f32 f16 bf16 e4m3 e5m2), streaming tensor by tensor, and prints per
tensor how many values overflowed, underflowed to zero or became subnormal, and the relative error.
  --include PATTERN   convert only tensors whose names match: a glob (* and ?) or /REGEX/
  --allow-overflow    write the file even when finite values overflow (otherwise nothing is written)
  --json              print the report as JSON instead of a table`;

function usage(message: string): number {
  console.error(`${message}\n\n${USAGE}`);
  return 2;
}

/** Runs the CLI with `args` (without the executable and script) and returns the exit status. */
export function main(args: readonly string[]): number {
  const [command, ...rest] = args;
  if (command === undefined || command === "--help" || command === "-h" || command === "help") {
    console.log(USAGE);
    return command === undefined ? 2 : 0;
  }
  if (command !== "convert") return usage(`Unknown command ${JSON.stringify(command)}`);
  const positional: string[] = [];
  let to: string | undefined;
  let include: string | RegExp | undefined;
  let allowOverflow = false;
  let json = false;
  for (let i = 0; i < rest.length; i++) {
    const arg = rest[i]!;
    if (arg === "--to" || arg === "--include") {
      const value = rest[++i];
      if (value === undefined) return usage(`${arg} needs a value`);
      if (arg === "--to") to = value;
      else
        include =
          value.length > 2 && value.startsWith("/") && value.endsWith("/") ? new RegExp(value.slice(1, -1)) : value;
    } else if (arg.startsWith("--to=")) to = arg.slice(5);
    else if (arg === "--allow-overflow") allowOverflow = true;
    else if (arg === "--json") json = true;
    else if (arg.startsWith("--")) return usage(`Unknown option ${arg}`);
    else positional.push(arg);
  }
  if (positional.length !== 2)
    return usage(`convert takes an input and an output path, got ${positional.length} path(s)`);
  if (to === undefined) return usage("convert needs --to DTYPE");
  try {
    const report = convertCheckpoint(positional[0]!, positional[1]!, { to: to as "bfloat16", include, allowOverflow });
    console.log(json ? JSON.stringify(report, null, 2) : formatConversionReport(report));
    return 0;
  } catch (error) {
    console.error(`mixprec convert: ${error instanceof Error ? error.message : String(error)}`);
    return 1;
  }
}

if (import.meta.main) process.exit(main(Bun.argv.slice(2)));
