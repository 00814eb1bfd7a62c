import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import { valueAndGrad } from "../../src/autodiff.ts";
import { autocast } from "../../src/autocast.ts";
import { type DtypeName, dtypeInfo } from "../../src/dtype.ts";
import { setThreads } from "../../src/mod.ts";
import { attention, causalSelfAttention, concat, mul, reshape, slice, sum } from "../../src/ops/mod.ts";
import { getPolicy } from "../../src/policy.ts";
import { liveTensorCount, randn, type Tensor, tensor } from "../../src/tensor.ts";
import { gradCheck } from "../_gradcheck.ts";
import { type AttentionCase, attention64 } from "./_attention_reference.ts";

/** The packed GPT-2 layout [B, T, 3C] in float64, as llm.c's attention_forward. */
function packed64(qkv: Float64Array, batch: number, steps: number, channels: number, heads: number): Float64Array {
  const hd = channels / heads;
  const out = new Float64Array(batch * steps * channels);
  const at = (b: number, t: number, part: number, h: number, d: number) =>
    qkv[(b * steps + t) * 3 * channels + part * channels + h * hd + d]!;
  for (let b = 0; b < batch; b++)
    for (let h = 0; h < heads; h++)
      for (let t = 0; t < steps; t++) {
        const scores: number[] = [];
        for (let j = 0; j <= t; j++) {
          let s = 0;
          for (let d = 0; d < hd; d++) s += at(b, t, 0, h, d) * at(b, j, 1, h, d);
          scores.push(s / Math.sqrt(hd));
        }
        const max = Math.max(...scores);
        const e = scores.map((s) => Math.exp(s - max));
        const total = e.reduce((p, v) => p + v, 0);
        for (let d = 0; d < hd; d++) {
          let s = 0;
          for (let j = 0; j <= t; j++) s += (e[j]! / total) * at(b, j, 2, h, d);
          out[(b * steps + t) * channels + h * hd + d] = s;
        }
      }
  return out;
}

type Params = { q: Tensor; k: Tensor; v: Tensor };

/** A random tensor of `shape` rounded to `dtype` (the reference reads the rounded values). */
function random(shape: number[], seed: number, dtype: DtypeName): Tensor {
  using t = randn(shape, { seed });
  return t.to(dtype);
}

/** Largest |got - want| / (1 + |want|). */
function worst(got: Float32Array, want: Float64Array): number {
  expect(got.length).toBe(want.length);
  let w = 0;
  for (let i = 0; i < got.length; i++) w = Math.max(w, Math.abs(got[i]! - want[i]!) / (1 + Math.abs(want[i]!)));
  return w;
}

/**
 * Runs attention forward and backward (loss sum(out * r)) and compares with the float64 reference
 * fed the same dtype-rounded inputs. Tolerances, as multiples of the dtype's eps relative to
 * 1 + |reference|: float32 accumulates rounding over D- and S-long sums in float32 (16 eps forward,
 * 64 eps for gradients, which add one more sum); 16-bit dtypes round their stored result once
 * (half an ulp) over a float32 computation far below their eps (1 eps forward, 2 eps for
 * gradients, which also read the rounded output and output gradient).
 */
function compare(dtype: DtypeName, c: AttentionCase, seed: number): void {
  const { batch: B, stepsQ: T, stepsKv: S, headsQ, headsKv, headDim: D } = c;
  const q = random([B, T, headsQ, D], seed, dtype);
  const k = random([B, S, headsKv, D], seed + 1, dtype);
  const v = random([B, S, headsKv, D], seed + 2, dtype);
  using r = randn([B * T * headsQ * D], { seed: seed + 3 });
  using rRounded = r.to(dtype);
  using mask = c.mask === null ? null : tensor(Float32Array.from(c.mask), { shape: [B, S] });
  const options = { causal: c.causal, mask, scale: c.scale };
  try {
    const want = attention64(c, q.toArray(), k.toArray(), v.toArray(), rRounded.toArray());
    const [, grads] = valueAndGrad((p: Params) => sum(mul(reshape(attention(p.q, p.k, p.v, options), [-1]), r)))({
      q,
      k,
      v,
    });
    using out = attention(q, k, v, options);
    expect(out.dtype).toBe(dtype);
    expect(grads.q.dtype).toBe(dtype);
    const eps = dtypeInfo(dtype).eps;
    const wide = dtype === "float32";
    expect(worst(out.toArray(), want.out)).toBeLessThanOrEqual((wide ? 16 : 1) * eps);
    for (const [got, reference] of [
      [grads.q, want.dq],
      [grads.k, want.dk],
      [grads.v, want.dv],
    ] as const) {
      expect(worst(got.toArray(), reference)).toBeLessThanOrEqual((wide ? 64 : 2) * eps);
      got.dispose();
    }
  } finally {
    for (const t of [q, k, v]) t.dispose();
  }
}

