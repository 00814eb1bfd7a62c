"""The PyTorch side of bench/step_bench.ts: one training step (forward, backward, AdamW) of the same
three models with the same shapes (bench/_step_models.ts), in float32 and under
torch.autocast("cpu", dtype=torch.bfloat16) with float32 parameters, timed as medians; and, with
--memory, the peak RSS growth of one configuration in this (fresh) process.

    python3 bench/compare_step_torch.py [--configs demo,mid,llama] [--iterations N] [--budget-ms 2000]
        [--batch N] [--threads N]
    python3 bench/compare_step_torch.py --memory mid --precision bf16 --batch 32 [--steps 2]
    python3 bench/compare_step_torch.py --ops --batch 8 [--iterations N]

Prints one JSON object on stdout. Timing: median wall time of whole steps after one warm-up step,
like mitata's measure() on the TypeScript side. Memory: VmHWM - VmRSS from /proc/self/status, with
the high-water mark reset (clear_refs 5) after setup, exactly as the TypeScript side measures it.
"""

import argparse
import json
import re
import time

import torch
import torch.nn.functional as F

SIZES = {
    "demo": dict(vocab=25, context=32, batch=16, width=64, heads=4, layers=2, hidden=256),
    "mid": dict(vocab=256, context=128, batch=8, width=256, heads=8, layers=4, hidden=1024),
    "llama": dict(vocab=256, context=128, batch=4, width=128, heads=4, kv_heads=2, layers=4, hidden=344),
}
LR = 3e-3
WEIGHT_DECAY = 0.01


class GptBlock(torch.nn.Module):
    """Pre-norm GPT-2 block; `layer_scale` adds the demo's LayerScale gains (init 1e-6)."""

    def __init__(self, width, heads, hidden, gelu, layer_scale):
        super().__init__()
        self.heads = heads
        self.gelu = gelu
        self.ln1 = torch.nn.LayerNorm(width)
        self.qkv = torch.nn.Linear(width, 3 * width)
        self.proj = torch.nn.Linear(width, width)
        self.ln2 = torch.nn.LayerNorm(width)
        self.fc = torch.nn.Linear(width, hidden)
        self.out = torch.nn.Linear(hidden, width)
        self.gamma1 = torch.nn.Parameter(torch.full((width,), 1e-6)) if layer_scale else None
        self.gamma2 = torch.nn.Parameter(torch.full((width,), 1e-6)) if layer_scale else None

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        shape = (b, t, self.heads, c // self.heads)
        q, k, v = (z.view(shape).transpose(1, 2) for z in (q, k, v))
        y = self.proj(F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, c))
        x = x + (y * self.gamma1 if self.gamma1 is not None else y)
        m = self.out(F.gelu(self.fc(self.ln2(x)), approximate=self.gelu))
        return x + (m * self.gamma2 if self.gamma2 is not None else m)


