"""The PyTorch side of bench/compare.ts: the same cast, unscale, AdamW, matmul and train-step
workloads on the CPU, timed the same way (median wall time), printed as one JSON object
{workload: milliseconds} so the TypeScript side can put every ratio in one table.

    python3 bench/compare_torch.py [--size 16777216] [--matmul 1024] [--batch 16] [--threads N]

The train step is the demo's model (bench/_train_model.ts): a 2-layer GPT-style character model,
width 64, 4 heads, MLP 256, context 32, vocabulary 25, AdamW(fused=True), in float32 and under
torch.autocast(bfloat16).
"""

import argparse
import json
import math
import time

import torch
import torch.nn.functional as F


def median_ms(fn, budget_s=0.5, min_samples=5, max_samples=2000):
    samples = []
    fn()  # warm up
    deadline = time.perf_counter() + budget_s
    while len(samples) < min_samples or (time.perf_counter() < deadline and len(samples) < max_samples):
        start = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - start)
    samples.sort()
    return samples[len(samples) // 2] / 1e6


class Block(torch.nn.Module):
    def __init__(self, width, heads, hidden):
        super().__init__()
        self.heads = heads
        self.ln1 = torch.nn.LayerNorm(width)
        self.qkv = torch.nn.Linear(width, 3 * width)
        self.proj = torch.nn.Linear(width, width)
        self.ln2 = torch.nn.LayerNorm(width)
        self.fc = torch.nn.Linear(width, hidden)
        self.out = torch.nn.Linear(hidden, width)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        shape = (b, t, self.heads, c // self.heads)
        q, k, v = (z.view(shape).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, c))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class Model(torch.nn.Module):
    def __init__(self, vocab=25, context=32, width=64, heads=4, hidden=256, layers=2):
        super().__init__()
        self.tokens = torch.nn.Embedding(vocab, width)
        self.positions = torch.nn.Parameter(torch.randn(context, width) * 0.01)
        self.blocks = torch.nn.ModuleList(Block(width, heads, hidden) for _ in range(layers))
        self.ln_f = torch.nn.LayerNorm(width)
        self.head = torch.nn.Linear(width, vocab)

    def forward(self, ids, targets):
        x = self.tokens(ids) + self.positions
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.shape[-1]).float(), targets.view(-1))


def train_step_ms(batch, dtype):
    torch.manual_seed(0)
    model = Model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01, fused=True)
    ids = torch.randint(0, 25, (batch, 32))
    targets = torch.randint(0, 25, (batch, 32))

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            loss = model(ids, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return median_ms(step, budget_s=1.5)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=1 << 24)
    parser.add_argument("--matmul", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    n = args.size
    results = {"torch": torch.__version__, "threads": torch.get_num_threads()}

    x = torch.randn(n)
    bf = torch.empty(n, dtype=torch.bfloat16)
    results["cast f32->bf16"] = median_ms(lambda: bf.copy_(x))
    half = torch.empty(n, dtype=torch.float16)
    results["cast f32->f16"] = median_ms(lambda: half.copy_(x))
    back = torch.empty(n)
    results["cast bf16->f32"] = median_ms(lambda: back.copy_(bf))

    grads = list(torch.randn(n // 100 * 100).to(torch.bfloat16).chunk(100))
    found = torch.zeros(1)
    inv = torch.full((1,), 1.0 / 65536)
    try:
        torch._amp_foreach_non_finite_check_and_unscale_(grads, found, inv)
        results["unscale bf16 x100"] = median_ms(lambda: torch._amp_foreach_non_finite_check_and_unscale_(grads, found, inv))
    except RuntimeError as error:  # PyTorch refuses bfloat16 here on some builds.
        results["unscale bf16 x100"] = None
        results["unscale bf16 x100 error"] = str(error).splitlines()[0]
    grads32 = list(torch.randn(n // 100 * 100).chunk(100))
    results["unscale f32 x100"] = median_ms(lambda: torch._amp_foreach_non_finite_check_and_unscale_(grads32, found, inv))

    params = [torch.nn.Parameter(torch.randn(n // 4)) for _ in range(4)]
    for p in params:
        p.grad = torch.randn_like(p)
    adamw = torch.optim.AdamW(params, lr=1e-3, fused=True)
    results["adamw f32 fused"] = median_ms(adamw.step)

    m = args.matmul
    a = torch.randn(m, m)
    b = torch.randn(m, m)
    results[f"matmul f32 {m}"] = median_ms(lambda: a @ b)
    a16 = a.bfloat16()
    b16 = b.bfloat16()
    results[f"matmul bf16 {m}"] = median_ms(lambda: a16 @ b16)

    results[f"train step fp32 b{args.batch}"] = train_step_ms(args.batch, "float32")
    results[f"train step bf16 autocast b{args.batch}"] = train_step_ms(args.batch, "bfloat16")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
