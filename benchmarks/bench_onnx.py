"""Time per image of f + g in onnxruntime (``segqc export`` graphs) against eager PyTorch on this CPU.

Usage::

    python benchmarks/bench_onnx.py [--quick] [--method msp] [--size 64] [--width 16] [--batch 16]
        [--exporters dynamo torchscript] [--repeats N] [--threads N] [--out FILE]

Untrained weights (timing does not depend on them; see ``bench_inference.make_segmenter`` and
``make_quality``) are saved as a bundle and exported with each exporter. Each timed call assesses one
batch of random uint8 images at the model's size the way the library does: f's ``predict`` (uint8 in,
probabilities and uncertainty out) then g's ``predict`` on f's mask and map, i.e. ``Segmenter`` +
``CNNQualityPredictor`` for PyTorch and ``OnnxSegmenter`` + ``OnnxQualityPredictor`` for onnxruntime.
Both use the same number of threads (``--threads``, default torch's choice). Variants are timed
round-robin, the median of ``--repeats`` after one warm-up; the 1-minute load average is printed before
and after, and the numbers are marked as taken under load when it exceeds 1.5.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from _common import add_common_args, finish, header, load1, machine_info, markdown_table, measure_interleaved
from bench_inference import make_quality, make_segmenter, run_pipeline

from segqc.bundle import save_bundle
from segqc.runtime.export import export_onnx
from segqc.runtime.onnx_backend import load_onnx_model
from segqc.types import QualitySamples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--method", default="msp")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--exporters", nargs="+", default=["dynamo", "torchscript"])
    args = parser.parse_args()
    if args.quick:
        args.size, args.width, args.exporters = 32, 4, ["torchscript"]
    repeats = args.repeats or (3 if args.quick else 10)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    before = load1()
    machine = machine_info()
    print(header(f"f + g: onnxruntime vs eager PyTorch ({args.method}, {args.size} px)", machine, before))

    seg, g = make_segmenter(args.method, args.width), make_quality(args.width)
    images = np.random.default_rng(0).integers(0, 256, (args.batch, args.size, args.size, 3), dtype=np.uint8)
    variants = {"PyTorch eager": lambda: run_pipeline(seg, g, images, args.batch)}
    reference = run_pipeline(seg, g, images, args.batch)
    diffs = {}
    with tempfile.TemporaryDirectory() as tmp:
        bundle_dir = save_bundle(Path(tmp) / "model", seg, g, image_size=args.size)
        for exporter in args.exporters:
            out = export_onnx(bundle_dir, Path(tmp) / exporter, exporter=exporter)
            onnx = load_onnx_model(out, device="cpu", threads=threads)

            def run(onnx=onnx) -> np.ndarray:
                pred = onnx.segmenter.predict(images, batch_size=args.batch)
                samples = QualitySamples(images, pred.mask, pred.uncertainty)
                return onnx.predictor.predict(samples, batch_size=args.batch)

            variants[f"onnxruntime ({exporter} export)"] = run
            diffs[exporter] = float(np.abs(run() - reference).max())
        stats = measure_interleaved(list(variants.values()), repeats=repeats)

    eager = stats[0]["median_s"]
    rows, results = [], []
    for (name, _), s in zip(variants.items(), stats):
        per_image = s["median_s"] / args.batch * 1e3
        rows.append([name, f"{per_image:.2f}", f"{s['cpu_median_s'] / args.batch * 1e3:.2f}",
                     f"{eager / s['median_s']:.2f}x"])  # fmt: skip
        results.append({"variant": name, "ms_per_image": per_image, **s})
    print(
        f"\nmethod {args.method}, {args.size} px, width {args.width}, batch {args.batch}, "
        f"{threads} threads (torch and onnxruntime), median of {repeats}\n"
    )
    print(markdown_table(["runtime", "ms / image (wall)", "ms / image (CPU)", "speed-up vs eager"], rows))
    print(f"\nlargest |predicted Jaccard onnxruntime - torch| on these images: {diffs}")
    config = {k: getattr(args, k) for k in ("method", "size", "width", "batch", "exporters")}
    finish({"machine": machine, "config": {**config, "threads": threads}, "rows": results, "diffs": diffs},
           args.out, before)  # fmt: skip


if __name__ == "__main__":
    main()