class Gpt(torch.nn.Module):
    def __init__(self, vocab, context, width, heads, hidden, layers, gelu, layer_scale, **_):
        super().__init__()
        self.tokens = torch.nn.Embedding(vocab, width)
        self.positions = torch.nn.Parameter(torch.randn(context, width) * 0.01)
        self.blocks = torch.nn.ModuleList(GptBlock(width, heads, hidden, gelu, layer_scale) for _ in range(layers))
        self.ln_f = torch.nn.LayerNorm(width)
        self.head = torch.nn.Linear(width, vocab)

    def forward(self, ids, targets):
        x = self.tokens(ids) + self.positions
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.shape[-1]).float(), targets.view(-1))


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class LlamaLayer(torch.nn.Module):
    def __init__(self, width, heads, kv_heads, hidden):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, width // heads
        self.attn_norm = torch.nn.RMSNorm(width, eps=1e-6)
        self.q = torch.nn.Linear(width, width, bias=False)
        self.k = torch.nn.Linear(width, kv_heads * self.head_dim, bias=False)
        self.v = torch.nn.Linear(width, kv_heads * self.head_dim, bias=False)
        self.o = torch.nn.Linear(width, width, bias=False)
        self.mlp_norm = torch.nn.RMSNorm(width, eps=1e-6)
        self.gate = torch.nn.Linear(width, hidden, bias=False)
        self.up = torch.nn.Linear(width, hidden, bias=False)
        self.down = torch.nn.Linear(hidden, width, bias=False)

    def forward(self, x, cos, sin):
        b, t, c = x.shape
        h = self.attn_norm(x)
        # [B, H, T, D], as Hugging Face's LlamaAttention lays it out for SDPA.
        q = self.q(h).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = self.k(h).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v(h).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        # Hugging Face casts the tables to the activations' dtype (bf16 under autocast).
        cos, sin = cos.to(q.dtype), sin.to(q.dtype)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        x = x + self.o(y.transpose(1, 2).reshape(b, t, c))
        h2 = self.mlp_norm(x)
        return x + self.down(F.silu(self.gate(h2)) * self.up(h2))


class Llama(torch.nn.Module):
    def __init__(self, vocab, context, width, heads, kv_heads, hidden, layers, **_):
        super().__init__()
        self.tokens = torch.nn.Embedding(vocab, width)
        self.layers = torch.nn.ModuleList(LlamaLayer(width, heads, kv_heads, hidden) for _ in range(layers))
        self.norm = torch.nn.RMSNorm(width, eps=1e-6)
        self.head = torch.nn.Linear(width, vocab, bias=False)
        head_dim = width // heads
        inv_freq = 10000.0 ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(context, dtype=torch.float32), inv_freq)
        angles = torch.cat((angles, angles), dim=-1)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, ids, targets):
        x = self.tokens(ids)
        for layer in self.layers:
            x = layer(x, self.cos, self.sin)
        logits = self.head(self.norm(x))
        return F.cross_entropy(logits.view(-1, logits.shape[-1]).float(), targets.view(-1))


def build(config):
    sizes = SIZES[config]
    if config == "demo":
        return Gpt(**sizes, gelu="none", layer_scale=True)
    if config == "mid":
        return Gpt(**sizes, gelu="tanh", layer_scale=False)
    return Llama(**sizes)


def adamw(params):
    try:
        return torch.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY, fused=True), True
    except (RuntimeError, TypeError):  # Builds without the fused CPU kernel.
        return torch.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY, foreach=True), False


