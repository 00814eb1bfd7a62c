"""torch.optim.AdamW(fused=True) step time, for bench/optim_bench.ts.

Usage: python3 bench/compare_torch_optim.py SIZE [SIZE ...] [--budget-ms MS]
Prints one JSON object: {"torch": version, "threads": n, "results": {size: best_ns}} (the fastest
sample: the machines this runs on are shared, and bench/optim_bench.ts reports mixprec's alike).
float32 params and grads (PyTorch AMP keeps float32 params): grad 4 + param 4+4 + m 4+4 + v 4+4
= 28 bytes per parameter, the same bytes as mixprec's bf16 step with float32 master and state.
Exits with status 3 when torch is not installed.
"""

import json
import sys
import time

try:
    import torch
except ImportError:
    sys.exit(3)


def best_ns(fn, budget_ms):
    for _ in range(2):
        fn()
    samples = []
    deadline = time.perf_counter() + budget_ms / 1000
    while len(samples) < 5 or (time.perf_counter() < deadline and len(samples) < 1000):
        start = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - start)
    return min(samples)


def main():
    args = sys.argv[1:]
    budget_ms = 250.0
    if "--budget-ms" in args:
        i = args.index("--budget-ms")
        budget_ms = float(args[i + 1])
        del args[i : i + 2]
    results = {}
    for size in (int(a) for a in args):
        param = torch.nn.Parameter(torch.randn(size, dtype=torch.float32))
        param.grad = torch.randn(size, dtype=torch.float32) * 1e-3
        opt = torch.optim.AdamW([param], lr=1e-3, weight_decay=1e-2, fused=True)
        with torch.no_grad():
            results[str(size)] = best_ns(opt.step, budget_ms)
        del opt, param
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "results": results}))


main()
