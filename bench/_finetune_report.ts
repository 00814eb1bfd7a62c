/**
 * The fine-tuning demo's outputs: the results table, the `--json` document and the SVG plot
 * (training loss, eval accuracy during training, loss scale), drawn by vega-lite.
 *
 * @module
 */

import * as vega from "vega";
import * as vegaLite from "vega-lite";
import { formatTable } from "./_harness.ts";
import type { FinetuneResult } from "./_finetune_model.ts";

const mib = (bytes: number) => (bytes / 2 ** 20).toFixed(0);
const percent = (x: number | null) => (x === null ? "-" : `${(100 * x).toFixed(1)}%`);

/** The table: one row per (recipe, batch size), ratios against fp32 at the same batch size. */
export function finetuneTable(results: readonly FinetuneResult[]): string {
  const reference = new Map(results.filter((r) => r.name === "fp32").map((r) => [r.batchSize, r]));
  const rows = results.map((r) => {
    const fp32 = reference.get(r.batchSize);
    return [
      r.name,
      String(r.batchSize),
      percent(r.evalAccuracy),
      r.macroF1 === null ? "-" : r.macroF1.toFixed(3),
      r.evalLoss.toFixed(3),
      fp32 ? (r.evalAccuracy / fp32.evalAccuracy).toFixed(3) : "-",
      String(r.skippedSteps),
      r.finalScale === 1 ? "1" : r.finalScale.toExponential(1),
      r.stepMs.toFixed(0),
      r.examplesPerSecond.toFixed(1),
      fp32 ? (fp32.stepMs / r.stepMs).toFixed(2) : "-",
      mib(r.peakRssBytes),
      mib(r.stateBytes),
    ];
  });
  return formatTable(
    [
      "recipe",
      "batch",
      "eval acc",
      "macro-F1",
      "eval loss",
      "acc / fp32",
      "skipped",
      "final scale",
      "step ms",
      "examples/s",
      "speed vs fp32",
      "peak RSS MiB",
      "state MiB",
    ],
    rows,
  );
}

/** The plot: smoothed training loss, eval accuracy during training, and the loss scale. */
export async function finetuneSvg(results: readonly FinetuneResult[], zeroShot: number | null): Promise<string> {
  const lossRows: { step: number; loss: number; recipe: string }[] = [];
  const accuracyRows: { step: number; accuracy: number; recipe: string }[] = [];
  const scaleRows: { step: number; scale: number; recipe: string }[] = [];
  const multipleBatches = new Set(results.map((r) => r.batchSize)).size > 1;
  for (const r of results) {
    const label = multipleBatches ? `${r.name} (batch ${r.batchSize})` : r.name;
    const window = Math.max(1, Math.floor(r.lossCurve.length / 25));
    for (let i = 0; i + window <= r.lossCurve.length; i += window) {
      const slice = r.lossCurve.slice(i, i + window).filter(Number.isFinite);
      if (slice.length > 0)
        lossRows.push({ step: i + window, loss: slice.reduce((a, b) => a + b, 0) / slice.length, recipe: label });
    }
    if (zeroShot !== null) accuracyRows.push({ step: 0, accuracy: zeroShot, recipe: label });
    for (const point of r.evalCurve) accuracyRows.push({ ...point, recipe: label });
    if (r.scaleCurve.some((s) => s !== 1))
      r.scaleCurve.forEach((scale, i) => scaleRows.push({ step: i + 1, scale, recipe: label }));
  }
  const panel = (title: string, height: number, values: object[], y: object, mark: object = { type: "line" }) => ({
    title,
    width: 640,
    height,
    data: { values },
    mark,
    encoding: {
      x: { field: "step", type: "quantitative", title: "step" },
      y,
      color: { field: "recipe", type: "nominal" },
    },
  });
  const spec = {
    $schema: "https://vega.github.io/schema/vega-lite/v6.json",
    config: { legend: { labelLimit: 400 } },
    vconcat: [
      panel("Training loss by recipe (mean over a window of steps)", 260, lossRows, {
        field: "loss",
        type: "quantitative",
        title: "cross-entropy (nats)",
        scale: { zero: false },
      }),
      panel(
        "Eval accuracy during training (probe set; step 0: zero-shot nearest class description)",
        220,
        accuracyRows,
        { field: "accuracy", type: "quantitative", title: "accuracy", axis: { format: "%" } },
        { type: "line", point: true },
      ),
      panel(
        "Loss scale (recipes with dynamic loss scaling)",
        160,
        scaleRows,
        { field: "scale", type: "quantitative", title: "loss scale", scale: { type: "log", base: 2 } },
        { type: "line", interpolate: "step-after" },
      ),
    ],
  } as vegaLite.TopLevelSpec;
  const view = new vega.View(vega.parse(vegaLite.compile(spec).spec), { renderer: "none" });
  const svg = await view.toSVG();
  view.finalize();
  return svg;
}