def setup(config, batch, precision):
    """The model, its optimizer and a batch; returns (step, fused)."""
    torch.manual_seed(0)
    sizes = SIZES[config]
    model = build(config)
    optimizer, fused = adamw(list(model.parameters()))
    ids = torch.randint(0, sizes["vocab"], (batch, sizes["context"]))
    targets = torch.randint(0, sizes["vocab"], (batch, sizes["context"]))

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(ids, targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return step, fused


def median_ms(fn, iterations, budget_ms):
    """Median of `iterations` calls (or as many as fit in budget_ms, at least 5) after one warm-up."""
    fn()
    samples = []
    deadline = time.perf_counter() + budget_ms / 1000
    while True:
        start = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - start)
        if iterations > 0 and len(samples) >= iterations:
            break
        if iterations <= 0 and len(samples) >= 5 and time.perf_counter() >= deadline:
            break
    samples.sort()
    return samples[len(samples) // 2] / 1e6


def rss_kib():
    status = open("/proc/self/status").read()
    return {key: int(re.search(rf"{key}:\s+(\d+) kB", status).group(1)) for key in ("VmRSS", "VmHWM")}


def reset_peak():
    """Resets VmHWM to the current RSS (Linux >= 4.0); False where the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def memory(config, batch, precision, steps):
    step, _ = setup(config, batch, precision)
    baseline = rss_kib()["VmRSS"]
    reset = reset_peak()
    for _ in range(steps):
        step()
    peak = rss_kib()["VmHWM"]
    return {"baselineBytes": baseline * 1024, "peakBytes": peak * 1024, "growthBytes": (peak - baseline) * 1024, "peakReset": reset}


def op_times(batch, iterations, budget_ms):
    """Forward and backward of the mid model's ops at its shapes: float32, and bf16 autocast on
    bfloat16 leaves (as the TypeScript side runs them on bfloat16 inputs). backward = median of
    forward+backward minus median of forward."""
    s = SIZES["mid"]
    n, c, v, h, t = batch * s["context"], s["width"], s["vocab"], s["hidden"], s["context"]
    results = {}
    for precision in ("fp32", "bf16"):
        autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")  # noqa: E731
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        leaf = lambda *shape: torch.randn(*shape, dtype=dtype).requires_grad_()  # noqa: E731
        ids = torch.randint(0, v, (batch, t))
        labels = torch.randint(0, v, (n,))
        x, w, bias = leaf(batch, t, c), leaf(h, c), leaf(h)
        y = leaf(batch, t, c)
        table = leaf(v, c)
        hid = leaf(batch, t, h)
        logits = leaf(n, v)
        qkv = leaf(batch, t, 3 * c)
        ln_w, ln_b = leaf(c), leaf(c)

        def attention(z):
            q, k, vv = z.split(c, dim=2)
            shape = (batch, t, s["heads"], c // s["heads"])
            q, k, vv = (a.view(shape).transpose(1, 2) for a in (q, k, vv))
            return F.scaled_dot_product_attention(q, k, vv, is_causal=True).transpose(1, 2).reshape(batch, t, c)

        cases = {
            "linear": (lambda: F.linear(x, w, bias), [x, w, bias]),
            "layerNorm": (lambda: F.layer_norm(x, (c,), ln_w, ln_b), [x, ln_w, ln_b]),
            "gelu": (lambda: F.gelu(hid, approximate="tanh"), [hid]),
            "crossEntropy": (lambda: F.cross_entropy(logits.float(), labels), [logits]),
            "attention": (lambda: attention(qkv), [qkv]),
            "embedding": (lambda: F.embedding(ids, table), [table]),
            "add": (lambda: x + y, [x, y]),
        }
        for name, (fn, leaves) in cases.items():

            def forward():
                with torch.no_grad(), autocast():
                    fn()

            def both():
                with autocast():
                    out = fn()
                grad = torch.ones_like(out)
                torch.autograd.backward(out, grad)
                for leaf_ in leaves:
                    leaf_.grad = None

            fwd = median_ms(forward, iterations, budget_ms)
            total = median_ms(both, iterations, budget_ms)
            results[f"{name} {precision}"] = {"forward": fwd, "backward": max(total - fwd, 0.0)}
    return results


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--configs", default="demo,mid,llama")
    parser.add_argument("--iterations", type=int, default=0, help="samples per median (0: --budget-ms decides)")
    parser.add_argument("--budget-ms", type=float, default=2000)
    parser.add_argument("--batch", type=int, default=0, help="batch size for every configuration (0: each one's own)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--memory", default="", help="a configuration: measure its peak RSS growth")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--ops", action="store_true")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    results = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    if args.memory:
        results.update(memory(args.memory, args.batch or SIZES[args.memory]["batch"], args.precision, args.steps))
    elif args.ops:
        results["ops"] = op_times(args.batch or SIZES["mid"]["batch"], args.iterations, args.budget_ms / 4)
    else:
        steps = {}
        for config in args.configs.split(","):
            batch = args.batch or SIZES[config]["batch"]
            for precision in ("fp32", "bf16"):
                step, fused = setup(config, batch, precision)
                steps[f"{config} {precision}"] = median_ms(step, args.iterations, args.budget_ms)
                results["fusedAdamW"] = fused
        results["steps"] = steps
    print(json.dumps(results))


if __name__ == "__main__":
    main()
