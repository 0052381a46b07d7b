"""MC-dropout sampling cost: plain loop of T forward passes vs. encode once + batched decodes.

Usage::

    python benchmarks/bench_mcdropout.py [--quick] [--sizes 64 128] [--width 16] [--batch 8]
        [--samples 20] [--max-batch 8 64 160] [--repeats 5] [--threads N] [--device cpu] [--out FILE]

For each image size, under ``torch.inference_mode`` on an untrained U-Net (timing does not depend on
the weights): one plain forward pass, ``encode`` alone, T plain forward passes with dropout on (the
reference loop), and ``MCDropout(samples=T, max_batch=M).predict`` for each M (M = batch: one
sample per decode, only the prefix is cached; larger M stacks several samples per decode).

Each number is the median of ``--repeats`` after one warm-up call. The repeats go round-robin over
the variants, so load changes on a shared machine hit all of them alike, and both wall time and
process CPU time are reported. On a loaded machine use ``--threads 1``: CPU time is then the work
itself, whereas with several threads it also counts threads spinning while waiting for a descheduled
sibling, which inflates small calls most.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from typing import Any

import torch
from _common import add_common_args, finish, header, load1, machine_info, markdown_table, time_call

from segqc.networks.functional import enable_dropout
from segqc.uncertainty import create_method


def interleaved(
    fns: list[Callable[[], object]], repeats: int, device: torch.device
) -> list[dict[str, float]]:
    """Median wall and CPU seconds of each function; repeats go round-robin over the functions."""
    for fn in fns:
        time_call(fn, device)  # warm-up: oneDNN primitive creation, allocator growth
    runs = [[time_call(fn, device) for fn in fns] for _ in range(max(1, repeats))]
    return [
        {"wall_s": statistics.median(r[0] for r in col), "cpu_s": statistics.median(r[1] for r in col)}
        for col in zip(*runs, strict=True)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--max-batch", type=int, nargs="+", default=[8, 64, 160])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.width, args.samples, args.max_batch = [32], 4, 4, [8, 64]
    if args.threads:
        torch.set_num_threads(args.threads)
    device, t, before = torch.device(args.device), args.samples, load1()
    machine = machine_info()
    print(header("MC dropout: plain loop vs cached prefix + batched decodes", machine, before))
    print(
        f"U-Net width {args.width}, batch {args.batch}, T = {t}, device {device}, "
        f"median of {args.repeats or 5} repeats (round-robin)\n"
    )

    torch.manual_seed(0)
    model = create_method("mcdropout").build(base_width=args.width).to(device).eval()
    variants = ["1 pass", "encode", f"{t} plain", *[f"cached M={m}" for m in args.max_batch]]
    results: dict[str, Any] = {"machine": machine, "args": vars(args) | {"out": str(args.out)}, "sizes": {}}
    rows = []
    for size in args.sizes:
        x = torch.randn(args.batch, 3, size, size, device=device)

        def plain(x: torch.Tensor = x) -> None:
            with enable_dropout(model):
                sum(torch.softmax(model(x)[:, :2], dim=1) for _ in range(t))

        fns = [lambda x=x: model(x), lambda x=x: model.encode(x), plain]
        fns += [
            lambda m=m, x=x: create_method("mcdropout", samples=t, max_batch=m).predict(model, x)
            for m in args.max_batch
        ]
        with torch.inference_mode():
            times = interleaved(fns, args.repeats or 5, device)
        results["sizes"][size] = dict(zip(variants, times, strict=True))
        one, loop = times[0], times[2]
        for key in ("wall_s", "cpu_s"):
            cells = [f"{size}", key[:-2], f"{one[key]:.3f}", f"{times[1][key] / one[key]:.0%}"]
            cells.append(f"{loop[key]:.2f} ({loop[key] / one[key]:.1f}x)")
            cells += [
                f"{c[key]:.2f} ({c[key] / one[key]:.1f}x; {loop[key] / c[key]:.2f}x faster)"
                for c in times[3:]
            ]
            rows.append(cells)

    head = [
        "size",
        "time",
        "1 pass (s)",
        "encode / pass",
        f"{t} plain (s)",
        *[f"{v} (s)" for v in variants[3:]],
    ]
    print(markdown_table(head, rows))
    print("\n(Nx) = time in units of one forward pass; 'faster' = plain loop time / cached time.")
    finish(results, args.out, before)


if __name__ == "__main__":
    main()
