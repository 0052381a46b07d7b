"""MC-dropout sampling cost: plain loop of T forward passes vs. encode once + batched decodes.

Usage: python benchmarks/bench_mcdropout.py [--sizes 64 128] [--width 16] [--batch 8] [--samples 20]
       [--max-batch 8 64 160] [--repeats 3] [--device cpu]

For each image size, times (median of ``--repeats``, after one warm-up) under ``torch.inference_mode``:
one plain forward pass, ``encode`` alone, T plain forward passes with dropout on (the reference loop),
and ``MCDropout(samples=T, max_batch=M).predict`` for each M (M = batch: one sample per decode, only
the prefix is cached). Prints a markdown table with the ratios to one forward pass and to the plain
loop. Timings on a shared machine are noisy: the 1-minute load average is printed with the table.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch

from segqc.uncertainty import create_method
from segqc.uncertainty.functional import enable_dropout


def median_time(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    def once() -> float:
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    once()  # warm-up: kernel selection, allocator
    return statistics.median(once() for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--max-batch", type=int, nargs="+", default=[8, 64, 160])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device, t = torch.device(args.device), args.samples

    torch.manual_seed(0)
    model = create_method("mcdropout").build(base_width=args.width).to(device).eval()
    names = [f"cached M={m}" for m in args.max_batch]
    head = ["size", "1 pass (s)", "encode (s)", f"{t} plain (s)", *[f"{n} (s)" for n in names]]
    rows = []
    for size in args.sizes:
        x = torch.randn(args.batch, 3, size, size, device=device)
        with torch.inference_mode():
            one = median_time(lambda x=x: model(x), args.repeats, device)
            enc = median_time(lambda x=x: model.encode(x), args.repeats, device)

            def plain(x: torch.Tensor = x) -> None:
                with enable_dropout(model):
                    sum(torch.softmax(model(x)[:, :2], dim=1) for _ in range(t))

            loop = median_time(plain, args.repeats, device)
            cached = [
                median_time(
                    lambda m=m, x=x: create_method("mcdropout", samples=t, max_batch=m).predict(model, x),
                    args.repeats,
                    device,
                )
                for m in args.max_batch
            ]
        rows.append((size, one, enc, loop, cached))

    print(
        f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, "
        f"1-min load average {os.getloadavg()[0]:.2f}"
    )
    print(f"U-Net width {args.width}, batch {args.batch}, T = {t}, median of {args.repeats} repeats\n")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for size, one, enc, loop, cached in rows:
        cells = [f"{size}", f"{one:.3f}", f"{enc:.3f} ({enc / one:.0%})", f"{loop:.2f} ({loop / one:.1f}x)"]
        cells += [f"{c:.2f} ({c / one:.1f}x; {loop / c:.2f}x faster)" for c in cached]
        print("| " + " | ".join(cells) + " |")
    print("\n(x) = time in units of one forward pass; 'faster' = plain loop time / cached time.")


if __name__ == "__main__":
    main()
