"""Cost of each uncertainty method's read-out of f, against one pass of f (msp).

Usage::

    python benchmarks/bench_methods_cost.py [--quick] [--methods msp tta ensemble tta:max_batch=16]
        [--sizes 64 224] [--batch 16] [--width 16] [--repeats N] [--threads N] [--out FILE]

f alone (no g): ``Segmenter.predict(images, batch_size=batch)`` on untrained weights (timing does not
depend on them) and random uint8 images, so each timed call is the library's own path, read-out
included (for ``tta`` the views' transforms and their undoing, for ``ensemble`` the mean and map).
A method is a registered name, optionally with settings: ``tta:views=4,max_batch=16``. Default: every
registered method with its default settings (``tta``: 8 views, ``ensemble``: 5 members, ``mcdropout``:
20 samples).

Per method and image size it prints ms/image by wall time and by process CPU time, and each one's
ratio to msp's (CPU time is robust to other jobs sharing the machine), beside ``passes()`` (the
method's cost in forward passes of f) and the target where there is one. Methods are timed
round-robin per size (``_common.measure_interleaved``), so a drifting load spreads over all of them.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np
import torch
from _common import add_common_args, finish, header, load1, machine_info, markdown_table, measure_interleaved

from segqc.segmenter import Segmenter
from segqc.uncertainty import METHODS, create_method

MEAN, STD = [0.6, 0.5, 0.45], [0.15, 0.15, 0.17]  # about ISIC's; any fixed values time the same
#: Most time of one read-out in passes of f that we aim for (views and members run batched).
TARGETS = {"tta": 8.3, "ensemble": 5.2}


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``name`` or ``name:key=value,key=value`` (values read as JSON when they parse)."""
    name, _, rest = spec.partition(":")
    params: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, _, raw = item.partition("=")
        try:
            params[key] = json.loads(raw)
        except ValueError:
            params[key] = raw
    return name, params


def make_segmenter(name: str, params: dict[str, Any], width: int) -> Segmenter:
    """An untrained but ready-to-predict Segmenter (what ``fit`` leaves behind, minus training)."""
    torch.manual_seed(0)
    seg = Segmenter(name, method_params=params, base_width=width, device="cpu", progress=False)
    seg._build()
    seg.model_.eval()
    seg.mean_, seg.std_ = list(MEAN), list(STD)
    return seg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=None, help="default: every registered method")
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="default 64 224")
    parser.add_argument("--batch", type=int, default=16, help="predict batch size")
    parser.add_argument("--width", type=int, default=16, help="U-Net base width")
    add_common_args(parser)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.sizes = args.sizes or ([32] if args.quick else [64, 224])
    args.repeats = args.repeats or (2 if args.quick else 3)
    specs = args.methods or METHODS.names()
    if "msp" not in specs:
        specs = ["msp", *specs]  # the reference: one pass of f

    machine, before = machine_info(), load1()
    print(header("segqc: cost of each uncertainty method's read-out (f only)", machine, before), flush=True)
    rows: list[dict[str, Any]] = []
    for size in args.sizes:
        images = np.random.default_rng(size).integers(0, 256, (args.batch, size, size, 3), np.uint8)
        segs = [make_segmenter(*parse_spec(s), args.width) for s in specs]
        fns = [lambda seg=seg, images=images: seg.predict(images, batch_size=args.batch) for seg in segs]
        times = measure_interleaved(fns, repeats=args.repeats)
        base = times[specs.index("msp")]
        for spec, t in zip(specs, times, strict=True):
            name = parse_spec(spec)[0]
            rows.append(
                {
                    "method": spec,
                    "size": size,
                    "batch": args.batch,
                    "passes": create_method(name, **parse_spec(spec)[1]).passes(),
                    "target": TARGETS.get(name) if spec == name else None,
                    "ms_per_image": 1e3 * t["median_s"] / args.batch,
                    "cpu_ms_per_image": 1e3 * t["cpu_median_s"] / args.batch,
                    "ratio": t["median_s"] / base["median_s"],
                    "cpu_ratio": t["cpu_median_s"] / base["cpu_median_s"],
                    **t,
                }
            )
        print(f"  {size} px done", flush=True)

    print(f"\n## Cost per image against one pass of f (msp), batch {args.batch}, width {args.width}\n")
    head = ["method", "size", "passes", "ms/image", "ratio", "CPU ms/image", "CPU ratio", "target"]
    table = [
        [
            r["method"],
            r["size"],
            f"{r['passes']:g}",
            f"{r['ms_per_image']:.2f}",
            f"{r['ratio']:.2f}x",
            f"{r['cpu_ms_per_image']:.2f}",
            f"{r['cpu_ratio']:.2f}x",
            f"<= {r['target']}x" if r["target"] else "",
        ]
        for r in rows
    ]
    print(markdown_table(head, table))
    print(f"\n- medians of {args.repeats} round-robin repeats after a warm-up; ratio = time / msp's time")
    settings = {k: (str(v) if k == "out" else v) for k, v in vars(args).items()}
    finish({"machine": machine, "settings": settings, "rows": rows}, args.out, before)


if __name__ == "__main__":
    main()
