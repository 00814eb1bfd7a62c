/**
 * The three models bench/step_bench.ts times one training step of, built from the public API only
 * (src/mod.ts: `nn` layers and `ops`), so the benchmark measures whatever the ops are when it runs.
 * bench/compare_step_torch.py builds the same architectures and shapes in PyTorch.
 *
 * - demo: the training demo's model (bench/_train_model.ts), as the demo builds it.
 * - mid: a GPT (vocabulary 256, width 256, 8 heads, 4 layers, MLP 1024, context 128, batch 8),
 *   pre-norm blocks from `nn.transformerBlock` (GELU, tanh form; fused causal self-attention).
 * - llama: a LLaMA-shaped model (hidden 128, 4 layers, 4 query heads / 2 KV heads, SwiGLU MLP 344,
 *   vocabulary 256, RMSNorm, RoPE, batch 4, sequence 128), from ops. Three pieces have no native op
 *   yet and are composed from existing ops behind small functions (`attentionOp`, `ropeOp`,
 *   `swigluOp`); each uses `ops.attention`, `ops.rope` or `ops.swiglu` instead as soon as the
 *   library exports it, so the benchmark picks the native kernels up when they land.
 *
 * @module
 */

import { nn, ops, randn, type Tensor, tensor, type Tree } from "../src/mod.ts";
import { CONFIG as DEMO, demoLoss, initModel, type Model as DemoModel } from "./_train_model.ts";
import { VOCAB } from "./_train_data.ts";

/** One model as the step benchmark sees it. */
export interface StepModel {
  readonly name: ConfigName;
  /** One line: the architecture and shapes. */
  readonly describe: string;
  readonly vocabulary: number;
  readonly context: number;
  /** The batch size of the timed step (the memory table uses its own). */
  readonly batch: number;
  /** Fresh float32 parameters. */
  init(seed: number): Tree<Tensor>;
  /** Mean next-token cross-entropy of a batch of `batch` sequences of `context` ids. */
  loss(params: Tree<Tensor>, inputs: Int32Array, targets: Int32Array, batch: number): Tensor;
  /** Which pieces ran natively and which were composed (llama); empty for the others. */
  readonly notes: readonly string[];
  /** Frees constant tensors (RoPE tables). */
  dispose(): void;
}

export const CONFIG_NAMES = ["demo", "mid", "llama"] as const;
export type ConfigName = (typeof CONFIG_NAMES)[number];

/** The sizes, shared with bench/compare_step_torch.py (which has the same numbers). */
export const SIZES = Object.freeze({
  demo: { vocabulary: VOCAB.length, context: DEMO.context, batch: 16 },
  mid: { vocabulary: 256, context: 128, batch: 8, width: 256, heads: 8, layers: 4, hidden: 1024 },
  llama: {
    vocabulary: 256,
    context: 128,
    batch: 4,
    width: 128,
    heads: 4,
    kvHeads: 2,
    layers: 4,
    hidden: 344,
    theta: 10_000,
    eps: 1e-6,
  },
});

/** Builds one configuration's model. */
export function stepModel(name: ConfigName): StepModel {
  if (name === "demo") return demoModel();
  if (name === "mid") return midModel();
  if (name === "llama") return llamaModel();
  throw new RangeError(`Unknown configuration ${JSON.stringify(name)}: use ${CONFIG_NAMES.join(", ")}`);
}

function demoModel(): StepModel {
  const { vocabulary, context, batch } = SIZES.demo;
  return {
    name: "demo",
    describe: `demo GPT: vocab ${vocabulary}, width ${DEMO.width}, ${DEMO.heads} heads, ${DEMO.layers} layers, MLP ${DEMO.hidden}, context ${context}, LayerScale, exact GELU`,
    vocabulary,
    context,
    batch,
    init: (seed) => initModel(seed) as unknown as Tree<Tensor>,
    loss: (params, inputs, targets, b) => demoLoss(params as unknown as DemoModel, inputs, targets, b),
    notes: [],
    dispose: () => {},
  };
}

