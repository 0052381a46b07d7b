"""How many failures g sees in training: f's failure rate on its own training images, against unseen ones.

Usage::

    python benchmarks/g_training_failures.py --data DIR --protocol SPLIT MODEL [MODEL ...]

``segqc train`` trains g the paper's way, on f's predictions over f's own training images. The
better f fits those images, the fewer failures (Jaccard < 0.7) g learns from, while at test time
f fails as often as on any unseen image. For each bundle this prints f's mean Jaccard and failure
rate on the images it was trained on (the bundle's ``data.train_ids``), on the held-out rest of the
protocol's training images (the gate's calibration images) and on the test images, at the model's
own size, and the test AUROC of g recorded in the bundle.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from segqc.data.splits import load_train_test
from segqc.metrics.segmentation import jaccard
from segqc.runtime import load_model


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--protocol", default=None)
    ap.add_argument("models", nargs="+", type=Path)
    args = ap.parse_args(argv)
    print("| model | size | f on its training images: J / failures | held-out | test | g test AUROC |")
    print("|---|---|---|---|---|---|")
    for folder in args.models:
        bundle = json.loads((folder / "bundle.json").read_text())
        model = load_model(folder, device="cpu")
        train, test, _ = load_train_test(args.data, args.protocol, size=model.image_size)
        fitted = set(bundle["data"]["train_ids"])
        own = np.array([i in fitted for i in train.ids])
        cells = []
        for part in (train.subset(np.flatnonzero(own)), train.subset(np.flatnonzero(~own)), test):
            j = jaccard(model.segment(part.images).mask, part.masks)
            cells.append(f"{j.mean():.3f} / {100 * (j < 0.7).mean():.1f}% (n={len(j)})")
        auroc = bundle["test_metrics"]["quality"]["auroc"]
        print(f"| {folder.name} | {model.image_size} | {' | '.join(cells)} | {100 * auroc:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
