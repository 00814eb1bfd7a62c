/**
 * The training demo's outputs: the results table, the JSON file and the SVG plot of loss curves and
 * loss-scale history, drawn by vega-lite (compiled to vega, rendered headless to SVG). vega and
 * vega-lite are devDependencies, imported when the plot is drawn (bench/_optional.ts).
 *
 * @module
 */

import type * as VegaLite from "vega-lite";
import { formatTable } from "./_harness.ts";
import { importOptional } from "./_optional.ts";

/** What one recipe run at one batch size measured. */
export interface RecipeResult {
  readonly name: string;
  readonly batchSize: number;
  readonly steps: number;
  /** Mean training loss over the last 10% of steps (at least one step). */
  readonly finalLoss: number;
  readonly evalLoss: number;
  /** Next-character accuracy on held-out text. */
  readonly evalAccuracy: number;
  readonly skippedSteps: number;
  readonly finalScale: number;
  /** Mean wall time of a training step in milliseconds. */
  readonly stepMs: number;
  /** Peak resident set size of the recipe's process. */
  readonly peakRssBytes: number;
  /** Bytes of parameters, master weights, gradients and optimizer state held in tensors. */
  readonly stateBytes: number;
  readonly lossCurve: readonly number[];
  readonly scaleCurve: readonly number[];
  /** Per step, the share of gradient entries that were exactly zero. */
  readonly zeroCurve: readonly number[];
  /** A sentence about the recipe (what it is, or why it did not run). */
  readonly note: string;
  /** Share of gradient entries that were exactly zero, over all steps (underflow shows here). */
  readonly zeroGradShare: number;
  /** The same share at step 1, before any layer has grown out of the underflow range. */
  readonly firstZeroGradShare: number;
}

function mib(bytes: number): string {
  return `${(bytes / 2 ** 20).toFixed(1)}`;
}

/** The results table, one row per (recipe, batch size), with ratios to fp32 at the same batch size. */
export function resultsTable(results: readonly RecipeResult[]): string {
  const reference = new Map(results.filter((r) => r.name === "fp32").map((r) => [r.batchSize, r]));
  const rows = results.map((r) => {
    const fp32 = reference.get(r.batchSize);
    const lossRatio = fp32 && !r.name.startsWith("lora") ? (r.evalLoss / fp32.evalLoss).toFixed(3) : "-";
    const speed = fp32 ? (fp32.stepMs / r.stepMs).toFixed(2) : "-";
    return [
      r.name,
      String(r.batchSize),
      r.finalLoss.toFixed(4),
      r.evalLoss.toFixed(4),
      `${(100 * r.evalAccuracy).toFixed(1)}%`,
      lossRatio,
      `${(100 * r.firstZeroGradShare).toFixed(1)}% / ${(100 * r.zeroGradShare).toFixed(2)}%`,
      String(r.skippedSteps),
      r.finalScale === 1 ? "1" : r.finalScale.toExponential(2),
      r.stepMs.toFixed(1),
      speed,
      mib(r.stateBytes),
      mib(r.peakRssBytes),
    ];
  });
  return formatTable(
    [
      "recipe",
      "batch",
      "train loss",
      "eval loss",
      "eval acc",
      "eval loss / fp32",
      "zero grads (step 1 / all)",
      "skipped",
      "final scale",
      "step ms",
      "speed vs fp32",
      "state MiB",
      "peak RSS MiB",
    ],
    rows,
  );
}

