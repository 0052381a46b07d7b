"""One table of the test metrics that ``segqc train`` stored in several bundles (``test_metrics`` in
``bundle.json``): segmentation Jaccard, g's quality metrics and the referral at the bundle's threshold.

Usage::

    python examples/bundle_table.py NAME=BUNDLE_DIR [NAME=BUNDLE_DIR ...] [--out FILE.md]

Each row is named NAME; the segmenter (segqc's U-Net, or an external ONNX file), the uncertainty
method and the image size come from the bundle.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def row(name: str, folder: Path) -> str:
    config = json.loads((folder / "bundle.json").read_text(encoding="utf-8"))
    test = config.get("test_metrics")
    if not test:
        raise SystemExit(f"error: {folder}: bundle has no test metrics (trained without a test split)")
    seg, q, ref = test["segmentation"], test["quality"], test["referral"]
    external = (config.get("segmenter") or {}).get("external")
    segmenter = "external ONNX" if external else "segqc U-Net"
    cells = [
        name, segmenter, config["method"], str(config["image_size"]), f"{seg['jaccard_mean']:.3f}",
        _pct(seg["failure_rate"]), f"{q['rmse']:.3f}", _pct(q["detection_error"]), _pct(q["auroc"]),
        _pct(q["aupr_pass"]), _pct(q["aupr_fail"]), f"{ref['threshold']:g}", _pct(ref["failure_recall"]),
        _pct(ref["referral_rate"]),
    ]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("bundles", nargs="+", help="NAME=BUNDLE_DIR")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    lines = [
        "| row | f | method | px | test Jaccard | failures (%) | RMSE | detection error (%) | AUROC (%) "
        "| AUPR-Pass (%) | AUPR-Fail (%) | threshold | failures referred (%) | referred (%) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for item in args.bundles:
        name, _, folder = item.partition("=")
        lines.append(row(name, Path(folder)))
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
