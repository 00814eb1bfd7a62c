"""PyTorch's CPU matmul at the shapes of bench/matmul_bench.ts, for the comparison column.

Reads shapes as M,N,K triples and prints one JSON object: {"MxNxK dtype": GFLOP/s}, timing
torch.matmul(a, b) with a [M, K] and b [K, N] (the fastest call in about --budget-ms of calls, after a
warm-up), with torch.set_num_threads(--threads). Invoked by the TypeScript benchmark when torch
imports.

    python3 bench/compare_torch_matmul.py --shapes 256,256,256;8192,256,256 --threads 2
"""

import argparse
import json
import time

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def best_ns(fn, budget_s, min_samples=5):
    """Fastest wall time of fn in nanoseconds over about budget_s seconds (as the TypeScript side)."""
    samples = []
    deadline = time.perf_counter() + budget_s
    while len(samples) < min_samples or time.perf_counter() < deadline:
        start = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - start)
        if len(samples) >= 10_000:
            break
    return min(samples)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", required=True)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--budget-ms", type=float, default=250)
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    results = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    for triple in args.shapes.split(";"):
        m, n, k = (int(v) for v in triple.split(","))
        for name in args.dtypes.split(","):
            dtype = DTYPES[name]
            a = torch.randn(m, k).to(dtype)
            b = torch.randn(k, n).to(dtype)
            for _ in range(2):
                torch.matmul(a, b)
            ns = best_ns(lambda: torch.matmul(a, b), args.budget_ms / 1000)
            results[f"{m}x{n}x{k} {name}"] = 2 * m * n * k / ns
    print(json.dumps(results))


if __name__ == "__main__":
    main()
