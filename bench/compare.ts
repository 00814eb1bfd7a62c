/**
 * mixprec beside PyTorch (CPU) in one run: the same cast, unscale, AdamW, matmul and train-step
 * workloads, timed as medians, with the ratio torch time / mixprec time (above 1: mixprec faster).
 * Runs bench/compare_torch.py when `python3 -c "import torch"` works, else prints mixprec alone.
 *
 *   bun bench/compare.ts [--size 16777216] [--matmul 1024] [--batch 16]
 */

import { castInto, fusedAdamW, ops, randn, unscaleAndCheck } from "../src/mod.ts";
import { runRecipe } from "./_train_model.ts";
import { flag, formatTable, medianNs } from "./_harness.ts";

const size = Number(flag("size", String(1 << 24)));
const matmulSize = Number(flag("matmul", "1024"));
const batch = Number(flag("batch", "16"));

const ms: Record<string, number> = {};
const time = async (name: string, fn: () => unknown, budgetMs = 500) => {
  ms[name] = (await medianNs(fn, budgetMs)) / 1e6;
};

{
  const x = new Float32Array(size).map((_, i) => Math.sin(i));
  const bf = new Uint16Array(size);
  const half = new Uint16Array(size);
  const back = new Float32Array(size);
  await time("cast f32->bf16", () => castInto(x, bf, "float32", "bfloat16"));
  await time("cast f32->f16", () => castInto(x, half, "float32", "float16"));
  await time("cast bf16->f32", () => castInto(bf, back, "bfloat16", "float32"));
}
{
  const chunk = Math.floor(size / 100);
  const bf16 = Array.from({ length: 100 }, (_, i) => randn([chunk], { seed: i, dtype: "bfloat16" }));
  const f32 = Array.from({ length: 100 }, (_, i) => randn([chunk], { seed: i }));
  await time("unscale bf16 x100", () => unscaleAndCheck(bf16, 1 / 65536));
  await time("unscale f32 x100", () => unscaleAndCheck(f32, 1 / 65536));
  for (const t of [...bf16, ...f32]) t.dispose();
}
{
  const params = Array.from({ length: 4 }, (_, i) => randn([Math.floor(size / 4)], { seed: 10 + i }));
  const grads = Array.from({ length: 4 }, (_, i) => randn([Math.floor(size / 4)], { seed: 20 + i }));
  const optimizer = fusedAdamW({ lr: 1e-3 });
  await time("adamw f32 fused", () => optimizer.step(params, grads, { foundInf: false }));
  optimizer.dispose();
  for (const t of [...params, ...grads]) t.dispose();
}
for (const dtype of ["float32", "bfloat16"] as const) {
  const a = randn([matmulSize, matmulSize], { seed: 1, dtype });
  const b = randn([matmulSize, matmulSize], { seed: 2, dtype });
  await time(`matmul ${dtype === "float32" ? "f32" : "bf16"} ${matmulSize}`, () => ops.matmul(a, b).dispose());
  a.dispose();
  b.dispose();
}
for (const [recipe, label] of [
  ["fp32", `train step fp32 b${batch}`],
  ["mixed_bf16", `train step bf16 autocast b${batch}`],
] as const) {
  const result = await runRecipe(
    recipe,
    { batchSize: batch, steps: 40, seed: 0, device: "cpu", baseCheckpoint: "" },
    () => {},
  );
  ms[label] = result.stepMs;
}

let torch: Record<string, number | string | null> | null = null;
const probe = Bun.spawnSync(["python3", "-c", "import torch"]);
if (probe.exitCode === 0) {
  const child = Bun.spawnSync([
    "python3",
    new URL("./compare_torch.py", import.meta.url).pathname,
    "--size",
    String(size),
    "--matmul",
    String(matmulSize),
    "--batch",
    String(batch),
  ]);
  if (child.exitCode === 0) torch = JSON.parse(child.stdout.toString());
  else console.log(`compare_torch.py failed: ${child.stderr.toString()}`);
} else {
  console.log("PyTorch is not installed (pip install torch==2.13.0 for the CPU build): mixprec alone.");
}

const rows = Object.entries(ms).map(([name, mine]) => {
  const theirs = torch?.[name];
  const ratio = typeof theirs === "number" ? (theirs / mine).toFixed(2) : "-";
  const note = torch?.[`${name} error`];
  return [name, mine.toFixed(3), typeof theirs === "number" ? theirs.toFixed(3) : String(note ?? "-"), ratio];
});
console.log(
  `mixprec vs PyTorch ${torch?.torch ?? "(absent)"} on the CPU, median ms (${navigator.hardwareConcurrency} CPUs, torch threads ${torch?.threads ?? "-"}); ${size} elements, matmul ${matmulSize}, batch ${batch}\n`,
);
console.log(formatTable(["workload", "mixprec ms", "torch ms", "torch/mixprec"], rows));
