import { describe, expect, test } from "bun:test";
import { valueAndGrad } from "../../src/autodiff.ts";
import { autocast } from "../../src/autocast.ts";
import { embedding, layerNorm, linear, mlp, rmsNorm, transformerBlock } from "../../src/nn/mod.ts";
import { add, crossEntropy, reshape } from "../../src/ops/mod.ts";
import { getPolicy } from "../../src/policy.ts";
import { liveTensorCount, randn, type Tensor } from "../../src/tensor.ts";
import { treeLeaves } from "../../src/tree.ts";
import { gradCheck } from "../_gradcheck.ts";

function disposeTree(tree: unknown): void {
  for (const leaf of treeLeaves(tree as never)) (leaf as Tensor | null)?.dispose?.();
}

describe("nn layers", () => {
  test("init is deterministic for a seed and follows PyTorch's nn.Linear bound", () => {
    const layer = linear({ inFeatures: 16, outFeatures: 4 });
    const a = layer.init({ seed: 3 });
    const b = layer.init({ seed: 3 });
    expect([...a.weight.toArray()]).toEqual([...b.weight.toArray()]);
    expect(a.weight.toArray().every((v) => Math.abs(v) <= 0.25)).toBe(true);
    expect([...a.bias!.toArray()]).not.toEqual([...a.weight.toArray().slice(0, 4)]);
    disposeTree([a, b]);
    expect(() => linear({ inFeatures: 0, outFeatures: 1 })).toThrow(RangeError);
    expect(() => linear({ inFeatures: 1, outFeatures: 1 }).init({ seed: -1 })).toThrow(RangeError);
  });

  test("mlp() gradients with respect to its input match finite differences", () => {
    const layer = mlp({ inFeatures: 3, hidden: 5, activation: "silu" });
    const params = layer.init({ seed: 1 });
    const w1 = params.fc.weight.toArray();
    const b1 = params.fc.bias!.toArray();
    const w2 = params.proj.weight.toArray();
    const b2 = params.proj.bias!.toArray();
    gradCheck(
      ([x]) => layer.apply(params, x!),
      ([x]) => {
        const out = new Float64Array(2 * 3);
        for (let r = 0; r < 2; r++) {
          const h: number[] = [];
          for (let j = 0; j < 5; j++) {
            let s = b1[j]!;
            for (let i = 0; i < 3; i++) s += x![r * 3 + i]! * w1[j * 3 + i]!;
            h.push(s / (1 + Math.exp(-s)));
          }
          for (let o = 0; o < 3; o++) {
            let s = b2[o]!;
            for (let j = 0; j < 5; j++) s += h[j]! * w2[o * 5 + j]!;
            out[r * 3 + o] = s;
          }
        }
        return out;
      },
      [[2, 3]],
      7,
    );
    disposeTree(params);
  });

  test("applying layers outside valueAndGrad leaves only the result alive", () => {
    const block = transformerBlock({ dim: 8, heads: 2, norm: "rms" });
    const params = block.init({ seed: 0 });
    using x = randn([2, 3, 8], { seed: 1 });
    const before = liveTensorCount();
    const y = block.apply(params, x);
    expect(liveTensorCount()).toBe(before + 1);
    y.dispose();
    disposeTree(params);
  });

  test("a tiny character transformer learns a repeated sequence, with and without checkpointing, without leaking", () => {
    const vocab = 8;
    const dim = 16;
    const steps = 8;
    const tokens = embedding({ vocabulary: vocab, dim, std: 0.3 });
    const positions = embedding({ vocabulary: steps, dim, std: 0.3 });
    const head = linear({ inFeatures: dim, outFeatures: vocab });
    const norm = layerNorm({ dim });
    const text = [0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7, 0];
    const inputs = text.slice(0, 16);
    const targets = text.slice(1, 17);
    const run = (useCheckpoint: boolean, policy: string) => {
      const block = transformerBlock({ dim, heads: 2, checkpoint: useCheckpoint });
      const params = {
        tokens: tokens.init({ seed: 1 }),
        positions: positions.init({ seed: 2 }),
        block: block.init({ seed: 3 }),
        norm: norm.init({ seed: 4 }),
        head: head.init({ seed: 5 }),
      };
      const loss = autocast(getPolicy(policy), (p: typeof params) => {
        const x = add(
          tokens.apply(p.tokens, { ids: inputs, shape: [2, steps] }),
          positions.apply(p.positions, { ids: [0, 1, 2, 3, 4, 5, 6, 7] }),
        );
        const logits = head.apply(p.head, norm.apply(p.norm, block.apply(p.block, x)));
        return crossEntropy(reshape(logits, [16, vocab]), targets);
      });
      const step = valueAndGrad(loss);
      const losses: number[] = [];
      const counts: number[] = [];
      let firstGrads: number[] = [];
      for (let i = 0; i < 30; i++) {
        const [value, grads] = step(params);
        losses.push(value as number);
        const pairs = treeLeaves(params as never) as Tensor[];
        const gs = treeLeaves(grads as never) as Tensor[];
        if (i === 0) firstGrads = [...gs[0]!.toArray()];
        pairs.forEach((p, j) => {
          const pv = p.data as Float32Array;
          const gv = gs[j]!.toArray();
          for (let k = 0; k < pv.length; k++) pv[k]! -= 0.1 * gv[k]!;
          gs[j]!.dispose();
        });
        counts.push(liveTensorCount());
      }
      disposeTree(params);
      return { losses, counts, firstGrads };
    };
    const plain = run(false, "fp32");
    const checkpointed = run(true, "fp32");
    expect(checkpointed.firstGrads).toEqual(plain.firstGrads);
    expect(checkpointed.losses).toEqual(plain.losses);
    expect(plain.losses[29]!).toBeLessThan(plain.losses[0]! * 0.5);
    expect(new Set(plain.counts).size).toBe(1);
    expect(new Set(checkpointed.counts).size).toBe(1);
    const mixed = run(false, "mixed_bf16");
    expect(mixed.losses[29]!).toBeLessThan(mixed.losses[0]! * 0.5);
  });

  test("rmsNorm and layerNorm layers start as plain normalizations", () => {
    const r = rmsNorm({ dim: 4 });
    const l = layerNorm({ dim: 4 });
    const rp = r.init({ seed: 0 });
    const lp = l.init({ seed: 0 });
    expect([...rp.weight.toArray()]).toEqual([1, 1, 1, 1]);
    expect([...lp.bias.toArray()]).toEqual([0, 0, 0, 0]);
    disposeTree([rp, lp]);
  });
});