interface MidParams {
  readonly tokens: { readonly table: Tensor };
  readonly positions: Tensor;
  readonly blocks: readonly nn.TransformerBlockParams[];
  readonly lnF: { readonly weight: Tensor; readonly bias: Tensor };
  readonly head: nn.LinearParams;
}

function midModel(): StepModel {
  const { vocabulary, context, batch, width, heads, layers, hidden } = SIZES.mid;
  const tokens = nn.embedding({ vocabulary, dim: width });
  const block = nn.transformerBlock({ dim: width, heads, mlpRatio: hidden / width, activation: "gelu_tanh" });
  const lnF = nn.layerNorm({ dim: width });
  const head = nn.linear({ inFeatures: width, outFeatures: vocabulary });
  return {
    name: "mid",
    describe: `mid GPT: vocab ${vocabulary}, width ${width}, ${heads} heads, ${layers} layers, MLP ${hidden}, context ${context}, pre-norm, GELU (tanh), causalSelfAttention`,
    vocabulary,
    context,
    batch,
    init(seed) {
      const params: MidParams = {
        tokens: tokens.init({ seed: seed * 100 + 1 }),
        positions: randn([context, width], { seed: seed * 100 + 2, std: 0.01 }),
        blocks: Array.from({ length: layers }, (_, l) => block.init({ seed: seed * 100 + 10 + l })),
        lnF: lnF.init({ seed: seed * 100 + 3 }),
        head: head.init({ seed: seed * 100 + 4 }),
      };
      return params as unknown as Tree<Tensor>;
    },
    loss(tree, inputs, targets, b) {
      const params = tree as unknown as MidParams;
      let x = ops.add(tokens.apply(params.tokens, { ids: inputs, shape: [b, context] }), params.positions);
      for (const p of params.blocks) x = block.apply(p, x);
      const logits = head.apply(params.head, lnF.apply(params.lnF, x));
      return ops.crossEntropy(ops.reshape(logits, [b * context, vocabulary]), targets);
    },
    notes: [],
    dispose: () => {},
  };
}

// ---- LLaMA: the pieces that will become native ops ----

/** The native ops the composed pieces below give way to, when the library exports them. */
interface FutureOps {
  /** q [B, T, Hq, D], k and v [B, S, Hkv, D] (Hkv divides Hq: grouped-query attention) -> [B, T, Hq, D]. */
  readonly attention?: (q: Tensor, k: Tensor, v: Tensor, options: { causal: boolean }) => Tensor;
  /** Rotary embedding on [B, T, H, D], Hugging Face's rotate-half layout. */
  readonly rope?: (x: Tensor, options: { theta: number }) => Tensor;
  /** silu(a) * b. */
  readonly swiglu?: (a: Tensor, b: Tensor) => Tensor;
}
const future = ops as unknown as FutureOps;

/** Which of the LLaMA pieces run on a native op right now (feature detection at run time). */
export function nativeLlamaOps(): { attention: boolean; rope: boolean; swiglu: boolean } {
  return {
    attention: typeof future.attention === "function",
    rope: typeof future.rope === "function",
    swiglu: typeof future.swiglu === "function",
  };
}

/**
 * Causal grouped-query attention. Stand-in until `ops.attention(q, k, v, { causal })` exists: repeat
 * each KV head Hq / Hkv times (Hugging Face's repeat_kv: query head h reads KV head h / rep), pack
 * [q | k | v] as [B, T, 3C] and run the fused `ops.causalSelfAttention`. Returns [B, T, Hq * D].
 */
function attentionOp(q: Tensor, k: Tensor, v: Tensor): Tensor {
  const [b, t, hq, d] = q.shape as [number, number, number, number];
  if (future.attention) return ops.reshape(future.attention(q, k, v, { causal: true }), [b, t, hq * d]);
  const hkv = k.shape[2]!;
  const repeat = (x: Tensor) => {
    if (hkv === hq) return ops.reshape(x, [b, t, hq * d]);
    const grouped = ops.reshape(x, [b, t, hkv, 1, d]);
    const copies = ops.concat(
      Array.from({ length: hq / hkv }, () => grouped),
      3,
    );
    return ops.reshape(copies, [b, t, hq * d]);
  };
  const packed = ops.concat([ops.reshape(q, [b, t, hq * d]), repeat(k), repeat(v)], 2);
  return ops.causalSelfAttention(packed, hq);
}