/** HF-style right padding: batch b keeps its first S - pad[b] keys. */
function padding(batch: number, steps: number, pads: readonly number[]): Float64Array {
  const mask = new Float64Array(batch * steps);
  for (let b = 0; b < batch; b++) for (let j = 0; j < steps - pads[b % pads.length]!; j++) mask[b * steps + j] = 1;
  return mask;
}

// [T, S, Hq, Hkv, D, causal, padded]: tiles are 16 queries by 32 keys, so lengths straddle them.
const CASES: readonly (readonly [number, number, number, number, number, boolean, boolean])[] = [
  [1, 1, 1, 1, 4, true, false],
  [1, 5, 2, 1, 8, false, true],
  [15, 15, 2, 2, 8, true, false],
  [16, 16, 4, 1, 16, true, true],
  [17, 17, 4, 2, 8, true, true],
  [33, 70, 4, 2, 20, true, true],
  [40, 23, 4, 1, 16, false, true],
  [40, 23, 2, 1, 8, true, false],
  [100, 100, 2, 1, 32, true, true],
  [300, 300, 2, 2, 8, true, false],
  [300, 129, 2, 1, 8, false, true],
];

function caseOf([T, S, headsQ, headsKv, D, causal, padded]: (typeof CASES)[number]): AttentionCase {
  const batch = 2;
  return {
    batch,
    stepsQ: T,
    stepsKv: S,
    headsQ,
    headsKv,
    headDim: D,
    causal,
    mask: padded ? padding(batch, S, [0, Math.min(S - 1, 3 + (S >> 2))]) : null,
    scale: 1 / Math.sqrt(D),
  };
}

