"""PyTorch's multi-tensor unscale on the CPU, at the sizes of bench/unscale_bench.ts.

Times torch._amp_foreach_non_finite_check_and_unscale_ (what GradScaler.unscale_ calls) over 1 to
1,000 tensors totalling 1M to 256M elements per dtype, and prints GB/s of bytes read + written
as a Markdown table. Invoked by the TypeScript benchmark when torch imports.

    python3 bench/compare_torch_unscale.py [--max 268435456] [--threads N]
"""

import argparse
import math
import time

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def median_ns(fn, budget_s=0.25, min_samples=5):
    """Median wall time of fn in nanoseconds over about budget_s seconds."""
    samples = []
    deadline = time.perf_counter() + budget_s
    while len(samples) < min_samples or time.perf_counter() < deadline:
        start = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - start)
        if len(samples) >= 10_000:
            break
    samples.sort()
    return samples[len(samples) // 2]


def label(count):
    if count >= 1 << 20:
        return f"{count // (1 << 20)}M"
    if count >= 1 << 10:
        return f"{count // (1 << 10)}K"
    return str(count)


def table(headers, rows):
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths)) + " |"
    print(line(headers))
    print("|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|")
    for row in rows:
        print(line(row))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--max", type=int, default=1 << 28)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    totals = [t for t in (1 << 20, 1 << 24, 1 << 26, 1 << 28) if t <= args.max]
    rows = []
    for total in totals:
        for name, dtype in DTYPES.items():
            values = (torch.sin(torch.arange(total, dtype=torch.float32)) * 300).to(dtype)
            nbytes = values.element_size() * total
            for parts in (1, 10, 1000):
                grads = list(torch.tensor_split(values, parts))
                found = torch.zeros((), dtype=torch.float32)
                half = torch.full((), 0.5, dtype=torch.float32)
                two = torch.full((), 2.0, dtype=torch.float32)
                state = {"flip": False}

                def step():
                    state["flip"] = not state["flip"]
                    torch._amp_foreach_non_finite_check_and_unscale_(grads, found, half if state["flip"] else two)

                try:
                    ns = median_ns(step)
                    rows.append([name, label(total), str(parts), f"{2 * nbytes / ns:.2f}"])
                except RuntimeError as error:
                    rows.append([name, label(total), str(parts), f"unsupported ({str(error).splitlines()[0][:60]})"])
            del values
    print(f"PyTorch {torch.__version__} torch._amp_foreach_non_finite_check_and_unscale_ on the CPU "
          f"({torch.get_num_threads()} threads), GB/s of bytes read + written\n")
    table(["dtype", "elements", "tensors", "torch unscale"], rows)

    dtypes = list(DTYPES.values())
    small = [(torch.sin(torch.arange(64, dtype=torch.float32)) * 300).to(dtypes[i % 3]) for i in range(1000)]
    by_dtype = {d: [t for t in small if t.dtype == d] for d in dtypes}
    found = torch.zeros((), dtype=torch.float32)
    scales = [torch.full((), 0.5, dtype=torch.float32), torch.full((), 2.0, dtype=torch.float32)]
    flip = {"index": 0}

    def grouped():
        # What GradScaler.unscale_ does: one call per (device, dtype) group.
        flip["index"] ^= 1
        for group in by_dtype.values():
            torch._amp_foreach_non_finite_check_and_unscale_(group, found, scales[flip["index"]])

    def separate():
        flip["index"] ^= 1
        for t in small:
            torch._amp_foreach_non_finite_check_and_unscale_([t], found, scales[flip["index"]])

    print("\n1,000 tensors of 64 elements (float32, float16, bfloat16 in turn), one unscale step\n")
    table(
        ["how", "calls", "time per step (us)"],
        [
            ["torch, one call per dtype (GradScaler)", "3", f"{median_ns(grouped) / 1000:.1f}"],
            ["torch, one call per tensor", "1,000", f"{median_ns(separate) / 1000:.1f}"],
        ],
    )


if __name__ == "__main__":
    main()