/** RoPE's cos and sin tables in one dtype. */
interface RopeTables {
  readonly cos: Tensor;
  readonly sin: Tensor;
}

/**
 * cos and sin tables [T, H, D] (Hugging Face layout: the D/2 frequencies twice), pre-broadcast over
 * heads, in float32 and on demand in x's dtype (as Hugging Face casts them to x's dtype), cached.
 */
function ropeTables(context: number, heads: number, dim: number, theta: number) {
  const cos = new Float32Array(context * heads * dim);
  const sin = new Float32Array(context * heads * dim);
  const half = dim / 2;
  for (let t = 0; t < context; t++) {
    for (let i = 0; i < dim; i++) {
      const angle = t * theta ** (-(2 * (i % half)) / dim);
      for (let h = 0; h < heads; h++) {
        cos[(t * heads + h) * dim + i] = Math.cos(angle);
        sin[(t * heads + h) * dim + i] = Math.sin(angle);
      }
    }
  }
  const shape = [context, heads, dim];
  const byDtype = new Map<string, RopeTables>([
    ["float32", { cos: tensor(cos, { shape }), sin: tensor(sin, { shape }) }],
  ]);
  return {
    of(dtype: Tensor["dtype"]): RopeTables {
      let tables = byDtype.get(dtype);
      if (tables === undefined) {
        const f32 = byDtype.get("float32")!;
        tables = { cos: f32.cos.to(dtype), sin: f32.sin.to(dtype) };
        byDtype.set(dtype, tables);
      }
      return tables;
    },
    dispose() {
      for (const t of byDtype.values()) {
        t.cos.dispose();
        t.sin.dispose();
      }
    },
  };
}

/**
 * Rotary position embedding on x [B, T, H, D]. Stand-in until `ops.rope(x, { theta })` exists:
 * x * cos + rotateHalf(x) * sin, where rotateHalf(x) = [-x2, x1] (x1, x2 the two halves of D),
 * from slice, scale, concat, mul and add.
 */
function ropeOp(x: Tensor, cached: ReturnType<typeof ropeTables>, theta: number): Tensor {
  if (future.rope) return future.rope(x, { theta });
  const tables = cached.of(x.dtype);
  const [b, t, h, d] = x.shape as [number, number, number, number];
  const x1 = ops.slice(x, [0, 0, 0, 0], [b, t, h, d / 2]);
  const x2 = ops.slice(x, [0, 0, 0, d / 2], [b, t, h, d]);
  const rotated = ops.concat([ops.scale(x2, -1), x1], 3);
  return ops.add(ops.mul(x, tables.cos), ops.mul(rotated, tables.sin));
}

/** silu(gate) * up. Stand-in until `ops.swiglu(a, b)` exists. */
function swigluOp(gate: Tensor, up: Tensor): Tensor {
  if (future.swiglu) return future.swiglu(gate, up);
  return ops.mul(ops.silu(gate), up);
}

interface LlamaLayer {
  readonly attnNorm: { readonly weight: Tensor };
  readonly q: nn.LinearParams;
  readonly k: nn.LinearParams;
  readonly v: nn.LinearParams;
  readonly o: nn.LinearParams;
  readonly mlpNorm: { readonly weight: Tensor };
  readonly gate: nn.LinearParams;
  readonly up: nn.LinearParams;
  readonly down: nn.LinearParams;
}
interface LlamaParams {
  readonly tokens: { readonly table: Tensor };
  readonly layers: readonly LlamaLayer[];
  readonly norm: { readonly weight: Tensor };
  readonly head: nn.LinearParams;
}