describe("attention", () => {
  for (const dtype of ["float32", "float16", "bfloat16"] as const) {
    test(`attention() in ${dtype} matches float64 attention and its gradients for T = 1 to 300, S != T, GQA 1, 2 and 4, with and without padding`, () => {
      CASES.forEach((row, i) => compare(dtype, caseOf(row), 10 * i + 1));
    });
  }

  test("attention() gives 0, not NaN, and zero gradients for query rows whose keys are all padded", () => {
    for (const dtype of ["float32", "bfloat16"] as const) {
      // Batch 1 is entirely padding; batch 0 pads its last two keys.
      const mask = Float64Array.from([1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
      const c: AttentionCase = {
        batch: 2,
        stepsQ: 5,
        stepsKv: 6,
        headsQ: 2,
        headsKv: 1,
        headDim: 4,
        causal: false,
        mask,
        scale: 0.5,
      };
      compare(dtype, c, 77);
      using q = random([2, 5, 2, 4], 1, dtype);
      using k = random([2, 6, 1, 4], 2, dtype);
      using m = tensor(Float32Array.from(mask), { shape: [2, 6] });
      using out = attention(q, k, k, { mask: m, scale: 0.5 });
      const values = out.toArray();
      expect(values.subarray(40).every((x) => x === 0)).toBe(true);
      expect(values.every(Number.isFinite)).toBe(true);
    }
  });

  test("attention() with no keys gives zeros, and with no queries gives zero key gradients", () => {
    using q = random([2, 3, 2, 4], 16, "float32");
    using none = tensor(new Float32Array(0), { shape: [2, 0, 1, 4] });
    using out = attention(q, none, none);
    expect(out.toArray().every((x) => x === 0)).toBe(true);
    using noQueries = tensor(new Float32Array(0), { shape: [2, 0, 2, 4] });
    using k = random([2, 5, 1, 4], 17, "float32");
    const [, g] = valueAndGrad((p: Params) => sum(attention(p.q, p.k, p.v, { causal: true })))({
      q: noQueries,
      k,
      v: k,
    });
    expect(g.k.toArray().every((x) => x === 0)).toBe(true);
    for (const t of [g.q, g.k, g.v]) t.dispose();
  });

  test("causal attention with fewer keys than queries aligns to the bottom right: the first T - S rows give 0", () => {
    using q = random([1, 6, 1, 2], 3, "float32");
    using k = random([1, 4, 1, 2], 4, "float32");
    using out = attention(q, k, k, { causal: true });
    const values = out.toArray();
    expect(Array.from(values.subarray(0, 4))).toEqual([0, 0, 0, 0]);
    // The last query sees every key: it equals non-causal attention's last row.
    using full = attention(q, k, k);
    expect(Array.from(values.subarray(10))).toEqual(Array.from(full.toArray().subarray(10)));
  });

  test("attention() gradients match finite differences of the float64 reference", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 2 }),
        fc.integer({ min: 1, max: 5 }),
        fc.integer({ min: 1, max: 6 }),
        fc.constantFrom(1, 2),
        fc.integer({ min: 1, max: 3 }),
        fc.boolean(),
        fc.nat(1000),
        (batch, stepsQ, stepsKv, group, headDim, causal, seed) => {
          const c: AttentionCase = {
            batch,
            stepsQ,
            stepsKv,
            headsQ: group,
            headsKv: 1,
            headDim,
            causal,
            mask: null,
            scale: 0.8,
          };
          gradCheck(
            ([q, k, v]) => attention(q!, k!, v!, { causal, scale: 0.8 }),
            ([q, k, v]) => attention64(c, q!, k!, v!).out,
            [
              [batch, stepsQ, group, headDim],
              [batch, stepsKv, 1, headDim],
              [batch, stepsKv, 1, headDim],
            ],
            seed,
            { atol: 5e-4, rtol: 5e-3 },
          );
        },
      ),
      { numRuns: 20 },
    );
  });

  test("attention() and causalSelfAttention() give the same bits on 1 and 2 threads, forward and backward", () => {
    const run = (dtype: DtypeName) => {
      // 2 * 4 * 130 * 130 * 32 multiply-adds: far above the parallel threshold, with ragged tiles.
      using q = random([2, 130, 4, 32], 5, dtype);
      using k = random([2, 130, 2, 32], 6, dtype);
      using v = random([2, 130, 2, 32], 7, dtype);
      using m = tensor(Float32Array.from(padding(2, 130, [0, 9])), { shape: [2, 130] });
      using r = randn([2 * 130 * 4 * 32], { seed: 8 });
      const [, g] = valueAndGrad((p: Params) =>
        sum(mul(reshape(attention(p.q, p.k, p.v, { causal: true, mask: m }), [-1]), r)),
      )({ q, k, v });
      using qkv = random([2, 130, 3 * 128], 9, dtype);
      using r2 = randn([2 * 130 * 128], { seed: 10 });
      const [, g2] = valueAndGrad((p: { qkv: Tensor }) => sum(mul(reshape(causalSelfAttention(p.qkv, 4), [-1]), r2)))({
        qkv,
      });
      using out = attention(q, k, v, { causal: true, mask: m });
      using packed = causalSelfAttention(qkv, 4);
      const bits = [out.bits(), g.q.bits(), g.k.bits(), g.v.bits(), packed.bits(), g2.qkv.bits()];
      for (const t of [g.q, g.k, g.v, g2.qkv]) t.dispose();
      return bits;
    };
    try {
      for (const dtype of ["float32", "bfloat16"] as const) {
        setThreads(1);
        const one = run(dtype);
        setThreads(2);
        const two = run(dtype);
        one.forEach((bits, i) => expect(two[i]).toEqual(bits));
      }
    } finally {
      setThreads(0);
    }
  });

  test("causalSelfAttention() on packed qkv gives the bits of attention() on the split q, k, v, gradients too", () => {
    const [B, T, H, D] = [2, 37, 3, 8];
    const C = H * D;
    using qkv = random([B, T, 3 * C], 11, "bfloat16");
    using r = randn([B * T * C], { seed: 12 });
    const part = (x: Tensor, i: number) => reshape(slice(x, [0, 0, i * C], [B, T, (i + 1) * C]), [B, T, H, D]);
    const split = (x: Tensor) => attention(part(x, 0), part(x, 1), part(x, 2), { causal: true });
    const [, packedGrad] = valueAndGrad((p: { qkv: Tensor }) =>
      sum(mul(reshape(causalSelfAttention(p.qkv, H), [-1]), r)),
    )({ qkv });
    const [, splitGrad] = valueAndGrad((p: { qkv: Tensor }) => sum(mul(reshape(split(p.qkv), [-1]), r)))({ qkv });
    using a = causalSelfAttention(qkv, H);
    using b = split(qkv);
    expect(a.bits()).toEqual(b.bits());
    expect(packedGrad.qkv.bits()).toEqual(splitGrad.qkv.bits());
    packedGrad.qkv.dispose();
    splitGrad.qkv.dispose();
  });

  test("a training step keeps the output and one float32 log-sum-exp per row, never a T x S matrix", () => {
    const [T, H, D] = [512, 2, 16];
    using q = random([1, T, H, D], 13, "bfloat16");
    let saved = 0;
    const [, g] = valueAndGrad((p: { q: Tensor }) => sum(attention(p.q, p.q, p.q, { causal: true })), {
      onForward: (report) => {
        saved = report.savedBytes;
      },
    })({ q });
    g.q.dispose();
    // out (bfloat16) + lse (float32), which the backward pass reads (the scalar loss is freed once
    // read); probabilities alone would be T * T * H * 4 bytes.
    expect(saved).toBe(T * H * D * 2 + H * T * 4);
  });

  test("attention() computes in the policy's compute dtype under autocast", () => {
    using q = random([1, 3, 2, 4], 14, "float32");
    const out = autocast(getPolicy("mixed_bf16"), () => attention(q, q, q, { causal: true }))();
    expect(out.dtype).toBe("bfloat16");
    out.dispose();
  });

  test("attention() rejects mismatched head sizes, head counts, masks and options, creating nothing", () => {
    using q = tensor(new Float32Array(2 * 3 * 4 * 8), { shape: [2, 3, 4, 8] });
    using k = tensor(new Float32Array(2 * 5 * 2 * 8), { shape: [2, 5, 2, 8] });
    using k3 = tensor(new Float32Array(2 * 5 * 3 * 8), { shape: [2, 5, 3, 8] });
    using k6 = tensor(new Float32Array(2 * 5 * 2 * 6), { shape: [2, 5, 2, 6] });
    using kb = tensor(new Float32Array(1 * 5 * 2 * 8), { shape: [1, 5, 2, 8] });
    using mask = tensor(new Float32Array(2 * 4), { shape: [2, 4] });
    using wide = tensor(new Float32Array(300), { shape: [1, 1, 1, 300] });
    using ids = tensor(new Float32Array(2 * 5), { shape: [2, 5], dtype: "float8_e4m3fn" });
    const before = liveTensorCount();
    expect(() => attention(q, k6, k6)).toThrow(/head size of q \[2, 3, 4, 8\] \(8\) differs from that of k/);
    expect(() => attention(q, k3, k3)).toThrow(/4 heads, which is not a multiple of k's 3/);
    expect(() => attention(q, k, k3)).toThrow(/v \[2, 5, 3, 8\] must have the shape of k/);
    expect(() => attention(q, kb, kb)).toThrow(/different batch sizes/);
    expect(() => attention(q, k, k, { mask })).toThrow(/mask \[2, 4\] must be \[B, S\] = \[2, 5\]/);
    expect(() => attention(q, k, k, { mask: ids })).toThrow(/mask has dtype float8_e4m3fn/);
    expect(() => attention(reshape(q, [2, 3, 32]), k, k)).toThrow(/q \[2, 3, 32\] must be 4-D/);
    expect(() => attention(q, k, k, { scale: Number.NaN })).toThrow(RangeError);
    expect(() => attention(q, k, k, { causal: 1 as unknown as boolean })).toThrow(/causal must be true or false/);
    expect(() => attention(wide, wide, wide)).toThrow(/head size 300 is outside 1..256/);
    expect(liveTensorCount()).toBe(before + 1); // Only the reshape above.
  });

  test("causalSelfAttention() gradients match finite differences of a float64 reference", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 2 }),
        fc.integer({ min: 1, max: 5 }),
        fc.integer({ min: 1, max: 2 }),
        fc.integer({ min: 1, max: 3 }),
        fc.nat(1000),
        (batch, steps, heads, headDim, seed) => {
          const channels = heads * headDim;
          gradCheck(
            ([x]) => causalSelfAttention(x!, heads),
            ([x]) => packed64(x!, batch, steps, channels, heads),
            [[batch, steps, 3 * channels]],
            seed,
            { atol: 5e-4, rtol: 5e-3 },
          );
        },
      ),
      { numRuns: 20 },
    );
  });

  test("causalSelfAttention() in bfloat16 stays within bfloat16 rounding of float32", () => {
    const values = Float32Array.from({ length: 2 * 6 * 24 }, (_, i) => Math.sin(i) * 0.5);
    using x32 = tensor(values, { shape: [2, 6, 24] });
    using x16 = x32.to("bf16");
    using y32 = causalSelfAttention(x32, 2);
    using y16 = causalSelfAttention(x16, 2);
    expect(y16.dtype).toBe("bfloat16");
    const a = y32.toArray();
    const b = y16.toArray();
    for (let i = 0; i < a.length; i++) expect(Math.abs(a[i]! - b[i]!)).toBeLessThan(0.03);
  });

  test("causalSelfAttention() matches the float64 reference at short and long T (17, 64, 300), gradients too", () => {
    for (const steps of [17, 64, 300]) {
      const batch = 1;
      const heads = 2;
      const channels = 8;
      const values = Float64Array.from({ length: batch * steps * 3 * channels }, (_, i) => Math.sin(0.7 * i) * 0.8);
      using x = tensor(Float32Array.from(values), { shape: [batch, steps, 3 * channels] });
      using y = causalSelfAttention(x, heads);
      const expected = packed64(Float64Array.from(x.toArray()), batch, steps, channels, heads);
      expect(worst(y.toArray(), expected)).toBeLessThanOrEqual(16 * dtypeInfo("float32").eps);
    }
    fc.assert(
      fc.property(fc.constantFrom(64, 66), fc.nat({ max: 1000 }), (steps, seed) => {
        gradCheck(
          ([x]) => causalSelfAttention(x!, 1),
          ([x]) => packed64(x!, 1, steps, 2, 1),
          [[1, steps, 6]],
          seed,
          { atol: 5e-4, rtol: 5e-3 },
        );
      }),
      { numRuns: 2 },
    );
  });

  test("causalSelfAttention() refuses heads that do not divide the channels", () => {
    using x = tensor(new Float32Array(9), { shape: [1, 1, 9] });
    expect(() => causalSelfAttention(x, 2)).toThrow(RangeError);
  });

  test("concat of causalSelfAttention() outputs over batches equals one batched call", () => {
    using qkv = random([2, 20, 3 * 16], 15, "float16");
    using whole = causalSelfAttention(qkv, 2);
    using first = causalSelfAttention(slice(qkv, [0, 0, 0], [1, 20, 48]), 2);
    using second = causalSelfAttention(slice(qkv, [1, 0, 0], [2, 20, 48]), 2);
    using joined = concat([first, second], 0);
    expect(joined.bits()).toEqual(whole.bits());
  });
});
