"""Compare trained models on their held-out training images, so that no test image picks a model.

Usage::

    python benchmarks/heldout_compare.py --data DIR --protocol SPLIT MODEL [MODEL ...] [--out OUT.json]

``segqc train`` holds a seeded 20% of the training images out of the training of f and g (the gate's
calibration images, ``data.calibration_ids`` of ``bundle.json``). Models trained with the same seed on
the same protocol hold out the same images, so these are a validation set on which to choose between
them. Each model runs as a user gets it (:func:`segqc.assess.assess_images`: each image at the data's
own resolution, resized to the model's size and back); printed per model: f's mean Jaccard and failure
rate (Jaccard < 0.7), and g's failure AUROC, AUPR-Fail, detection error and RMSE. The models must share
their held-out ids (else the comparison would be between different images, and it stops).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from segqc.assess import assess_images
from segqc.data.dataset import load_folder
from segqc.data.readers import read_protocol
from segqc.metrics import quality_metrics
from segqc.metrics.segmentation import jaccard
from segqc.runtime import load_model
from segqc.utils import write_json


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--protocol", required=True)
    ap.add_argument("--size", type=int, default=224, help="Resolution the images are read at (the data's).")
    ap.add_argument("--out", type=Path, default=None, help="Also write the numbers as JSON here.")
    ap.add_argument("models", nargs="+", type=Path)
    args = ap.parse_args(argv)
    bundles = {folder: json.loads((folder / "bundle.json").read_text()) for folder in args.models}
    held = {folder: b["data"]["calibration_ids"] for folder, b in bundles.items()}
    ids = held[args.models[0]]
    if any(v != ids for v in held.values()):
        sys.exit("error: the models hold out different images (another seed or protocol); not comparable")
    train_ids = set(read_protocol(args.protocol)["train"])
    if not set(ids) <= train_ids:
        sys.exit("error: the held-out ids are not training images of this protocol")
    data = load_folder(args.data, size=args.size, ids=ids)
    rows = {}
    print(f"held-out training images: {len(ids)}")
    head = ["model", "size", "method", "f: Jaccard", "failures (%)", "AUROC (%)", "AUPR-Fail (%)"]
    head += ["det. error (%)", "RMSE"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for folder in args.models:
        model = load_model(folder, device="cpu")
        results = assess_images(model, list(data.images), list(data.ids))
        true = np.array([float(jaccard(r.mask, m)) for r, m in zip(results, data.masks)])
        predicted = np.array([r.predicted_jaccard for r in results], dtype=np.float64)
        q = quality_metrics(predicted, true, 0.7)
        failure_rate = float((true < 0.7).mean())
        rows[folder.as_posix()] = {"jaccard_mean": float(true.mean()), "failure_rate": failure_rate, **q}
        print(
            f"| {folder.as_posix()} | {model.image_size} | {model.method} | {true.mean():.3f} | "
            f"{100 * failure_rate:.1f} | {100 * q['auroc']:.1f} | {100 * q['aupr_fail']:.1f} | "
            f"{100 * q['detection_error']:.1f} | {q['rmse']:.3f} |"
        )
    if args.out is not None:
        write_json(args.out, {"n_heldout": len(ids), "size": args.size, "models": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