function llamaModel(): StepModel {
  const { vocabulary, context, batch, width, heads, kvHeads, layers, hidden, theta, eps } = SIZES.llama;
  const headDim = width / heads;
  const tokens = nn.embedding({ vocabulary, dim: width });
  const norm = nn.rmsNorm({ dim: width, eps });
  const dense = (inFeatures: number, outFeatures: number) => nn.linear({ inFeatures, outFeatures, bias: false });
  const q = dense(width, heads * headDim);
  const kv = dense(width, kvHeads * headDim);
  const o = dense(heads * headDim, width);
  const up = dense(width, hidden);
  const down = dense(hidden, width);
  const head = dense(width, vocabulary);
  // Constant tables, one per head count so that the product broadcasts as a suffix (cheap).
  const native = nativeLlamaOps();
  const qTables = ropeTables(context, heads, headDim, theta);
  const kTables = ropeTables(context, kvHeads, headDim, theta);
  const mark = (on: boolean, op: string, stand: string) => (on ? `${op}: native` : `${op}: composed (${stand})`);
  return {
    name: "llama",
    describe: `LLaMA: vocab ${vocabulary}, hidden ${width}, ${layers} layers, ${heads} heads / ${kvHeads} KV heads, SwiGLU MLP ${hidden}, RMSNorm, RoPE, context ${context}`,
    vocabulary,
    context,
    batch,
    init(seed) {
      const s = (i: number) => ({ seed: seed * 1000 + i });
      const params: LlamaParams = {
        tokens: tokens.init(s(1)),
        layers: Array.from({ length: layers }, (_, l) => ({
          attnNorm: norm.init(s(10 * l + 10)),
          q: q.init(s(10 * l + 11)),
          k: kv.init(s(10 * l + 12)),
          v: kv.init(s(10 * l + 13)),
          o: o.init(s(10 * l + 14)),
          mlpNorm: norm.init(s(10 * l + 15)),
          gate: up.init(s(10 * l + 16)),
          up: up.init(s(10 * l + 17)),
          down: down.init(s(10 * l + 18)),
        })),
        norm: norm.init(s(2)),
        head: head.init(s(3)),
      };
      return params as unknown as Tree<Tensor>;
    },
    loss(tree, inputs, targets, b) {
      const params = tree as unknown as LlamaParams;
      let x = tokens.apply(params.tokens, { ids: inputs, shape: [b, context] });
      for (const p of params.layers) {
        const h = norm.apply(p.attnNorm, x);
        const qs = ropeOp(ops.reshape(q.apply(p.q, h), [b, context, heads, headDim]), qTables, theta);
        const ks = ropeOp(ops.reshape(kv.apply(p.k, h), [b, context, kvHeads, headDim]), kTables, theta);
        const vs = ops.reshape(kv.apply(p.v, h), [b, context, kvHeads, headDim]);
        x = ops.add(x, o.apply(p.o, attentionOp(qs, ks, vs)));
        const h2 = norm.apply(p.mlpNorm, x);
        x = ops.add(x, down.apply(p.down, swigluOp(up.apply(p.gate, h2), up.apply(p.up, h2))));
      }
      const logits = head.apply(params.head, norm.apply(params.norm, x));
      return ops.crossEntropy(ops.reshape(logits, [b * context, vocabulary]), targets);
    },
    notes: [
      mark(native.attention, "attention", "KV heads repeated, packed, ops.causalSelfAttention"),
      mark(native.rope, "rope", "slice, scale, concat, mul, add"),
      mark(native.swiglu, "swiglu", "silu, mul"),
    ],
    dispose() {
      qTables.dispose();
      kTables.dispose();
    },
  };
}

/** Deterministic token ids in [0, vocabulary) (a 32-bit LCG: the data does not matter for timing). */
export function tokenIds(count: number, vocabulary: number, seed: number): Int32Array {
  const ids = new Int32Array(count);
  let state = (seed * 2654435761 + 1) >>> 0;
  for (let i = 0; i < count; i++) {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    ids[i] = state % vocabulary;
  }
  return ids;
}
