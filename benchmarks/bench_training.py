"""Training speed of f (msp U-Net) per epoch, and proof that data loading is never the bottleneck.

Usage::

    python benchmarks/bench_training.py [--quick] [--sizes 64 128 224] [--width 16] [--batch 16]
        [--images 64] [--epoch-images 1550] [--data ../shared/data/isic2017] [--decode-ids 200]
        [--repeats N] [--threads N] [--out FILE]

For each image size, one short "epoch" of ``--images`` random images runs through
``segqc.engine.train_loop`` (Adam, batch 16, as ``Segmenter.fit``), timed as the median of
``--repeats`` after one warm-up (the variants round-robin), and scaled to ``--epoch-images``
(1550 = the ISIC 2017 protocol's training split) per image. Two data paths, same network and loop:

- **uint8 cache path** -- exactly what ``Segmenter.fit`` does: the in-memory uint8 arrays are
  indexed per batch, then ``to_input`` (float conversion + normalisation) and ``random_dihedral``
  (flips / 90-degree rotations) run per batch inside the step.
- **pre-made float** -- a float32 tensor of the same shape and memory layout made once up front
  (what ``to_input`` returns), no per-batch conversion or augmentation: the lower bound.

plus the per-batch data preparation alone (indexing + ``to_input`` + ``random_dihedral``) over an
epoch. And the one-off cost of loading the real data: ``load_folder(root, size=S, ids=<first
--decode-ids of split.json train>, cache_dir=<fresh temp dir>)`` cold (JPEG decode + resize +
cache write) vs. warm (cache hit). And one short epoch of g (``QualityCNN``, ``CNNQualityPredictor.fit``'s
step) with its input as the concatenation makes it (NCHW) vs. channels_last (what ``fit`` feeds
it). Prints markdown tables; ``--out`` writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import (
    add_common_args,
    finish,
    header,
    load1,
    machine_info,
    markdown_table,
    measure,
    measure_interleaved,
)
from torch import Tensor, nn

from segqc.data.dataset import channel_stats, load_folder, to_input
from segqc.data.transforms import random_dihedral
from segqc.engine import train_loop
from segqc.networks.quality_cnn import QualityCNN
from segqc.uncertainty import create_method

DATA = Path("../shared/data/isic2017")  # relative to the repository root


def epoch_times(args: argparse.Namespace, size: int) -> dict[str, Any]:
    """Short-epoch wall times of the two data paths at one size, and the data preparation alone."""
    rng = np.random.default_rng(size)
    images = rng.integers(0, 256, (args.images, size, size, 3), np.uint8)
    masks = rng.integers(0, 2, (args.images, size, size), np.uint8)
    method = create_method("msp")
    torch.manual_seed(0)
    model = method.build(base_width=args.width)
    mean, std = channel_stats(images)
    generator = torch.Generator().manual_seed(0)

    def cache_step(model: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
        # Mirrors Segmenter.fit's step (augment=True): conversion and augmentation per batch.
        imgs, msk = batch
        x = to_input(imgs, mean, std)
        x, msk = random_dihedral(x, msk, generator=generator)
        return method.loss(model(x), msk.long())

    def float_step(model: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
        x, msk = batch
        return method.loss(model(x), msk)

    uint8_tensors = (torch.from_numpy(images), torch.from_numpy(masks))
    float_tensors = (to_input(images, mean, std), torch.from_numpy(masks).long())  # same layout as to_input

    def epoch(tensors: tuple[Tensor, ...], step) -> None:
        train_loop(
            model,
            tensors,
            step,
            epochs=1,
            batch_size=args.batch,
            lr=1e-3,
            generator=generator,
            device=torch.device("cpu"),
            progress=False,
        )

    def prep_only() -> None:
        order = torch.randperm(args.images, generator=generator)
        for start in range(0, args.images, args.batch):
            idx = order[start : start + args.batch]
            imgs, msk = (t[idx] for t in uint8_tensors)
            random_dihedral(to_input(imgs, mean, std), msk, generator=generator)

    scale = args.epoch_images / args.images
    out: dict[str, Any] = {"size": size, "images": args.images, "scale_to_epoch": scale}
    names = ["uint8_cache", "premade_float", "prep_only"]
    fns = [lambda: epoch(uint8_tensors, cache_step), lambda: epoch(float_tensors, float_step), prep_only]
    # Round-robin, so load drift on a shared machine hits the paths alike.
    for name, t in zip(names, measure_interleaved(fns, repeats=args.repeats), strict=True):
        out[name] = {**t, "epoch_s": t["median_s"] * scale, "cpu_epoch_s": t["cpu_median_s"] * scale}
        print(f"  {size}px {name}: {out[name]['epoch_s']:.1f} s/epoch", flush=True)
    return out


def g_epoch_times(args: argparse.Namespace, size: int) -> dict[str, Any]:
    """Short-epoch times of g with NCHW vs channels_last input (``CNNQualityPredictor.fit``'s step)."""
    rng = np.random.default_rng(size)
    x = torch.from_numpy(rng.standard_normal((args.images, 5, size, size), dtype=np.float32))
    target = torch.from_numpy(rng.random(args.images, dtype=np.float32))
    torch.manual_seed(0)
    model = QualityCNN(5, args.width)
    generator = torch.Generator().manual_seed(0)
    loss_fn = nn.MSELoss()

    def step(layout: torch.memory_format):
        def run(model: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
            inputs, jaccard = batch
            (inputs,) = random_dihedral(inputs, generator=generator)
            return loss_fn(model(inputs.contiguous(memory_format=layout)), jaccard)

        return run

    def epoch(layout: torch.memory_format) -> None:
        train_loop(model, (x, target), step(layout), epochs=1, batch_size=args.batch, lr=1e-3,
                   generator=generator, device=torch.device("cpu"), progress=False)  # fmt: skip

    scale = args.epoch_images / args.images
    out: dict[str, Any] = {"size": size, "images": args.images, "scale_to_epoch": scale}
    names = ["nchw", "channels_last"]
    fns = [lambda: epoch(torch.contiguous_format), lambda: epoch(torch.channels_last)]
    for name, t in zip(names, measure_interleaved(fns, repeats=args.repeats), strict=True):
        out[name] = {**t, "epoch_s": t["median_s"] * scale, "cpu_epoch_s": t["cpu_median_s"] * scale}
        print(f"  g {size}px {name}: {out[name]['epoch_s']:.1f} s/epoch", flush=True)
    return out


def decode_times(args: argparse.Namespace, size: int, ids: list[str]) -> dict[str, Any]:
    """``load_folder`` on real data: cold (fresh cache dir: decode + resize + write) vs warm (hit)."""
    with tempfile.TemporaryDirectory(prefix="segqc-bench-cache-") as cache:
        start = time.perf_counter()
        data = load_folder(args.data, size=size, ids=ids, cache_dir=cache)
        cold = time.perf_counter() - start
        assert data.images.shape == (len(ids), size, size, 3)
        warm = measure(
            lambda: load_folder(args.data, size=size, ids=ids, cache_dir=cache),
            repeats=args.repeats,
            warmup=0,
        )
    print(f"  load_folder {size}px: cold {cold:.2f} s, warm {warm['median_s']:.3f} s", flush=True)
    return {"size": size, "ids": len(ids), "cold_s": cold, "warm": warm, "warm_s": warm["median_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="default 64 128 224")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--images", type=int, default=None, help="images per timed short epoch (default 64)")
    parser.add_argument("--epoch-images", type=int, default=1550, help="epoch size to extrapolate to")
    parser.add_argument("--data", type=Path, default=DATA, help="ISIC 2017 folder with split.json")
    parser.add_argument("--decode-ids", type=int, default=None, help="ids for load_folder (default 200)")
    add_common_args(parser)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    quick = args.quick
    args.sizes = args.sizes or ([32] if quick else [64, 128, 224])
    args.images = args.images or (2 * args.batch if quick else 4 * args.batch)
    args.decode_ids = args.decode_ids or (8 if quick else 200)
    args.repeats = args.repeats or (1 if quick else 3)

    machine = machine_info()
    before = load1()
    print(header("segqc training benchmark (f, msp)", machine, before), flush=True)
    print("measuring epochs ...", flush=True)
    epochs = [epoch_times(args, size) for size in args.sizes]
    print("measuring epochs of g ...", flush=True)
    g_epochs = [g_epoch_times(args, size) for size in args.sizes]
    decodes = []
    split = args.data / "split.json"
    if split.is_file():
        ids = json.loads(split.read_text())["train"][: args.decode_ids]
        print("measuring load_folder ...", flush=True)
        decodes = [decode_times(args, size, ids) for size in args.sizes]
    else:
        print(f"(no {split}: load_folder cold/warm not measured)")

    steps = math.ceil(args.epoch_images / args.batch)
    print(
        f"\nU-Net width {args.width}, msp, batch {args.batch}; one epoch = {args.epoch_images} images "
        f"({steps} steps), extrapolated from short epochs of {args.images} images "
        f"(median of up to {args.repeats} after a warm-up)\n"
    )
    print("## 1. Seconds per epoch of f\n")
    rows = []
    for e in epochs:
        cache, premade, prep = e["uint8_cache"], e["premade_float"], e["prep_only"]
        rows.append(
            [
                e["size"],
                f"{cache['epoch_s']:.1f}",
                f"{premade['epoch_s']:.1f}",
                f"{cache['cpu_epoch_s']:.1f}",
                f"{premade['cpu_epoch_s']:.1f}",
                f"{cache['cpu_epoch_s'] / premade['cpu_epoch_s'] - 1:+.0%}",
                f"{prep['cpu_epoch_s']:.2f}",
                f"{prep['cpu_epoch_s'] / cache['cpu_epoch_s']:.1%}",
                f"{args.epoch_images / cache['epoch_s']:.1f}",
            ]
        )
    head = [
        "size",
        "s/epoch: uint8 cache path (fit)",
        "s/epoch: pre-made float",
        "CPU s/epoch: cache path",
        "CPU s/epoch: pre-made",
        "cache path vs pre-made (CPU)",
        "CPU s/epoch: data prep alone",
        "data prep share (CPU)",
        "training images/s",
    ]
    print(markdown_table(head, rows))
    print(
        "\n(s = wall seconds; CPU s = seconds of process CPU time, robust to other jobs on the machine. "
        "Data prep = per-batch indexing + to_input + random_dihedral, as in Segmenter.fit.)"
    )
    if decodes:
        print(
            f"\n## 2. One-off loading of the real data (load_folder, {decodes[0]['ids']} training images)\n"
        )
        print(
            markdown_table(
                [
                    "size",
                    "cold: decode + resize + cache write (s)",
                    "warm: cache hit (s)",
                    "ms/image cold",
                    "cold / warm",
                ],
                [
                    [
                        d["size"],
                        f"{d['cold_s']:.2f}",
                        f"{d['warm_s']:.3f}",
                        f"{1e3 * d['cold_s'] / d['ids']:.1f}",
                        f"{d['cold_s'] / d['warm_s']:.0f}x",
                    ]
                    for d in decodes
                ],
            )
        )
    print(f"\n## 3. Seconds per epoch of g ({args.epoch_images} images): input layout\n")
    rows = [
        [
            e["size"],
            f"{e['nchw']['epoch_s']:.1f}",
            f"{e['channels_last']['epoch_s']:.1f}",
            f"{e['nchw']['epoch_s'] / e['channels_last']['epoch_s']:.2f}x",
            f"{e['nchw']['cpu_epoch_s'] / e['channels_last']['cpu_epoch_s']:.2f}x",
        ]
        for e in g_epochs
    ]
    head = ["size", "s/epoch: NCHW input", "s/epoch: channels_last (fit)", "speed-up", "speed-up (CPU)"]
    print(markdown_table(head, rows))
    results = {
        "machine": machine,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "epochs": epochs,
        "load_folder": decodes,
        "g_epochs": g_epochs,
    }
    finish(results, args.out, before)


if __name__ == "__main__":
    main()
