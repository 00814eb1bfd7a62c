import { describe, expect, test } from "bun:test";
import {
  checkpoint,
  discard,
  grad,
  record,
  stopGradient,
  type TapeReport,
  track,
  valueAndGrad,
} from "../src/autodiff.ts";
import { add, crossEntropy, gelu, linear, matmul, mean, mul, sub, sum, tanh, toDtype } from "../src/ops/mod.ts";
import { liveTensorCount, randn, type Tensor, tensor } from "../src/tensor.ts";
import { treeLeaves } from "../src/tree.ts";
import { autocast } from "../src/autocast.ts";
import { getPolicy } from "../src/policy.ts";

describe("autodiff", () => {
  test("valueAndGrad() returns gradients shaped like a nested params pytree, each in its parameter's dtype", () => {
    using w = tensor([
      [1, 2],
      [3, 4],
    ]);
    using b = tensor([0.5, -0.5], { dtype: "bf16" });
    using s = tensor([2], { dtype: "f16" });
    using x = tensor([[1, 1]]);
    const params = { layer: { w, b }, extra: [s, null] };
    const f = valueAndGrad((p: typeof params, input: Tensor) =>
      sum(mul(linear(input, p.layer.w, p.layer.b), p.extra[0]!)),
    );
    const [value, grads] = f(params, x);
    // y = x w^T + b = [3.5, 6.5]; loss = 2 * 10 = 20.
    expect(value).toBe(20);
    expect(grads.layer.w.dtype).toBe("float32");
    expect(grads.layer.b.dtype).toBe("bfloat16");
    expect(grads.extra[0]!.dtype).toBe("float16");
    expect(grads.extra[1]).toBeNull();
    expect([...grads.layer.w.toArray()]).toEqual([2, 2, 2, 2]);
    expect([...grads.layer.b.toArray()]).toEqual([2, 2]);
    expect([...grads.extra[0]!.toArray()]).toEqual([10]);
    for (const g of treeLeaves(grads)) g!.dispose();
  });

  test("a parameter the loss does not use gets a zero gradient", () => {
    using a = tensor([1, 2]);
    using unused = tensor([3], { dtype: "bf16" });
    const g = grad((p: { a: Tensor; unused: Tensor }) => sum(p.a))({ a, unused });
    expect([...g.unused.toArray()]).toEqual([0]);
    expect(g.unused.dtype).toBe("bfloat16");
    g.a.dispose();
    g.unused.dispose();
  });

  test("add and sub pass their gradient through uncopied, yet every parameter gets a tensor of its own and nothing leaks", () => {
    using a = tensor([1, 2, 3]);
    using b = tensor([10, 20, 30]);
    using c = tensor([-1, 0.5, 4]);
    using w = tensor([2, -3, 0.25]);
    const before = liveTensorCount();
    const f = (p: { a: Tensor; b: Tensor; c: Tensor; w: Tensor }) =>
      add(sum(mul(sub(add(add(p.a, p.b), p.c), p.b), p.w)), add(sum(add(p.a, p.a)), sum(add(p.b, p.c))));
    const [loss, grads] = valueAndGrad(f)({ a, b, c, w }) as [number, Record<"a" | "b" | "c" | "w", Tensor>];
    // loss = sum((a + c) * w) + 2 sum(a) + sum(b) + sum(c)
    expect(loss).toBeCloseTo(2 * 0 + -3 * 2.5 + 0.25 * 7 + 12 + 60 + 3.5, 5);
    const all = [grads.a, grads.b, grads.c, grads.w];
    expect(new Set(all).size).toBe(4);
    grads.b.dispose();
    expect([...grads.a.toArray()]).toEqual([4, -1, 2.25]);
    expect([...grads.c.toArray()]).toEqual([3, -2, 1.25]);
    expect([...grads.w.toArray()]).toEqual([0, 2.5, 7]);
    for (const g of all) g.dispose();
    expect(liveTensorCount()).toBe(before);
    // Two parameters whose gradient is the same pass-through tensor each get their own copy.
    const [, pair] = valueAndGrad((p: { a: Tensor; c: Tensor }) => sum(add(p.a, p.c)))({ a, c }) as [
      number,
      Record<"a" | "c", Tensor>,
    ];
    expect(pair.a).not.toBe(pair.c);
    pair.a.dispose();
    expect([...pair.c.toArray()]).toEqual([1, 1, 1]);
    pair.c.dispose();
    expect(liveTensorCount()).toBe(before);
  });

  test("hasAux returns the aux output alive and the loss value", () => {
    using x = tensor([1, 2, 3]);
    const before = liveTensorCount();
    const [[loss, aux], grads] = valueAndGrad(
      (p: { x: Tensor }) => {
        const y = mul(p.x, p.x);
        return [sum(y), { y }];
      },
      { hasAux: true },
    )({ x }) as [[number, { y: Tensor }], { x: Tensor }];
    expect(loss).toBe(14);
    expect([...aux.y.toArray()]).toEqual([1, 4, 9]);
    aux.y.dispose();
    grads.x.dispose();
    expect(liveTensorCount()).toBe(before);
  });

  test("stopGradient() blocks the gradient through its branch", () => {
    using x = tensor([2, 3]);
    const g = grad((p: { x: Tensor }) => sum(mul(p.x, stopGradient(p.x))))({ x });
    expect([...g.x.toArray()]).toEqual([2, 3]);
    g.x.dispose();
  });

  test("gradients through a float32 -> bfloat16 cast come back in float32 after bfloat16 rounding", () => {
    using x = tensor([1.00390625]); // 1 + 2^-8 rounds to 1 in bfloat16
    const g = grad((p: { x: Tensor }) => sum(mul(toDtype(p.x, "bfloat16"), tensor(3, { dtype: "bf16" }))))({ x });
    expect(g.x.dtype).toBe("float32");
    expect([...g.x.toArray()]).toEqual([3]);
    g.x.dispose();
  });

  test("a long chain of 20,000 ops differentiates without recursion", () => {
    using x = tensor([0.5]);
    using c = tensor([1.0001]);
    const g = grad((p: { x: Tensor }) => {
      let y = p.x;
      for (let i = 0; i < 20000; i++) y = mul(y, c);
      return sum(y);
    })({ x });
    expect(Math.abs(g.x.toArray()[0]! - 1.0001 ** 20000)).toBeLessThan(1e-3 * 1.0001 ** 20000);
    g.x.dispose();
  });

  test("checkpoint() gives the same gradients and keeps fewer activation bytes (reported)", () => {
    const width = 64;
    using w1 = randn([width, width], { seed: 1, std: 0.1 });
    using w2 = randn([width, width], { seed: 2, std: 0.1 });
    using x = randn([32, width], { seed: 3 });
    const block = (h: Tensor, a: Tensor, b: Tensor) => tanh(linear(gelu(linear(h, a)), b));
    const saved = checkpoint(block);
    const loss = (useCheckpoint: boolean) => (p: { w1: Tensor; w2: Tensor }) => {
      let h = x;
      for (let i = 0; i < 4; i++) h = useCheckpoint ? saved(h, p.w1, p.w2) : block(h, p.w1, p.w2);
      return mean(mul(h, h));
    };
    const reports: TapeReport[] = [];
    const run = (useCheckpoint: boolean) =>
      valueAndGrad(loss(useCheckpoint), { onForward: (r) => reports.push(r) })({ w1, w2 });
    const [plainLoss, plain] = run(false);
    const [ckptLoss, ckpt] = run(true);
    expect(ckptLoss).toBe(plainLoss);
    expect([...ckpt.w1.toArray()]).toEqual([...plain.w1.toArray()]);
    expect([...ckpt.w2.toArray()]).toEqual([...plain.w2.toArray()]);
    const [without, withCheckpoint] = reports as [TapeReport, TapeReport];
    console.log(
      `checkpoint: saved activations ${without.savedBytes} bytes without, ${withCheckpoint.savedBytes} bytes with (${(without.savedBytes / withCheckpoint.savedBytes).toFixed(1)}x less)`,
    );
    expect(withCheckpoint.savedBytes * 2).toBeLessThan(without.savedBytes);
    for (const g of [plain.w1, plain.w2, ckpt.w1, ckpt.w2]) g.dispose();
  });

  test("the forward pass keeps only what a backward function reads: a residual branch's output is freed", () => {
    const [m, n] = [8, 16];
    using x = randn([m, n], { seed: 11 });
    using w = randn([n, n], { seed: 12, std: 0.3 });
    // h = tanh(x w) is read by tanh's backward (its output) and by the second matmul's (operand a);
    // y = h w, z = h + y and the loss are read by no backward function.
    const loss = (p: { w: Tensor }) => {
      const h = tanh(matmul(x, p.w));
      return sum(add(h, matmul(h, p.w)));
    };
    let report: TapeReport | undefined;
    const [value, g] = valueAndGrad(loss, { onForward: (r) => (report = r) })({ w });
    expect(report!.nodes).toBe(5);
    expect(report!.savedTensors).toBe(1);
    expect(report!.savedBytes).toBe(m * n * 4);
    // The same loss and gradient as a float64 evaluation of the same function.
    const xs = x.toArray();
    const ws = w.toArray();
    const lossOf = (wv: Float64Array) => {
      let total = 0;
      const h = new Float64Array(m * n);
      for (let i = 0; i < m; i++) {
        for (let j = 0; j < n; j++) {
          let s = 0;
          for (let k = 0; k < n; k++) s += xs[i * n + k]! * wv[k * n + j]!;
          h[i * n + j] = Math.tanh(s);
        }
      }
      for (let i = 0; i < m; i++) {
        for (let j = 0; j < n; j++) {
          let s = h[i * n + j]!;
          for (let k = 0; k < n; k++) s += h[i * n + k]! * wv[k * n + j]!;
          total += s;
        }
      }
      return total;
    };
    const w64 = Float64Array.from(ws);
    expect(Math.abs(value - lossOf(w64))).toBeLessThan(1e-3 * (1 + Math.abs(value)));
    const gw = g.w.toArray();
    for (const index of [0, 17, 100, 255]) {
      const step = 1e-4;
      const up = Float64Array.from(w64);
      const down = Float64Array.from(w64);
      up[index]! += step;
      down[index]! -= step;
      const numeric = (lossOf(up) - lossOf(down)) / (2 * step);
      expect(Math.abs(gw[index]! - numeric)).toBeLessThan(2e-3 * (1 + Math.abs(numeric)));
    }
    g.w.dispose();
  });

  test("the backward pass frees a saved tensor once its last reader has run, not before", () => {
    using w = randn([4, 4], { seed: 13 });
    let laterFreed: boolean | undefined;
    let earlierFreed: boolean | undefined;
    const [, g] = valueAndGrad((p: { w: Tensor }) => {
      const a = tanh(p.w); // tanh's backward reads a: it runs last.
      // A pass-through op between the two tanh nodes that observes, when its backward runs,
      // whether b (read only by the later tanh's backward, which has run) and a are freed.
      const copy = track(a.clone());
      let b: Tensor | undefined;
      const passed = record(copy, [a], [], (grad) => {
        laterFreed = b!.disposed;
        earlierFreed = a.disposed;
        return [grad.clone()];
      });
      b = tanh(passed);
      return sum(b);
    })({ w });
    expect(laterFreed).toBe(true);
    expect(earlierFreed).toBe(false);
    g.w.dispose();
  });

  test("discard() frees a temporary no backward function reads and leaves a saved one to the tape", () => {
    using x = randn([4, 8], { seed: 14 });
    using w = randn([8, 8], { seed: 15, std: 0.3 });
    const run = (release: boolean) =>
      valueAndGrad((p: { w: Tensor }) => {
        const h = tanh(matmul(x, p.w));
        const branch = matmul(h, p.w);
        const out = add(h, branch);
        if (release) {
          discard(branch, h);
          expect(branch.disposed).toBe(true); // Read by no backward function.
          expect(h.disposed).toBe(false); // Read by tanh's and the matmul's.
        }
        return sum(mul(out, out));
      })({ w });
    const [plainLoss, plain] = run(false);
    const [releasedLoss, released] = run(true);
    expect(releasedLoss).toBe(plainLoss);
    expect(released.w.bits()).toEqual(plain.w.bits());
    // Outside any scope the caller owns its tensors: discard() leaves them alone.
    using own = tanh(x);
    discard(own);
    expect(own.disposed).toBe(false);
    plain.w.dispose();
    released.w.dispose();
  });

  test("a 50-step training loop does not grow the number of live native allocations", () => {
    using w1 = randn([16, 8], { seed: 4, std: 0.3 });
    using b1 = tensor(new Float32Array(16));
    using w2 = randn([4, 16], { seed: 5, std: 0.3 });
    using x = randn([10, 8], { seed: 6 });
    const labels = [0, 1, 2, 3, 0, 1, 2, 3, 0, 1];
    const params = { w1, b1, w2 };
    const step = valueAndGrad((p: typeof params, input: Tensor) => {
      const h = checkpoint((a: Tensor, w: Tensor, b: Tensor) => gelu(linear(a, w, b)))(input, p.w1, p.b1);
      const logits = linear(toDtype(h, "bfloat16"), toDtype(p.w2, "bfloat16"));
      return crossEntropy(logits, labels);
    });
    const counts: number[] = [];
    const losses: number[] = [];
    for (let i = 0; i < 50; i++) {
      const [loss, grads] = step(params, x);
      losses.push(loss as number);
      for (const [name, p] of Object.entries(params)) {
        const g = grads[name as keyof typeof params];
        const pv = p.data as Float32Array;
        const gv = g.toArray();
        for (let j = 0; j < pv.length; j++) pv[j]! -= 0.5 * gv[j]!;
        g.dispose();
      }
      counts.push(liveTensorCount());
    }
    expect(new Set(counts.slice(1)).size).toBe(1);
    expect(counts[49]).toBe(counts[0]);
    expect(losses[49]!).toBeLessThan(losses[0]!);
  });

  test("under autocast(mixed_bf16) linear runs in bfloat16, cross-entropy in float32, and float32 params get float32 gradients", () => {
    using w = randn([3, 4], { seed: 7 });
    using x = randn([2, 4], { seed: 8 });
    const dtypes: string[] = [];
    const loss = autocast(getPolicy("mixed_bf16"), (p: { w: Tensor }) => {
      const logits = linear(x, p.w);
      dtypes.push(logits.dtype);
      const l = crossEntropy(logits, [0, 2]);
      dtypes.push(l.dtype);
      return l;
    });
    const [value, grads] = valueAndGrad(loss)({ w });
    expect(dtypes).toEqual(["bfloat16", "float32"]);
    expect(grads.w.dtype).toBe("float32");
    // Every gradient element went through bfloat16 (the linear's weight gradient is rounded there).
    const g = grads.w.toArray();
    const rounded = tensor(g, { dtype: "bf16" });
    expect([...rounded.toArray()]).toEqual([...g]);
    rounded.dispose();
    expect(Number.isFinite(value as number)).toBe(true);
    grads.w.dispose();
  });

  test("non-tensor parameters and non-scalar losses are refused with the fix named", () => {
    using x = tensor([1, 2]);
    // The types refuse a number leaf too (TreeOf); the cast shows the run-time check.
    const withNumber = (p: { x: Tensor; n: number }) => sum(p.x);
    expect(() => valueAndGrad(withNumber as unknown as (p: { x: Tensor }) => Tensor)({ x, n: 3 } as never)).toThrow(
      /nn.partition/,
    );
    expect(() => valueAndGrad((p: { x: Tensor }) => add(p.x, p.x))({ x })).toThrow(/scalar Tensor/);
  });
});