/** The JSON document `--json FILE` writes. */
export function resultsJson(results: readonly RecipeResult[], options: Record<string, unknown>): string {
  return JSON.stringify(
    {
      options,
      recipes: results.map((r) => ({
        name: r.name,
        batchSize: r.batchSize,
        steps: r.steps,
        finalLoss: r.finalLoss,
        evalLoss: r.evalLoss,
        evalAccuracy: r.evalAccuracy,
        skippedSteps: r.skippedSteps,
        finalScale: r.finalScale,
        stepMs: r.stepMs,
        peakRssBytes: r.peakRssBytes,
        stateBytes: r.stateBytes,
        note: r.note,
        zeroGradShare: r.zeroGradShare,
        firstZeroGradShare: r.firstZeroGradShare,
        lossCurve: r.lossCurve,
        scaleCurve: r.scaleCurve,
        zeroCurve: r.zeroCurve,
      })),
    },
    null,
    2,
  );
}

/**
 * Renders loss curves (log scale) and loss-scale history per recipe as one SVG document; null (with
 * a message saying what to install) when vega or vega-lite is missing.
 */
export async function resultsSvg(results: readonly RecipeResult[]): Promise<string | null> {
  const modules = await importOptional(
    async () => ({ vega: await import("vega"), vegaLite: await import("vega-lite") }),
    ["vega", "vega-lite"],
    "The demo's plot",
  );
  if (modules === null) return null;
  const { vega, vegaLite } = modules;
  const lossRows: { step: number; loss: number; recipe: string }[] = [];
  const scaleRows: { step: number; scale: number; recipe: string }[] = [];
  const zeroRows: { step: number; share: number; recipe: string }[] = [];
  for (const r of results) {
    const label = `${r.name} (batch ${r.batchSize})`;
    // Smooth the loss over a short window so curves stay readable.
    const window = Math.max(1, Math.floor(r.lossCurve.length / 100));
    for (let i = 0; i < r.lossCurve.length; i += window) {
      const slice = r.lossCurve.slice(i, i + window).filter(Number.isFinite);
      if (slice.length > 0)
        lossRows.push({ step: i, loss: slice.reduce((a, b) => a + b, 0) / slice.length, recipe: label });
    }
    r.zeroCurve.forEach((share, step) => {
      if (step < 60 || step % window === 0) zeroRows.push({ step, share, recipe: label });
    });
    if (r.scaleCurve.some((s) => s !== 1)) {
      r.scaleCurve.forEach((scale, step) => {
        if (step % window === 0) scaleRows.push({ step, scale, recipe: label });
      });
    }
  }
  const spec: VegaLite.TopLevelSpec = {
    $schema: "https://vega.github.io/schema/vega-lite/v6.json",
    config: { legend: { labelLimit: 400 } },
    vconcat: [
      {
        title: "Training loss by recipe",
        width: 640,
        height: 300,
        data: { values: lossRows },
        mark: { type: "line", strokeWidth: 1.5 },
        encoding: {
          x: { field: "step", type: "quantitative", title: "step" },
          y: { field: "loss", type: "quantitative", title: "cross-entropy (nats)", scale: { type: "log" } },
          color: { field: "recipe", type: "nominal" },
        },
      },
      {
        title: "Gradient entries that are exactly zero (float16 underflow shows here)",
        width: 640,
        height: 160,
        data: { values: zeroRows },
        mark: { type: "line", strokeWidth: 1.5 },
        encoding: {
          x: { field: "step", type: "quantitative", title: "step" },
          y: { field: "share", type: "quantitative", title: "share of gradient entries", axis: { format: "%" } },
          color: { field: "recipe", type: "nominal" },
        },
      },
      {
        title: "Loss scale (recipes with dynamic loss scaling)",
        width: 640,
        height: 160,
        data: { values: scaleRows },
        mark: { type: "line", interpolate: "step-after" },
        encoding: {
          x: { field: "step", type: "quantitative", title: "step" },
          y: { field: "scale", type: "quantitative", title: "loss scale", scale: { type: "log", base: 2 } },
          color: { field: "recipe", type: "nominal" },
        },
      },
    ],
  };
  const compiled = vegaLite.compile(spec).spec;
  const view = new vega.View(vega.parse(compiled), { renderer: "none" });
  const svg = await view.toSVG();
  view.finalize();
  return svg;
}
